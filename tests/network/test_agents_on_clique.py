"""The agents on the four-signer Clique network: node loss, a stall, a 2-vs-2 partition with a reorg, and RPC
failover, with the real services (CC, SP, bank as mTLS processes) and devices.

One consortium per module (deployed once on the shared network, services started once), one device per test.
Every service has `rpc_urls` of all four nodes in the order 2, 3, 0, 1: node 2 is the one they talk to, so the
partition puts it on the losing side and the failover test stops it. Confirmations are the Clique default (6).
Quiescence means: every use is settled on chain, requested for transfer, paid by the bank and confirmed (the
demo's `wait_for_payments`, exact sums, so a double settlement or payment never satisfies it), then
`clearhouse reconcile` on a quiet snapshot is clean.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from offchain.chain.failover import connect
from offchain.chain.network import CliqueNetwork, rpc
from offchain.core.types import Role
from offchain.operator import audit
from offchain.operator.demo import (CONTENTS, DemoState, Processes, _wait_for, deposit, open_device,
                                    publish_contents, reconcile_all, start_services, use, wait_for_payments,
                                    web3_for)

ORDER = (2, 3, 0, 1)  # the services' rpc_urls: node 2 first
DEVICES = ("d-one-down", "d-stall", "d-partition", "d-failover")
WAIT_S = 120.0


@dataclass
class Pipeline:
    net: CliqueNetwork
    state: DemoState
    consortium: Any
    processes: Processes

    def urls(self) -> list[str]:
        return [self.net.rpc_urls[i] for i in ORDER]

    def live_url(self) -> str:
        return next(self.net.rpc_urls[i] for i in range(len(self.net.nodes)) if self.net.is_running(i))

    def cc_db(self) -> Path:
        return Path(json.loads(self.consortium.settings_paths["cc"].read_text())["database_url"]
                    .removeprefix("sqlite:///"))

    def cc_rows(self, query: str) -> list[tuple[Any, ...]]:
        with sqlite3.connect(self.cc_db()) as db:
            return db.execute(query).fetchall()

    def quiesce_and_reconcile(self, cache: Path) -> None:
        """Everything used is settled, requested, paid and confirmed; then reconcile on a quiet snapshot."""
        with audit.open_index(rpc_url=self.live_url(), deployment_path=self.consortium.deployment_path,
                              cache_dir=cache) as index:
            wait_for_payments(self.state, index, self.processes)
            self.processes.stop_all()
            try:
                index.sync()
                reconcile_all(self.consortium, index, Console(width=160, file=open("/dev/null", "w")))
            finally:  # every node back first, so the next test starts from a whole network
                self.net.restore()
                start_services(self.consortium, self.processes)


@pytest.fixture(scope="module")
def pipeline(clique: CliqueNetwork, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    from eth_account import Account

    from offchain.chain import deploy
    from offchain.operator.provision import MemberSpec, provision

    clique.restore()
    workdir = tmp_path_factory.mktemp("agents")
    state = DemoState(workdir=workdir)
    state.network = clique
    state.rpc_urls = [clique.rpc_urls[i] for i in ORDER]
    w3 = web3_for(state.rpc_urls[0])
    deployer, authority = Account.create(), Account.create()
    clique.fund([deployer.address, authority.address], 10**21)
    deployment = deploy(w3, bytes(deployer.key), authority.address, network="clique-tests")
    members = [MemberSpec("cc", Role.CLEARING_CENTER), MemberSpec("sp", Role.SERVICE_PROVIDER),
               MemberSpec("bank", Role.BANK), MemberSpec("studio", Role.CONTENT_PROVIDER),
               MemberSpec("press", Role.CONTENT_PROVIDER)]
    # the demo's deposits are for alice and bob: two devices each
    members += [MemberSpec(name, Role.DEVICE, user_id="alice" if i % 2 == 0 else "bob")
                for i, name in enumerate(DEVICES)]
    consortium = provision(workdir / "consortium", w3, deployment, bytes(authority.key), members=members,
                           rpc_url=state.rpc_urls[0], passphrase="clearhouse-demo", fast_kdf=True,
                           fund=lambda address: clique.fund([address], 10**21), rpc_urls=state.rpc_urls)
    state.rpc_url, state.deployment_path = state.rpc_urls[0], consortium.deployment_path
    processes = Processes(workdir)
    try:
        start_services(consortium, processes)
        deposit(consortium)
        publish_contents(consortium, state)
        yield Pipeline(clique, state, consortium, processes)
    finally:
        processes.stop_all()


@pytest.fixture()
def line(pipeline: Pipeline) -> Pipeline:
    pipeline.net.restore()
    return pipeline


def issue_and_download(line: Pipeline, device_id: str) -> Any:
    """An issue log of 1,000 (alice's devices: she deposited 2,000) or 500 (bob's: 1,000), then every content."""
    amount = 1_000 if DEVICES.index(device_id) % 2 == 0 else 500
    device = open_device(line.consortium, device_id)
    device.request_issue_log(amount)
    for spec in CONTENTS:
        device.download(line.state.published[spec.name].content_id, 1)
    wait_issue_log_final(line, device.balance().serial)
    return device


def wait_issue_log_final(line: Pipeline, serial: bytes) -> None:
    """Until the serial is on chain at the finality depth (6): the SP accepts usage only of a final serial
    (not_final before), so a test that stalls or splits the chain right after issuing must wait for it first."""
    from offchain.chain import ClearhouseChain, Deployment
    from offchain.transport.wiring import final_views_for

    chain = ClearhouseChain(connect(line.urls()), Deployment.load(line.consortium.deployment_path), b"\x01" * 32)
    assert final_views_for(chain, None, wait_s=WAIT_S).issue_log(serial).exists


def use_and_upload(line: Pipeline, device: Any, names: tuple[str, ...]) -> None:
    for name in names:
        use(device, line.state, name)
    device.upload()


def settled_seq(line: Pipeline, serial: bytes) -> int:
    from offchain.chain import ClearhouseChain, Deployment

    chain = ClearhouseChain(connect(line.urls()), Deployment.load(line.consortium.deployment_path), b"\x01" * 32)
    return chain.issue_log(serial).next_seq


# --- the tests ---------------------------------------------------------------------------------------------------
def test_one_of_four_down_pipeline_settles_pays_and_reconciles(line: Pipeline, tmp_path: Path) -> None:
    line.net.stop_node(1)
    line.net.wait_blocks(2)  # three signers keep sealing
    device = issue_and_download(line, "d-one-down")
    try:
        use_and_upload(line, device, ("Song: Night Drive", "Article: Offline Money", "Film: The Ledger"))
    finally:
        device.close()
    line.quiesce_and_reconcile(tmp_path / "audit")
    finals = dict(line.cc_rows("SELECT state, count(*) FROM cc_chain_txs GROUP BY state"))
    assert finals.get("final", 0) >= 2, finals  # the issue log and the settlement at least, each at depth 6


def test_two_of_four_down_chain_stalls_agents_keep_working_then_catch_up(line: Pipeline, tmp_path: Path) -> None:
    device = issue_and_download(line, "d-stall")
    try:
        line.net.stop_node(0)
        line.net.stop_node(1)
        line.net.wait_stalled(nodes=[2, 3])
        use_and_upload(line, device, ("Article: Offline Money", "Song: Night Drive"))  # device and SP keep working
        serial = device.balance().serial
        _wait_for("the CC to hold the stalled usage logs",
                  lambda: line.cc_rows(f"SELECT count(*) FROM receive_logs WHERE serial = x'{serial.hex()}'")[0][0]
                  >= 1, WAIT_S, "see sp.log and cc.log")
        assert settled_seq(line, serial) == 0  # nothing settles while the chain stalls
        for name in ("cc", "sp", "bank"):
            line.processes.check_alive(name)
    finally:
        device.close()
    line.net.start_node(0)
    line.net.start_node(1)
    line.quiesce_and_reconcile(tmp_path / "audit")


def test_partition_reorg_undoes_a_settlement_the_cc_repairs_it_once(line: Pipeline, tmp_path: Path) -> None:
    net = line.net
    device = issue_and_download(line, "d-partition")
    try:
        losers, winners = hold_sealing_and_pick_sides(net, with_node=ORDER[0])
        net.partition([winners, losers])
        use_and_upload(line, device, ("Film: The Ledger",))
        serial = device.balance().serial
        sent: list[str] = []

        def settle_tx_in_losers_pool() -> bool:
            sent[:] = [tx for (tx,) in line.cc_rows("SELECT tx_hash FROM settlement_outbox WHERE status = 'sent'")]
            return bool(sent) and rpc(net.nodes[ORDER[0]].rpc_url, "eth_getTransactionByHash", [sent[0]]) is not None

        _wait_for("the CC's settle transaction in the losing side's pool", settle_tx_in_losers_pool, WAIT_S,
                  "see cc.log")
        net.start_sealing(losers)  # the losing side seals it (at most two blocks, then it stalls)
        try:
            _wait_for("the settlement included on the losing side",
                      lambda: _next_seq_at(line, ORDER[0], serial) >= 1, WAIT_S, "see cc.log")
        except Exception as exc:  # say what the losing side holds
            pools = {i: rpc(net.nodes[i].rpc_url, "txpool_inspect") for i in losers}
            raise AssertionError(f"{exc}; sent {sent}; heads {[net.head(i) for i in range(4)]}; "
                                 f"losers {losers}; pools {pools}") from exc
        _wait_for("the CC to record the settlement as included", lambda: bool(line.cc_rows(
            "SELECT 1 FROM cc_chain_txs WHERE kind = 'settlement' AND state = 'included'")), WAIT_S, "see cc.log")
        net.start_sealing(winners)
        net.heal(prefer=winners)  # the losers are rewound: their blocks (and the settlement in them) are undone
    finally:
        device.close()
    line.quiesce_and_reconcile(tmp_path / "audit")
    reorged = line.cc_rows("SELECT kind, state, reorgs FROM cc_chain_txs WHERE reorgs > 0")
    assert any(kind == "settlement" for kind, _state, _n in reorged), reorged
    assert all(state == "final" for _kind, state, _n in reorged), reorged
    cc_log = (line.processes.workdir / "cc.log").read_text(errors="replace")
    assert "finality.reorged" in cc_log


def hold_sealing_and_pick_sides(net: CliqueNetwork, *, with_node: int) -> tuple[list[int], list[int]]:
    """Stop sealing everywhere, then split 2-2 so that each side holds exactly one of the last two sealers: each
    side may then seal at least one block (a Clique signer waits floor(N/2) blocks after its own), so the losing
    side can include the CC's transaction and the winning side can outgrow the fork point."""
    head = net.hold_sealing(timeout_s=WAIT_S)[0]
    by_signer = {n.signer: n.index for n in net.nodes}
    recent = {by_signer[to_checksum(rpc(net.nodes[0].rpc_url, "clique_getSigner", [hex(b)]))] for b in (head, head - 1)}
    others = [i for i in range(4) if i != with_node]
    partner = next(i for i in others if (i in recent) != (with_node in recent))
    losers = sorted([with_node, partner])
    return losers, [i for i in range(4) if i not in losers]


def to_checksum(address: str) -> str:
    from eth_utils import to_checksum_address

    return to_checksum_address(address)


def test_failover_cc_moves_to_another_node_when_its_node_stops(line: Pipeline, tmp_path: Path) -> None:
    device = issue_and_download(line, "d-failover")
    try:
        use_and_upload(line, device, ("Song: Night Drive", "Article: Offline Money"))
        line.net.stop_node(ORDER[0])  # the node every service talks to
    finally:
        device.close()
    line.quiesce_and_reconcile(tmp_path / "audit")
    cc_log = (line.processes.workdir / "cc.log").read_text(errors="replace")
    assert f"rpc failover: {line.net.rpc_urls[ORDER[0]]}" in cc_log


def _next_seq_at(line: Pipeline, node: int, serial: bytes) -> int:
    from offchain.chain import ClearhouseChain, Deployment

    chain = ClearhouseChain(web3_for(line.net.rpc_urls[node]), Deployment.load(line.consortium.deployment_path),
                            b"\x01" * 32)
    return chain.issue_log(serial).next_seq
