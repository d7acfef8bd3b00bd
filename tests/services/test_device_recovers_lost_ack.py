"""A device that lost a withholding SP's ack can still skip that range (issue 9, item 5), every service in its
own process.

Alice's phone talks to `sp-hold` (an SP that acknowledges and never forwards: its `cc_url` is a closed port)
through a TCP fault proxy. The answer to her first upload (seq 0) is cut after the SP stored the batch and signed
its receive log; she uses the content again, and her next upload re-forms a batch over seqs 0..1, which the SP
answers DuplicateMessage (highest_received 0). The phone then fetches the SP's signed receive log of seq 0
(GET /v1/usage/acks, its own serial only), verifies it against the batch its own logs form, keeps it, and uploads
seq 1 alone. Bob asking for alice's receive logs is refused (IdentityMismatch), a serial not on chain NotFound,
beside alice's own request (the positive control). After the withhold window (anvil's clock, nothing sleeps) the
phone skips both ranges and releases them: the withheld fees reach the payees.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from web3 import Web3

from offchain.clearing_center.skips import WITHHOLD_WINDOW_S
from offchain.content_provider.publisher import ContentProvider, content_id_for
from offchain.core.errors import IdentityMismatch, NotFound, TransportError
from offchain.core.messages import policy_id
from offchain.core.settings import DeviceSettings, load_settings
from offchain.core.types import Role, to_hex
from offchain.device.client import DeviceClient
from offchain.operator.provision import DEFAULT_MEMBERS, Consortium, MemberSpec
from offchain.operator.sim.proxy import FaultProxy, LinkTls
from offchain.transport.client import SyncJsonClient
from offchain.trust import tls
from offchain.trust.certs import Envelope
from withholding_sp import HOLD, provision_with_withholding_sp, start_withholding_sp

PRICE = 250
DEPOSIT = 10_000
CAP = 5_000
FILM = "lost-ack-film"
LINK = "alice->hold"
MEMBERS = (*DEFAULT_MEMBERS, MemberSpec("bob-tablet", Role.DEVICE, user_id="bob"))

Flow = Any  # tests/services/conftest.py Flow


@pytest.fixture(scope="module")
def timeline(w3: Web3, revert_chain: Any) -> Iterator[None]:
    """Snapshot anvil before this module's deployment; revert it (and its clock) afterwards."""
    box = [w3.provider.make_request("evm_snapshot", [])["result"]]
    yield
    revert_chain(w3, box)


@pytest.fixture(scope="module")
def consortium(timeline: None, w3: Web3, compiled: dict, actors: dict,
               tmp_path_factory: pytest.TempPathFactory) -> Consortium:
    """The services' consortium plus `sp-hold`, a second SP whose forwarder can never reach the CC."""
    return provision_with_withholding_sp(w3, actors, tmp_path_factory.mktemp("lost-ack"), MEMBERS)


@pytest.fixture(scope="module")
def running(flow: Flow) -> Flow:
    return start_withholding_sp(flow)


@pytest.fixture(scope="module")
def proxy(running: Flow) -> Iterator[FaultProxy]:
    """alice-phone -> sp-hold through the fault proxy (TLS terminated with sp-hold's and alice's certificates)."""
    consortium = running.consortium
    root = consortium.root_path
    hold, alice = consortium.member(HOLD), consortium.member("alice-phone")
    with FaultProxy() as faults:
        faults.add(LINK, ("127.0.0.1", int(consortium.urls[HOLD].rsplit(":", 1)[1])),
                   tls=LinkTls(server=tls.server_ssl_context(hold.cert_path, hold.key_path, root),
                               client=tls.client_ssl_context(alice.cert_path, alice.key_path, root)))
        yield faults


@pytest.fixture(scope="module")
def story(proxy: FaultProxy) -> dict[str, Any]:
    return {}


def _device(flow: Flow, faults: FaultProxy) -> DeviceClient:
    consortium = flow.consortium
    member = consortium.member("alice-phone")
    settings = load_settings(DeviceSettings, consortium.settings_paths["alice-phone"])
    transport = SyncJsonClient(faults.url(LINK), str(member.cert_path), str(member.key_path),
                               str(consortium.root_path))
    return DeviceClient.from_settings(settings, consortium.passphrase, member.user_id, sp=transport)


def _publish(flow: Flow) -> None:
    studio = flow.consortium.member("studio")
    tool = ContentProvider(studio.credentials(), flow.services.chain("studio", flow.w3),
                           flow.services.client("studio", HOLD))
    tool.publish(FILM.encode() * 50, content_id=content_id_for(FILM), version=1, price=PRICE,
                 payees=[(studio.eth_address, 10_000)], title=FILM)


def _acks_path(serial: bytes, from_seq: int = 0) -> str:
    return f"/v1/usage/acks?serial={to_hex(serial)}&from_seq={from_seq}"


def test_lost_ack_is_fetched_again_and_kept(running: Flow, proxy: FaultProxy, story: dict[str, Any]) -> None:
    flow = running
    flow.deposit("lost-ack-alice", "alice", DEPOSIT)
    _publish(flow)
    device = _device(flow, proxy)
    try:
        device.request_issue_log(CAP)
        device.download(content_id_for(FILM), 1)
        device.use(content_id_for(FILM), 1)  # seq 0
        proxy.once(LINK, "cut", "/v1/usage")
        with pytest.raises(TransportError):  # the SP stored seq 0 and signed its receipt; the answer was cut
            device.upload()
        assert proxy.stats()[LINK].cut == 1
        assert device.module.kept_acks(None) == [] and device.balance().pending_count == 1
        assert flow.services.client("alice-phone", HOLD).get("/v1/status")["batches"]["pending"] == 1
        device.use(content_id_for(FILM), 1)  # seq 1: the next batch (0..1) is another batch over a seq it holds
        result = device.upload()
        serial = device.balance().serial
        kept = device.module.kept_acks()
        own_first = device.module.own_batch(serial, 0, 1)
    finally:
        device.close()
    assert (result.batches, result.logs) == (1, 1)  # seq 1 alone; seq 0's receipt came back, not a new batch
    hold = flow.consortium.member(HOLD).eth_address
    assert [(a.first_seq, a.count, a.receiver, a.total) for a in kept] == [(0, 1, hold, PRICE), (1, 1, hold, PRICE)]
    receipt = Envelope.from_json(kept[0].receive_log).decode()  # the SP's signature over seq 0's own batch
    assert own_first is not None and receipt.usage_batch == own_first.struct_hash() == kept[0].usage_batch
    assert flow.services.client("alice-phone", HOLD).get("/v1/status")["batches"]["pending"] == 2  # none twice
    story["serial"], story["acks"] = serial, kept


def test_receive_logs_only_for_the_serials_own_device(running: Flow, story: dict[str, Any]) -> None:
    serial, kept = story["serial"], story["acks"]
    own = running.services.client("alice-phone", HOLD).get(_acks_path(serial))  # the positive control
    assert [(a["first_seq"], a["count"], a["receive_log"]) for a in own["acks"]] == [
        (0, 1, kept[0].receive_log), (1, 1, kept[1].receive_log)]
    assert [a["first_seq"] for a in running.services.client("alice-phone", HOLD).get(
        _acks_path(serial, 1))["acks"]] == [1]
    bob = running.services.client("bob-tablet", HOLD)
    with pytest.raises(IdentityMismatch) as other_device:
        bob.get(_acks_path(serial))
    assert (other_device.value.expected, other_device.value.got) == (
        running.consortium.member("alice-phone").eth_address, running.consortium.member("bob-tablet").eth_address)
    with pytest.raises(NotFound) as not_on_chain:
        bob.get(_acks_path(os.urandom(32)))
    assert not_on_chain.value.seq == 0
    with pytest.raises(NotFound) as nothing_from:  # alice's own serial, past what she uploaded
        running.services.client("alice-phone", HOLD).get(_acks_path(serial, 2))
    assert (nothing_from.value.serial, nothing_from.value.seq) == (to_hex(serial), 2)


def test_recovered_range_is_skipped_and_released_after_the_window(running: Flow, proxy: FaultProxy,
                                                                   story: dict[str, Any]) -> None:
    running.w3.provider.make_request("evm_increaseTime", [WITHHOLD_WINDOW_S + 1])
    running.w3.provider.make_request("evm_mine", [])
    chain = running.chain()
    serial = story["serial"]
    assert chain.issue_log(serial).next_seq == 0  # sp-hold never forwarded either batch
    device = _device(running, proxy)
    try:
        result = device.skip_withheld(now=int(running.w3.eth.get_block("latest")["timestamp"]))
    finally:
        device.close()
    assert [a.first_seq for a in result.skipped] == [0, 1]  # seq 0 with the receipt fetched again
    assert [a.first_seq for a in result.released] == [0, 1]
    log = chain.issue_log(serial)
    assert (log.next_seq, log.spent) == (2, 2 * PRICE)
    assert chain.held_fees(running.consortium.member(HOLD).eth_address) == 0
    assert chain.policy(policy_id(content_id_for(FILM), 1)).settled == 2 * PRICE
