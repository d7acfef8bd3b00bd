"""A withholding SP cannot block a serial forever (issue 9, item 5), with every service in its own process.

Alice's phone uses content from two SPs: `sp-hold` acknowledges her first two batches (seqs 0 and 1) and never
forwards them (its `cc_url` points at a closed port), the honest `sp` forwards seq 2, which then waits on the gap.
The phone keeps each SP's signed ack, and after the withhold window (anvil's clock is advanced, nothing sleeps)
sends a SkipRange with it over HTTP (`DeviceClient.skip_withheld`, `POST /v1/skips`); seq 2 then settles, the
held fees are the withheld batches', and the reconciler is clean. Bob's usage through the honest SP settles
throughout. Each refusal of the route is asserted with its named error, beside the same client's valid request.
The module snapshots anvil before its deployment and reverts it (and its clock) at the end.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner
from web3 import Web3

from offchain.cli import main
from offchain.clearing_center.skips import RELEASE_PATH, SKIP_PATH, WITHHOLD_WINDOW_S
from offchain.content_provider.publisher import ContentProvider, content_id_for
from offchain.core.errors import (ContractReverted, IdentityMismatch, MalformedMessage, NotFound, SequenceError,
                                  WrongRole)
from offchain.core.messages import SkipRange, sign
from offchain.core.settings import DeviceSettings, load_settings
from offchain.core.types import Role, to_hex
from offchain.device.client import DeviceClient
from offchain.device.secure_module import KeptAck
from offchain.operator import reconcile
from offchain.operator.audit import open_index
from offchain.operator.provision import DEFAULT_MEMBERS, Consortium, MemberSpec
from offchain.transport.client import SyncJsonClient
from offchain.trust.certs import Envelope
from withholding_sp import HOLD, provision_with_withholding_sp, start_withholding_sp

PRICE = 250
DEPOSIT = 10_000
CAP = 5_000
MEMBERS = (*DEFAULT_MEMBERS, MemberSpec("bob-tablet", Role.DEVICE, user_id="bob"))

Services = Any  # tests/services/conftest.py Services
Flow = Any  # tests/services/conftest.py Flow


@pytest.fixture(scope="module")
def timeline(w3: Web3, revert_chain: Any) -> Iterator[None]:
    """Snapshot anvil before this module's deployment; revert it (clock back on the wall clock) afterwards, so
    the seven days this module adds never reach another module."""
    box = [w3.provider.make_request("evm_snapshot", [])["result"]]
    yield
    revert_chain(w3, box)


@pytest.fixture(scope="module")
def consortium(timeline: None, w3: Web3, compiled: dict, actors: dict,
               tmp_path_factory: pytest.TempPathFactory) -> Consortium:
    """The services' consortium plus `sp-hold`, a second SP whose forwarder can never reach the CC."""
    return provision_with_withholding_sp(w3, actors, tmp_path_factory.mktemp("skips"), MEMBERS)


@pytest.fixture(scope="module")
def running(flow: Flow) -> Flow:
    return start_withholding_sp(flow)


@pytest.fixture(scope="module")
def story(running: Flow) -> dict[str, Any]:
    return {}


def _publish(flow: Flow, name: str, sp: str) -> None:
    studio = flow.consortium.member("studio")
    tool = ContentProvider(studio.credentials(), flow.services.chain("studio", flow.w3),
                           flow.services.client("studio", sp))
    tool.publish(name.encode() * 50, content_id=content_id_for(name), version=1, price=PRICE,
                 payees=[(studio.eth_address, 10_000)], title=name)


def _device(flow: Flow, member_id: str, sp: str) -> DeviceClient:
    consortium = flow.consortium
    member = consortium.member(member_id)
    settings = load_settings(DeviceSettings, consortium.settings_paths[member_id])
    transport = SyncJsonClient(consortium.urls[sp], str(member.cert_path), str(member.key_path),
                               str(consortium.root_path))
    return DeviceClient.from_settings(settings, consortium.passphrase, member.user_id, sp=transport)


def _use_and_upload(flow: Flow, member_id: str, sp: str, film: str, uses: int, *, max_logs: int = 1024,
                    issue: bool = False) -> int:
    device = _device(flow, member_id, sp)
    try:
        if issue:
            device.request_issue_log(CAP)
        device.download(content_id_for(film), 1)
        for _ in range(uses):
            device.use(content_id_for(film), 1)
        return device.upload(max_logs=max_logs).batches
    finally:
        device.close()


def _chain_now(flow: Flow) -> int:
    return int(flow.w3.eth.get_block("latest")["timestamp"])


def _kept(flow: Flow, member_id: str, state: str | None = "open") -> list[KeptAck]:
    device = _device(flow, member_id, "sp")
    try:
        return device.module.kept_acks(state)
    finally:
        device.close()


def _skip_body(flow: Flow, member_id: str, ack: KeptAck, *, receive_log: dict[str, Any] | None = None,
               skip_range: dict[str, Any] | None = None) -> dict[str, Any]:
    """The body `skip_withheld` sends, signed by the member's own secure module (parts replaceable)."""
    device = _device(flow, member_id, "sp")
    try:
        skip, signature = device.module.sign_skip(ack, flow.consortium.domain)
    finally:
        device.close()
    cert = flow.consortium.member(member_id).cert_path.read_text()
    envelope = Envelope(kind=skip.PRIMARY_TYPE, message=skip.to_json(), signature=to_hex(signature), certificate=cert)
    return {"skip_range": skip_range or envelope.to_json(), "receive_log": receive_log or ack.receive_log}


def _post_skip(flow: Flow, member_id: str, body: dict[str, Any]) -> dict[str, Any]:
    return flow.services.client(member_id, "cc").post(SKIP_PATH, body)


# --- the story --------------------------------------------------------------------------------------------------
def test_device_keeps_each_sps_signed_ack(running: Flow, story: dict[str, Any]) -> None:
    flow = running
    flow.deposit("skip-alice", "alice", DEPOSIT)
    flow.deposit("skip-bob", "bob", DEPOSIT)
    _publish(flow, "held-film", HOLD)
    _publish(flow, "open-film", "sp")
    # seqs 0 and 1 through the withholding SP, one batch each (two acks), then seq 2 through the honest SP
    assert _use_and_upload(flow, "alice-phone", HOLD, "held-film", 2, max_logs=1, issue=True) == 2
    assert _use_and_upload(flow, "alice-phone", "sp", "open-film", 1) == 1
    assert _use_and_upload(flow, "bob-tablet", "sp", "open-film", 1, issue=True) == 1
    acks = _kept(flow, "alice-phone")
    hold, honest = (flow.consortium.member(name).eth_address for name in (HOLD, "sp"))
    assert [(a.first_seq, a.count, a.receiver, a.total) for a in acks] == [
        (0, 1, hold, PRICE), (1, 1, hold, PRICE), (2, 1, honest, PRICE)]
    for ack in acks:  # the proof: the SP's own signature over a ReceiveLog of that batch and this device
        receive_log = Envelope.from_json(ack.receive_log).decode()
        assert (receive_log.usage_batch, receive_log.received_at) == (ack.usage_batch, ack.received_at)
    story["serial"] = acks[0].serial
    story["acks"] = acks


def test_sp2_batch_waits_on_the_gap_while_bob_settles(running: Flow, story: dict[str, Any]) -> None:
    chain = running.chain()
    bob = _kept(running, "bob-tablet")[0]
    running.wait_for(lambda: chain.issue_log(bob.serial).next_seq == 1, what="bob's usage settled")
    assert chain.issue_log(story["serial"]).next_seq == 0  # seq 2 is held back by the withheld seqs 0 and 1
    story["bob"] = bob


def test_skip_before_the_window_refused_with_the_chains_due_time(running: Flow, story: dict[str, Any]) -> None:
    first = story["acks"][0]
    # `clearhouse device skip`: by the device's own clock nothing is due yet, so nothing is sent
    command = ["device", "--config", str(running.consortium.settings_paths["alice-phone"]), "skip"]
    env = {"CLEARHOUSE_DEVICE_PASSPHRASE": running.consortium.passphrase, "COLUMNS": "200"}
    as_json = CliRunner(mix_stderr=False).invoke(main, [*command, "--json"], env=env)
    assert as_json.exit_code == 0, as_json.stderr
    doc = json.loads(as_json.stdout)
    assert (doc["skipped"], doc["settled"]) == ([], [])
    assert [(a["first_seq"], a["state"]) for a in doc["waiting"]] == [(0, "open"), (1, "open"), (2, "open")]
    table = CliRunner(mix_stderr=False).invoke(main, command, env=env)
    assert table.exit_code == 0 and table.stdout.startswith("Batches acknowledged by a service provider")
    with pytest.raises(ContractReverted) as refused:  # sent anyway: the chain's clock decides
        _post_skip(running, "alice-phone", _skip_body(running, "alice-phone", first))
    assert refused.value.error_name == "WithholdWindowOpen"
    assert str(first.received_at + WITHHOLD_WINDOW_S) in str(refused.value.error_args)  # nested fields travel as text
    assert running.chain().issue_log(story["serial"]).next_seq == 0


def test_after_the_window_refusals_are_named(running: Flow, story: dict[str, Any]) -> None:
    running.w3.provider.make_request("evm_increaseTime", [WITHHOLD_WINDOW_S + 1])
    running.w3.provider.make_request("evm_mine", [])
    first, second, honest = story["acks"]
    # wrong kind: the SP's receive log, sealed by the device, where its SkipRange belongs
    alice = running.consortium.member("alice-phone")
    misplaced = Envelope.seal(Envelope.from_json(first.receive_log).decode(), running.consortium.domain,
                              alice.eth_private_key(), alice.cert_path.read_bytes())
    with pytest.raises(MalformedMessage) as kind:
        _post_skip(running, "alice-phone", _skip_body(running, "alice-phone", first,
                                                      skip_range=misplaced.to_json()))
    assert (kind.value.field, kind.value.type) == ("kind", "ReceiveLog")
    # the ack of another SP (the honest one's, of seq 2) for the withheld range
    with pytest.raises(IdentityMismatch) as other_sp:
        _post_skip(running, "alice-phone", _skip_body(running, "alice-phone", first, receive_log=honest.receive_log))
    assert (other_sp.value.expected, other_sp.value.got) == (first.receiver, honest.receiver)
    # the same SP's ack of another batch (seq 1's for seq 0)
    with pytest.raises(MalformedMessage) as other_batch:
        _post_skip(running, "alice-phone", _skip_body(running, "alice-phone", first, receive_log=second.receive_log))
    assert other_batch.value.reason == "receive log mismatch"
    # not the serial's device: bob signs a SkipRange of alice's range with his own key and certificate
    bob = running.consortium.member("bob-tablet")
    skip = SkipRange(serial=first.serial, first_seq=0, count=1, receiver=first.receiver, total=PRICE,
                     usage_batch=first.usage_batch, received_at=first.received_at)
    envelope = Envelope(kind="SkipRange", message=skip.to_json(), certificate=bob.cert_path.read_text(),
                        signature=to_hex(sign(skip, running.consortium.domain, bob.eth_private_key())))
    with pytest.raises(IdentityMismatch) as not_owner:
        _post_skip(running, "bob-tablet", {"skip_range": envelope.to_json(), "receive_log": first.receive_log})
    assert (not_owner.value.expected, not_owner.value.got) == (
        running.consortium.member("alice-phone").eth_address, bob.eth_address)
    # an earlier range is unsettled: seq 1 cannot be skipped before seq 0
    with pytest.raises(SequenceError) as gap:
        _post_skip(running, "alice-phone", _skip_body(running, "alice-phone", second))
    assert (gap.value.expected, gap.value.got) == (0, 1)
    # a range the chain settled: bob's batch, forwarded by the honest SP
    with pytest.raises(SequenceError) as settled:
        _post_skip(running, "bob-tablet", _skip_body(running, "bob-tablet", story["bob"]))
    assert (settled.value.expected, settled.value.got) == (1, 0)
    # wrong kind of caller: the SP's own certificate on the device route
    with pytest.raises(WrongRole) as wrong_role:
        running.services.client("sp", "cc").post(SKIP_PATH, _skip_body(running, "alice-phone", first))
    assert wrong_role.value.expected_role is not None
    assert running.chain().issue_log(first.serial).next_seq == 0  # nothing was skipped by any of them


def test_device_skips_the_withheld_ranges_and_sp2_batch_settles(running: Flow, story: dict[str, Any]) -> None:
    """The positive control of the refusals above: the same client, the same route, valid input."""
    chain = running.chain()
    device = _device(running, "alice-phone", "sp")
    try:
        result = device.skip_withheld(now=_chain_now(running), release=False)
    finally:
        device.close()
    assert [a.first_seq for a in result.skipped] == [0, 1] and result.released == ()
    # seq 2 is the honest SP's: held by the CC (waiting) or, if the worker was quicker, settled already
    assert [a.first_seq for a in result.waiting + result.settled] == [2]
    serial = story["serial"]
    running.wait_for(lambda: chain.issue_log(serial).next_seq == 3, what="seq 2 settled after the skip")
    log = chain.issue_log(serial)
    assert log.spent == 3 * PRICE
    hold = running.consortium.member(HOLD).eth_address
    assert chain.held_fees(hold) == 2 * PRICE
    assert chain.held_fees(running.consortium.member("sp").eth_address) == 0
    assert [a.first_seq for a in _kept(running, "alice-phone", "skipped")] == [0, 1]
    # the same request again: the same answer, from the RangeSkipped event (nothing sent)
    again = _post_skip(running, "alice-phone", _skip_body(running, "alice-phone", story["acks"][0]))
    assert (again["status"], again["first_seq"], again["next_seq"]) == ("skipped", 0, 3)


@pytest.mark.parametrize("member_id, settled_seqs", [("bob-tablet", [0]), ("alice-phone", [2])])
def test_device_resolves_acks_of_settled_batches(running: Flow, story: dict[str, Any], member_id: str,
                                                 settled_seqs: list[int]) -> None:
    device = _device(running, member_id, "sp")
    try:
        result = device.skip_withheld(now=_chain_now(running), release=False)
    finally:
        device.close()
    if member_id == "alice-phone" and not result.settled:  # the skip run above already found seq 2 settled
        assert [a.first_seq for a in _kept(running, member_id, "settled")] == settled_seqs
    else:
        assert ([a.first_seq for a in result.settled], result.skipped) == (settled_seqs, ())
    assert _kept(running, member_id) == []


def _quiet(flow: Flow) -> None:
    """Wait until every settled fee is requested and every transfer confirmed: the CC has nothing in flight."""
    chain = flow.chain()
    policies = [e["args"]["policyId"] for e in chain.contract.events.PolicyRegistered().get_logs(from_block=0)]
    flow.wait_for(lambda: all(chain.policy(p).requested == chain.policy(p).settled for p in policies),
                  what="every settled fee requested")
    flow.wait_for(lambda: all(chain.transfer_request(rid).confirmed for rid, _p, _a in flow.transfer_requests()),
                  what="every transfer confirmed")


def _report(flow: Flow, *, with_books: bool) -> reconcile.Report:
    consortium = flow.consortium
    with open_index(rpc_url=consortium.rpc_url, deployment_path=consortium.deployment_path,
                    cache_dir=consortium.workdir / "audit-cache") as index:
        chain = reconcile.chain_facts(index)
    if not with_books:
        return reconcile.reconcile(chain, now=_chain_now(flow))
    cc_db = json.loads(consortium.settings_paths["cc"].read_text())["database_url"]
    bank_db = json.loads(consortium.settings_paths["bank"].read_text())["database_url"]
    return reconcile.reconcile(chain, reconcile.cc_facts(cc_db), reconcile.bank_facts(bank_db),
                               now=_chain_now(flow))


def test_reconciler_reports_the_held_fees_of_the_skipped_ranges(running: Flow, story: dict[str, Any]) -> None:
    _quiet(running)
    report = _report(running, with_books=False)
    assert report.clean, report.to_json()["unexplained"]
    assert (report.totals["skipped"], report.totals["released"], report.totals["held_fees"]) == (500, 0, 500)
    held = [d for d in report.in_flight if d.area == "held_fees"]
    assert [(d.key, d.chain) for d in held] == [(running.consortium.member(HOLD).eth_address, 2 * PRICE)]


def test_release_refusals_are_named(running: Flow, story: dict[str, Any]) -> None:
    first, _second, honest = story["acks"]
    device = _device(running, "alice-phone", "sp")
    try:
        batch, signature = device.module.acked_batch(first, running.consortium.domain)
        never_skipped, never_sig = device.module.acked_batch(honest, running.consortium.domain)
    finally:
        device.close()
    client = running.services.client("alice-phone", "cc")
    body = {"usage_batch": batch.to_json(), "device_signature": to_hex(signature), "receive_log": first.receive_log}
    with pytest.raises(IdentityMismatch) as other_sp:  # the honest SP's ack for the withheld batch
        client.post(RELEASE_PATH, {**body, "receive_log": honest.receive_log})
    assert (other_sp.value.expected, other_sp.value.got) == (first.receiver, honest.receiver)
    with pytest.raises(NotFound) as not_skipped:  # seq 2 settled through its SP: there is nothing to release
        client.post(RELEASE_PATH, {"usage_batch": never_skipped.to_json(), "device_signature": to_hex(never_sig),
                                   "receive_log": honest.receive_log})
    assert (not_skipped.value.seq, not_skipped.value.serial) == (2, to_hex(first.serial))
    with pytest.raises(IdentityMismatch) as not_owner:  # bob presents alice's batch
        running.services.client("bob-tablet", "cc").post(RELEASE_PATH, body)
    assert not_owner.value.expected == running.consortium.member("alice-phone").eth_address
    assert running.chain().held_fees(first.receiver) == 2 * PRICE  # nothing was released by any of them


def test_device_releases_the_skipped_batches_and_the_payees_are_paid(running: Flow, story: dict[str, Any]) -> None:
    """The positive control of the release refusals: the device's own copy of each skipped batch settles."""
    chain = running.chain()
    held_film = chain.policy(messages_policy_id("held-film"))
    assert held_film.settled == 0  # the withheld uses were charged to alice's cap and credited to no one
    device = _device(running, "alice-phone", "sp")
    try:
        result = device.skip_withheld(now=_chain_now(running))
    finally:
        device.close()
    assert [a.first_seq for a in result.released] == [0, 1] and result.skipped == ()
    assert chain.held_fees(running.consortium.member(HOLD).eth_address) == 0
    assert chain.policy(messages_policy_id("held-film")).settled == 2 * PRICE
    log = chain.issue_log(story["serial"])
    assert (log.next_seq, log.spent) == (3, 3 * PRICE)  # the cap is not charged twice
    assert [a.first_seq for a in _kept(running, "alice-phone", "released")] == [0, 1]
    _quiet(running)  # the CC requests the released fees: the payees are paid


def test_reconciler_accounts_for_the_skipped_and_released_ranges(running: Flow, story: dict[str, Any]) -> None:
    _quiet(running)
    running.services.stop("cc")  # a quiet CC: its database is not read mid-round
    report = _report(running, with_books=True)
    assert report.clean, report.to_json()["unexplained"]
    assert (report.totals["skipped"], report.totals["released"], report.totals["held_fees"]) == (500, 500, 0)
    assert report.totals["settled"] == report.totals["requested"] == report.totals["confirmed"] == 4 * PRICE  # alice 3, bob 1
    assert [d for d in report.in_flight if d.area == "held_fees"] == []


def messages_policy_id(film: str) -> bytes:
    from offchain.core.messages import policy_id

    return policy_id(content_id_for(film), 1)
