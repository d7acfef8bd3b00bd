"""`clearhouse bench gas`: gas per settled usage log on a fresh anvil (paris), N logs per tx x D distinct contents.

Measures receipts' gasUsed in steady state (every serial and policy already settled once, so writes are
non-zero to non-zero), and a naive baseline (contracts/test/NaiveSettlement.sol: one tx and one slot per log).
Keys are throwaway, derived from fixed labels: never reuse them outside a local chain.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from eth_account import Account
from eth_utils import keccak
from web3 import Web3

from offchain.chain import (
    ClearhouseChain,
    Deployment,
    SettlementItem,
    compile_contracts,
    deploy,
    deploy_artifact,
    start_anvil,
)
from offchain.core.messages import Domain, ReceiveLog, UsageBatch, UsageLog, policy_id, sign
from offchain.core.types import PACKAGE_ROOT, Role

BATCH_SIZES = (1, 16, 256)
CONTENT_COUNTS = (1, 4, 16)
PRICE = 1_000
TARGETS = {1: 45_000, 16: 4_500, 256: 1_000}
ROLES = {"clearing_center": Role.CLEARING_CENTER, "provider": Role.SERVICE_PROVIDER,
         "content_provider": Role.CONTENT_PROVIDER, "bank": Role.BANK, "device": Role.DEVICE}
USER = keccak(text="clearhouse-bench:user")  # the one user the bench device is registered for


@dataclass(frozen=True)
class Bench:
    """A deployed Clearhouse with registered members, policies and a funded user."""

    w3: Web3
    deployment: Deployment
    keys: dict[str, bytes]
    policies: tuple[bytes, ...]
    now: int

    def client(self, name: str) -> ClearhouseChain:
        return ClearhouseChain(self.w3, self.deployment, self.keys[name])

    def address(self, name: str) -> str:
        return Account.from_key(self.keys[name]).address


def _key(name: str) -> bytes:
    return keccak(text=f"clearhouse-bench:{name}")


def _setup(w3: Web3, root: Path) -> Bench:
    keys = {name: _key(name) for name in ("authority", "deployer", "payee2", *ROLES)}
    for key in keys.values():
        w3.provider.make_request("anvil_setBalance", [Account.from_key(key).address, hex(10**24)])
    deployment = deploy(w3, keys["deployer"], Account.from_key(keys["authority"]).address, root=root)
    authority = ClearhouseChain(w3, deployment, keys["authority"])
    for name, role in ROLES.items():
        authority.register_member(Account.from_key(keys[name]).address, role, keccak(text=name),
                                  keccak(text=f"cert:{name}"), 0, 2**40 - 1,
                                  user_id_hash=USER if name == "device" else bytes(32))
    cp = ClearhouseChain(w3, deployment, keys["content_provider"])
    payees = [(Account.from_key(keys["content_provider"]).address, 7000), (Account.from_key(keys["payee2"]).address, 3000)]
    policies = []
    for i in range(max(CONTENT_COUNTS)):
        content_id = keccak(text=f"bench-content-{i}")
        cp.register_policy(content_id, 1, PRICE, payees, keccak(text=f"policy-{i}"))
        policies.append(policy_id(content_id, 1))
    now = int(w3.eth.get_block("latest")["timestamp"])
    return Bench(w3, deployment, keys, tuple(policies), now)


def _item(bench: Bench, serial: bytes, first_seq: int, count: int, contents: int) -> SettlementItem:
    receiver = bench.address("provider")
    logs = [UsageLog(serial=serial, seq=first_seq + i, policy_id=bench.policies[i % contents], fee=PRICE,
                     receiver=receiver, used_at=bench.now) for i in range(count)]
    batch = UsageBatch.from_logs(logs)
    domain: Domain = bench.deployment.domain
    device_sig = sign(batch, domain, bench.keys["device"])
    receive = ReceiveLog(usage_batch=batch.struct_hash(), payer=bench.address("device"), received_at=bench.now)
    return SettlementItem(batch, device_sig, bench.now, sign(receive, domain, bench.keys["provider"]))


def _measure(bench: Bench, batch: int, contents: int) -> dict[str, int]:
    """Warm up one serial (first-ever writes), then settle one steady-state batch and read its gasUsed."""
    serial = keccak(text=f"bench-serial-{batch}-{contents}")
    user = USER
    cap = PRICE * (batch + contents) * 4
    bench.client("bank").record_deposit(keccak(serial + b"deposit"), user, cap, keccak(text="ref"))
    cc = bench.client("clearing_center")
    cc.issue(serial, bench.address("device"), user, cap, bench.now + 365 * 86400)
    cc.settle([_item(bench, serial, 0, contents, contents)])  # warm-up: every policy and the serial settled once
    receipt = cc.settle([_item(bench, serial, contents, batch, contents)])
    gas_total = int(receipt["gasUsed"])
    return {"batch": batch, "contents": contents, "gas_per_log": gas_total // batch, "gas_total": gas_total}


def _measure_naive(w3: Web3, root: Path, bench: Bench, logs: int = 4) -> dict[str, object]:
    """One tx per usage log through NaiveSettlement, same device + receiver signature checks."""
    artifact = compile_contracts(root)["NaiveSettlement"]
    address, _ = deploy_artifact(w3, bench.keys["clearing_center"], artifact, [])
    naive = Deployment("bench", w3.eth.chain_id, 0, bench.address("authority"), address, artifact["abi"])
    client = ClearhouseChain(w3, naive, bench.keys["clearing_center"])
    serial, pid = keccak(text="naive-serial"), bench.policies[0]
    client.send("setup", serial, bench.address("device"), PRICE * (logs + 1), pid, PRICE)
    gas: list[int] = []
    for seq in range(logs + 1):
        log = UsageLog(serial=serial, seq=seq, policy_id=pid, fee=PRICE, receiver=bench.address("provider"),
                       used_at=bench.now)
        device_sig = sign(log, naive.domain, bench.keys["device"])
        receive = ReceiveLog(usage_batch=log.struct_hash(), payer=bench.address("device"), received_at=bench.now)
        receipt = client.send("settleOne", (log.serial, log.seq, log.policy_id, log.fee, log.receiver, log.used_at),
                              device_sig, bench.now, sign(receive, naive.domain, bench.keys["provider"]))
        gas.append(int(receipt["gasUsed"]))
    steady = gas[1:]  # the first log pays the zero-to-non-zero writes
    return {"design": "one tx per usage log, one storage slot per log id", "logs": len(steady),
            "gas_per_log": sum(steady) // len(steady), "gas_first_log": gas[0]}


def _print_table(rows: Sequence[dict[str, int]], naive: dict[str, object]) -> None:
    print(f"{'N':>5} {'D':>4} {'gas/log':>9} {'gas total':>11} {'target':>8}")
    for row in rows:
        target = TARGETS.get(row["batch"]) if row["contents"] == 1 else None
        mark = "" if target is None else (" ok" if row["gas_per_log"] <= target else " MISS")
        print(f"{row['batch']:>5} {row['contents']:>4} {row['gas_per_log']:>9,} {row['gas_total']:>11,} "
              f"{'' if target is None else f'{target:,}':>8}{mark}")
    print(f"naive baseline: {naive['gas_per_log']:,} gas per log (one tx per log)")


def run(out_path: str = "bench/results/gas.json", *, root: Path | None = None, quiet: bool = False) -> list[dict]:
    """Run the benchmark on a private anvil, write gas.json (list) and gas_naive.json next to it; return the list."""
    root = Path(root or PACKAGE_ROOT)
    with start_anvil(hardfork="paris") as node:
        w3 = node.web3()
        bench = _setup(w3, root)
        rows = [_measure(bench, n, d) for n in BATCH_SIZES for d in CONTENT_COUNTS if d <= n]
        naive = _measure_naive(w3, root, bench)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2) + "\n")
    out.with_name("gas_naive.json").write_text(json.dumps(naive, indent=2) + "\n")
    if not quiet:
        _print_table(rows, naive)
    return rows


if __name__ == "__main__":
    run()
