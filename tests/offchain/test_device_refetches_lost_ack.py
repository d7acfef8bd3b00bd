"""A device whose upload answer was lost gets the SP's signed receipt back (GET /v1/usage/acks) when its re-formed
batch is answered DuplicateMessage, and keeps it; without processes (a stub SP that keeps what it acked, a real
wallet). The honest answer is kept first (positive control), then each answer that proves nothing is refused with
its named error, and nothing is marked uploaded or kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from devicekit import CONTENT_ID, DOMAIN, PASSPHRASE, device_home

from offchain.core.errors import DuplicateMessage, IdentityMismatch, MalformedMessage, NotFound, ServiceUnavailable
from offchain.core.messages import ReceiveLog, UsageBatch
from offchain.core.types import Role, to_hex
from offchain.device.client import DeviceClient
from offchain.device.secure_module import SecureModule
from offchain.trust.certs import CertificateVerifier, Envelope, MemberIdentity

Member = Any  # tests/offchain/conftest.py Member


@dataclass
class KeepingServiceProvider:
    """Acks each upload with a ReceiveLog sealed by `signer` and keeps it; a batch over seqs it holds is
    DuplicateMessage (with highest_received, as the SP answers its own device). `lose_next` processes the next
    upload and loses its answer; `mode` plants a fault in the receive logs answer."""

    identity: MemberIdentity
    signer: Member
    payer: str
    mode: str = "honest"
    lose_next: bool = False
    other: Member = None  # another SP, for the "other_sp" fault
    batches: list[tuple[int, int, dict[str, Any]]] = field(default_factory=list)
    asked: list[str] = field(default_factory=list)

    def server_identity(self, verifier: Any, expected_role: Role | None = None) -> MemberIdentity:
        return self.identity

    def post(self, path: str, body: Any) -> Any:
        batch = UsageBatch.from_json(body["batch"])
        highest = max((first + count - 1 for first, count, _e in self.batches), default=-1)
        if batch.first_seq <= highest:
            raise DuplicateMessage("seqs already received", serial=batch.serial, first_seq=batch.first_seq,
                                   highest_received=highest)
        envelope = Envelope.seal(ReceiveLog(usage_batch=batch.struct_hash(), payer=self.payer,
                                            received_at=1_700_000_000 + len(self.batches)),
                                 DOMAIN, self.signer.eth_key, self.signer.credentials.cert_pem).to_json()
        self.batches.append((batch.first_seq, batch.count, envelope))
        if self.lose_next:
            self.lose_next = False
            raise ServiceUnavailable("the answer was lost", reason="connection closed")
        return {"receive_log_id": "0x" + "00" * 32, "acked_through_seq": batch.first_seq + batch.count - 1,
                "receive_log": envelope}

    def get(self, path: str) -> Any:
        self.asked.append(path)
        if self.mode == "none":
            raise NotFound("this device uploaded no usage batch of this serial from this seq")
        acks = [{"first_seq": first, "count": count, "receive_log_id": "0x" + "00" * 32, "receive_log": envelope}
                for first, count, envelope in self.batches]
        if self.mode == "empty":
            acks = []
        if self.mode == "wider":  # claims a range longer than the batch the device signed
            acks[0]["count"] += 5
        if self.mode in ("other_batch", "other_sp"):  # a receipt of another batch, or sealed by another SP
            signer = self.other if self.mode == "other_sp" else self.signer
            original = Envelope.from_json(acks[0]["receive_log"]).decode()
            forged = ReceiveLog(usage_batch=bytes(32) if self.mode == "other_batch" else original.usage_batch,
                                payer=self.payer, received_at=original.received_at)
            acks[0]["receive_log"] = Envelope.seal(forged, DOMAIN, signer.eth_key,
                                                   signer.credentials.cert_pem).to_json()
        return {"acks": acks}

    def close(self) -> None:
        pass


@pytest.fixture
def parts(tmp_path: Path, authority: Any, verifier: CertificateVerifier, device_member: Member,
          clearing_center_member: Member, content_provider_member: Member, service_provider_member: Member,
          member: Any) -> tuple[DeviceClient, KeepingServiceProvider]:
    home = device_home(tmp_path / "device", authority, device_member, clearing_center_member,
                       content_provider_member, service_provider_member, cap=3_000, price=300)
    sp = KeepingServiceProvider(verifier.verify(service_provider_member.credentials.cert_pem),
                                service_provider_member, device_member.address)
    sp.other = member(Role.SERVICE_PROVIDER, "sp-other")
    module = SecureModule.open(home.keystore_path, home.wallet_path, PASSPHRASE)
    device = DeviceClient(module, sp=sp, cc=sp, verifier=verifier, domain=DOMAIN,
                          cert_pem=device_member.credentials.cert_pem, user_id="alice", content_dir=home.content_dir,
                          registered_policy_of=lambda _policy_id: None)
    device.use(CONTENT_ID, 1)  # seq 0
    sp.lose_next = True
    with pytest.raises(ServiceUnavailable):  # the SP keeps seq 0 and signs its receipt; the answer is lost
        device.upload()
    assert device.module.kept_acks(None) == [] and device.balance().pending_count == 1
    device.use(CONTENT_ID, 1)  # seq 1: the next batch is 0..1, a different batch over a seq the SP holds
    yield device, sp
    module.close()


def test_lost_ack_is_fetched_again_and_kept_when_the_reformed_batch_is_a_duplicate(parts) -> None:
    device, sp = parts
    result = device.upload()
    assert (result.batches, result.logs) == (1, 1)  # seq 1 in a batch of its own, acked as usual
    assert sp.asked == [f"/v1/usage/acks?serial={to_hex(device.balance().serial)}&from_seq=0"]
    kept = device.module.kept_acks()
    assert [(a.first_seq, a.count, a.total, a.receiver) for a in kept] == [(0, 1, 300, sp.identity.eth_address),
                                                                          (1, 1, 300, sp.identity.eth_address)]
    assert kept[0].receive_log == sp.batches[0][2] and kept[0].received_at == 1_700_000_000  # the SP's original
    assert device.balance().pending_count == 0
    skip, _signature = device.module.sign_skip(kept[0], DOMAIN)  # the recovered ack is a skip's proof
    assert (skip.first_seq, skip.count, skip.total) == (0, 1, 300)


@pytest.mark.parametrize("mode, error, field", [("empty", MalformedMessage, "acks"),
                                                ("none", NotFound, None),
                                                ("wider", MalformedMessage, "count"),
                                                ("other_batch", MalformedMessage, "usageBatch"),
                                                ("other_sp", IdentityMismatch, None)])
def test_receive_logs_that_prove_nothing_are_refused_and_nothing_marked(parts, mode: str, error: type,
                                                                        field: str | None) -> None:
    device, sp = parts
    sp.mode = mode
    with pytest.raises(error) as refused:
        device.upload()
    if field is not None:
        assert refused.value.field == field
    assert device.balance().pending_count == 2 and device.module.kept_acks(None) == []
