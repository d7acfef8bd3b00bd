"""A lost answer to an issue or renewal request: the device keeps the request and resends it unchanged, or
fetches the result of the renewal it attested, so the CC applies it once and the wallet never stays frozen.

The CC is a stub that applies each request id once (allocating the user's money like the real one) and can
lose the next answer after applying it (what the simulator's proxy does with `cut`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from offchain.core.errors import AllowanceExceeded, ServiceUnavailable
from offchain.core.messages import Domain, IssueLog, Role, keccak
from offchain.device.client import DeviceClient
from offchain.device.secure_module import DeviceKeys, KdfParams, SecureModule, create_keystore
from offchain.trust.certs import CertificateVerifier, Envelope, MemberIdentity

DOMAIN = Domain(chain_id=31337, verifying_contract="0x" + "ab" * 20)
DEPOSITS = 1_000


@dataclass
class LossyClearingCenter:
    """Applies each request id once and remembers its answer; `lose_next` answers are applied, then lost."""

    identity: MemberIdentity
    cc: Any  # the test Member of the clearing center (eth key, certificate)
    device: str
    lose_next: int = 0
    allocated: int = 0
    posts: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    gets: list[str] = field(default_factory=list)
    answers: dict[str, dict[str, Any]] = field(default_factory=dict)
    renewals: dict[str, dict[str, Any]] = field(default_factory=dict)  # old serial -> answer
    caps: dict[bytes, int] = field(default_factory=dict)

    def server_identity(self, verifier: Any, expected_role: Role | None = None) -> MemberIdentity:
        return self.identity

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.posts.append((path, body))
        request_id = body["request_id"]
        if request_id not in self.answers:
            self.answers[request_id] = self._apply(path, body)
        if self.lose_next:
            self.lose_next -= 1
            raise ServiceUnavailable("the connection closed before the answer", url=path, reason="cut")
        return self.answers[request_id]

    def get(self, path: str) -> dict[str, Any]:
        self.gets.append(path)
        return self.renewals[path.rsplit("/", 1)[1]]

    def _apply(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        amount = int(body.get("amount") or 0)
        if self.allocated + amount > DEPOSITS:
            raise AllowanceExceeded("usage beyond the deposits", user_id="u", available=DEPOSITS - self.allocated,
                                    wanted=amount)
        self.allocated += amount
        if path == "/v1/issue-logs":
            serial = keccak(body["request_id"].encode())
            log = IssueLog(serial=serial, device=self.device, user_id_hash=keccak(b"u"), cap=amount,
                           expires_at=2**39, previous_serial=bytes(32), carried=0)
        else:  # a top-up in place against the attested statement
            statement = Envelope.from_json(body["statement"]).message
            serial = bytes.fromhex(statement["serial"][2:])
            carried = self.caps[serial] - int(statement["spent"])
            log = IssueLog(serial=serial, device=self.device, user_id_hash=keccak(b"u"), cap=self.caps[serial] + amount,
                           expires_at=2**39, previous_serial=serial, carried=carried)
        self.caps[serial] = log.cap
        answer = {"issue_log": Envelope.seal(log, DOMAIN, self.cc.eth_key, self.cc.cert_pem).to_json()}
        if path != "/v1/issue-logs":
            self.renewals["0x" + serial.hex()] = answer
        return answer


@pytest.fixture
def parts(tmp_path: Path, verifier: CertificateVerifier, clearing_center_member: Any,
          device_member: Any) -> tuple[DeviceClient, LossyClearingCenter]:
    keys = DeviceKeys(device_member.credentials.member_id, device_member.eth_key, device_member.key_path.read_bytes())
    create_keystore(tmp_path / "keystore.json", "pw", keys, KdfParams(n=2**4))
    module = SecureModule.open(tmp_path / "keystore.json", tmp_path / "wallet.db", "pw")
    cc = LossyClearingCenter(verifier.verify(clearing_center_member.cert_pem), clearing_center_member,
                             device_member.address)
    device = DeviceClient(module, sp=None, cc=cc, verifier=verifier, domain=DOMAIN, cert_pem=device_member.cert_pem,
                          user_id="u", content_dir=tmp_path / "content", registered_policy_of=lambda _policy_id: None)
    return device, cc


def test_issue_retried_identically_after_a_lost_answer(parts: tuple[DeviceClient, LossyClearingCenter]) -> None:
    device, cc = parts
    cc.lose_next = 1
    with pytest.raises(ServiceUnavailable):
        device.request_issue_log(600)
    assert device.pending_request() == {"path": "/v1/issue-logs", "body": cc.posts[0][1]}
    balance = device.request_issue_log(600)  # the retry: the same request, not a second 600
    assert cc.posts[1] == cc.posts[0] and cc.allocated == 600
    assert balance.cap == 600 and device.pending_request() is None
    with pytest.raises(AllowanceExceeded):  # positive control: a genuinely new request is a second allocation
        cc.post("/v1/issue-logs", {"request_id": "0x" + "ee" * 32, "amount": 600})


def test_renewal_retried_identically_after_a_lost_answer(parts: tuple[DeviceClient, LossyClearingCenter]) -> None:
    device, cc = parts
    first = device.request_issue_log(300)
    cc.lose_next = 1
    with pytest.raises(ServiceUnavailable):
        device.renew(200)
    assert device.balance().renewal_pending  # frozen until the renewal is installed
    renewed = device.renew(200)
    assert cc.posts[2] == cc.posts[1]  # the same id and the same signed statement
    assert (renewed.serial, renewed.cap, renewed.renewal_pending) == (first.serial, 500, False)
    assert cc.allocated == 500 and device.pending_request() is None


def test_attested_renewal_without_kept_request_fetches_its_result(
        parts: tuple[DeviceClient, LossyClearingCenter]) -> None:
    device, cc = parts
    first = device.request_issue_log(300)
    cc.lose_next = 1
    with pytest.raises(ServiceUnavailable):
        device.renew(200)
    device.pending_request_path.unlink()  # e.g. the device died between attesting and keeping the request
    renewed = device.resume_pending()
    assert cc.gets == ["/v1/issue-logs/renewals/0x" + first.serial.hex()]
    assert renewed is not None and renewed.cap == 500 and not renewed.renewal_pending
    assert len(cc.posts) == 2  # nothing sent again


def test_refused_request_is_forgotten(parts: tuple[DeviceClient, LossyClearingCenter]) -> None:
    device, cc = parts
    with pytest.raises(AllowanceExceeded):
        device.request_issue_log(DEPOSITS + 1)
    assert device.pending_request() is None  # refused for good: the next call is a new request
    assert device.request_issue_log(100).cap == 100
