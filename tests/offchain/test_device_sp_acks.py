"""The device keeps each SP's signed ack of an upload (its ReceiveLog Envelope) and refuses an ack that proves
nothing, without processes (stub SP transport, a real wallet): an honest ack is kept first (positive control),
then each bad ack is refused with its named error and nothing is marked uploaded or kept.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from devicekit import CONTENT_ID, DOMAIN, PASSPHRASE, device_home

from offchain.core.errors import IdentityMismatch, IssueLogRejected, MalformedMessage
from offchain.core.messages import ReceiveLog, UsageBatch
from offchain.core.types import Role
from offchain.device.client import DeviceClient
from offchain.device.secure_module import SecureModule
from offchain.trust.certs import CertificateVerifier, Envelope, MemberIdentity

Member = Any  # tests/offchain/conftest.py Member


@dataclass
class StubServiceProvider:
    """Presents `identity`; answers an upload with a ReceiveLog sealed by `signer` (`mode` plants a fault)."""

    identity: MemberIdentity
    signer: Member
    payer: str
    mode: str = "honest"

    def server_identity(self, verifier: Any, expected_role: Role | None = None) -> MemberIdentity:
        return self.identity

    def post(self, path: str, body: Any) -> Any:
        batch = UsageBatch.from_json(body["batch"])
        answer: dict[str, Any] = {"receive_log_id": "0x" + "00" * 32,
                                  "acked_through_seq": batch.first_seq + batch.count - 1}
        about = bytes(32) if self.mode == "other_batch" else batch.struct_hash()
        receive_log = ReceiveLog(usage_batch=about, payer=self.payer, received_at=1_700_000_000)
        if self.mode != "no_receive_log":
            answer["receive_log"] = Envelope.seal(receive_log, DOMAIN, self.signer.eth_key,
                                                  self.signer.credentials.cert_pem).to_json()
        return answer

    def close(self) -> None:
        pass


@pytest.fixture
def parts(tmp_path: Path, authority: Any, verifier: CertificateVerifier, device_member: Member,
          clearing_center_member: Member, content_provider_member: Member, service_provider_member: Member,
          member: Any) -> tuple[DeviceClient, StubServiceProvider, Member]:
    home = device_home(tmp_path / "device", authority, device_member, clearing_center_member,
                       content_provider_member, service_provider_member, cap=1_000, price=300)
    sp = StubServiceProvider(verifier.verify(service_provider_member.credentials.cert_pem), service_provider_member,
                             device_member.address)
    module = SecureModule.open(home.keystore_path, home.wallet_path, PASSPHRASE)
    device = DeviceClient(module, sp=sp, cc=sp, verifier=verifier, domain=DOMAIN,
                          cert_pem=device_member.credentials.cert_pem, user_id="alice", content_dir=home.content_dir,
                          registered_policy_of=lambda _policy_id: None)
    device.use(CONTENT_ID, 1)
    yield device, sp, member(Role.SERVICE_PROVIDER, "sp-other")
    module.close()


def test_honest_ack_is_kept_with_the_batch_it_proves(parts) -> None:
    device, sp, _other = parts
    assert device.upload().batches == 1
    (ack,) = device.module.kept_acks()
    assert (ack.first_seq, ack.count, ack.total, ack.receiver, ack.state) == (0, 1, 300, sp.identity.eth_address,
                                                                             "open")
    assert Envelope.from_json(ack.receive_log).decode().usage_batch == ack.usage_batch
    assert device.balance().pending_count == 0
    skip, signature = device.module.sign_skip(ack, DOMAIN)  # the module signs a skip of a kept ack only
    assert (skip.first_seq, skip.count, skip.total, len(signature)) == (0, 1, 300, 65)


@pytest.mark.parametrize("mode, error, field", [("no_receive_log", MalformedMessage, "receive_log"),
                                                ("other_batch", MalformedMessage, "usageBatch")])
def test_ack_that_proves_nothing_is_refused_and_nothing_marked(parts, mode: str, error: type, field: str) -> None:
    device, sp, _other = parts
    sp.mode = mode
    with pytest.raises(error) as refused:
        device.upload()
    assert refused.value.field == field
    assert device.balance().pending_count == 1 and device.module.kept_acks(None) == []


def test_ack_sealed_by_another_sp_than_the_tls_server_is_refused(parts) -> None:
    device, sp, other = parts
    sp.signer = other
    with pytest.raises(IdentityMismatch):
        device.upload()
    assert device.balance().pending_count == 1 and device.module.kept_acks(None) == []


def test_skip_of_an_ack_the_wallet_does_not_keep_is_refused(parts) -> None:
    device, _sp, _other = parts
    device.upload()
    (ack,) = device.module.kept_acks()
    with pytest.raises(IssueLogRejected) as refused:
        device.module.sign_skip(replace(ack, usage_batch=bytes(32)), DOMAIN)
    assert refused.value.reason == "no kept ack"
    with pytest.raises(IssueLogRejected) as refused:
        device.module.sign_skip(replace(ack, first_seq=1), DOMAIN)
    assert refused.value.reason == "no kept ack"
