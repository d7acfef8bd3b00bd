"""The clearing center's intake of SP-forwarded receive logs refuses every tampered item with its named error.

Each test calls `ClearingCenter.receive_logs` (what `POST /v1/receive-logs` runs after mTLS) with real signed
messages on anvil: one valid item (the positive control, on another serial of the same device) and one item
built by a tampering factory. The control must be accepted in the same call, so a CC that refuses everything
cannot pass; the tampered item's error is rebuilt from its wire form with `errors.from_payload` (the allow-list a
peer SP uses) and checked by class, code and fields. Nothing of the tampered item may be stored.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from test_clearing_center import PRICE, CcWorld, make_world

from offchain.clearing_center.bodies import ReceiveItem, RenewBody
from offchain.clearing_center.settlement import SettlementWorker
from offchain.core import errors, messages
from offchain.core.errors import (
    AllowanceExceeded,
    ClearhouseError,
    IdentityMismatch,
    IssueLogExpired,
    MalformedMessage,
    NotFound,
    SequenceError,
)
from offchain.core.messages import BalanceStatement, IssueLog, ReceiveLog, UsageBatch, UsageLog
from offchain.core.types import to_hex
from offchain.trust.certs import Envelope

CAP = 20 * PRICE  # the target issue log holds 20 usage logs


@dataclass
class Intake:
    """A CC with alice's deposits, the target issue log under attack and a control log on another serial."""

    world: CcWorld
    target: IssueLog
    control: IssueLog

    def batch(self, serial: bytes | None = None, first_seq: int = 0, count: int = 1, *, signer: str = "device",
              receiver: str | None = None, policy_id: bytes | None = None,
              used_at: int | None = None) -> tuple[UsageBatch, bytes]:
        """A usage batch of `count` logs on `serial` (default the target), signed by the `signer` actor."""
        world = self.world
        logs = [UsageLog(serial=self.target.serial if serial is None else serial, seq=first_seq + i,
                         policy_id=policy_id or world.policy_id, fee=PRICE,
                         receiver=receiver or world.peers["provider"].eth_address,
                         used_at=int(time.time()) if used_at is None else used_at) for i in range(count)]
        batch = UsageBatch.from_logs(logs)
        return batch, messages.sign(batch, world.domain, world.env.actors[signer].key)

    def item(self, batch: UsageBatch, device_sig: bytes, *, device_cert: str = "device", payer: str | None = None,
             about: bytes | None = None, sealed: Any = None, received_at: int | None = None) -> ReceiveItem:
        """The SP's receive item for `batch`, with one field tampered on request: the receive log's `payer` or
        `about` (the batch hash it names), or `sealed` (another message, SP-signed, in place of the receive log)."""
        world = self.world
        receive_log = sealed or ReceiveLog(usage_batch=about or batch.struct_hash(),
                                           payer=payer or world.peers[device_cert].eth_address,
                                           received_at=received_at or int(time.time()))
        envelope = Envelope.seal(receive_log, world.domain, world.env.actors["provider"].key,
                                 world.creds["provider"].cert_pem)
        return ReceiveItem(receive_log=envelope.to_json(), usage_batch=batch.to_json(),
                           device_signature=to_hex(device_sig),
                           device_certificate=world.creds[device_cert].cert_pem.decode())

    def control_item(self, first_seq: int = 0) -> ReceiveItem:
        return self.item(*self.batch(self.control.serial, first_seq))

    def refused(self, tampered: ReceiveItem, *, control_seq: int = 0) -> ClearhouseError:
        """Send the control and the tampered item in one call; the control is accepted, the tampered item
        rejected at index 1 and not stored. Returns its error as a peer rebuilds it from the answer."""
        before = self.world.store.settlement_counts()
        answer = self.world.receive(self.control_item(control_seq), tampered)
        assert len(answer["accepted"]) == 1, answer  # the positive control: the CC is up and accepts valid input
        [rejected] = answer["rejected"]
        assert rejected["index"] == 1
        after = self.world.store.settlement_counts()
        assert after.get("accepted", 0) == before.get("accepted", 0) + 1 and after.keys() <= {"accepted", "settled"}
        error = errors.from_payload(422, rejected, "cc")
        assert error.code == rejected["error"]
        return error


@pytest.fixture()
def intake(chain_env: Any, tmp_path: Path) -> Intake:
    world = make_world(chain_env, tmp_path)
    world.deposit("alice", 10_000)
    target, _ = world.issue("target", amount=CAP)
    control, _ = world.issue("control", amount=CAP)
    return Intake(world, target, control)


def declared(error: ClearhouseError) -> dict[str, Any]:
    """The error's declared fields as they travel (bytes as 0x-hex), without the rebuilt `remote_status`."""
    return error.to_payload()["fields"]


def addr(intake: Intake, name: str) -> str:
    return intake.world.peers[name].eth_address


# --- the receive log itself ------------------------------------------------------------------------------------
def test_intake_refuses_envelope_of_another_kind(intake: Intake) -> None:
    statement = BalanceStatement(serial=intake.target.serial, next_seq=0, spent=0, attested_at=int(time.time()))
    error = intake.refused(intake.item(*intake.batch(), sealed=statement))  # SP-signed, but not a ReceiveLog
    assert isinstance(error, MalformedMessage) and error.code == "message_malformed"
    assert declared(error) == {"type": "BalanceStatement", "field": "kind", "value": "BalanceStatement",
                            "reason": "wrong message type"}


def test_intake_refuses_batch_naming_another_receiver(intake: Intake) -> None:
    batch, sig = intake.batch(receiver=addr(intake, "bank"))  # the device paid another receiver, not this SP
    error = intake.refused(intake.item(batch, sig))
    assert isinstance(error, IdentityMismatch) and error.code == "identity_mismatch"
    assert declared(error) == {"expected": addr(intake, "provider"), "got": addr(intake, "bank")}


def test_intake_refuses_receive_log_about_another_batch(intake: Intake) -> None:
    batch, sig = intake.batch(first_seq=0, count=2)
    other, _ = intake.batch(first_seq=0, count=1)
    error = intake.refused(intake.item(batch, sig, about=other.struct_hash()))
    assert isinstance(error, MalformedMessage) and error.code == "message_malformed"
    assert declared(error) == {"type": "ReceiveLog", "field": "usageBatch", "value": to_hex(other.struct_hash()),
                            "reason": "hash mismatch"}


def test_intake_refuses_payer_not_the_batch_signer(intake: Intake) -> None:
    batch, sig = intake.batch()  # signed by alice's device, the receive log says bob's device paid
    error = intake.refused(intake.item(batch, sig, payer=addr(intake, "device2")))
    assert isinstance(error, IdentityMismatch) and error.code == "identity_mismatch"
    assert declared(error) == {"expected": addr(intake, "device"), "got": addr(intake, "device2")}


# --- the batch against the chain ---------------------------------------------------------------------------------
def test_intake_refuses_unknown_serial(intake: Intake) -> None:
    unknown = messages.keccak(b"no such serial")
    error = intake.refused(intake.item(*intake.batch(unknown)))
    assert isinstance(error, NotFound) and error.code == "not_found"
    assert declared(error) == {"serial": to_hex(unknown)}


def test_intake_refuses_signer_not_owning_the_serial(intake: Intake) -> None:
    batch, sig = intake.batch(signer="device2")  # bob's device signs usage on alice's serial, with its own cert
    error = intake.refused(intake.item(batch, sig, device_cert="device2"))
    assert isinstance(error, IdentityMismatch) and error.code == "identity_mismatch"
    assert declared(error) == {"expected": addr(intake, "device"), "got": addr(intake, "device2")}


def test_intake_refuses_unknown_policy(intake: Intake) -> None:
    unknown = messages.keccak(b"no such policy")
    error = intake.refused(intake.item(*intake.batch(policy_id=unknown)))
    assert isinstance(error, NotFound) and error.code == "not_found"
    assert declared(error) == {"policy_id": to_hex(unknown), "error": "UnknownPolicy"}


def test_intake_refuses_usage_after_expiry(intake: Intake) -> None:
    expires_at = intake.world.env.client("clearing_center").issue_log(intake.target.serial).expires_at
    assert expires_at == intake.target.expires_at
    batch, sig = intake.batch(first_seq=0, count=2, used_at=expires_at + 1)
    error = intake.refused(intake.item(batch, sig))
    assert isinstance(error, IssueLogExpired) and error.code == "issue_log_expired"
    assert declared(error) == {"serial": to_hex(intake.target.serial), "seq": 0, "used_at": expires_at + 1,
                            "expires_at": expires_at}


def test_intake_accepts_usage_at_the_expiry_second(intake: Intake) -> None:
    """The boundary of the check above: `used_at == expires_at` is still inside the log's life."""
    batch, sig = intake.batch(used_at=intake.target.expires_at)
    answer = intake.world.receive(intake.item(batch, sig))
    assert len(answer["accepted"]) == 1 and answer["rejected"] == []


# --- sequence and cap ------------------------------------------------------------------------------------------------
def settle_all(intake: Intake) -> None:
    report = SettlementWorker(intake.world.store, intake.world.env.client("clearing_center")).tick()
    assert report.rejected == {}


def test_intake_refuses_usage_already_settled(intake: Intake) -> None:
    first = intake.world.receive(intake.item(*intake.batch(first_seq=0, count=2)))
    assert len(first["accepted"]) == 1
    settle_all(intake)
    assert intake.world.env.client("clearing_center").issue_log(intake.target.serial).next_seq == 2
    replay, sig = intake.batch(first_seq=1, count=2)  # a new receive log whose first seq the chain already has
    error = intake.refused(intake.item(replay, sig), control_seq=0)
    assert isinstance(error, SequenceError) and error.code == "sequence_error"
    assert declared(error) == {"serial": to_hex(intake.target.serial), "expected": 2, "got": 1}


def test_intake_refuses_usage_beyond_a_closed_logs_sequence_limit(intake: Intake) -> None:
    world = intake.world
    statement = world.statement(intake.target.serial, 2, 2 * PRICE)  # 2 unsettled uses: a new serial, old closed
    answer = world.cc.renew(RenewBody(request_id="renew", statement=statement), world.peers["device"])
    assert answer["mode"] == "new_serial"
    closed = world.env.client("clearing_center").issue_log(intake.target.serial)
    assert closed.closed and closed.seq_limit == 2
    inside = world.receive(intake.item(*intake.batch(first_seq=0, count=2)))  # the attested two still come in
    assert len(inside["accepted"]) == 1
    beyond, sig = intake.batch(first_seq=2, count=1)  # one more on the closed serial: never attested
    error = intake.refused(intake.item(beyond, sig))
    assert isinstance(error, SequenceError) and error.code == "sequence_error"
    assert declared(error) == {"serial": to_hex(intake.target.serial), "expected": 2, "got": 3}


def test_intake_refuses_usage_beyond_the_cap_counting_held_logs(intake: Intake) -> None:
    held = intake.world.receive(intake.item(*intake.batch(first_seq=0, count=12)))  # 12 of 20 held, unsettled
    assert len(held["accepted"]) == 1
    over, sig = intake.batch(first_seq=12, count=9)  # 9 more: 21 logs, one over the cap
    error = intake.refused(intake.item(over, sig))
    assert isinstance(error, AllowanceExceeded) and error.code == "allowance_exceeded"
    assert declared(error) == {"serial": to_hex(intake.target.serial), "cap": CAP, "wanted": 21 * PRICE}
    exact, sig = intake.batch(first_seq=12, count=8)  # exactly up to the cap: accepted
    assert len(intake.world.receive(intake.item(exact, sig))["accepted"]) == 1


def test_intake_refuses_usage_beyond_the_cap_after_settlement(intake: Intake) -> None:
    """Settled spending counts through the chain's `spent`, not twice through the held rows."""
    assert len(intake.world.receive(intake.item(*intake.batch(first_seq=0, count=12)))["accepted"]) == 1
    settle_all(intake)
    fits, sig = intake.batch(first_seq=12, count=8)
    assert len(intake.world.receive(intake.item(fits, sig))["accepted"]) == 1  # 12 settled + 8 held = the cap
    over, sig = intake.batch(first_seq=20, count=1)
    error = intake.refused(intake.item(over, sig))
    assert isinstance(error, AllowanceExceeded)
    assert declared(error) == {"serial": to_hex(intake.target.serial), "cap": CAP, "wanted": 21 * PRICE}


# --- over mutual TLS ---------------------------------------------------------------------------------------------
def test_intake_over_mutual_tls_answers_each_items_named_error(intake: Intake) -> None:
    """The same refusals through the CC's HTTP app on a real mTLS socket (in-process, `build_app`), posted as the
    SP: the control is accepted and every tampered item comes back with its index, code and fields."""
    import asyncio

    from aiohttp import web

    from offchain.clearing_center.api import build_app
    from offchain.core.settings import ClearingCenterSettings
    from offchain.transport.client import JsonClient
    from offchain.trust import tls

    world = intake.world
    paths = {name: world.creds[name].write(world.tmp / "members" / name) for name in ("clearing_center", "provider")}
    world.env.deployment.write(world.tmp / "deployment.json")
    settings = ClearingCenterSettings(
        member_id="clearing_center", cert_path=paths["clearing_center"][0], key_path=paths["clearing_center"][1],
        ca_path=world.ca.root_path, eth_private_key="0x" + world.env.actors["clearing_center"].key.hex(),
        deployment_path=world.tmp / "deployment.json", port=0,
        database_url=world.store.engine.url.render_as_string(hide_password=False))
    unknown = messages.keccak(b"no such serial")
    items = [intake.control_item(),
             intake.item(*intake.batch(receiver=addr(intake, "bank"))),
             intake.item(*intake.batch(), payer=addr(intake, "device2")),
             intake.item(*intake.batch(unknown)),
             intake.item(*intake.batch(first_seq=0, count=21))]

    async def post() -> Any:
        app = build_app(settings, chain=world.env.client("clearing_center"), workers=False)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls.server_ssl_context(
            settings.cert_path, settings.key_path, settings.ca_path))
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        sp = JsonClient(f"https://127.0.0.1:{port}", tls.client_ssl_context(*paths["provider"], world.ca.root_path))
        try:
            return await sp.post("/v1/receive-logs", {"items": [item.model_dump(mode="json") for item in items]})
        finally:
            await sp.close()
            await runner.cleanup()

    answer = asyncio.run(post())
    assert len(answer["accepted"]) == 1
    got = [(r["index"], r["error"], r["fields"]) for r in answer["rejected"]]
    assert got == [
        (1, "identity_mismatch", {"expected": addr(intake, "provider"), "got": addr(intake, "bank")}),
        (2, "identity_mismatch", {"expected": addr(intake, "device"), "got": addr(intake, "device2")}),
        (3, "not_found", {"serial": to_hex(unknown)}),
        (4, "allowance_exceeded", {"serial": to_hex(intake.target.serial), "cap": CAP, "wanted": 21 * PRICE}),
    ]
    assert world.store.settlement_counts() == {"accepted": 1}
