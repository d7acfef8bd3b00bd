"""`clearhouse sim`: per seed a fresh consortium (anvil with --state, CC, SP and bank as `clearhouse serve`
processes, every hop through the fault proxy), the seed's workload and fault plan, a heal, quiescence, and the
independent checker plus `clearhouse reconcile`.

A failing seed keeps its folder (timeline, plan, service logs, databases, wallets, anvil state) and prints the
command that replays it; a passing seed's folder is removed unless --keep. Dev chains only (anvil_setBalance,
unencrypted keys under the workdir). Everything it starts, it stops.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from offchain.operator.sim.checker import Violation, World, check
from offchain.operator.sim.plan import CHAIN_LINKS, DEVICES, NETWORK_FAULT_KINDS, USERS, Fault, Plan, make_plan
from offchain.operator.sim.proxy import FaultProxy, LinkTls
from offchain.operator.sim.workload import CONTENT_PRICES, Timeline, Workload, open_device, open_work

ROOT = Path(__file__).resolve().parents[3]
PASSPHRASE = "clearhouse-sim"
READY_TIMEOUT_S = 40.0
SERVICES = ("cc", "sp", "bank")
POLL_S = 0.3


@dataclass
class SeedResult:
    seed: int
    violations: list[Violation]
    faults: int
    duration_s: float
    workdir: Path
    quiescent: bool
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations


# --- processes -----------------------------------------------------------------------------------------------------
class Node:
    """anvil on a fixed port with `--state`: a graceful stop dumps the chain (not the mempool), start loads it."""

    def __init__(self, workdir: Path, port: int) -> None:
        from offchain.chain import anvil_binary

        self.port, self.url = port, f"http://127.0.0.1:{port}"
        self.state = workdir / "anvil-state.json"
        self.args = [anvil_binary(), "--port", str(port), "--hardfork", "paris", "--silent", "--state",
                     str(self.state)]
        self.log = workdir / "anvil.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        _wait(lambda: self._answers(), READY_TIMEOUT_S, "anvil")

    def _answers(self) -> bool:
        try:
            self.rpc("eth_chainId", [])
            return True
        except OSError:
            return False

    def rpc(self, method: str, params: list[Any]) -> Any:
        import urllib.request

        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()
        request = urllib.request.Request(self.url, data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read()).get("result")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # anvil writes --state on a graceful exit
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


class Services:
    """CC, SP and bank as `python -m offchain.cli serve` processes: start, kill, pause, resume."""

    def __init__(self, workdir: Path, settings_paths: dict[str, Path], probe: Any) -> None:
        self.workdir = workdir
        self.settings = settings_paths
        self.probe = probe  # name -> callable answering True when the service answers over mTLS
        self.running: dict[str, subprocess.Popen[bytes]] = {}
        self.paused: set[str] = set()

    def start(self, name: str, env: dict[str, str] | None = None, wait: bool = True) -> None:
        with open(self.workdir / f"{name}.log", "ab") as log:
            command = [sys.executable, "-m", "offchain.cli", "serve", name, "--config", str(self.settings[name])]
            self.running[name] = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                                  env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                                                  start_new_session=True)
        if wait:
            _wait(lambda: self.probe(name) or self.running[name].poll() is not None, READY_TIMEOUT_S, name)
            if self.running[name].poll() is not None:  # a service that cannot start is the harness's failure
                tail = (self.workdir / f"{name}.log").read_text(errors="replace")[-600:]
                raise RuntimeError(f"the {name} service exited with {self.running[name].returncode}: {tail}")

    def alive(self, name: str) -> bool:
        return name in self.running and self.running[name].poll() is None

    def kill(self, name: str) -> None:
        self.resume(name)
        if self.alive(name):
            self.running[name].kill()
        if name in self.running:
            self.running[name].wait(10)

    def pause(self, name: str) -> None:
        if self.alive(name):
            self.running[name].send_signal(signal.SIGSTOP)
            self.paused.add(name)

    def resume(self, name: str) -> None:
        if name in self.paused and self.alive(name):
            self.running[name].send_signal(signal.SIGCONT)
        self.paused.discard(name)

    def ensure_all(self) -> list[str]:
        restarted = []
        for name in SERVICES:
            self.resume(name)
            if not self.alive(name):
                self.start(name)
                restarted.append(name)
        return restarted

    def stop_all(self) -> None:
        for name in list(self.running):
            self.resume(name)
            if self.alive(name):
                self.running[name].send_signal(signal.SIGTERM)
        for name, process in list(self.running.items()):
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.running.clear()


def _wait(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise TimeoutError(f"{what} did not come up within {timeout_s:.0f} s")


# --- one consortium ------------------------------------------------------------------------------------------------
class Consortium:
    """Everything one seed runs: node, proxy, services, devices; `close` stops all of it."""

    def __init__(self, workdir: Path, network: str = "anvil", seed: int = 0) -> None:
        from offchain.operator.provision import free_port

        self.workdir = workdir
        self.network = network
        self.node: Any
        if network == "clique":  # four geth signer nodes in the seed's folder (offchain/operator/sim/clique.py)
            from offchain.operator.sim.clique import CliqueNode

            self.node = CliqueNode(workdir, seed)
        else:
            self.node = Node(workdir, free_port())
        self.proxy = FaultProxy()
        self.services: Services | None = None
        self.devices: dict[str, Any] = {}
        self.locks: dict[str, sqlite3.Connection] = {}
        self.consortium: Any = None

    def setup(self) -> None:
        self.node.start()
        self.consortium = self._provision()
        self._route_through_proxy()
        self.services = Services(self.workdir, self.consortium.settings_paths, self._answers)
        for name in SERVICES:
            self.services.start(name)

    def _provision(self) -> Any:
        from eth_account import Account
        from web3 import Web3

        from offchain.chain import deploy
        from offchain.core.messages import Role
        from offchain.operator.provision import MemberSpec, provision

        w3 = _web3(self.node.url)
        deployer, authority = Account.create(), Account.create()
        clique = self.network == "clique"
        fund = self.node.fund if clique else None
        for account in (deployer, authority):
            if clique:
                self.node.fund(account.address)
            else:
                w3.provider.make_request("anvil_setBalance", [account.address, hex(10**21)])  # type: ignore
        deployment = deploy(w3, bytes(deployer.key), authority.address, root=ROOT, network="sim")
        members = (MemberSpec("cc", Role.CLEARING_CENTER), MemberSpec("sp", Role.SERVICE_PROVIDER),
                   MemberSpec("bank", Role.BANK), MemberSpec("studio", Role.CONTENT_PROVIDER),
                   *(MemberSpec(d, Role.DEVICE, user_id=USERS[d]) for d in DEVICES))
        return provision(self.workdir / "consortium", w3, deployment, bytes(authority.key), members=members,
                         rpc_url=self.node.url, passphrase=PASSPHRASE, fast_kdf=True, fund=fund,
                         rpc_urls=self.node.rpc_urls if clique else ())

    def _tls(self, client: str, server: str) -> LinkTls:
        from offchain.trust import tls

        root = self.consortium.root_path
        s, c = self.consortium.member(server), self.consortium.member(client)
        return LinkTls(server=tls.server_ssl_context(s.cert_path, s.key_path, root),
                       client=tls.client_ssl_context(c.cert_path, c.key_path, root))

    def _route_through_proxy(self) -> None:
        """One proxy link per hop; the settings files then name the proxy's port instead of the peer's."""
        urls = self.consortium.urls
        port_of = {name: int(url.rsplit(":", 1)[1]) for name, url in urls.items()}
        hops = {"sp": {"cc_url": ("sp->cc", "sp", "cc")}, "cc": {"bank_url": ("cc->bank", "cc", "bank")},
                "bank": {"cc_url": ("bank->cc", "bank", "cc")}}
        hops.update({d: {"sp_url": (f"{d}->sp", d, "sp"), "cc_url": (f"{d}->cc", d, "cc")} for d in DEVICES})
        for owner, fields in hops.items():
            path = self.consortium.settings_paths[owner]
            data = json.loads(path.read_text())
            for key, (link, client, server) in fields.items():
                self.proxy.add(link, ("127.0.0.1", port_of[server]), tls=self._tls(client, server))
                data[key] = self.proxy.url(link)
            if owner in SERVICES:
                link = f"{owner}->chain"
                if self.network == "clique":  # its own node through the proxy first, every other node after it
                    own = self.node.port_for(owner)
                    self.proxy.add(link, ("127.0.0.1", own))
                    data["rpc_url"] = self.proxy.url(link, "http")
                    data["rpc_urls"] = [data["rpc_url"], *(u for u in self.node.rpc_urls
                                                           if int(u.rsplit(":", 1)[1]) != own)]
                else:
                    self.proxy.add(link, ("127.0.0.1", self.node.port))
                    data["rpc_url"] = self.proxy.url(link, "http")
            path.write_text(json.dumps(data, indent=2))

    def client(self, member_id: str, service: str, timeout_s: float = 10.0) -> Any:
        from offchain.operator.sim.compat import SyncJsonClient

        member = self.consortium.member(member_id)
        return SyncJsonClient(self.consortium.urls[service], str(member.cert_path), str(member.key_path),
                              str(self.consortium.root_path), timeout_s=timeout_s)

    def _answers(self, name: str) -> bool:
        try:
            self.client("bank", name, timeout_s=2.0).get("/openapi.json")
            return True
        except Exception:  # noqa: BLE001 - not up yet
            return False

    def publish(self) -> dict[str, tuple[bytes, int]]:
        from web3 import Web3

        from offchain.chain import ClearhouseChain, Deployment
        from offchain.content_provider.publisher import ContentProvider, content_id_for

        c = self.consortium
        w3 = _web3(self.node.url)
        studio = c.member("studio")
        provider = ContentProvider(studio.credentials(),
                                   ClearhouseChain(w3, Deployment.load(c.deployment_path), studio.eth_private_key()),
                                   self.client("studio", "sp"))
        payees = [(studio.eth_address, 7_000), (c.member("sp").eth_address, 2_000), (c.member("cc").eth_address, 1_000)]
        published = {}
        for name, price in CONTENT_PRICES.items():
            item = provider.publish(f"{name}\n".encode() * 32, content_id=content_id_for(name), version=1,
                                    price=price, payees=payees, title=name)
            published[name] = (item.content_id, item.version)
        return published

    def open_devices(self, contents: dict[str, tuple[bytes, int]]) -> None:
        for device in DEVICES:
            client = open_device(self.consortium.settings_paths[device], PASSPHRASE, USERS[device])
            for content_id, version in contents.values():
                client.download(content_id, version)
            self.devices[device] = client

    def db(self, name: str) -> Path:
        return self.consortium.member(name).directory / "service.db"

    def wallets(self) -> dict[str, tuple[str, Path]]:
        return {d: (self.consortium.member(d).eth_address, self.consortium.member(d).directory / "wallet.db")
                for d in DEVICES}

    def close(self) -> None:
        for connection in self.locks.values():
            connection.close()
        for device in self.devices.values():
            try:
                device.close()
            except Exception:  # noqa: BLE001 - closing anyway
                pass
        if self.services is not None:
            self.services.stop_all()
        self.proxy.close()
        self.node.stop()


def _web3(url: str) -> Any:
    """The harness's own Web3 (setup and publishing only), with the POA extraData middleware (Clique; harmless
    on anvil)."""
    from web3 import Web3
    from web3.middleware import ExtraDataToPOAMiddleware

    w3 = Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": 60}))
    w3.middleware_onion.inject(ExtraDataToPOAMiddleware, layer=0)
    return w3


# --- faults --------------------------------------------------------------------------------------------------------
class Injector:
    """Opens and closes the plan's faults on a consortium, and heals everything at the end."""

    def __init__(self, world: Consortium, timeline: Timeline) -> None:
        self.world = world
        self.timeline = timeline
        self.open: list[Fault] = []

    def open_fault(self, fault: Fault) -> None:
        w, services = self.world, self.world.services
        assert services is not None
        note = ""
        if fault.kind in NETWORK_FAULT_KINDS:
            w.node.open_fault(fault)
            note = w.node.note
        elif fault.kind == "kill" and fault.mode == "while_pending":
            w.node.rpc("evm_setAutomine", [False])  # what the CC sends now stays pending until the kill
        elif fault.kind == "kill":
            services.kill(fault.target)
            if fault.mode:  # restarted at once, armed to die at the crash point while an outbox row is pending
                services.start(fault.target, env={"CLEARHOUSE_CRASH_AT": fault.mode}, wait=False)
        elif fault.kind == "pause":
            services.pause(fault.target)
        elif fault.kind == "stall":
            w.node.rpc("evm_setAutomine", [False])
        elif fault.kind == "restart-node":
            w.node.stop()
            w.node.start()
        elif fault.kind == "link":
            w.proxy.set_mode(fault.target, fault.mode, delay_s=0.5)
        elif fault.kind == "disk":
            connection = sqlite3.connect(w.db(fault.target), timeout=1, isolation_level=None)
            connection.execute("BEGIN EXCLUSIVE")
            w.locks[fault.target] = connection
        elif fault.kind == "dup":
            w.proxy.once(fault.target, "dup", fault.mode)
        self.timeline.add("fault", f"open {fault}", **({"chain": note} if note else {}))
        if fault.end != fault.start:
            self.open.append(fault)

    def close_fault(self, fault: Fault) -> None:
        w, services = self.world, self.world.services
        assert services is not None
        note = ""
        if fault.kind in NETWORK_FAULT_KINDS:
            w.node.close_fault(fault)
            note = w.node.note
        elif fault.kind == "kill":
            services.kill(fault.target)
            if fault.mode == "while_pending":
                w.node.rpc("evm_setAutomine", [True])
                w.node.rpc("evm_mine", [])
            services.start(fault.target)
        elif fault.kind == "pause":
            services.resume(fault.target)
        elif fault.kind == "stall":
            w.node.rpc("evm_setAutomine", [True])
            w.node.rpc("evm_mine", [])
        elif fault.kind == "link":
            w.proxy.set_mode(fault.target, "pass")
        elif fault.kind == "disk":
            connection = w.locks.pop(fault.target, None)
            if connection is not None:
                connection.rollback() if connection.in_transaction else None
                connection.close()
        self.timeline.add("fault", f"close {fault}", **({"chain": note} if note else {}))
        if fault in self.open:
            self.open.remove(fault)

    def heal(self) -> None:
        for fault in list(self.open):
            self.close_fault(fault)
        self.world.proxy.heal()
        if self.world.network == "clique":
            self.world.node.heal()
        else:
            self.world.node.rpc("evm_setAutomine", [True])
        assert self.world.services is not None
        restarted = self.world.services.ensure_all()
        self.timeline.add("heal", "all faults closed", restarted=restarted)


# --- one seed ------------------------------------------------------------------------------------------------------
def run_seed(plan: Plan, workdir: Path, *, quiesce_s: float = 90.0, keep: bool = False,
             echo: Any = print) -> SeedResult:
    started = time.monotonic()
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    (workdir / "plan.txt").write_text(plan.describe() + "\n")
    timeline = Timeline()
    world = Consortium(workdir, plan.network, plan.seed)
    violations: list[Violation] = []
    quiescent, notes = False, []
    try:
        world.setup()
        contents = world.publish()
        if world.network == "clique":  # the devices check the content's on-chain owner: let publishing be final
            from offchain.operator.sim.clique import confirmations_of

            head = world.node.net.head(0)[0]
            world.node.wait_final(head, confirmations_of(world.consortium.settings_paths["cc"]))
        world.open_devices(contents)
        workload = Workload(plan, bank=world.client("bank", "bank"), devices=world.devices, contents=contents,
                            timeline=timeline)
        injector = Injector(world, timeline)
        for step in plan.steps:
            for fault in plan.closing_at(step.index):
                injector.close_fault(fault)
            for fault in plan.opening_at(step.index):
                injector.open_fault(fault)
            workload.run_step(step)
        injector.heal()
        quiescent, notes = _quiesce(world, workload, timeline, quiesce_s)
        if world.network == "clique":
            _wait_final(world, timeline)
        violations = _check(world, workload)
    except Exception as exc:  # noqa: BLE001 - the harness itself failed: report it as a violation of the run
        violations.append(Violation("harness", f"{type(exc).__name__}: {exc}"))
    finally:
        (workdir / "timeline.json").write_text(json.dumps(timeline.entries, indent=1, default=str))
        world.close()
    result = SeedResult(plan.seed, violations, len(plan.faults), time.monotonic() - started, workdir, quiescent,
                        notes)
    (workdir / "result.json").write_text(json.dumps({"seed": plan.seed, "ok": result.ok, "quiescent": quiescent,
                                                     "notes": notes, "violations": [str(v) for v in violations]},
                                                    indent=1))
    if result.ok and not keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def _quiesce(world: Consortium, workload: Workload, timeline: Timeline, budget_s: float) -> tuple[bool, list[str]]:
    """Retry what must be retried and wait until nothing is in flight and nothing is accrued on chain."""
    deadline = time.monotonic() + budget_s
    wallets = [path for _address, path in world.wallets().values()]
    last: list[str] = []
    while time.monotonic() < deadline:
        failures = workload.drain_round()
        work = open_work(world.db("cc"), world.db("sp"), wallets)
        if world.network == "clique":  # included is not enough: the CC follows each transaction to its depth
            work["cc transactions not final"] = _count_sql(
                world.db("cc"), "SELECT COUNT(*) FROM cc_chain_txs WHERE state IN ('pending', 'included', 'reorged')")
        accrued = _accrued(world)
        if not failures and not any(work.values()) and accrued == 0:
            timeline.add("quiescent", "nothing in flight")
            return True, []
        last = failures + [f"{k}: {v}" for k, v in work.items() if v] + ([f"accrued on chain: {accrued}"]
                                                                           if accrued else [])
        time.sleep(POLL_S)
    timeline.add("quiescent", "budget exhausted", "failed", left=last)
    return False, last


def _count_sql(path: Path, sql: str) -> int:
    if not path.exists():
        return 0
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        return int(connection.execute(sql).fetchone()[0])
    except sqlite3.OperationalError:
        return 0
    finally:
        connection.close()


def _wait_final(world: Consortium, timeline: Timeline) -> None:
    """Clique: the checker reads the chain only once the last Clearhouse event is at the services' depth on
    every node (one chain), so what it sees cannot be undone by a fork the agents would call final."""
    from offchain.operator.sim.checker import RawChain
    from offchain.operator.sim.clique import confirmations_of

    chain = RawChain(world.node.url, world.consortium.deployment_path)
    last = max((event["block"] for event in chain.logs()), default=chain.deploy_block)
    depth = confirmations_of(world.consortium.settings_paths["cc"])
    head = world.node.wait_final(last, depth)
    timeline.add("final", f"last event in block {last}, every node at {head} (depth {depth}) on one chain")


def _accrued(world: Consortium) -> int:
    from offchain.operator.sim.checker import RawChain

    chain = RawChain(world.node.url, world.consortium.deployment_path)
    total = 0
    for event in chain.logs():
        if event["event"] == "PolicyRegistered":
            policy = chain.call("policy", bytes(event["policyId"]))
            total += int(policy[5]) - int(policy[6])
    return total


def _check(world: Consortium, workload: Workload) -> list[Violation]:
    c = world.consortium
    reconcile = subprocess.run(
        [sys.executable, "-m", "offchain.cli", "reconcile", "--rpc", world.node.url, "--deployment",
         str(c.deployment_path), "--cc-config", str(c.settings_paths["cc"]), "--bank-config",
         str(c.settings_paths["bank"])], cwd=ROOT, capture_output=True, text=True, timeout=120)
    (world.workdir / "reconcile.txt").write_text(reconcile.stdout + reconcile.stderr)
    dup = [m for link in world.proxy.stats().values() for m in link.dup_mismatches]
    dup_count = sum(link.duplicated for link in world.proxy.stats().values())
    world_view = World(rpc_url=world.node.url, deployment_path=c.deployment_path, cc_db=world.db("cc"),
                       sp_db=world.db("sp"), bank_db=world.db("bank"), wallets=world.wallets(),
                       deposits=dict(workload.deposits), dup_mismatches=dup,
                       reconcile=(reconcile.returncode, reconcile.stdout + reconcile.stderr))
    (world.workdir / "proxy.json").write_text(json.dumps({"duplicated": dup_count, "events": world.proxy.events},
                                                         indent=1))
    return check(world_view)


# --- the command ---------------------------------------------------------------------------------------------------
def replay_command(seed: int, faults: tuple[str, ...], network: str = "anvil", steps: int = 24) -> str:
    on = f" --network {network}" if network != "anvil" else ""
    length = f" --steps {steps}" if steps != 24 else ""
    return f"clearhouse sim{on} --seeds {seed} --faults {','.join(faults) or 'none'}{length} --keep"


def main_sim(seeds: list[int], faults: tuple[str, ...], *, budget_s: float | None = None,
             workdir: Path | None = None, keep: bool = False, steps: int = 24, quiesce_s: float = 90.0,
             network: str = "anvil", echo: Any = print) -> int:
    """Run every seed (until `budget_s` is spent); 0 when no seed broke an invariant, 1 otherwise."""
    base = workdir or ROOT / "var" / "sim"
    started = time.monotonic()
    results: list[SeedResult] = []
    for seed in seeds:
        if budget_s is not None and results and time.monotonic() - started > budget_s:
            echo(f"budget of {budget_s:.0f} s spent: stopping before seed {seed}")
            break
        plan = make_plan(seed, faults, steps=steps, network=network)
        echo(plan.describe().splitlines()[0] + "".join("\n  " + str(f) for f in plan.faults))
        result = run_seed(plan, base / f"seed-{seed}", quiesce_s=quiesce_s, keep=keep, echo=echo)
        results.append(result)
        status = "ok" if result.ok else f"FAILED ({len(result.violations)} violations)"
        echo(f"seed {seed}: {status} in {result.duration_s:.1f} s")
        for violation in result.violations[:20]:
            echo(f"    {violation}")
        if not result.ok:
            echo(f"    kept {result.workdir}; replay: {replay_command(seed, faults, network, steps)}")
    broken = [r for r in results if not r.ok]
    summary = {"network": network, "seeds": len(results), "faults_injected": sum(r.faults for r in results),
               "seeds_failed": [r.seed for r in broken],
               "invariants_broken": sorted({v.invariant for r in broken for v in r.violations}),
               "duration_s": round(time.monotonic() - started, 1)}
    base.mkdir(parents=True, exist_ok=True)
    (base / "last-run.json").write_text(json.dumps(summary, indent=1))
    echo(json.dumps(summary))
    return 1 if broken else 0


__all__ = ["main_sim", "run_seed", "SeedResult", "replay_command"]
