"""`clearhouse demo`: the whole settlement story on a local chain with the services as separate mTLS processes.

Starts anvil (unless --rpc), deploys, provisions a consortium, starts CC, SP and bank, then runs deposits,
packaging, offline use, a renewal that gets a new serial while logs are unsettled and a top-up in place, settlement and
paid transfers; prints balances, gas, one device's audit trail and a reconciliation. Dev chains only (it funds
accounts with anvil_setBalance and keeps keys unencrypted under the workdir). Everything it starts, it stops.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eth_account import Account
from rich.console import Console
from rich.table import Table
from web3 import Web3

from offchain.core.errors import AllowanceExceeded, ChainUnreachable, ClearhouseError, ConfigError, DemoError, LimitError
from offchain.core.types import PACKAGE_ROOT, Role, to_hex

ROOT = PACKAGE_ROOT
READY_TIMEOUT_S = 40.0
SETTLE_TIMEOUT_S = 60.0
SERVICES = ("cc", "sp", "bank")
PASSPHRASE = "clearhouse-demo"
HSM_TOKEN = "clearhouse-demo"
HSM_PIN = "clearhouse-demo-pin"  # a throwaway SoftHSM2 token under the workdir; a real HSM's PIN comes from env
KEEP_CRL_REFRESH_S = 3600.0  # --keep: re-sign the CRL hourly (it is valid 7 days; production: daily)


@dataclass(frozen=True)
class ContentSpec:
    name: str
    provider: str
    price: int
    provider_bps: int
    sp_bps: int
    cc_bps: int


CONTENTS = (
    ContentSpec("Song: Night Drive", "studio", price=120, provider_bps=7_000, sp_bps=2_000, cc_bps=1_000),
    ContentSpec("Film: The Ledger", "studio", price=450, provider_bps=8_000, sp_bps=1_500, cc_bps=500),
    ContentSpec("Article: Offline Money", "press", price=35, provider_bps=6_000, sp_bps=3_000, cc_bps=1_000),
)
DEPOSITS = {"alice": 2_000, "bob": 1_000}


@dataclass
class DemoState:
    """What the story produced, for the report and the test (serials as 0x-hex)."""

    workdir: Path
    rpc_url: str = ""
    rpc_urls: list[str] = field(default_factory=list)  # --network clique: every node, for the services' failover
    network: Any = None  # --network clique: the running offchain.chain.network.CliqueNetwork
    deployment_path: Path | None = None
    new_serial_story: dict[str, str] = field(default_factory=dict)
    top_up_story: dict[str, str] = field(default_factory=dict)
    published: dict[str, Any] = field(default_factory=dict)
    uses: dict[str, int] = field(default_factory=dict)


# --- processes ---------------------------------------------------------------------------------------------------
class Processes:
    """The service processes the demo started (and only those); `stop_all` is safe to call twice."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, config: Path) -> None:
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 - the child keeps it open
        command = [sys.executable, "-m", "offchain.cli", "serve", name, "--config", str(config)]
        self.running[name] = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                              env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
        log.close()

    def check_alive(self, name: str) -> None:
        process = self.running[name]
        if process.poll() is not None:
            tail = (self.workdir / f"{name}.log").read_text(errors="replace")[-1500:]
            raise DemoError(f"the {name} service exited with code {process.returncode}:\n{tail}", service=name,
                            hint=f"see {self.workdir / (name + '.log')}")

    def stop_all(self) -> None:
        for name, process in list(self.running.items()):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for name, process in list(self.running.items()):
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            del self.running[name]


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def preflight(*, rpc_url: str | None, anvil_port: int | None) -> None:
    """Fail early, with a hint, on the usual problems: Python version, anvil missing, port taken, chain down."""
    if sys.version_info < (3, 11):
        raise DemoError(f"Python {sys.version.split()[0]} is too old", hint="use Python >= 3.11 (bin/setup)")
    if rpc_url is None:
        from offchain.chain import anvil_binary

        try:
            anvil_binary()
        except ConfigError as exc:
            raise DemoError(exc.message, hint="run `make setup` then `source bin/env.sh`") from exc
        if anvil_port is not None and not _port_free(anvil_port):
            raise DemoError(f"port {anvil_port} is taken", port=anvil_port,
                            hint="pick another --anvil-port, or stop what listens there")
        return
    w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": 5}))
    try:
        w3.eth.chain_id
    except (OSError, ValueError) as exc:
        raise DemoError(f"no chain answers at {rpc_url}: {exc}", url=rpc_url,
                        hint="start the node, or drop --rpc to let the demo start its own anvil") from exc


def web3_for(rpc_url: str) -> Web3:
    """A Web3 for the demo's own reads and writes, with the POA extraData middleware (Clique; harmless on anvil)."""
    from web3.middleware import ExtraDataToPOAMiddleware

    from offchain.chain.failover import http_provider

    w3 = Web3(http_provider(rpc_url, timeout_s=60))  # asks the node for eth_chainId once
    w3.middleware_onion.inject(ExtraDataToPOAMiddleware, layer=0)
    return w3


@contextmanager
def _clique(state: DemoState, console: Console) -> Iterator[str]:
    """--network clique: four signer nodes (period 1 s) in the demo's workdir; stopped on the way out."""
    from offchain.chain.network import CliqueNetwork

    net = CliqueNetwork(state.workdir / "clique", signers=4, period_s=1, seed=b"clearhouse-demo",
                        progress=lambda message: console.print(f"  [dim]{message}"))
    try:
        net.up()
        state.network, state.rpc_urls = net, net.rpc_urls
        yield net.rpc_urls[0]
    finally:
        net.down()


@contextmanager
def _chain(rpc_url: str | None, anvil_port: int | None) -> Iterator[str]:
    if rpc_url is not None:
        yield rpc_url
        return
    from offchain.chain import start_anvil

    try:
        node = start_anvil(port=anvil_port, hardfork="paris")
    except ChainUnreachable as exc:
        raise DemoError(f"anvil did not start: {exc.message}", hint="check the port, or pass --rpc URL") from exc
    try:
        yield node.url
    finally:
        node.stop()


# --- steps ---------------------------------------------------------------------------------------------------------
class Steps:
    """Rich progress: a spinner while a step runs, a tick with its duration when it is done."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.current = ""

    @contextmanager
    def step(self, title: str) -> Iterator[None]:
        self.current = title
        started = time.monotonic()
        with self.console.status(f"[bold]{title}…"):
            yield
        self.console.print(f"[green]✓[/] {title} [dim]({time.monotonic() - started:.1f}s)")


def _wait_for(what: str, predicate: Callable[[], bool], timeout_s: float, hint: str,
              alive: Callable[[], None] = lambda: None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        alive()
        if predicate():
            return
        time.sleep(0.2)
    raise DemoError(f"timed out after {timeout_s:.0f}s waiting for {what}", hint=hint)


def demo_hsm(workdir: Path) -> Any:
    """--hsm: a fresh SoftHSM2 token under the workdir, named in SOFTHSM2_CONF for this process and the services
    it starts (a real HSM: its vendor's module path and token label instead, see docs/hsm.md)."""
    from offchain.trust import keys

    conf = keys.init_softhsm(workdir / "softhsm", [HSM_TOKEN], HSM_PIN)
    os.environ["SOFTHSM2_CONF"] = str(conf)
    return keys.Pkcs11Config(keys.softhsm_module(), HSM_TOKEN, HSM_PIN)


def deploy_and_provision(state: DemoState, rpc_url: str, hsm: Any = None) -> Any:
    """Deploy Clearhouse with fresh deployer/authority keys and provision CA, members and settings files; with
    `hsm` (a Pkcs11Config) the authority, the CA root and the CC, SP and bank keys are generated in the token."""
    from offchain.chain import deploy
    from offchain.operator.provision import MemberSpec, provision
    from offchain.trust import keys

    w3 = web3_for(rpc_url)
    deployer = Account.create()
    authority: Any = keys.generate_secp256k1(hsm, "authority") if hsm else Account.create()
    fund = _funder(state, w3)
    for account in (deployer, authority):
        fund(account.address)
    deployment = deploy(w3, bytes(deployer.key), authority.address, root=ROOT, network="demo")
    members = (MemberSpec("cc", Role.CLEARING_CENTER), MemberSpec("sp", Role.SERVICE_PROVIDER),
               MemberSpec("bank", Role.BANK), MemberSpec("studio", Role.CONTENT_PROVIDER),
               MemberSpec("press", Role.CONTENT_PROVIDER), MemberSpec("alice-phone", Role.DEVICE, user_id="alice"),
               MemberSpec("bob-tablet", Role.DEVICE, user_id="bob"))
    # fast_kdf: the demo's device keystores are throwaway; real devices use the default scrypt cost.
    consortium = provision(state.workdir / "consortium", w3, deployment,
                           authority if hsm else bytes(authority.key), members=members,
                           rpc_url=rpc_url, passphrase=PASSPHRASE, fast_kdf=True, hsm=hsm, fund=fund,
                           rpc_urls=state.rpc_urls)
    state.rpc_url, state.deployment_path = rpc_url, consortium.deployment_path
    return consortium


def _funder(state: DemoState, w3: Web3) -> Callable[[str], None]:
    """Gas for a fresh account: anvil_setBalance on anvil, the dev faucet on the Clique network."""
    if state.network is not None:
        return lambda address: state.network.fund([address], 10**21)
    return lambda address: w3.provider.make_request("anvil_setBalance",  # type: ignore[arg-type]
                                                    [address, hex(10**21)])


def client(consortium: Any, member_id: str, service: str) -> Any:
    from offchain.transport.client import SyncJsonClient

    member = consortium.member(member_id)
    return SyncJsonClient(consortium.urls[service], str(member.cert_path), str(member.key_path),
                          str(consortium.root_path))


def start_services(consortium: Any, processes: Processes) -> None:
    """Start CC, SP and bank as separate processes and wait until each answers over mutual TLS."""
    for name in SERVICES:
        processes.start(name, consortium.settings_paths[name])
    for name in SERVICES:
        probe = client(consortium, "bank", name)

        def ready(probe: Any = probe) -> bool:
            try:
                probe.get("/openapi.json")
                return True
            except ClearhouseError:
                return False

        _wait_for(f"the {name} service", ready, READY_TIMEOUT_S, f"see {processes.workdir / (name + '.log')}",
                  alive=lambda name=name: processes.check_alive(name))


def deposit(consortium: Any) -> None:
    bank = client(consortium, "bank", "bank")
    for user, amount in DEPOSITS.items():
        bank.post("/v1/deposits", {"deposit_id": f"demo-{user}-1", "user_id": user, "amount": amount})


def publish_contents(consortium: Any, state: DemoState) -> None:
    """Each content provider packages, registers (on chain, with its split) and publishes its content."""
    from offchain.chain import ClearhouseChain, Deployment
    from offchain.content_provider.publisher import ContentProvider, content_id_for

    deployment = Deployment.load(consortium.deployment_path)
    w3 = web3_for(consortium.rpc_url)
    sp, cc = consortium.member("sp").eth_address, consortium.member("cc").eth_address
    for spec in CONTENTS:
        member = consortium.member(spec.provider)
        provider = ContentProvider(member.credentials(), ClearhouseChain(w3, deployment, member.signing_key()),
                                   client(consortium, spec.provider, "sp"))
        body = f"{spec.name}\n".encode() * 64
        payees = [(member.eth_address, spec.provider_bps), (sp, spec.sp_bps), (cc, spec.cc_bps)]
        state.published[spec.name] = provider.publish(body, content_id=content_id_for(spec.name), version=1,
                                                      price=spec.price, payees=payees, title=spec.name)


def open_device(consortium: Any, member_id: str) -> Any:
    from offchain.device.client import DeviceClient
    from offchain.core.settings import DeviceSettings, load_settings

    member = consortium.member(member_id)
    settings = load_settings(DeviceSettings, consortium.settings_paths[member_id])
    return DeviceClient.from_settings(settings, PASSPHRASE, member.user_id)


def use(device: Any, state: DemoState, name: str) -> None:
    published = state.published[name]
    device.use(published.content_id, published.version)
    state.uses[name] = state.uses.get(name, 0) + 1


def _reader(consortium: Any) -> Any:
    """A chain client used only for views (it never sends a transaction)."""
    from offchain.chain import ClearhouseChain, Deployment

    w3 = web3_for(consortium.rpc_url)
    return ClearhouseChain(w3, Deployment.load(consortium.deployment_path), consortium.member("cc").signing_key())


def story_new_serial_while_unsettled(consortium: Any, state: DemoState, console: Console) -> None:
    """Alice spends offline until her allowance runs out, then renews with her logs still unsettled."""
    alice = open_device(consortium, "alice-phone")
    try:
        alice.request_issue_log(600)
        for spec in CONTENTS:
            alice.download(state.published[spec.name].content_id, 1)
        use(alice, state, "Film: The Ledger")
        use(alice, state, "Song: Night Drive")
        try:
            use(alice, state, "Song: Night Drive")
            raise DemoError("alice's device allowed a use beyond its allowance", hint="report this as a bug")
        except AllowanceExceeded:
            console.print(f"  alice-phone: allowance exhausted ({alice.balance().remaining} left, Song costs 120)")
        old = alice.balance()
        renewed = alice.renew(800)  # nothing uploaded yet: the CC must issue a new serial (new serial while unsettled)
        state.new_serial_story = {"device": "alice-phone", "old_serial": to_hex(old.serial), "new_serial": to_hex(renewed.serial),
                         "carried": str(old.cap - old.spent), "cap": str(renewed.cap)}
        use(alice, state, "Song: Night Drive")
        use(alice, state, "Article: Offline Money")
        alice.upload()
    finally:
        alice.close()


def story_top_up_in_place(consortium: Any, state: DemoState, processes: Processes) -> None:
    """Bob uses, uploads, waits until everything is settled on chain, then renews: a top-up in place."""
    bob = open_device(consortium, "bob-tablet")
    reader = _reader(consortium)
    try:
        bob.request_issue_log(400)
        for name in ("Article: Offline Money", "Song: Night Drive", "Film: The Ledger"):
            bob.download(state.published[name].content_id, 1)
        for name in ("Article: Offline Money", "Article: Offline Money", "Song: Night Drive"):
            use(bob, state, name)
        bob.upload()
        wallet = bob.balance()
        _wait_for("bob's usage logs to settle on chain",
                  lambda: reader.issue_log(wallet.serial).next_seq >= wallet.next_seq, SETTLE_TIMEOUT_S,
                  "the CC settles every settle_interval_s; see cc.log", alive=lambda: processes.check_alive("cc"))
        renewed = bob.renew(300)
        state.top_up_story = {"device": "bob-tablet", "serial": to_hex(wallet.serial), "renewed_serial": to_hex(renewed.serial),
                         "cap_before": str(wallet.cap), "cap_after": str(renewed.cap)}
        use(bob, state, "Film: The Ledger")
        bob.upload()
    finally:
        bob.close()


def wait_for_payments(state: DemoState, index: Any, processes: Processes) -> None:
    """Until every use is settled on chain, requested for transfer, paid by the bank and confirmed."""
    used = sum(next(s.price for s in CONTENTS if s.name == name) * count for name, count in state.uses.items())

    def done() -> bool:
        index.sync()
        settled = sum(int(e.args["total"]) for e in index.events("UsageSettled"))
        requested = sum(int(e.args["amount"]) for e in index.events("TransferRequested"))
        confirmed = sum(int(e.args["amount"]) for e in index.events("TransferConfirmed"))
        return settled == requested == confirmed == used

    def alive() -> None:
        for name in SERVICES:
            processes.check_alive(name)

    _wait_for("settlement, transfer requests and bank confirmations", done, SETTLE_TIMEOUT_S * 2,
              "see cc.log and bank.log in the workdir", alive=alive)


# --- report ----------------------------------------------------------------------------------------------------------
def print_balances(consortium: Any, console: Console) -> None:
    """The bank ledger's accounts, named after the members they belong to."""
    ledger = client(consortium, "bank", "bank").get("/v1/ledger")
    names = {f"payee:{m.eth_address}": f"{m.member_id} ({m.role.name.lower()})" for m in consortium.members.values()}
    table = Table(title="Bank ledger balances (minor units)", title_justify="left")
    table.add_column("account")
    table.add_column("party")
    table.add_column("balance", justify="right")
    for account, balance in sorted(ledger["balances"].items()):
        table.add_row(account, names.get(account, ""), str(balance))
    console.print(table)


def print_gas(index: Any, console: Console) -> None:
    from offchain.operator.audit import gas_by_function

    table = Table(title="Gas used on chain", title_justify="left")
    for column in ("function", "transactions", "gas", "gas per tx"):
        table.add_column(column, justify="right" if column != "function" else "left")
    totals = gas_by_function(index)
    for function, (count, gas) in sorted(totals.items()):
        table.add_row(function, str(count), f"{gas:,}", f"{gas // count:,}")
    table.add_row("[bold]total", str(sum(c for c, _ in totals.values())), f"{sum(g for _, g in totals.values()):,}", "")
    console.print(table)


def print_renewals(state: DemoState, index: Any, console: Console) -> None:
    """The two renewals as the chain recorded them (mode from the IssueLogRenewed event)."""
    from offchain.operator.audit import renewal_mode

    modes = {(e.args["oldSerial"], e.args["newSerial"]): renewal_mode(e) for e in index.events("IssueLogRenewed")}
    c14, c13 = state.new_serial_story, state.top_up_story
    mode14 = modes.get((c14["old_serial"], c14["new_serial"]), "missing")
    mode13 = modes.get((c13["serial"], c13["renewed_serial"]), "missing")
    console.print(f"new serial while unsettled: {c14['device']} renewed while logs were unsettled -> {mode14}: new serial "
                  f"{c14['new_serial']} (old {c14['old_serial']}, carried {c14['carried']}, cap {c14['cap']})",
                  soft_wrap=True)
    console.print(f"top-up in place: {c13['device']} renewed after everything settled -> {mode13}: serial "
                  f"{c13['serial']} cap {c13['cap_before']} -> {c13['cap_after']}", soft_wrap=True)
    if mode14 != "new_serial" or mode13 != "top_up":
        raise DemoError(f"renewal modes on chain were {mode14} / {mode13}, expected new_serial / top_up",
                        hint="see cc.log; this is a bug in the clearing center")


def reconcile_all(consortium: Any, index: Any, console: Console) -> None:
    import json

    from offchain.operator import reconcile
    urls = {name: json.loads(consortium.settings_paths[name].read_text())["database_url"] for name in ("cc", "bank")}
    report = reconcile.reconcile(reconcile.chain_facts(index), reconcile.cc_facts(urls["cc"]),
                                 reconcile.bank_facts(urls["bank"]))
    console.rule("[bold]Reconciliation: chain vs CC database vs bank ledger")
    reconcile.render(report, "table", console.file)
    if not report.clean:
        raise reconcile.ReconciliationFailed(f"{len(report.unexplained)} unexplained difference(s)",
                                             count=len(report.unexplained),
                                             hint="inspect with `clearhouse reconcile` and the service logs")


def report(consortium: Any, state: DemoState, processes: Processes, console: Console) -> None:
    from offchain.operator import audit
    with audit.open_index(rpc_url=state.rpc_url, deployment_path=consortium.deployment_path,
                          cache_dir=state.workdir / "audit-cache") as index:
        console.rule("[bold]Report")
        print_renewals(state, index, console)
        print_balances(consortium, console)
        print_gas(index, console)
        trail = audit.device_trail(index, consortium.member("alice-phone").eth_address)
        audit.render_table(trail, console)
        processes.stop_all()  # a quiet snapshot for the reconciliation
        index.sync()
        reconcile_all(consortium, index, console)


# --- entry point ----------------------------------------------------------------------------------------------------
def run(state: DemoState, processes: Processes, console: Console, *, rpc_url: str | None,
        anvil_port: int | None, keep: bool = False, hsm: bool = False, network: str = "anvil") -> None:
    """The demo's steps in order; raises DemoError (or another ClearhouseError) on the first failure.
    `network="clique"`: the whole story on a local four-signer Clique network instead of anvil."""
    from offchain.operator import audit
    steps = Steps(console)
    clique = network == "clique"
    if not clique:
        with steps.step("checking prerequisites"):
            preflight(rpc_url=rpc_url, anvil_port=anvil_port)
    title = ("starting a four-signer Clique network (geth, period 1 s)" if clique else
             "starting a local anvil (--hardfork paris)" if rpc_url is None else f"connecting to {rpc_url}")
    with steps.step(title):
        chain = _clique(state, console) if clique else _chain(rpc_url, anvil_port)
        url = chain.__enter__()
    try:
        token = None
        if hsm:
            with steps.step("creating a SoftHSM2 token for the CA root, authority, CC, SP and bank keys"):
                token = demo_hsm(state.workdir)
        with steps.step("deploying Clearhouse and provisioning CA, members and settings"):
            consortium = deploy_and_provision(state, url, token)
        if token is not None:
            console.print(f"  keys in PKCS#11 token {token.token_label!r} (non-extractable): CA root (P-384), "
                          "authority, cc, sp, bank")
        with steps.step("starting clearing center, service provider and bank (mutual TLS)"):
            start_services(consortium, processes)
        with steps.step("alice deposits 2,000 and bob 1,000 at the bank"):
            deposit(consortium)
        with steps.step("two content providers package and register three contents"):
            publish_contents(consortium, state)
        with steps.step("alice uses content offline, runs out, renews while unsettled (new serial while unsettled)"):
            story_new_serial_while_unsettled(consortium, state, console)
        with steps.step("bob uses content, everything settles, renews in place (top-up in place)"):
            story_top_up_in_place(consortium, state, processes)
        with audit.open_index(rpc_url=url, deployment_path=consortium.deployment_path,
                              cache_dir=state.workdir / "audit-cache") as index:
            with steps.step("settlement on chain, transfer requests, bank payments and confirmations"):
                wait_for_payments(state, index, processes)
        report(consortium, state, processes, console)
        if keep:
            start_services(consortium, processes)
            hold(consortium, state, console, processes)
    finally:
        processes.stop_all()
        chain.__exit__(None, None, None)


def hold(consortium: Any, state: DemoState, console: Console, processes: Processes | None = None) -> None:
    """--keep: leave the chain and the services up, re-sign the CRL on a timer, write the state file and the
    try-it script (offchain/operator/demo_state.py), say how to use them, and wait for Ctrl-C or `demo stop`."""
    from offchain.operator import demo_state
    from offchain.trust.crl import RefreshTimer

    timer = RefreshTimer(lambda: consortium.ca().refresh_crl(), interval_s=KEEP_CRL_REFRESH_S).start()
    try:
        _announce(consortium, state, console)
        # last: another terminal (and the tests) take the state file as "the demo is up and has said so"
        demo_state.write_state(consortium, state, processes, PASSPHRASE)
        _wait(console)
    finally:
        timer.stop()
        demo_state.clear_state(state.workdir)


def _announce(consortium: Any, state: DemoState, console: Console) -> None:
    from offchain.operator.demo_state import TRY_IT_FILE, explorer_command, ops_urls, try_it_lines

    console.rule("Still running (--keep): Ctrl-C or `clearhouse demo stop` stops everything")
    console.print(f"chain  {state.rpc_url}   services  " + "  ".join(f"{k} {v}" for k, v in consortium.urls.items()))
    for name, urls in ops_urls(consortium).items():  # unauthenticated, plain HTTP, loopback only
        console.print(f"{name:<5}  health {urls['healthz']}   metrics {urls['metrics']}", markup=False,
                      highlight=False, soft_wrap=True)
    console.print("explorer (serves http://127.0.0.1:8780):", highlight=False)
    console.print(explorer_command(consortium, state), markup=False, highlight=False, soft_wrap=True)
    console.print(f"try it (also in {state.workdir / TRY_IT_FILE}; the CRL is re-signed every "
                  f"{KEEP_CRL_REFRESH_S:.0f} s while the demo holds):")
    for line in try_it_lines(consortium, state, PASSPHRASE):
        console.print(line, markup=False, highlight=False, soft_wrap=True)


def _wait(console: Console) -> None:
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        console.print("[yellow]stopping")


def default_workdir() -> Path:
    return ROOT / "var" / f"demo-{time.strftime('%Y%m%d-%H%M%S')}"


def main_demo(*, rpc_url: str | None = None, workdir: Path | None = None, anvil_port: int | None = None,
              console: Console | None = None, keep: bool = False, hsm: bool = False, network: str = "anvil") -> int:
    """`clearhouse demo`: 0 on success; 1 with what failed and what to do; 130 when interrupted (Ctrl-C/SIGTERM).

    Everything it started (anvil, services) is stopped before it returns, whatever happened.
    """
    if console is None:
        console = Console()
        if not console.is_terminal:  # piped or captured: wide enough for the audit tables
            console = Console(width=160)
    state = DemoState(workdir=Path(workdir) if workdir else default_workdir())
    try:
        state.workdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        console.print(f"[bold red]cannot create the work directory {state.workdir}: {exc.strerror}")
        console.print("  what to do: pass --workdir with a path you can write to")
        return 1
    processes = Processes(state.workdir)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        run(state, processes, console, rpc_url=rpc_url, anvil_port=anvil_port, keep=keep, hsm=hsm, network=network)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: stopped every process the demo started")
        return 130
    except ClearhouseError as exc:
        _explain(console, exc, state)
        return 1
    except Exception as exc:  # the demo is an edge: no bare traceback, but say where to look
        console.print(f"[bold red]demo failed: {type(exc).__name__}: {exc}")
        console.print(f"  logs and files: {state.workdir}; run `clearhouse --debug demo` for the traceback")
        if os.environ.get("CLEARHOUSE_DEBUG"):
            raise
        return 1
    finally:
        processes.stop_all()
        signal.signal(signal.SIGTERM, previous)
    console.print(f"[bold green]demo complete[/] — files and service logs in {state.workdir}")
    return 0


def _raise_interrupt(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def _explain(console: Console, exc: ClearhouseError, state: DemoState) -> None:
    console.print(f"[bold red]demo failed [{exc.code}]: {exc.message}")
    hint = exc.fields.get("hint")
    if hint:
        console.print(f"  what to do: {hint}")
    elif isinstance(exc, ChainUnreachable):
        console.print("  what to do: check that the chain node runs and --rpc points at it")
    elif isinstance(exc, LimitError):
        console.print("  what to do: a money limit was hit; see the service logs")
    console.print(f"  logs and files: {state.workdir}")


__all__ = ["main_demo", "run", "DemoError", "DemoState", "preflight"]
