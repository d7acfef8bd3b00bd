"""`clearhouse bench pipeline`: end-to-end usage-log throughput of the real services (anvil, CC, SP, bank as mTLS
processes): SP intake rate, first upload -> every log settled on chain, settle gas, CPU seconds per process.
Logs are pre-signed with each device's eth key as its secure module would (no decryption) and signing is not
timed. Dev chains only (anvil, throwaway keys, anvil_setBalance); everything it starts, it stops.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eth_account import Account
from rich.console import Console
from rich.table import Table

from offchain.operator.demo import PASSPHRASE, DemoError, Processes, client, open_device, start_services
from offchain.core.messages import Domain, UsageBatch, UsageLog, sign
from offchain.core.types import PACKAGE_ROOT, Role, to_hex
from offchain.chain.protocols import ChainReader, ChainWriter

ROOT = PACKAGE_ROOT
DEFAULT_LOGS = 65_536
DEFAULT_DEVICES = 8
DEFAULT_BATCH_SIZE = 512
PRICE_MINOR = 10
POLL_INTERVAL_S = 0.05
UPLOAD_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class DeviceLoad:
    """One device's pre-signed upload bodies, in sequence order (the SP refuses gaps)."""

    member_id: str
    serial: bytes
    bodies: tuple[dict[str, Any], ...]
    logs: int


@dataclass(frozen=True)
class PipelineResult:
    logs: int
    devices: int
    batch_size: int
    uploads: int
    intake_s: float
    end_to_end_s: float
    settled_logs: int
    settle_txs: int
    settle_gas: int
    cpu_s: dict[str, float]  # CPU seconds per process over the timed window (empty without /proc)
    to_final_s: float = 0.0  # first upload -> the last settlement `confirmations` deep
    confirmations: int = 0
    chain: str = "anvil"
    period_s: int = 0  # block period of the Clique network (0: anvil, instant)
    load: dict[str, Any] = field(default_factory=dict)  # the settled history and catalog it ran against

    def to_json(self) -> dict[str, Any]:
        return {"logs": self.logs, "devices": self.devices,
                "sp_intake_per_s": round(self.logs / self.intake_s, 1),
                "end_to_end_per_s": round(self.logs / self.end_to_end_s, 1),
                "settle_txs": self.settle_txs, "gas_per_log": round(self.settle_gas / max(self.settled_logs, 1), 1),
                "settled_logs": self.settled_logs, "settle_gas": self.settle_gas, "batch_size": self.batch_size,
                "uploads": self.uploads, "intake_s": round(self.intake_s, 3),
                "end_to_end_s": round(self.end_to_end_s, 3), "cpu_s": self.cpu_s,
                "chain": self.chain, "period_s": self.period_s, "confirmations": self.confirmations,
                "upload_to_final_s": round(self.to_final_s, 3), **({"load": self.load} if self.load else {})}


def split_logs(total: int, parts: int) -> list[int]:
    """`total` logs over `parts` devices, as even as possible (every device gets at least one)."""
    if parts < 1 or total < parts:
        raise DemoError(f"need at least one log per device ({total} logs, {parts} devices)",
                        hint="pass --logs >= --devices")
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


# --- setup -----------------------------------------------------------------------------------------------------------
def deploy_and_provision(workdir: Path, rpc_url: str, devices: int, network: Any = None) -> Any:
    """Fresh deployment and consortium: CC, SP, bank, one content provider and `devices` devices (one user each).
    `network` (a running CliqueNetwork): funded from its faucet, services get the rpc_urls of every node."""
    from offchain.chain import deploy
    from offchain.operator.demo import web3_for
    from offchain.operator.provision import MemberSpec, anvil_fund, provision

    w3 = web3_for(rpc_url)
    deployer, authority = Account.create(), Account.create()
    fund = (lambda address: network.fund([address], 10**21)) if network is not None else anvil_fund(w3)
    for account in (deployer, authority):
        fund(account.address)
    deployment = deploy(w3, bytes(deployer.key), authority.address, root=ROOT, network="bench")
    members = [MemberSpec("cc", Role.CLEARING_CENTER), MemberSpec("sp", Role.SERVICE_PROVIDER),
               MemberSpec("bank", Role.BANK), MemberSpec("studio", Role.CONTENT_PROVIDER)]
    members += [MemberSpec(f"device-{i}", Role.DEVICE, user_id=f"user-{i}") for i in range(devices)]
    return provision(workdir / "consortium", w3, deployment, bytes(authority.key), members=members,
                     rpc_url=rpc_url, passphrase=PASSPHRASE, fast_kdf=True, fund=fund,
                     rpc_urls=network.rpc_urls if network is not None else ())


def publish_content(consortium: Any, chain: ChainWriter) -> bytes:
    """The studio publishes one content (70% studio, 20% SP, 10% CC); returns its policy id."""
    from offchain.content_provider.publisher import ContentProvider, content_id_for

    studio = consortium.member("studio")
    payees = [(studio.eth_address, 7_000), (consortium.member("sp").eth_address, 2_000),
              (consortium.member("cc").eth_address, 1_000)]
    provider = ContentProvider(studio.credentials(), chain, client(consortium, "studio", "sp"))
    return provider.publish(b"benchmark content\n" * 64, content_id=content_id_for("bench-pipeline"), version=1,
                            price=PRICE_MINOR, payees=payees, title="bench pipeline").policy_id


def fund_devices(consortium: Any, logs_per_device: Sequence[int]) -> list[bytes]:
    """Bank deposit per user, then each device asks the CC for an issue log covering its logs; returns serials."""
    bank = client(consortium, "bank", "bank")
    serials = []
    for i, count in enumerate(logs_per_device):
        amount = count * PRICE_MINOR
        bank.post("/v1/deposits", {"deposit_id": f"bench-user-{i}", "user_id": f"user-{i}", "amount": amount})
        device = open_device(consortium, f"device-{i}")
        try:
            serials.append(device.request_issue_log(amount).serial)
        finally:
            device.close()
    return serials


def prefill_history(consortium: Any, history_logs: int, catalog_items: int) -> dict[str, Any]:
    """Before the CC starts: `history_logs` settled usage logs in its database, over the bench policy and the
    catalog's (all registered on chain before the timed window)."""
    from offchain.content_provider.publisher import content_id_for
    from offchain.core.messages import policy_id
    from offchain.operator.bench.history import catalog_policy_ids, fill_settled_history
    from offchain.storage import make_engine

    engine = make_engine(f"sqlite:///{consortium.member('cc').directory / 'service.db'}")
    try:
        started = time.perf_counter()
        policies = [policy_id(content_id_for("bench-pipeline"), 1), *catalog_policy_ids(catalog_items)]
        history = fill_settled_history(engine, history_logs, policies=policies, fee_minor=PRICE_MINOR,
                                       now=int(time.time()))
        return {**history.to_json(), "history_fill_s": round(time.perf_counter() - started, 1)}
    finally:
        engine.dispose()


def publish_large_catalog(consortium: Any, chain: ChainWriter, items: int, large: int, large_bytes: int) -> dict[str, Any]:
    """The studio publishes `items` more titles at the SP, `large` of them `large_bytes` each."""
    from offchain.content_provider.publisher import ContentProvider
    from offchain.operator.bench.history import publish_catalog

    studio = consortium.member("studio")
    payees = [(studio.eth_address, 7_000), (consortium.member("sp").eth_address, 2_000),
              (consortium.member("cc").eth_address, 1_000)]
    provider = ContentProvider(studio.credentials(), chain, client(consortium, "studio", "sp"))
    return publish_catalog(provider, items, large=large, large_bytes=large_bytes, price_minor=PRICE_MINOR,
                           payees=payees).to_json()


# --- load ------------------------------------------------------------------------------------------------------------
def signed_bodies(serial: bytes, count: int, *, policy: bytes, receiver: str, domain: Domain, eth_key: bytes,
                  certificate: str, batch_size: int, used_at: int) -> tuple[dict[str, Any], ...]:
    """`count` usage logs (seqs 0..count-1) as /v1/usage bodies of `batch_size` logs, signed like the secure
    module's `pending_batch`: every log signed, then the batch packing them signed."""
    bodies = []
    for first in range(0, count, batch_size):
        logs = [UsageLog(serial=serial, seq=seq, policy_id=policy, fee=PRICE_MINOR, receiver=receiver,
                         used_at=used_at) for seq in range(first, min(first + batch_size, count))]
        batch = UsageBatch.from_logs(logs)
        bodies.append({"batch": batch.to_json(), "batch_signature": to_hex(sign(batch, domain, eth_key)),
                       "logs": [{"log": log.to_json(), "signature": to_hex(sign(log, domain, eth_key))} for log in logs],
                       "certificate": certificate})
    return tuple(bodies)


def build_loads(consortium: Any, serials: Sequence[bytes], logs_per_device: Sequence[int], policy: bytes,
                batch_size: int) -> list[DeviceLoad]:
    loads = []
    receiver, now = consortium.member("sp").eth_address, int(time.time())
    for i, (serial, count) in enumerate(zip(serials, logs_per_device)):
        member = consortium.member(f"device-{i}")
        bodies = signed_bodies(serial, count, policy=policy, receiver=receiver, domain=consortium.domain,
                               eth_key=member.eth_private_key(), certificate=member.cert_path.read_text(),
                               batch_size=batch_size, used_at=now)
        loads.append(DeviceLoad(member.member_id, serial, bodies, count))
    return loads


def upload_device(consortium: Any, load: DeviceLoad) -> int:
    """POST every batch of one device in order (as `DeviceClient.upload` does); returns the logs acknowledged."""
    sp = client(consortium, load.member_id, "sp")
    acked = 0
    for body in load.bodies:
        ack = sp.post("/v1/usage", body)
        acked = int(ack["acked_through_seq"]) + 1
    return acked


def upload_all(consortium: Any, loads: Sequence[DeviceLoad]) -> float:
    """Every device uploads concurrently (one thread each); returns seconds until the last acknowledgement."""
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(loads)) as pool:
        acked = list(pool.map(lambda load: upload_device(consortium, load), loads, timeout=UPLOAD_TIMEOUT_S))
    elapsed = time.perf_counter() - started
    short = [(load.member_id, got, load.logs) for load, got in zip(loads, acked) if got != load.logs]
    if short:
        raise DemoError(f"the SP acknowledged fewer logs than sent: {short}", hint="see sp.log in the workdir")
    return elapsed


# --- settlement ------------------------------------------------------------------------------------------------------
def settled_count(chain: ChainReader, serials: Sequence[bytes]) -> int:
    """Usage logs settled on chain: the sum of every serial's settled nextSeq (seqs start at 0)."""
    return sum(chain.issue_log(serial).next_seq for serial in serials)


def wait_settled(chain: ChainReader, expected: dict[bytes, int], timeout_s: float, processes: Processes) -> int:
    """Poll the contract until every serial's settled nextSeq reaches `expected[serial]` (its logs); returns the
    logs settled (raises on timeout). A serial already complete is not read again, so the poll's own cost falls
    as the run settles instead of adding to the services' load."""
    deadline = time.monotonic() + timeout_s
    settled = dict.fromkeys(expected, 0)
    while True:
        for serial in [s for s, count in settled.items() if count < expected[s]]:
            settled[serial] = chain.issue_log(serial).next_seq
        if all(settled[s] >= expected[s] for s in expected):
            return sum(settled.values())
        for name in ("cc", "sp", "bank"):
            processes.check_alive(name)
        if time.monotonic() > deadline:
            raise DemoError(f"only {sum(settled.values())} of {sum(expected.values())} usage logs settled after "
                            f"{timeout_s:.0f}s", hint=f"see cc.log and sp.log in {processes.workdir}")
        time.sleep(POLL_INTERVAL_S)


def settle_gas(chain: ChainReader, from_block: int) -> tuple[int, int]:
    """(settle transactions, total gasUsed) over the transactions that emitted UsageSettled."""
    events = chain.contract.events.UsageSettled().get_logs(from_block=from_block)
    tx_hashes = {event["transactionHash"] for event in events}
    gas = sum(int(chain.w3.eth.get_transaction_receipt(tx)["gasUsed"]) for tx in tx_hashes)
    return len(tx_hashes), gas


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """User + system CPU seconds so far of each process, from /proc/<pid>/stat (empty where /proc is missing)."""
    ticks_per_s = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    seconds = {}
    for name, pid in pids.items():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        seconds[name] = (int(fields[11]) + int(fields[12])) / ticks_per_s  # utime, stime (fields 14 and 15)
    return seconds


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {name: round(after[name] - before[name], 2) for name in before if name in after}


# --- entry point -----------------------------------------------------------------------------------------------------
def wait_final(chain: Any, from_block: int, confirmations: int, timeout_s: float) -> None:
    """Until the last block with a UsageSettled event is `confirmations` deep (head - block + 1 >= depth)."""
    events = chain.contract.events.UsageSettled().get_logs(from_block=from_block)
    last = max(int(e["blockNumber"]) for e in events)
    deadline = time.monotonic() + timeout_s
    while chain.w3.eth.block_number - last + 1 < confirmations:
        if time.monotonic() > deadline:
            raise DemoError(f"block {last} not {confirmations} deep after {timeout_s:.0f}s",
                            hint="is the chain sealing? `clearhouse network status`")
        time.sleep(POLL_INTERVAL_S)


def measure(workdir: Path, processes: Processes, rpc_url: str, *, logs: int, devices: int, batch_size: int,
            anvil_pid: int | None = None, network: Any = None, history_logs: int = 0, catalog_items: int = 0,
            large_containers: int = 0, large_container_bytes: int = 0) -> PipelineResult:
    """Set up a consortium on `rpc_url` (`network`: a running CliqueNetwork whose node that is), run the load
    and return what was measured; on a network also the time from the first upload until every settlement is
    final (at the chain's confirmations)."""
    from offchain.chain import ClearhouseChain, Deployment
    from offchain.operator.demo import web3_for
    from offchain.transport.wiring import finality_tracker

    per_device = split_logs(logs, devices)
    consortium = deploy_and_provision(workdir, rpc_url, devices, network)
    load = prefill_history(consortium, history_logs, catalog_items) if history_logs else {}
    start_services(consortium, processes)
    w3 = web3_for(rpc_url)
    deployment = Deployment.load(consortium.deployment_path)
    studio_chain = ClearhouseChain(w3, deployment, consortium.member("studio").eth_private_key())
    policy = publish_content(consortium, studio_chain)
    if catalog_items:
        load.update(publish_large_catalog(consortium, studio_chain, catalog_items, large_containers,
                                          large_container_bytes))
    serials = fund_devices(consortium, per_device)
    loads = build_loads(consortium, serials, per_device, policy, batch_size)
    reader = ClearhouseChain(w3, deployment, consortium.member("cc").eth_private_key())  # views only
    first_block = w3.eth.block_number
    pids = {"bench client": os.getpid(), **{name: p.pid for name, p in processes.running.items()}}
    pids.update({"anvil": anvil_pid} if anvil_pid else {})
    cpu_before, started = cpu_seconds(pids), time.perf_counter()
    intake_s = upload_all(consortium, loads)
    settled = wait_settled(reader, dict(zip(serials, per_device)), timeout_s=max(60.0, logs / 50),
                           processes=processes)
    end_to_end_s = time.perf_counter() - started
    confirmations = finality_tracker(type("S", (), {"confirmations": None})(), w3).policy.confirmations
    wait_final(reader, first_block, confirmations, timeout_s=60.0 + 10 * confirmations)
    to_final_s = time.perf_counter() - started
    cpu_s = cpu_delta(cpu_before, cpu_seconds(pids))
    txs, gas = settle_gas(reader, first_block)
    return PipelineResult(logs=logs, devices=devices, batch_size=batch_size, uploads=sum(len(x.bodies) for x in loads),
                          intake_s=intake_s, end_to_end_s=end_to_end_s, settled_logs=settled, settle_txs=txs,
                          settle_gas=gas, cpu_s=cpu_s, to_final_s=to_final_s, confirmations=confirmations,
                          chain="clique" if network is not None else "anvil",
                          period_s=network.period_s if network is not None else 0, load=load)


def render(result: PipelineResult, console: Console) -> None:
    data = result.to_json()
    chain = "anvil" if result.chain == "anvil" else f"{result.chain}, 4 signers, period {result.period_s} s"
    table = Table(title=f"Pipeline on {chain}: {result.logs:,} usage logs, {result.devices} devices, "
                        f"{result.uploads} uploads of <= {result.batch_size}", title_justify="left")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("SP intake (logs acknowledged / s)", f"{data['sp_intake_per_s']:,.0f}  ({result.intake_s:.2f} s)")
    table.add_row("end to end (first upload -> settled on chain) / s",
                  f"{data['end_to_end_per_s']:,.0f}  ({result.end_to_end_s:.2f} s)")
    table.add_row(f"first upload -> final ({result.confirmations} confirmations)", f"{result.to_final_s:.2f} s")
    table.add_row("logs settled on chain", f"{result.settled_logs:,}")
    table.add_row("settle transactions", str(result.settle_txs))
    table.add_row("settle gas (total / per log)", f"{result.settle_gas:,} / {data['gas_per_log']:,.0f}")
    for name, seconds in sorted(result.cpu_s.items(), key=lambda item: -item[1]):
        table.add_row(f"CPU s in the timed window: {name}", f"{seconds:.2f}")
    for name, value in result.load.items():
        table.add_row(f"loaded database: {name}", f"{value:,}" if isinstance(value, int) else str(value))
    console.print(table)


LOADED_TOLERANCE = 0.10  # the loaded run's throughput must stay within 10% of the empty run's (issue 9 item 7)


def _measure_on_anvil(workdir: Path, **kwargs: Any) -> PipelineResult:
    """One measurement on a fresh anvil and a fresh consortium under `workdir`; stops everything it started."""
    from offchain.chain import start_anvil

    workdir.mkdir(parents=True, exist_ok=True)
    processes = Processes(workdir)
    with start_anvil(hardfork="paris") as node:
        try:
            # AnvilProcess has no public pid; the private handle is read only for CPU accounting.
            return measure(workdir, processes, node.url, anvil_pid=node._proc.pid if node._proc else None, **kwargs)
        finally:
            processes.stop_all()


def loaded_vs_empty(empty: PipelineResult, loaded: PipelineResult) -> dict[str, Any]:
    """Throughput of the loaded run relative to the empty run, and whether both are within LOADED_TOLERANCE."""
    intake = (loaded.logs / loaded.intake_s) / (empty.logs / empty.intake_s)
    end_to_end = (loaded.logs / loaded.end_to_end_s) / (empty.logs / empty.end_to_end_s)
    return {"sp_intake": round(intake, 3), "end_to_end": round(end_to_end, 3),
            "within_10pct": all(ratio >= 1 - LOADED_TOLERANCE for ratio in (intake, end_to_end))}


def run(out_path: str = "bench/results/pipeline.json", logs: int = DEFAULT_LOGS, devices: int = DEFAULT_DEVICES,
        batch_size: int = DEFAULT_BATCH_SIZE, workdir: Path | None = None,
        console: Console | None = None, history_logs: int = 0, catalog_items: int = 0, large_containers: int = 3,
        large_container_bytes: int = 16 * 1024 * 1024) -> PipelineResult:
    """Start anvil and the services, measure, stop everything, print the table and write `out_path`. With
    `history_logs` or `catalog_items`, the same load runs again on a fresh chain and consortium whose CC database
    holds `history_logs` settled usage logs and whose SP offers `catalog_items` more titles (`large_containers` of
    `large_container_bytes`); the JSON adds that run (`loaded`) and its ratio to the empty run."""
    console = console or Console()
    workdir = Path(workdir) if workdir else ROOT / "var" / f"bench-pipeline-{time.strftime('%Y%m%d-%H%M%S')}"
    workdir.mkdir(parents=True, exist_ok=True)
    load = dict(logs=logs, devices=devices, batch_size=batch_size)
    result = _measure_on_anvil(workdir, **load)
    render(result, console)
    report = result.to_json()
    if history_logs or catalog_items:
        loaded = _measure_on_anvil(workdir / "loaded", **load, history_logs=history_logs,
                                   catalog_items=catalog_items, large_containers=large_containers,
                                   large_container_bytes=large_container_bytes)
        render(loaded, console)
        report["loaded"] = loaded.to_json()
        report["loaded_vs_empty"] = loaded_vs_empty(result, loaded)
        console.print(f"loaded ({loaded.load}) vs empty database: {report['loaded_vs_empty']}")
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    return result


def run_clique(out_path: str = "bench/results/pipeline-clique.json", logs: int = DEFAULT_LOGS,
               devices: int = DEFAULT_DEVICES, batch_size: int = DEFAULT_BATCH_SIZE, periods: Sequence[int] = (1, 2),
               workdir: Path | None = None, console: Console | None = None) -> dict[str, Any]:
    """The same load on anvil and on a four-signer Clique network per block period (a fresh network and
    consortium each); prints the tables and writes `out_path` with every figure and the ratio to anvil."""
    from offchain.chain import start_anvil
    from offchain.chain.network import CliqueNetwork

    console = console or Console()
    workdir = Path(workdir) if workdir else ROOT / "var" / f"bench-pipeline-clique-{time.strftime('%Y%m%d-%H%M%S')}"
    workdir.mkdir(parents=True, exist_ok=True)
    results: dict[str, PipelineResult] = {}
    processes = Processes(workdir / "anvil")
    (workdir / "anvil").mkdir(exist_ok=True)
    with start_anvil(hardfork="paris") as node:
        try:
            results["anvil"] = measure(workdir / "anvil", processes, node.url, logs=logs, devices=devices,
                                       batch_size=batch_size)
        finally:
            processes.stop_all()
    for period in periods:
        name = f"clique_{period}s"
        run_dir = workdir / name
        run_dir.mkdir(exist_ok=True)
        net = CliqueNetwork(run_dir / "network", signers=4, period_s=period, seed=b"clearhouse-bench",
                            progress=lambda message: console.print(f"  [dim]{message}"))
        processes = Processes(run_dir)
        try:
            net.up()
            results[name] = measure(run_dir, processes, net.rpc_urls[0], logs=logs, devices=devices,
                                    batch_size=batch_size, network=net)
        finally:
            processes.stop_all()
            net.down()
    anvil_rate = results["anvil"].logs / results["anvil"].end_to_end_s
    report: dict[str, Any] = {name: r.to_json() for name, r in results.items()}
    report["vs_anvil_end_to_end"] = {name: round(r.logs / r.end_to_end_s / anvil_rate, 3)
                                     for name, r in results.items() if name != "anvil"}
    for result in results.values():
        render(result, console)
    console.print(f"end-to-end throughput vs anvil: {report['vs_anvil_end_to_end']}")
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    return report


__all__ = ["run", "run_clique", "measure", "PipelineResult", "signed_bodies", "split_logs"]
