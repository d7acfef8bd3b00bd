"""The device client's checks on what its clearing center answers, without processes (stub transport)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from offchain.trust.certs import CertificateVerifier, Envelope, MemberIdentity
from offchain.device.client import DeviceClient
from offchain.core.errors import MalformedMessage
from offchain.core.messages import Domain, Role, TransferRequest

DOMAIN = Domain(chain_id=31337, verifying_contract="0x" + "ab" * 20)


@dataclass
class StubClearingCenter:
    """Presents `identity` as its TLS certificate and answers every POST with `issue_log`."""

    identity: MemberIdentity
    issue_log: dict[str, Any]

    def server_identity(self, verifier: Any, expected_role: Role | None = None) -> MemberIdentity:
        return self.identity

    def post(self, path: str, body: Any) -> Any:
        return {"issue_log": self.issue_log, "tx_hash": "0x" + "00" * 32}


class NoModule:
    def install_issue_log(self, *args: Any) -> None:
        raise AssertionError("nothing may be installed")


def test_issue_log_refused_when_envelope_holds_another_kind(tmp_path: Path, verifier: CertificateVerifier,
                                                            clearing_center_member, device_member) -> None:
    cc = clearing_center_member
    other = Envelope.seal(TransferRequest(request_id=b"\x07" * 32, payee=cc.address, amount=1), DOMAIN, cc.eth_key,
                          cc.cert_pem)
    device = DeviceClient(NoModule(), sp=None, cc=StubClearingCenter(verifier.verify(cc.cert_pem), other.to_json()),
                          verifier=verifier, domain=DOMAIN, cert_pem=device_member.cert_pem, user_id="u",
                          content_dir=tmp_path, registered_policy_of=lambda _policy_id: None)
    with pytest.raises(MalformedMessage) as info:
        device.request_issue_log(10)
    assert info.value.fields["value"] == "TransferRequest"
