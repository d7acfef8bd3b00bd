"""Hostile uploads at the real SP (issue 9, items 1 to 3): a batch one settle transaction cannot carry, a serial
whose issue log is still pending (front-running `issue` on a chain with automine off), and someone else's copy of
an owner's batch. Each attack gets its named refusal and the honest device's upload still lands."""

from __future__ import annotations

import time
from typing import Any

import pytest
from test_service_provider import PRICE, alice, alice_sp, open_device, published, sp_running  # noqa: F401 (fixtures)
from web3 import Web3

from offchain.core.errors import BatchTooLarge, ContentOwnerMismatch, IdentityMismatch, MalformedMessage, NotFound
from offchain.core.gas import max_batch_logs
from offchain.core.messages import UsageBatch, UsageLog, keccak, sign
from offchain.device.client import DeviceClient

Services = Any


def signed_body(services: Services, member_id: str, serial: bytes, policy_id: bytes, first_seq: int,
                count: int) -> dict[str, Any]:
    """An upload body signed by `member_id`'s own key (what a device with a custom client can send)."""
    member = services.consortium.member(member_id)
    receiver = services.client(member_id, "sp").get("/v1/status")["address"]
    now = int(time.time())
    logs = [UsageLog(serial=serial, seq=first_seq + i, policy_id=policy_id, fee=PRICE, receiver=receiver, used_at=now)
            for i in range(count)]
    batch = UsageBatch.from_logs(logs)
    domain, key = services.consortium.domain, member.eth_private_key()
    return {"batch": batch.to_json(), "batch_signature": "0x" + sign(batch, domain, key).hex(),
            "logs": [{"log": log.to_json(), "signature": "0x" + sign(log, domain, key).hex()} for log in logs],
            "certificate": member.cert_path.read_text()}


def test_batch_over_one_settle_transaction_refused_honest_upload_lands(
        sp_running: Services, alice: DeviceClient, published: dict[str, Any]) -> None:
    """Item 1: the SP refuses a batch that one settle transaction could never carry, before storing anything."""
    serial = alice.balance().serial
    maximum = max_batch_logs(1)
    body = signed_body(sp_running, "alice-phone", serial, published["policy_id"], alice.balance().next_seq,
                       maximum + 1)
    with pytest.raises(BatchTooLarge) as caught:
        sp_running.client("alice-phone", "sp", timeout_s=120).post("/v1/usage", body)
    assert (caught.value.count, caught.value.maximum, caught.value.policies) == (maximum + 1, maximum, 1)
    alice.use(published["content_id"], 1)  # honest control: the same device's real upload is acknowledged
    assert alice.upload().logs >= 1


def test_front_running_pending_issue_refused_owner_then_accepted(
        sp_running: Services, published: dict[str, Any], w3: Web3) -> None:
    """Item 3: with automine off, bob's device reads the CC's pending `issue` for alice's new serial and uploads
    first. The serial is not on chain yet, so the SP stores nothing; once mined it is alice's, not bob's."""
    alice_address = sp_running.consortium.member("alice-phone").eth_address
    serial, user_hash = keccak(b"front-run-serial"), keccak(b"alice")
    sp_running.chain("bank", w3).record_deposit(keccak(b"front-run-deposit"), user_hash, 10 * PRICE, keccak(b"r"))
    cc = sp_running.chain("cc", w3)
    w3.provider.make_request("evm_setAutomine", [False])
    try:
        tx_hash = cc.send_via_outbox("issue", serial, alice_address, user_hash, 10 * PRICE, int(time.time()) + 86400,
                                     record=lambda *_: None, gas=400_000)
        assert w3.eth.get_transaction(tx_hash)["blockNumber"] is None  # pending: what a front-runner sees
        squat = signed_body(sp_running, "bob-tablet", serial, published["policy_id"], 0, 1)
        with pytest.raises(NotFound) as caught:
            sp_running.client("bob-tablet", "sp").post("/v1/usage", squat)
        assert caught.value.serial == "0x" + serial.hex()
    finally:
        w3.provider.make_request("evm_setAutomine", [True])
        w3.provider.make_request("evm_mine", [])
    assert w3.eth.get_transaction_receipt(tx_hash)["status"] == 1
    with pytest.raises(IdentityMismatch) as squatted:  # mined: bob is still refused, now as another device
        sp_running.client("bob-tablet", "sp").post("/v1/usage", squat)
    assert squatted.value.expected == alice_address
    owner = signed_body(sp_running, "alice-phone", serial, published["policy_id"], 0, 1)
    ack = sp_running.client("alice-phone", "sp").post("/v1/usage", owner)  # the owner is not blocked
    assert ack["acked_through_seq"] == 0


@pytest.mark.parametrize("padding", ["before", "after", "second block"])
def test_padded_certificate_refused_honest_upload_lands(sp_running: Services, alice: DeviceClient,
                                                        published: dict[str, Any], padding: str) -> None:
    """Item 2: text around the PEM block (34 MB in the review) or a second block is refused before anything is
    stored, so no forward request can grow past the CC's body limit; the device's plain upload is accepted."""
    alice.use(published["content_id"], 1)
    body = signed_body(sp_running, "alice-phone", alice.balance().serial, published["policy_id"],
                       alice.balance().next_seq - 1, 1)
    pem = body["certificate"]
    body["certificate"] = {"before": "x" * 20_000 + pem, "after": pem + "\n" * 20_000, "second block": pem + pem}[padding]
    with pytest.raises(MalformedMessage) as caught:
        sp_running.client("alice-phone", "sp").post("/v1/usage", body)
    assert caught.value.field == "certificate"
    assert alice.upload().logs == 1  # the same log, uploaded by the real client, is acknowledged


def test_stored_certificate_is_canonical_re_encoding(sp_running: Services, alice: DeviceClient,
                                                     published: dict[str, Any]) -> None:
    from offchain.service_provider.agent import canonical_certificate_pem

    pem = sp_running.consortium.member("alice-phone").cert_path.read_text()
    assert canonical_certificate_pem("\n  " + pem + "  \n") == canonical_certificate_pem(pem)


def test_provider_publishing_on_another_providers_content_id_refused_owner_publishes(
        sp_running: Services, w3: Web3) -> None:
    """Item 4: studio2 copies studio's public policy and packages its own bytes under studio's content id. The
    chain refuses its registration (NotContentOwner) and the SP its container; studio's container is published
    and a device downloads it."""
    from offchain.content_provider.publisher import ContentProvider, content_id_for
    from offchain.core.errors import ContractReverted
    from offchain.trust import container

    studio, thief = (sp_running.consortium.member(m) for m in ("studio", "studio2"))
    content_id = content_id_for("film-hijack-test")
    policy = container.Policy(content_id=content_id, version=1, price=PRICE,
                              payees=(container.Payee(studio.eth_address, 10_000),), provider=studio.eth_address)
    owner = ContentProvider(studio.credentials(), sp_running.chain("studio", w3), sp_running.client("studio", "sp"))
    owner.register(policy)  # the victim registers first; its public policy is what the thief copies
    with pytest.raises(ContractReverted) as on_chain:
        sp_running.chain("studio2", w3).register_policy(content_id, 2, PRICE, [(thief.eth_address, 10_000)],
                                                        bytes(32))
    assert on_chain.value.error_name == "NotContentOwner"
    assert on_chain.value.error_args == {"contentId": content_id, "owner": studio.eth_address,
                                         "caller": thief.eth_address}
    blob, key = container.package(b"not the film", content_id, policy, thief.credentials())
    import base64

    with pytest.raises((ContentOwnerMismatch, IdentityMismatch)) as refused:
        sp_running.client("studio2", "sp").post("/v1/catalog", {"container_b64": base64.b64encode(blob).decode(),
                                                                "content_key_b64": base64.b64encode(key).decode()})
    assert isinstance(refused.value, ContentOwnerMismatch) and refused.value.owner == studio.eth_address
    published = owner.publish(b"the real film", content_id=content_id, version=1, price=PRICE,
                              payees=[(studio.eth_address, 10_000)], title="Real")
    assert published.policy_id == policy.policy_id
    device = open_device(sp_running, "bob-tablet")
    try:
        assert device.download(content_id, 1).exists()  # the owner's container verifies at the device
    finally:
        device.close()


def test_front_running_pending_renew_refused_owner_then_accepted(
        sp_running: Services, published: dict[str, Any], w3: Web3) -> None:
    """Item 3, renew: bob's device reads the CC's pending `renew` (new serial) from the mempool and uploads under
    the new serial first. Not on chain yet: refused, nothing stored; mined: alice's, and alice uploads."""
    from offchain.chain.codec import encode_balance_statement
    from offchain.core.messages import BalanceStatement

    alice_member = sp_running.consortium.member("alice-phone")
    old, new, user_hash = keccak(b"renew-old-serial"), keccak(b"renew-new-serial"), keccak(b"alice")
    bank, cc = sp_running.chain("bank", w3), sp_running.chain("cc", w3)
    bank.record_deposit(keccak(b"renew-front-run-deposit"), user_hash, 20 * PRICE, keccak(b"r"))
    cc.issue(old, alice_member.eth_address, user_hash, 10 * PRICE, int(time.time()) + 86400)
    statement = BalanceStatement(serial=old, next_seq=0, spent=0, attested_at=int(time.time()))
    signature = sign(statement, sp_running.consortium.domain, alice_member.eth_private_key())
    w3.provider.make_request("evm_setAutomine", [False])
    try:
        tx_hash = cc.send_via_outbox("renew", old, encode_balance_statement(statement), signature, new, 5 * PRICE,
                                     int(time.time()) + 86400, record=lambda *_: None, gas=600_000)
        squat = signed_body(sp_running, "bob-tablet", new, published["policy_id"], 0, 1)
        with pytest.raises(NotFound) as caught:
            sp_running.client("bob-tablet", "sp").post("/v1/usage", squat)
        assert caught.value.serial == "0x" + new.hex()
    finally:
        w3.provider.make_request("evm_setAutomine", [True])
        w3.provider.make_request("evm_mine", [])
    assert w3.eth.get_transaction_receipt(tx_hash)["status"] == 1
    owner = signed_body(sp_running, "alice-phone", new, published["policy_id"], 0, 1)
    assert sp_running.client("alice-phone", "sp").post("/v1/usage", owner)["acked_through_seq"] == 0
