"""Gas ceilings per settled usage log (steady state, D = 1), measured by offchain.operator.bench.gas on its own anvil.

The design targets are 45,000 / 4,500 / 1,000 gas per log at N = 1 / 16 / 256. The ceilings asserted here are
the measured values plus 2 % headroom, so a regression fails; the targets are asserted where they are met.

Measured (paris, solc 0.8.30, optimizer runs 1,000,000), before -> after the hot-path rework:
    N = 1: 67,466 -> 64,570    N = 16: 5,010 -> 4,342    N = 256: 1,111 -> 588

Floor at N = 1 (what any implementation of the required checks pays, with the frozen ABI):
    21,000  transaction base
    ~6,000  calldata: the ABI encoding of one item is 772 bytes (about 5,980-6,004 gas, depending on zero
            bytes in the signatures)
    12,600  6 cold SLOADs x 2,100: CC member, device member, SP member, issue log slots A and B, policy slot
     5,800  2 SSTOREs non-zero -> non-zero on already-read slots x 2,900: issue log slot B, policy hot slot
     6,200  2 ecrecover precompile calls x (3,000 + 100 warm call)
     2,899  LOG4 with 4 data words (375 + 4 x 375 + 8 x 128)
      ~300  keccak256: policyIds, entries, batch struct, two digests, receive-log struct
   -------
   ~54,800  before any dispatch, ABI decoding, bounds checks or memory: about 55,000-56,000 in practice.
So 45,000 gas per log at N = 1 is not reachable with these checks and this ABI (it is below the floor by about
10,000 gas); the N = 1 figure is capped at its measured value instead. N = 16 and N = 256 meet their targets.
"""

from __future__ import annotations

from pathlib import Path

from offchain.operator.bench import gas

MEASURED_CEILINGS = {1: 65_900, 16: 4_430, 256: 600}
TARGETS_MET = {16: 4_500, 256: 1_000}
N1_FLOOR = 54_800  # see the module docstring


def test_gas_per_log_stays_below_ceiling(tmp_path: Path) -> None:
    rows = gas.run(out_path=str(tmp_path / "gas.json"), quiet=True)
    by_n = {r["batch"]: r for r in rows if r["contents"] == 1}
    for n, ceiling in MEASURED_CEILINGS.items():
        assert by_n[n]["gas_per_log"] <= ceiling, (n, by_n[n])
    for n, target in TARGETS_MET.items():
        assert by_n[n]["gas_per_log"] <= target, (n, by_n[n])
    assert by_n[1]["gas_per_log"] > N1_FLOOR  # sanity: nothing can settle below the floor
    # batching must beat one transaction per log by a wide margin
    naive = (tmp_path / "gas_naive.json").read_text()
    assert by_n[256]["gas_per_log"] * 20 < int(__import__("json").loads(naive)["gas_per_log"])
    assert {(r["batch"], r["contents"]) for r in rows} == {(1, 1), (16, 1), (16, 4), (16, 16), (256, 1), (256, 4),
                                                            (256, 16)}
