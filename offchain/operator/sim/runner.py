"""`clearhouse sim`: per seed a fresh consortium (anvil with --state, CC, SP and bank as `clearhouse serve`
processes, every hop through the fault proxy), the seed's workload and fault plan, a heal, quiescence, and the
independent checker plus `clearhouse reconcile`.

A failing seed keeps its folder (timeline, plan, service logs, databases, wallets, anvil state) and prints the
command that replays it; a passing seed's folder is removed unless --keep. Dev chains only (anvil_setBalance,
unencrypted keys under the workdir). Everything it starts, it stops.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from offchain.operator.sim import zygote
from offchain.operator.sim.checker import Violation, World, check
from offchain.operator.sim.plan import (CHAIN_LINKS, DEVICES, NETWORK_FAULT_KINDS, USERS, Fault, Plan, make_plan,
                                        parse_seeds)
from offchain.operator.sim.proxy import FaultProxy, LinkTls
from offchain.operator.sim.workload import CONTENT_PRICES, Timeline, Workload, open_device, open_work

ROOT = Path(__file__).resolve().parents[3]
PASSPHRASE = "clearhouse-sim"
READY_TIMEOUT_S = 40.0
SERVICES = ("cc", "sp", "bank")
POLL_S = 0.3
# The workers' rounds in the sim (provisioning's are settle 0.5 s, transfer 2 s, forward 1 s): a seed's payouts
# and forwards then land within a second of the heal instead of waiting out a 2 s transfer round.
WORKER_INTERVALS = {"cc": {"settle_interval_s": 0.5, "transfer_interval_s": 0.5}, "sp": {"forward_interval_s": 0.5}}


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


# --- ports ---------------------------------------------------------------------------------------------------------
_handed_out: set[int] = set()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def sim_port() -> int:
    """A free listening port below the kernel's ephemeral range (Linux: 32768-60999). A port from the ephemeral
    range (what binding port 0 returns) can be taken by any process's outgoing connection between the pick and
    the service's bind, or while a killed service, a stopped anvil or a refusing proxy link is down: with seeds
    side by side that made about one seed in twelve fail to start. Ports below it are only ever taken by
    listeners; this process never hands one out twice. Falls back to port 0's answer if there is no such range."""
    import random
    import socket

    low = _ephemeral_low()
    if low > 12_000:
        rng = random.SystemRandom()
        for _ in range(500):
            port = rng.randrange(10_000, low)
            if port in _handed_out:
                continue
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    continue
            _handed_out.add(port)
            return port
    from offchain.operator.provision import free_port

    return free_port()


# --- processes -----------------------------------------------------------------------------------------------------
class Node:
    """anvil on a fixed port with `--state`: a graceful stop dumps the chain (not the mempool), start loads it."""

    def __init__(self, workdir: Path, port: int) -> None:
        from offchain.chain import anvil_binary, anvil_storage_args

        self.port, self.url = port, f"http://127.0.0.1:{port}"
        self.state = workdir / "anvil-state.json"
        self.args = [anvil_binary(), "--port", str(port), "--hardfork", "paris", "--silent", "--state",
                     str(self.state), *anvil_storage_args(workdir / "anvil-spill")]
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
        """A new `clearhouse serve <name>` process (forked from the run's template, `sim/zygote.py`)."""
        self.running[name] = zygote.spawn(["serve", name, "--config", str(self.settings[name])],
                                          log_path=self.workdir / f"{name}.log", cwd=ROOT, env=env)
        if wait:
            self.wait_ready(name)

    def wait_ready(self, name: str) -> None:
        _wait(lambda: self.probe(name) or self.running[name].poll() is not None, READY_TIMEOUT_S, name)
        if self.running[name].poll() is not None:  # a service that cannot start is the harness's failure
            tail = (self.workdir / f"{name}.log").read_text(errors="replace")[-600:]
            raise RuntimeError(f"the {name} service exited with {self.running[name].returncode}: {tail}")

    def start_all(self) -> None:
        """CC, SP and bank started together (none needs another to start), then each waited for."""
        for name in SERVICES:
            self.start(name, wait=False)
        for name in SERVICES:
            self.wait_ready(name)

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


# --- the services' disks -------------------------------------------------------------------------------------------
DISK_BYTES = 8 * 1024 * 1024  # each service's database filesystem; a seed's database stays far below it
_can_mount: bool | None = None


class Disk:
    """A small size-limited filesystem (tmpfs) holding one service's database directory, so that the `disk fill`
    fault fills the very filesystem the service writes to: SQLite answers SQLITE_FULL ("database or disk is
    full"), as on a real full disk. Needs the right to mount (root here); without it `available()` is False and
    the fault falls back to the lock. `unmount` keeps the files: they are copied out first and put back."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.mounted = False
        self.ballast = path / "ballast.fill"

    @staticmethod
    def available() -> bool:
        global _can_mount
        if _can_mount is None:
            probe = Path(tempfile.mkdtemp(prefix="clearhouse-sim-mount-"))
            _can_mount = _mount(probe, 64 * 1024)
            if _can_mount:
                _umount(probe)
            probe.rmdir()
        return _can_mount

    def mount(self) -> bool:
        self.path.mkdir(parents=True, exist_ok=True)
        self.mounted = _mount(self.path, DISK_BYTES)
        return self.mounted

    def fill(self) -> int:
        """Write a ballast file until the filesystem refuses (ENOSPC); the bytes written."""
        fd = os.open(self.ballast, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        written, chunk = 0, b"\0" * (1 << 20)
        try:
            while chunk:
                try:
                    written += os.write(fd, chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    chunk = chunk[: len(chunk) // 2] if len(chunk) > 512 else b""
        finally:
            os.close(fd)
        return written

    def free(self) -> None:
        self.ballast.unlink(missing_ok=True)

    def free_bytes(self) -> int:
        stat = os.statvfs(self.path)
        return stat.f_bavail * stat.f_frsize

    def unmount(self) -> None:
        if not self.mounted:
            return
        self.free()
        keep = Path(tempfile.mkdtemp(prefix="clearhouse-sim-disk-"))
        try:
            shutil.copytree(self.path, keep / "files", symlinks=True)
            _umount(self.path)
            self.mounted = False
            shutil.copytree(keep / "files", self.path, symlinks=True, dirs_exist_ok=True)
        finally:
            shutil.rmtree(keep, ignore_errors=True)


def _mount(path: Path, size_bytes: int) -> bool:
    if not sys.platform.startswith("linux") or shutil.which("mount") is None:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes},mode=0700", "tmpfs", str(path)],
                          capture_output=True, timeout=30)
    return done.returncode == 0


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


def unmount_under(root: Path) -> None:
    """Unmount what a crashed earlier run left mounted under `root` (before its folder is removed)."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return
    prefix = str(root.resolve()) + "/"
    for line in mounts:
        parts = line.split()
        if len(parts) > 1 and parts[1].startswith(prefix):
            _umount(Path(parts[1]))


# --- PostgreSQL (`--db postgres`) ----------------------------------------------------------------------------------
class PgDatabases:
    """One fresh database per service and seed on the PostgreSQL server at `admin_url` (created empty, the
    services migrate it at start), dropped again when the seed passes; a failing seed keeps them and names them
    in `databases.json`. The `disk lock` fault takes an ACCESS EXCLUSIVE lock on every table of one of them."""

    def __init__(self, admin_url: str, seed: int) -> None:
        self.admin_url = admin_url
        self.prefix = f"clearhouse_sim_{seed}_{os.getpid()}_{int(time.time() * 1000) % 10**8}"
        self.urls: dict[str, str] = {}

    def _connect(self, database: str | None = None) -> Any:
        import psycopg2

        base = "postgresql://" + self.admin_url.split("://", 1)[1]
        if database is not None:
            base = base.rsplit("/", 1)[0] + "/" + database
        connection = psycopg2.connect(base, connect_timeout=30)
        return connection

    def create(self, name: str) -> str:
        database = f"{self.prefix}_{name}"
        connection = self._connect()
        try:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{database}"')
        finally:
            connection.close()
        url = self.admin_url.rsplit("/", 1)[0] + "/" + database
        self.urls[name] = url if "+psycopg2" in url else url.replace("postgresql://", "postgresql+psycopg2://", 1)
        return self.urls[name]

    def lock(self, name: str) -> Any:
        connection = self._connect(self.urls[name].rsplit("/", 1)[1])
        with connection.cursor() as cursor:
            cursor.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            tables = [row[0] for row in cursor.fetchall()]
            if tables:
                cursor.execute("LOCK TABLE " + ", ".join(f'"{t}"' for t in tables) + " IN ACCESS EXCLUSIVE MODE")
        return connection  # the transaction stays open: rollback() and close() release the lock

    def drop_all(self) -> None:
        connection = self._connect()
        try:
            connection.autocommit = True
            with connection.cursor() as cursor:
                for url in self.urls.values():
                    cursor.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
        finally:
            connection.close()


# --- one consortium ------------------------------------------------------------------------------------------------
class Consortium:
    """Everything one seed runs: node, proxy, services, devices; `close` stops all of it."""

    def __init__(self, workdir: Path, network: str = "anvil", seed: int = 0, pg_url: str | None = None) -> None:
        self.workdir = workdir
        self.network = network
        self.seed = seed
        self.pg = PgDatabases(pg_url, seed) if pg_url else None  # `--db postgres`: one fresh database per service
        self.node: Any
        if network == "clique":  # four geth signer nodes in the seed's folder (offchain/operator/sim/clique.py)
            from offchain.operator.sim.clique import CliqueNode

            self.node = CliqueNode(workdir, seed)
        else:
            self.node = Node(workdir, sim_port())
        self.proxy = FaultProxy()
        self.services: Services | None = None
        self.devices: dict[str, Any] = {}
        self.locks: dict[str, Any] = {}  # service -> the connection holding its database locked (disk lock)
        self.disks: dict[str, Disk] = {}  # service -> the tmpfs its database lives on (when mounting is possible)
        self.consortium: Any = None

    def setup(self) -> None:
        self.node.start()
        self.consortium = self._provision()
        self._place_ports()
        self._place_databases()
        self._route_through_proxy()
        self.services = Services(self.workdir, self.consortium.settings_paths, self._answers)
        self.services.start_all()

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

    def _place_ports(self) -> None:
        """Each service's listening and ops ports from `sim_port` (provisioning picks them in the ephemeral range)."""
        for name in SERVICES:
            path = self.consortium.settings_paths[name]
            data = json.loads(path.read_text())
            data["port"] = sim_port()
            if "metrics_port" in data:
                data["metrics_port"] = sim_port()
                self.consortium.metrics_urls[name] = f"http://127.0.0.1:{data['metrics_port']}"
            self.consortium.urls[name] = f"https://127.0.0.1:{data['port']}"
            path.write_text(json.dumps(data, indent=2))

    def _place_databases(self) -> None:
        """Each service's database on its own small filesystem (`Disk`), when this machine lets us mount one; or,
        with `--db postgres`, in a database of its own created for this seed on the given server."""
        if self.pg is not None:
            for name in SERVICES:
                path = self.consortium.settings_paths[name]
                data = json.loads(path.read_text())
                data["database_url"] = self.pg.create(name)
                path.write_text(json.dumps(data, indent=2))
            return
        if not Disk.available():
            return
        for name in SERVICES:
            disk = Disk(self.workdir / f"disk-{name}")
            if not disk.mount():
                continue
            self.disks[name] = disk
            path = self.consortium.settings_paths[name]
            data = json.loads(path.read_text())
            data["database_url"] = f"sqlite:///{disk.path / 'service.db'}"
            path.write_text(json.dumps(data, indent=2))

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
                self.proxy.add(link, ("127.0.0.1", port_of[server]), port=sim_port(), tls=self._tls(client, server))
                data[key] = self.proxy.url(link)
            data.update(WORKER_INTERVALS.get(owner, {}))
            if owner in SERVICES:
                link = f"{owner}->chain"
                if self.network == "clique":  # its own node through the proxy first, every other node after it
                    own = self.node.port_for(owner)
                    self.proxy.add(link, ("127.0.0.1", own), port=sim_port())
                    data["rpc_url"] = self.proxy.url(link, "http")
                    data["rpc_urls"] = [data["rpc_url"], *(u for u in self.node.rpc_urls
                                                           if int(u.rsplit(":", 1)[1]) != own)]
                else:
                    self.proxy.add(link, ("127.0.0.1", self.node.port), port=sim_port())
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

    def db(self, name: str) -> Any:
        """Where the checker reads service `name`: its SQLite file, or its PostgreSQL URL."""
        if self.pg is not None:
            return self.pg.urls[name]
        if name in self.disks:
            return self.disks[name].path / "service.db"
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
        for disk in self.disks.values():
            disk.unmount()


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
        elif fault.kind == "disk" and fault.mode == "fill" and fault.target in w.disks:
            disk = w.disks[fault.target]
            written = disk.fill()
            note = f"filled with {written} bytes, {disk.free_bytes()} bytes free"
            w.proxy.events.append(("fault", "open disk fill", fault.target))
        elif fault.kind == "disk":  # a lock (or a fill where no size-limited filesystem could be mounted)
            if fault.mode == "fill":
                note = ("a shared PostgreSQL server's disk is not the sim's to fill: locked instead" if w.pg else
                        "no size-limited filesystem could be mounted here: locked instead")
            if w.pg is not None:
                w.locks[fault.target] = w.pg.lock(fault.target)
            else:
                connection = sqlite3.connect(w.db(fault.target), timeout=1, isolation_level=None)
                connection.execute("BEGIN EXCLUSIVE")
                w.locks[fault.target] = connection
        elif fault.kind == "dup":
            w.proxy.once(fault.target, "dup", fault.mode)
        key = "chain" if fault.kind in NETWORK_FAULT_KINDS else "detail"
        self.timeline.add("fault", f"open {fault}", **({key: note} if note else {}))
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
                connection.rollback()
                connection.close()
            elif fault.target in w.disks:
                w.disks[fault.target].free()
                w.proxy.events.append(("fault", "close disk fill", fault.target))
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
def run_seed(plan: Plan, workdir: Path, *, quiesce_s: float = 90.0, keep: bool = False, pg_url: str | None = None,
             echo: Any = print) -> SeedResult:
    started = time.monotonic()
    if workdir.exists():
        unmount_under(workdir)
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    (workdir / "plan.txt").write_text(plan.describe() + "\n")
    timeline = Timeline()
    world = Consortium(workdir, plan.network, plan.seed, pg_url=pg_url)
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
    if world.pg is not None:
        (workdir / "databases.json").write_text(json.dumps(world.pg.urls, indent=1))
        if result.ok and not keep:
            world.pg.drop_all()
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
        work.update(_chain_open(world))
        if not failures and not any(work.values()):
            timeline.add("quiescent", "nothing in flight")
            return True, []
        last = failures + [f"{k}: {v}" for k, v in work.items() if v]
        time.sleep(POLL_S)
    timeline.add("quiescent", "budget exhausted", "failed", left=last)
    return False, last


def _count_sql(source: Any, sql: str) -> int:
    from offchain.operator.sim.workload import _count

    return _count(source, sql)


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


def _chain_open(world: Consortium) -> dict[str, int]:
    """What the chain still shows in flight: fees settled but not yet requested for transfer, and transfer
    requests without their confirmation (the CC records its rows only once the request is final, so an empty
    transfer table alone does not mean that every payout is done)."""
    from offchain.operator.sim.checker import RawChain

    chain = RawChain(world.node.url, world.consortium.deployment_path)
    chain.pin()  # the logs and the policies' views of one block (a requestTransfers mined between: accrued 0, no event)
    accrued, requested, confirmed = 0, set(), set()
    for event in chain.logs():
        if event["event"] == "PolicyRegistered":
            policy = chain.call("policy", bytes(event["policyId"]))
            accrued += int(policy[5]) - int(policy[6])
        elif event["event"] == "TransferRequested":
            requested.add(bytes(event["requestId"]))
        elif event["event"] == "TransferConfirmed":
            confirmed.add(bytes(event["requestId"]))
    return {"accrued on chain": accrued, "transfers requested on chain, not confirmed": len(requested - confirmed)}


def _check(world: Consortium, workload: Workload) -> list[Violation]:
    c = world.consortium
    report = world.workdir / "reconcile.txt"
    report.unlink(missing_ok=True)
    code = zygote.run(["reconcile", "--rpc", world.node.url, "--deployment", str(c.deployment_path), "--cc-config",
                       str(c.settings_paths["cc"]), "--bank-config", str(c.settings_paths["bank"])],
                      log_path=report, cwd=ROOT, timeout_s=120)
    output = report.read_text(errors="replace")
    dup = [m for link in world.proxy.stats().values() for m in link.dup_mismatches]
    dup_count = sum(link.duplicated for link in world.proxy.stats().values())
    world_view = World(rpc_url=world.node.url, deployment_path=c.deployment_path, cc_db=world.db("cc"),
                       sp_db=world.db("sp"), bank_db=world.db("bank"), wallets=world.wallets(),
                       deposits=dict(workload.deposits), dup_mismatches=dup, proxy_events=list(world.proxy.events),
                       reconcile=(code, output))
    (world.workdir / "proxy.json").write_text(json.dumps({"duplicated": dup_count, "events": world.proxy.events},
                                                         indent=1))
    return check(world_view)


# --- the command ---------------------------------------------------------------------------------------------------
def replay_command(seed: int, faults: tuple[str, ...], network: str = "anvil", steps: int = 24,
                   pg_url: str | None = None) -> str:
    on = f" --network {network}" if network != "anvil" else ""
    length = f" --steps {steps}" if steps != 24 else ""
    db = f" --db postgres --pg-url {pg_url}" if pg_url else ""
    return f"clearhouse sim{on}{db} --seeds {seed} --faults {','.join(faults) or 'none'}{length} --keep"


def fault_counts(plans: list[Plan]) -> dict[str, int]:
    """Faults per kind over `plans` (the disk fault split into `disk fill` and `disk lock`)."""
    counts: dict[str, int] = {}
    for plan in plans:
        for fault in plan.faults:
            kind = f"disk {fault.mode}" if fault.kind == "disk" else fault.kind
            counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items()))


def main_sim(seeds: list[int], faults: tuple[str, ...], *, budget_s: float | None = None,
             workdir: Path | None = None, keep: bool = False, steps: int = 24, quiesce_s: float = 90.0,
             network: str = "anvil", pg_url: str | None = None, echo: Any = print) -> int:
    """Run every seed (until `budget_s` is spent); 0 when no seed broke an invariant, 1 otherwise."""
    base = workdir or ROOT / "var" / "sim"
    started = time.monotonic()
    results: list[SeedResult] = []
    plans: list[Plan] = []
    for seed in seeds:
        if budget_s is not None and results and time.monotonic() - started > budget_s:
            echo(f"budget of {budget_s:.0f} s spent: stopping before seed {seed}")
            break
        plan = make_plan(seed, faults, steps=steps, network=network)
        plans.append(plan)
        echo(plan.describe().splitlines()[0] + "".join("\n  " + str(f) for f in plan.faults))
        result = run_seed(plan, base / f"seed-{seed}", quiesce_s=quiesce_s, keep=keep, pg_url=pg_url, echo=echo)
        results.append(result)
        status = "ok" if result.ok else f"FAILED ({len(result.violations)} violations)"
        echo(f"seed {seed}: {status} in {result.duration_s:.1f} s")
        for violation in result.violations[:20]:
            echo(f"    {violation}")
        if not result.ok:
            echo(f"    kept {result.workdir}; replay: {replay_command(seed, faults, network, steps, pg_url)}")
    broken = [r for r in results if not r.ok]
    summary = {"network": network, "db": "postgres" if pg_url else "sqlite", "seeds": len(results),
               "first_seed": results[0].seed if results else None, "last_seed": results[-1].seed if results else None,
               "seeds_run": seed_ranges([r.seed for r in results]),
               "faults_injected": sum(r.faults for r in results), "faults_by_kind": fault_counts(plans[:len(results)]),
               "disk_fill": "tmpfs" if Disk.available() and not pg_url else "lock (fallback)",
               "seeds_failed": [r.seed for r in broken],
               "invariants_broken": sorted({v.invariant for r in broken for v in r.violations}),
               "duration_s": round(time.monotonic() - started, 1),
               "s_per_seed": round((time.monotonic() - started) / max(1, len(results)), 1)}
    base.mkdir(parents=True, exist_ok=True)
    (base / "last-run.json").write_text(json.dumps(summary, indent=1))
    echo(json.dumps(summary))
    return 1 if broken else 0


def seed_ranges(seeds: list[int]) -> str:
    """`[1, 2, 3, 7, 9, 10]` -> `1-3,7,9-10` (the `--seeds` syntax)."""
    parts: list[str] = []
    ordered = sorted(set(seeds))
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)


def merge_summaries(summaries: list[dict[str, Any]], duration_s: float) -> dict[str, Any]:
    """One summary for the jobs of a `--jobs N` run (each job's own `last-run.json`)."""
    seeds = [s for summary in summaries if summary["seeds_run"] for s in parse_seeds(summary["seeds_run"])]
    kinds: dict[str, int] = {}
    for summary in summaries:
        for kind, n in summary["faults_by_kind"].items():
            kinds[kind] = kinds.get(kind, 0) + n
    first = summaries[0] if summaries else {}
    return {"network": first.get("network"), "db": first.get("db"), "jobs": len(summaries), "seeds": len(seeds),
            "first_seed": min(seeds, default=None), "last_seed": max(seeds, default=None),
            "seeds_run": seed_ranges(seeds), "faults_injected": sum(s["faults_injected"] for s in summaries),
            "faults_by_kind": dict(sorted(kinds.items())), "disk_fill": first.get("disk_fill"),
            "seeds_failed": sorted(s for summary in summaries for s in summary["seeds_failed"]),
            "invariants_broken": sorted({i for summary in summaries for i in summary["invariants_broken"]}),
            "duration_s": round(duration_s, 1), "s_per_seed": round(duration_s / max(1, len(seeds)), 1),
            "s_per_seed_per_job": [s["s_per_seed"] for s in summaries]}


def main_sim_jobs(seeds: list[int], faults: tuple[str, ...], *, jobs: int, budget_s: float | None = None,
                  workdir: Path | None = None, keep: bool = False, steps: int = 24, network: str = "anvil",
                  pg_url: str | None = None, echo: Any = print) -> int:
    """`--jobs N`: N `clearhouse sim` processes side by side, each its own seeds (every N-th: with a budget the
    run still covers the first seeds), its own folder `job-K/`, fork server and consortia; their output is
    echoed with `[job K]`, their summaries merged into `last-run.json`. Seeds share no process, chain or file."""
    import threading

    base = workdir or ROOT / "var" / "sim"
    base.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    running: list[tuple[int, subprocess.Popen[str], threading.Thread]] = []
    for k in range(jobs):
        share = seeds[k::jobs]
        if not share:
            continue
        argv = [sys.executable, "-m", "offchain.cli", "sim", "--seeds", ",".join(map(str, share)),
                "--faults", ",".join(faults) or "none", "--network", network, "--steps", str(steps),
                "--workdir", str(base / f"job-{k}")]
        argv += ["--budget-s", str(budget_s)] if budget_s is not None else []
        argv += ["--keep"] if keep else []
        argv += ["--db", "postgres", "--pg-url", pg_url] if pg_url else []
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)

        def relay(k: int = k, process: subprocess.Popen[str] = process) -> None:
            assert process.stdout is not None
            for line in process.stdout:
                echo(f"[job {k}] {line.rstrip()}")

        thread = threading.Thread(target=relay, daemon=True)
        thread.start()
        running.append((k, process, thread))
    summaries = []
    for k, process, thread in running:
        process.wait()
        thread.join()
        path = base / f"job-{k}" / "last-run.json"
        if path.exists():
            summaries.append(json.loads(path.read_text()))
        else:
            echo(f"[job {k}] exited with {process.returncode} without a summary")
    summary = merge_summaries(summaries, time.monotonic() - started)
    (base / "last-run.json").write_text(json.dumps(summary, indent=1))
    echo(json.dumps(summary))
    failed = len(summaries) < len(running) or any(p.returncode not in (0, 1) for _k, p, _t in running)
    return 1 if summary["seeds_failed"] or failed else 0


__all__ = ["main_sim", "main_sim_jobs", "run_seed", "SeedResult", "replay_command", "fault_counts", "Disk",
           "PgDatabases", "seed_ranges", "merge_summaries"]
