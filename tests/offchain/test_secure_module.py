"""Secure module tests: keystore, issue-log installation and renewal, atomic use (injected failures and killed
processes at every step), limits (overspend, negative/overflowing fee, expiry), wrong device, uploads.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable, Iterator
from hashlib import sha256
from pathlib import Path
from typing import Any

import pytest

from offchain.trust.certs import CertificateVerifier
from offchain.trust.container import (
    Container,
    Payee,
    Policy,
    canonical_json,
    key_commitment,
    package,
    policy_hash,
    seal,
    wrap_content_key,
)
from offchain.core.errors import (
    AllowanceExceeded,
    ContainerTampered,
    DuplicateMessage,
    InvalidAmount,
    IssueLogExpired,
    IssueLogRejected,
    NoIssueLog,
    PolicyMismatch,
    RenewalPending,
    SignerMismatch,
    WrongDevice,
    WrongPassphrase,
)
from offchain.core.messages import Domain, IssueLog, Role, recover, sign
from offchain.device.secure_module import (
    DeviceKeys,
    KdfParams,
    SecureModule,
    Wallet,
    cc_verify_fn,
    create_keystore,
    unlock_keystore,
)

Member = Any  # tests/offchain/conftest.py Member
DOMAIN = Domain(chain_id=31337, verifying_contract="0x" + "cc" * 20)
CHEAP_KDF = KdfParams(n=2**4, r=8, p=1)
PASSPHRASE = "correct horse battery staple"
NOW = 1_800_000_000
SERIAL_1 = bytes.fromhex("01" * 32)
SERIAL_2 = bytes.fromhex("02" * 32)
CONTENT_ID = bytes.fromhex("c0" * 32)
CONTENT = b"one episode of a show"
PRICE = 250
CAP = 1000
CRASH_EXIT = 17


# --- fixtures and factories ---------------------------------------------------------------------------------------
@pytest.fixture
def device_keys(device_member: Member) -> DeviceKeys:
    return DeviceKeys("device-1", device_member.eth_key, device_member.credentials.key_pem)


@pytest.fixture
def paths(tmp_path: Path, device_keys: DeviceKeys) -> tuple[Path, Path]:
    keystore = tmp_path / "keystore.json"
    create_keystore(keystore, PASSPHRASE, device_keys, CHEAP_KDF)
    return keystore, tmp_path / "wallet.sqlite"


@pytest.fixture
def device(paths: tuple[Path, Path]) -> Iterator[SecureModule]:
    module = SecureModule.open(paths[0], paths[1], PASSPHRASE)
    yield module
    module.close()


def issue_log(cc: Member, device: SecureModule, *, serial: bytes = SERIAL_1, cap: int = CAP,
              expires_at: int = NOW + 3600, previous: bytes = bytes(32), carried: int = 0) -> tuple[IssueLog, bytes]:
    log = IssueLog(serial=serial, device=device.eth_address, user_id_hash=sha256(b"alice").digest(), cap=cap,
                   expires_at=expires_at, previous_serial=previous, carried=carried)
    return log, sign(log, DOMAIN, cc.eth_key)


@pytest.fixture
def funded(device: SecureModule, clearing_center_member: Member) -> SecureModule:
    log, signature = issue_log(clearing_center_member, device)
    device.install_issue_log(log, signature, cc_verify_fn(DOMAIN, clearing_center_member.address))
    return device


@pytest.fixture
def content(content_provider_member: Member) -> tuple[bytes, bytes, Policy]:
    policy = Policy(CONTENT_ID, 1, PRICE, (Payee(content_provider_member.address, 10_000),), content_provider_member.address)
    blob, key = package(CONTENT, CONTENT_ID, policy, content_provider_member.credentials)
    return blob, key, policy


@pytest.fixture
def wrapped(content: tuple[bytes, bytes, Policy], device_member: Member) -> Any:
    return wrap_content_key(content[1], CONTENT_ID, device_member.cert_pem, "device-1")


def forged_container(provider: Member, price: int) -> tuple[bytes, bytes]:
    """A provider-signed container with a price `package` would refuse (negative or overflowing)."""
    key = os.urandom(32)
    policy = {"content_id": "0x" + CONTENT_ID.hex(), "version": 1, "price": price,
              "payees": [{"account": provider.address, "bps": 10_000}], "remainder_payee": provider.address,
              "provider": provider.address}
    header = {"format": "CHSC/1", "content_id": "0x" + CONTENT_ID.hex(),
              "provider_member_id": provider.credentials.member_id, "provider_address": provider.address,
              "provider_cert_sha256": "0x" + sha256(provider.cert_pem).hexdigest(), "policy": policy, "title": "",
              "media_type": "text/plain", "cipher": "AES-256-GCM", "nonce": "0x" + "00" * 12,
              "content_length": len(CONTENT), "key_commitment": "0x" + key_commitment(key, CONTENT_ID).hex()}
    return seal(canonical_json(header), CONTENT, key, provider.credentials), key


def dump(wallet_path: Path) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Every row of the wallet, read by a fresh connection (what survives a crash)."""
    conn = sqlite3.connect(wallet_path)
    try:
        logs = conn.execute("SELECT * FROM issue_logs ORDER BY ord").fetchall()
        usage = conn.execute("SELECT * FROM usage_logs ORDER BY serial, seq").fetchall()
    finally:
        conn.close()
    return logs, usage


def use(module: SecureModule, content: tuple[bytes, bytes, Policy], wrapped: Any, verifier: CertificateVerifier,
        receiver: str, now: int = NOW) -> Any:
    return module.use(content[0], wrapped, verifier, DOMAIN, receiver, now,
                      expected_policy_hash=policy_hash(content[2]))


# --- keystore -----------------------------------------------------------------------------------------------------
def test_keystore_round_trip_restores_keys(paths: tuple[Path, Path], device_keys: DeviceKeys) -> None:
    assert unlock_keystore(paths[0], PASSPHRASE) == device_keys
    text = paths[0].read_text()
    assert device_keys.eth_private_key.hex() not in text and "PRIVATE KEY" not in text
    assert oct(paths[0].stat().st_mode & 0o777) == "0o600"


def test_keystore_wrong_passphrase_raises(paths: tuple[Path, Path]) -> None:
    with pytest.raises(WrongPassphrase):
        SecureModule.open(paths[0], paths[1], "wrong")
    assert not paths[1].exists()


def test_keystore_edited_public_field_raises(paths: tuple[Path, Path], device_member: Member) -> None:
    data = json.loads(paths[0].read_text())
    data["member_id"] = "device-2"
    paths[0].write_text(json.dumps(data))
    with pytest.raises(WrongPassphrase):
        unlock_keystore(paths[0], PASSPHRASE)


# --- issue logs ---------------------------------------------------------------------------------------------------
def test_install_issue_log_sets_balance(funded: SecureModule) -> None:
    balance = funded.balance()
    assert (balance.serial, balance.cap, balance.spent, balance.remaining, balance.next_seq) == (SERIAL_1, CAP, 0,
                                                                                                  CAP, 0)
    assert balance.pending_count == 0 and not balance.renewal_pending


def test_install_forged_issue_log_signer_mismatch(device: SecureModule, clearing_center_member: Member,
                                                  bank_member: Member) -> None:
    log, signature = issue_log(bank_member, device)
    with pytest.raises(SignerMismatch):
        device.install_issue_log(log, signature, cc_verify_fn(DOMAIN, clearing_center_member.address))
    with pytest.raises(NoIssueLog):
        device.balance()


def test_install_issue_log_for_other_device_rejected(device: SecureModule, clearing_center_member: Member,
                                                     bank_member: Member) -> None:
    log = IssueLog(SERIAL_1, bank_member.address, bytes(32), CAP, NOW + 60, bytes(32), 0)
    with pytest.raises(IssueLogRejected) as caught:
        device.install_issue_log(log, sign(log, DOMAIN, clearing_center_member.eth_key),
                                 cc_verify_fn(DOMAIN, clearing_center_member.address))
    assert caught.value.reason == "device"


def test_install_same_issue_log_twice_idempotent_other_payload_duplicate(funded: SecureModule,
                                                                          clearing_center_member: Member) -> None:
    verify_fn = cc_verify_fn(DOMAIN, clearing_center_member.address)
    log, signature = issue_log(clearing_center_member, funded)
    assert funded.install_issue_log(log, signature, verify_fn).cap == CAP
    other, other_signature = issue_log(clearing_center_member, funded, cap=CAP + 1)
    with pytest.raises(DuplicateMessage):
        funded.install_issue_log(other, other_signature, verify_fn)


# --- use ----------------------------------------------------------------------------------------------------------
def test_use_charges_signs_and_releases_plaintext(funded: SecureModule, content: Any, wrapped: Any,
                                                  verifier: CertificateVerifier,
                                                  service_provider_member: Member) -> None:
    plaintext, signed = use(funded, content, wrapped, verifier, service_provider_member.address)
    assert plaintext == CONTENT
    log = signed.log
    assert (log.serial, log.seq, log.fee, log.receiver, log.used_at) == (SERIAL_1, 0, PRICE,
                                                                         service_provider_member.address, NOW)
    assert log.policy_id == content[2].policy_id
    assert recover(log, DOMAIN, signed.signature) == funded.eth_address
    balance = funded.balance()
    assert (balance.spent, balance.remaining, balance.next_seq, balance.pending_count) == (PRICE, CAP - PRICE, 1, 1)
    _, second = use(funded, content, wrapped, verifier, service_provider_member.address)
    assert second.log.seq == 1 and funded.usage_logs(SERIAL_1) == [signed, second]


def test_use_overspend_allowance_exceeded_wallet_unchanged(funded: SecureModule, content: Any, wrapped: Any,
                                                           verifier: CertificateVerifier, paths: tuple[Path, Path],
                                                           service_provider_member: Member) -> None:
    for _ in range(CAP // PRICE):
        use(funded, content, wrapped, verifier, service_provider_member.address)
    before = dump(paths[1])
    with pytest.raises(AllowanceExceeded) as caught:
        use(funded, content, wrapped, verifier, service_provider_member.address)
    assert (caught.value.cap, caught.value.spent, caught.value.fee) == (CAP, CAP, PRICE)
    assert dump(paths[1]) == before


@pytest.mark.parametrize("price", [-1, 2**88])
def test_use_negative_or_overflowing_fee_invalid_amount(price: int, funded: SecureModule, verifier: CertificateVerifier,
                                                        content_provider_member: Member, device_member: Member,
                                                        paths: tuple[Path, Path],
                                                        service_provider_member: Member) -> None:
    blob, key = forged_container(content_provider_member, price)
    wrapped = wrap_content_key(key, CONTENT_ID, device_member.cert_pem, "device-1")
    before = dump(paths[1])
    with pytest.raises(InvalidAmount):
        funded.use(blob, wrapped, verifier, DOMAIN, service_provider_member.address, NOW)
    assert dump(paths[1]) == before


def test_use_expired_issue_log_raises(funded: SecureModule, content: Any, wrapped: Any, verifier: CertificateVerifier,
                                      service_provider_member: Member, paths: tuple[Path, Path]) -> None:
    before = dump(paths[1])
    with pytest.raises(IssueLogExpired) as caught:
        use(funded, content, wrapped, verifier, service_provider_member.address, now=NOW + 3601)
    assert caught.value.expires_at == NOW + 3600
    assert dump(paths[1]) == before
    use(funded, content, wrapped, verifier, service_provider_member.address, now=NOW + 3600)  # the last second counts


def test_use_without_issue_log_raises(device: SecureModule, content: Any, wrapped: Any, verifier: CertificateVerifier,
                                      service_provider_member: Member) -> None:
    with pytest.raises(NoIssueLog):
        use(device, content, wrapped, verifier, service_provider_member.address)


def test_use_key_wrapped_for_other_device_wrong_device(funded: SecureModule, content: Any, member: Any,
                                                       verifier: CertificateVerifier, paths: tuple[Path, Path],
                                                       service_provider_member: Member) -> None:
    other = member(Role.DEVICE, "device-2")
    rewrapped = wrap_content_key(content[1], CONTENT_ID, other.cert_pem, "device-2")
    renamed = wrap_content_key(content[1], CONTENT_ID, other.cert_pem, "device-1")  # our name, their key
    before = dump(paths[1])
    for wrapped in (rewrapped, renamed):
        with pytest.raises(WrongDevice):
            use(funded, content, wrapped, verifier, service_provider_member.address)
    assert dump(paths[1]) == before


def test_use_tampered_wrapped_key_or_container_charges_nothing(funded: SecureModule, content: Any, wrapped: Any,
                                                               verifier: CertificateVerifier, paths: tuple[Path, Path],
                                                               service_provider_member: Member) -> None:
    before = dump(paths[1])
    bad_key = type(wrapped).from_json(wrapped.to_json() | {"ciphertext": "0x" + "00" * 48})
    with pytest.raises(ContainerTampered):
        use(funded, content, bad_key, verifier, service_provider_member.address)
    tampered = bytearray(content[0])
    tampered[-70] ^= 1  # inside the certificate
    with pytest.raises(ContainerTampered):
        use(funded, (bytes(tampered),) + content[1:], wrapped, verifier, service_provider_member.address)
    assert dump(paths[1]) == before


def test_use_policy_hash_differs_from_chain_mismatch(funded: SecureModule, content: Any, wrapped: Any,
                                                     verifier: CertificateVerifier, paths: tuple[Path, Path],
                                                     service_provider_member: Member) -> None:
    before = dump(paths[1])
    with pytest.raises(PolicyMismatch):
        funded.use(content[0], wrapped, verifier, DOMAIN, service_provider_member.address, NOW,
                   expected_policy_hash=bytes(32))
    assert dump(paths[1]) == before


# --- atomicity ----------------------------------------------------------------------------------------------------
def _crash_points(action: Callable[[], None]) -> dict[str, tuple[Any, str, Callable[..., Any]]]:
    """Where to inject a failure inside use(): (owner, attribute, replacement) calling `action` at that point."""
    import offchain.device.secure_module as sm

    real_charge, real_append = Wallet.charge, Wallet.append_usage_log

    def after(real: Callable[..., Any]) -> Callable[..., Any]:
        def step(*args: Any, **kwargs: Any) -> Any:
            real(*args, **kwargs)
            action()
        return step

    return {
        "sign": (sm, "sign", lambda *a, **k: action()),
        "charge": (Wallet, "charge", after(real_charge)),
        "append_usage_log": (Wallet, "append_usage_log", after(real_append)),
        "commit": (Wallet, "_commit", lambda self: action()),
        "decrypt": (Container, "decrypt", lambda self, key: action()),
    }


STEPS = ["sign", "charge", "append_usage_log", "commit", "decrypt"]


def _assert_all_or_nothing(step: str, before: Any, after: Any) -> None:
    if step == "decrypt":  # after the commit: the charge and its signed log are durable
        assert after != before
        assert [row[1] for row in after[1]] == [0]  # one usage log, seq 0
        assert after[0][0][6] == str(PRICE) and after[0][0][7] == 1  # spent, next_seq
    else:
        assert after == before


@pytest.mark.parametrize("step", STEPS)
def test_use_failure_at_step_leaves_wallet_all_or_nothing(step: str, funded: SecureModule, content: Any, wrapped: Any,
                                                          verifier: CertificateVerifier, paths: tuple[Path, Path],
                                                          service_provider_member: Member,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    def fail() -> None:
        raise RuntimeError(f"injected failure at {step}")

    owner, name, replacement = _crash_points(fail)[step]
    before = dump(paths[1])
    monkeypatch.setattr(owner, name, replacement)
    with pytest.raises(RuntimeError):
        use(funded, content, wrapped, verifier, service_provider_member.address)
    monkeypatch.undo()
    _assert_all_or_nothing(step, before, dump(paths[1]))
    _, signed = use(funded, content, wrapped, verifier, service_provider_member.address)
    assert signed.log.seq == (1 if step == "decrypt" else 0)


@pytest.mark.parametrize("step", STEPS)
def test_use_process_killed_at_step_leaves_wallet_all_or_nothing(step: str, funded: SecureModule, content: Any,
                                                                 wrapped: Any, verifier: CertificateVerifier,
                                                                 paths: tuple[Path, Path],
                                                                 service_provider_member: Member) -> None:
    before = dump(paths[1])
    pid = os.fork()
    if pid == 0:  # child: its own module on the same files, killed with os._exit mid-use
        try:
            owner, name, replacement = _crash_points(lambda: os._exit(CRASH_EXIT))[step]
            setattr(owner, name, replacement)
            child = SecureModule.open(paths[0], paths[1], PASSPHRASE)
            use(child, content, wrapped, verifier, service_provider_member.address)
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == CRASH_EXIT
    _assert_all_or_nothing(step, before, dump(paths[1]))
    reopened = SecureModule.open(paths[0], paths[1], PASSPHRASE)
    try:
        assert reopened.balance().spent == (PRICE if step == "decrypt" else 0)
    finally:
        reopened.close()


# --- renewals -----------------------------------------------------------------------------------------------------
def test_renewal_new_serial_carries_remaining_and_keeps_old_logs(funded: SecureModule, content: Any, wrapped: Any,
                                                                 verifier: CertificateVerifier,
                                                                 clearing_center_member: Member,
                                                                 service_provider_member: Member) -> None:
    sp = service_provider_member.address
    use(funded, content, wrapped, verifier, sp)
    statement, signature = funded.balance_statement(DOMAIN, NOW + 10)
    assert (statement.serial, statement.next_seq, statement.spent) == (SERIAL_1, 1, PRICE)
    assert recover(statement, DOMAIN, signature) == funded.eth_address
    with pytest.raises(RenewalPending):
        use(funded, content, wrapped, verifier, sp)
    log, cc_sig = issue_log(clearing_center_member, funded, serial=SERIAL_2, cap=CAP - PRICE + 500,
                            previous=SERIAL_1, carried=CAP - PRICE)
    balance = funded.install_issue_log(log, cc_sig, cc_verify_fn(DOMAIN, clearing_center_member.address))
    assert (balance.serial, balance.cap, balance.spent, balance.next_seq) == (SERIAL_2, CAP - PRICE + 500, 0, 0)
    assert balance.pending_count == 1
    _, signed = use(funded, content, wrapped, verifier, sp)
    assert (signed.log.serial, signed.log.seq) == (SERIAL_2, 0)
    batch, _, logs = funded.pending_batch(DOMAIN)
    assert batch.serial == SERIAL_1 and [item.log.seq for item in logs] == [0]


def test_renewal_wrong_carried_rejected(funded: SecureModule, clearing_center_member: Member) -> None:
    funded.balance_statement(DOMAIN, NOW)
    log, cc_sig = issue_log(clearing_center_member, funded, serial=SERIAL_2, cap=CAP + 1, previous=SERIAL_1,
                            carried=CAP + 1)
    with pytest.raises(IssueLogRejected) as caught:
        funded.install_issue_log(log, cc_sig, cc_verify_fn(DOMAIN, clearing_center_member.address))
    assert (caught.value.reason, caught.value.expected, caught.value.got) == ("carried", CAP, CAP + 1)
    assert funded.balance().serial == SERIAL_1


def test_renewal_without_statement_rejected(funded: SecureModule, clearing_center_member: Member) -> None:
    log, cc_sig = issue_log(clearing_center_member, funded, serial=SERIAL_2, previous=SERIAL_1, carried=CAP)
    with pytest.raises(IssueLogRejected) as caught:
        funded.install_issue_log(log, cc_sig, cc_verify_fn(DOMAIN, clearing_center_member.address))
    assert caught.value.reason == "no statement"


def test_top_up_in_place_keeps_spent_and_seq(funded: SecureModule, content: Any, wrapped: Any,
                                             verifier: CertificateVerifier, clearing_center_member: Member,
                                             service_provider_member: Member) -> None:
    use(funded, content, wrapped, verifier, service_provider_member.address)
    funded.balance_statement(DOMAIN, NOW)
    log, cc_sig = issue_log(clearing_center_member, funded, serial=SERIAL_1, cap=CAP + 400, previous=SERIAL_1,
                            carried=CAP - PRICE, expires_at=NOW + 7200)
    balance = funded.install_issue_log(log, cc_sig, cc_verify_fn(DOMAIN, clearing_center_member.address))
    assert (balance.cap, balance.spent, balance.next_seq, balance.expires_at) == (CAP + 400, PRICE, 1, NOW + 7200)
    assert not balance.renewal_pending
    _, signed = use(funded, content, wrapped, verifier, service_provider_member.address)
    assert (signed.log.serial, signed.log.seq) == (SERIAL_1, 1)


# --- uploads ------------------------------------------------------------------------------------------------------
def test_pending_batch_contiguous_one_receiver_then_mark_uploaded(funded: SecureModule, content: Any, wrapped: Any,
                                                                  verifier: CertificateVerifier,
                                                                  service_provider_member: Member,
                                                                  bank_member: Member) -> None:
    sp, other = service_provider_member.address, bank_member.address
    signed = [use(funded, content, wrapped, verifier, receiver)[1] for receiver in (sp, sp, other)]
    batch, signature, logs = funded.pending_batch(DOMAIN)
    assert logs == signed[:2] and batch.logs() == [item.log for item in signed[:2]]
    assert recover(batch, DOMAIN, signature) == funded.eth_address
    assert funded.pending_batch(DOMAIN, max_logs=1)[2] == signed[:1]
    assert funded.mark_uploaded(SERIAL_1, 1) == 2
    batch, _, logs = funded.pending_batch(DOMAIN)
    assert (batch.first_seq, batch.receiver, logs) == (2, other, signed[2:])
    funded.mark_uploaded(SERIAL_1, 2)
    assert funded.pending_batch(DOMAIN) is None and funded.balance().pending_count == 0
