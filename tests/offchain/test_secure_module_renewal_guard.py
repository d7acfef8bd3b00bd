"""The secure module's renewal guards: a renewal must name the wallet's current log as its previous serial, and the
cap floor is the whole old cap for a top-up in place but only the carried remainder for a renewal to a new serial.
"""

from __future__ import annotations

from collections.abc import Iterator
from hashlib import sha256
from pathlib import Path
from typing import Any

import pytest

from offchain.core.errors import IssueLogRejected
from offchain.core.messages import Domain, IssueLog, sign
from offchain.device.secure_module import DeviceKeys, KdfParams, SecureModule, cc_verify_fn, create_keystore
from offchain.trust.certs import CertificateVerifier
from offchain.trust.container import Payee, Policy, package, policy_hash, wrap_content_key

Member = Any  # tests/offchain/conftest.py Member
DOMAIN = Domain(chain_id=31337, verifying_contract="0x" + "cc" * 20)
PASSPHRASE = "renewal guard passphrase"
NOW = 1_800_000_000
SERIAL_1 = bytes.fromhex("11" * 32)
SERIAL_2 = bytes.fromhex("22" * 32)
UNKNOWN_SERIAL = bytes.fromhex("99" * 32)
CONTENT_ID = bytes.fromhex("c2" * 32)
CAP = 1000
PRICE = 300


def signed_log(cc: Member, device: SecureModule, *, serial: bytes, cap: int, previous: bytes = bytes(32),
               carried: int = 0) -> tuple[IssueLog, bytes]:
    log = IssueLog(serial=serial, device=device.eth_address, user_id_hash=sha256(b"bob").digest(), cap=cap,
                   expires_at=NOW + 3600, previous_serial=previous, carried=carried)
    return log, sign(log, DOMAIN, cc.eth_key)


@pytest.fixture
def spent_and_attested(tmp_path: Path, device_member: Member, clearing_center_member: Member,
                       content_provider_member: Member, service_provider_member: Member,
                       verifier: CertificateVerifier) -> Iterator[SecureModule]:
    """A device with SERIAL_1 (cap CAP) installed, PRICE spent on it and a balance statement attested."""
    keystore = tmp_path / "keystore.json"
    create_keystore(keystore, PASSPHRASE, DeviceKeys("device-1", device_member.eth_key,
                                                     device_member.credentials.key_pem), KdfParams(n=2**4))
    module = SecureModule.open(keystore, tmp_path / "wallet.sqlite", PASSPHRASE)
    try:
        log, signature = signed_log(clearing_center_member, module, serial=SERIAL_1, cap=CAP)
        module.install_issue_log(log, signature, cc_verify_fn(DOMAIN, clearing_center_member.address))
        provider = content_provider_member
        policy = Policy(CONTENT_ID, 1, PRICE, (Payee(provider.address, 10_000),), provider.address)
        blob, key = package(b"a short film", CONTENT_ID, policy, provider.credentials)
        wrapped = wrap_content_key(key, CONTENT_ID, device_member.cert_pem, "device-1")
        module.use(blob, wrapped, verifier, DOMAIN, service_provider_member.address, NOW,
                   expected_policy_hash=policy_hash(policy))
        statement, _ = module.balance_statement(DOMAIN, NOW + 1)
        assert (statement.serial, statement.spent) == (SERIAL_1, PRICE)
        yield module
    finally:
        module.close()


def test_renewal_naming_another_previous_serial_is_refused(spent_and_attested: SecureModule,
                                                           clearing_center_member: Member) -> None:
    device, verify = spent_and_attested, cc_verify_fn(DOMAIN, clearing_center_member.address)
    stray, stray_sig = signed_log(clearing_center_member, device, serial=SERIAL_2, cap=CAP, previous=UNKNOWN_SERIAL,
                                  carried=CAP - PRICE)
    with pytest.raises(IssueLogRejected) as caught:
        device.install_issue_log(stray, stray_sig, verify)
    assert (caught.value.reason, caught.value.serial) == ("previous serial", SERIAL_2)
    balance = device.balance()
    assert (balance.serial, balance.cap, balance.spent) == (SERIAL_1, CAP, PRICE)
    # positive control: the same renewal naming the current log is installed
    good, good_sig = signed_log(clearing_center_member, device, serial=SERIAL_2, cap=CAP, previous=SERIAL_1,
                                carried=CAP - PRICE)
    balance = device.install_issue_log(good, good_sig, verify)
    assert (balance.serial, balance.cap, balance.spent) == (SERIAL_2, CAP, 0)


def test_top_up_in_place_floor_is_the_whole_old_cap(spent_and_attested: SecureModule,
                                                    clearing_center_member: Member) -> None:
    device, verify = spent_and_attested, cc_verify_fn(DOMAIN, clearing_center_member.address)
    # in place the spent part stays on the log: a cap below the old cap would take back what is left
    short, short_sig = signed_log(clearing_center_member, device, serial=SERIAL_1, cap=CAP - 1, previous=SERIAL_1,
                                  carried=CAP - PRICE)
    with pytest.raises(IssueLogRejected) as caught:
        device.install_issue_log(short, short_sig, verify)
    assert (caught.value.reason, caught.value.minimum, caught.value.got) == ("cap", CAP, CAP - 1)
    assert device.balance().cap == CAP
    same, same_sig = signed_log(clearing_center_member, device, serial=SERIAL_1, cap=CAP, previous=SERIAL_1,
                                carried=CAP - PRICE)
    balance = device.install_issue_log(same, same_sig, verify)
    assert (balance.serial, balance.cap, balance.spent, balance.remaining) == (SERIAL_1, CAP, PRICE, CAP - PRICE)


def test_renewal_to_new_serial_floor_is_the_carried_remainder(spent_and_attested: SecureModule,
                                                              clearing_center_member: Member) -> None:
    device, verify = spent_and_attested, cc_verify_fn(DOMAIN, clearing_center_member.address)
    below, below_sig = signed_log(clearing_center_member, device, serial=SERIAL_2, cap=CAP - PRICE - 1,
                                  previous=SERIAL_1, carried=CAP - PRICE)
    with pytest.raises(IssueLogRejected) as caught:
        device.install_issue_log(below, below_sig, verify)
    assert (caught.value.reason, caught.value.minimum, caught.value.got) == ("cap", CAP - PRICE, CAP - PRICE - 1)
    # exactly the remainder is enough on a new serial (the spent part stays on the closed old log)
    exact, exact_sig = signed_log(clearing_center_member, device, serial=SERIAL_2, cap=CAP - PRICE,
                                  previous=SERIAL_1, carried=CAP - PRICE)
    balance = device.install_issue_log(exact, exact_sig, verify)
    assert (balance.serial, balance.cap, balance.spent, balance.remaining) == (SERIAL_2, CAP - PRICE, 0, CAP - PRICE)
