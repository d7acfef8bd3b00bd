"""A top-up in place whose answer is the very log the wallet already holds (no new money, nothing spent since
the last top-up, the same expiry) is that renewal's answer: installing it clears the attestation. Found by the
fault simulator (`clearhouse sim`, seed 15): two top-ups of an unspent log within one second gave the same
signed log twice; the second install was taken for an idempotent repeat, the statement stayed attested and the
wallet stayed `renewal_pending` for good (every later top-up again answered the same log).
"""

from __future__ import annotations

from collections.abc import Iterator
from hashlib import sha256
from pathlib import Path
from typing import Any

import pytest

from offchain.core.messages import Domain, IssueLog, sign
from offchain.device.secure_module import DeviceKeys, KdfParams, SecureModule, cc_verify_fn, create_keystore
from offchain.trust.certs import CertificateVerifier
from offchain.trust.container import Payee, Policy, package, policy_hash, wrap_content_key

Member = Any  # tests/offchain/conftest.py Member
DOMAIN = Domain(chain_id=31337, verifying_contract="0x" + "cc" * 20)
NOW = 1_800_000_000
SERIAL_1, SERIAL_2 = bytes.fromhex("31" * 32), bytes.fromhex("32" * 32)
CONTENT_ID = bytes.fromhex("c3" * 32)
CAP, PRICE = 555, 45


def signed(cc: Member, device: SecureModule, *, serial: bytes, cap: int, previous: bytes, carried: int,
           expires_at: int = NOW + 3600) -> tuple[IssueLog, bytes]:
    log = IssueLog(serial=serial, device=device.eth_address, user_id_hash=sha256(b"alice").digest(), cap=cap,
                   expires_at=expires_at, previous_serial=previous, carried=carried)
    return log, sign(log, DOMAIN, cc.eth_key)


@pytest.fixture
def device(tmp_path: Path, device_member: Member, clearing_center_member: Member) -> Iterator[SecureModule]:
    """SERIAL_1 (cap CAP) installed, then topped up once in place without new money: the wallet holds the
    top-up's log, nothing spent on it."""
    keystore = tmp_path / "keystore.json"
    create_keystore(keystore, "same top-up", DeviceKeys("device-1", device_member.eth_key,
                                                        device_member.credentials.key_pem), KdfParams(n=2**4))
    module = SecureModule.open(keystore, tmp_path / "wallet.sqlite", "same top-up")
    verify = cc_verify_fn(DOMAIN, clearing_center_member.address)
    try:
        module.install_issue_log(*signed(clearing_center_member, module, serial=SERIAL_1, cap=CAP,
                                         previous=bytes(32), carried=0), verify)
        module.balance_statement(DOMAIN, NOW)
        top_up = signed(clearing_center_member, module, serial=SERIAL_1, cap=CAP, previous=SERIAL_1, carried=CAP)
        assert not module.install_issue_log(*top_up, verify).renewal_pending
        yield module
    finally:
        module.close()


def test_the_same_top_up_again_answers_the_pending_statement(device: SecureModule,
                                                             clearing_center_member: Member) -> None:
    verify = cc_verify_fn(DOMAIN, clearing_center_member.address)
    device.balance_statement(DOMAIN, NOW + 1)
    assert device.balance().renewal_pending
    again = signed(clearing_center_member, device, serial=SERIAL_1, cap=CAP, previous=SERIAL_1, carried=CAP)
    balance = device.install_issue_log(*again, verify)
    assert not balance.renewal_pending
    assert (balance.serial, balance.cap, balance.spent, balance.next_seq) == (SERIAL_1, CAP, 0, 0)


def test_the_same_log_without_a_statement_is_a_no_op(device: SecureModule, clearing_center_member: Member) -> None:
    verify = cc_verify_fn(DOMAIN, clearing_center_member.address)
    before = device.balance()
    again = signed(clearing_center_member, device, serial=SERIAL_1, cap=CAP, previous=SERIAL_1, carried=CAP)
    assert device.install_issue_log(*again, verify) == before


def test_an_old_answer_after_spending_leaves_the_statement_pending(device: SecureModule,
                                                                   clearing_center_member: Member,
                                                                   content_provider_member: Member,
                                                                   service_provider_member: Member,
                                                                   device_member: Member,
                                                                   verifier: CertificateVerifier) -> None:
    """The control: spent since that top-up, then attested: the old answer (carried CAP) does not answer this
    statement (remaining CAP - PRICE). It stays a no-op, the wallet waits for the real answer, which installs."""
    verify = cc_verify_fn(DOMAIN, clearing_center_member.address)
    provider = content_provider_member
    policy = Policy(CONTENT_ID, 1, PRICE, (Payee(provider.address, 10_000),), provider.address)
    blob, key = package(b"a song", CONTENT_ID, policy, provider.credentials)
    wrapped = wrap_content_key(key, CONTENT_ID, device_member.cert_pem, "device-1")
    device.use(blob, wrapped, verifier, DOMAIN, service_provider_member.address, NOW,
               expected_policy_hash=policy_hash(policy))
    device.balance_statement(DOMAIN, NOW + 1)
    old = signed(clearing_center_member, device, serial=SERIAL_1, cap=CAP, previous=SERIAL_1, carried=CAP)
    balance = device.install_issue_log(*old, verify)
    assert balance.renewal_pending and (balance.spent, balance.next_seq) == (PRICE, 1)
    renewal = signed(clearing_center_member, device, serial=SERIAL_2, cap=CAP - PRICE, previous=SERIAL_1,
                     carried=CAP - PRICE)
    balance = device.install_issue_log(*renewal, verify)
    assert not balance.renewal_pending and (balance.serial, balance.cap) == (SERIAL_2, CAP - PRICE)
