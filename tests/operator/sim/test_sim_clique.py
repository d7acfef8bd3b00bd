"""One fault-simulation seed on a fresh four-signer Clique network (geth v1.13.15, period 1 s): the CC's side of
a 2-2 partition loses the fork (both issue requests are sent to it), then two of four signers stop, the CC's node
among them (the chain stalls, the CC fails over). After heal, quiescence and the finality depth on every node, the
independent checker and `clearhouse reconcile` find nothing broken: every usage log settled once, every payee
paid once.

Bounded: 14 steps, two faults, about two minutes here (network up and provisioning take half of it).
`CLEARHOUSE_SIM_CLIQUE_SEEDS` picks other seeds. Skips when geth is not built (`bin/setup` builds it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from offchain.chain.network import geth_binary
from offchain.core.errors import ConfigError
from offchain.operator.sim.plan import NETWORK_FAULT_KINDS, make_plan, parse_seeds, partition_groups
from offchain.operator.sim.runner import run_seed

pytestmark = pytest.mark.network

SEEDS = parse_seeds(os.environ.get("CLEARHOUSE_SIM_CLIQUE_SEEDS", "25"))
STEPS = 14


@pytest.fixture(scope="module", autouse=True)
def _geth() -> None:
    try:
        geth_binary()
    except ConfigError as exc:
        pytest.skip(f"no geth for the Clique network: {exc.message}")


def test_seed_25_partitions_the_cc_side_and_stops_two_signers() -> None:
    """The plan the test below runs: what it exercises does not drift with the plan generator."""
    plan = make_plan(25, NETWORK_FAULT_KINDS, network="clique", steps=STEPS)
    partition, stop = plan.faults
    assert (partition.kind, stop.kind) == ("partition", "stop-signer")
    keep, lose = partition_groups(partition.target, partition.mode)
    assert 0 in lose, "the CC's node (0) is on the side whose fork heal discards"
    assert {s.action for s in plan.steps[partition.start:partition.end]} >= {"issue"}
    assert stop.mode == "stall" and 0 in [int(n) for n in stop.target.removeprefix("nodes ").split(",")]


# In the default run since heal() re-peers the nodes it rewinds (9f3bed8): before that, geth's nodes once took over
# 120 s to agree after a heal under load, because a node rewound while connected never synced again.
# CLEARHOUSE_SIM_CLIQUE=0 leaves it out; CLEARHOUSE_SIM_CLIQUE_SEEDS picks other seeds.
@pytest.mark.skipif(os.environ.get("CLEARHOUSE_SIM_CLIQUE") == "0",
                    reason="the whole simulated consortium on Clique (2-3 min) is left out by CLEARHOUSE_SIM_CLIQUE=0")
@pytest.mark.parametrize("seed", SEEDS)
def test_clique_seed_breaks_no_invariant(seed: int, tmp_path: Path) -> None:
    plan = make_plan(seed, NETWORK_FAULT_KINDS, network="clique", steps=STEPS)
    result = run_seed(plan, tmp_path / f"seed-{seed}", quiesce_s=120.0, keep=True)
    timeline = json.loads((result.workdir / "timeline.json").read_text())
    assert result.violations == [], "\n".join(str(v) for v in result.violations) + "\n" + plan.describe()
    assert result.quiescent
    closed = [e["what"] for e in timeline if e["kind"] == "fault" and e["what"].startswith("close ")]
    assert len(closed) == len(plan.faults), closed
    assert [e for e in timeline if e["kind"] == "final"], "the checker ran only after the finality depth"
