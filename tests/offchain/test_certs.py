"""Certificate verification: path validation, validity window, CRL, on-chain status, role and signer binding."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import datetime as dt
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from offchain.trust.ca import CertificateAuthority
from offchain.trust.certs import CertificateVerifier, Envelope, MemberIdentity
from offchain.core.errors import (CertificateExpired, CertificateNotYetValid, CertificateRevoked, ChainUnreachable,
                             CrlUnavailable, IdentityMismatch, MalformedMessage, SignatureError, UntrustedCertificate,
                             WrongRole)
from offchain.core.messages import Domain, ReceiveLog, Role, TransferRequest

DOMAIN = Domain(chain_id=31337, verifying_contract="0x" + "11" * 20)


def self_signed_member_pem(address: str) -> bytes:
    """A certificate with the right SAN URIs, but signed by its own key: no CA vouches for it."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cc-1")])
    now = dt.datetime.now(dt.timezone.utc)
    san = x509.SubjectAlternativeName([x509.UniformResourceIdentifier("urn:clearhouse:member:cc-1"),
                                       x509.UniformResourceIdentifier("urn:clearhouse:role:clearing_center"),
                                       x509.UniformResourceIdentifier(f"urn:clearhouse:eth:{address}")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1)).add_extension(san, critical=False)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


def test_verify_returns_identity_for_issued_certificate(verifier: CertificateVerifier, member: Callable[..., Any]) -> None:
    sp = member(Role.SERVICE_PROVIDER, "sp-1")
    identity = verifier.verify(sp.cert_pem, Role.SERVICE_PROVIDER)
    assert identity == MemberIdentity(member_id="sp-1", role=Role.SERVICE_PROVIDER, eth_address=sp.address,
                                      fingerprint=sp.credentials.fingerprint,
                                      serial_number=sp.credentials.serial_number,
                                      not_after=sp.credentials.valid_until)
    assert verifier.verify(sp.cert_pem.decode()) == identity  # str PEM and cached path both work


def test_verify_self_signed_certificate_is_untrusted(verifier: CertificateVerifier,
                                                     eth_keypair: Callable[[], tuple[bytes, str]]) -> None:
    _, address = eth_keypair()
    with pytest.raises(UntrustedCertificate):
        verifier.verify(self_signed_member_pem(address))


def test_verify_certificate_from_another_ca_is_untrusted(verifier: CertificateVerifier,
                                                         attacker_member: Callable[..., Any]) -> None:
    forged = attacker_member(Role.CLEARING_CENTER, "cc-1")
    with pytest.raises(UntrustedCertificate) as info:
        verifier.verify(forged.cert_pem)
    assert info.value.subject == "cc-1"


def test_verify_root_certificate_as_member_is_untrusted(verifier: CertificateVerifier,
                                                        authority: CertificateAuthority) -> None:
    with pytest.raises(UntrustedCertificate):
        verifier.verify(authority.root_pem)


def test_verify_garbage_is_untrusted(verifier: CertificateVerifier) -> None:
    with pytest.raises(UntrustedCertificate) as info:
        verifier.verify(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    assert info.value.reason == "unparseable"


def test_verify_not_yet_valid_certificate(verifier: CertificateVerifier, member: Callable[..., Any]) -> None:
    later = member(Role.DEVICE, not_before=int(time.time()) + 3600)
    with pytest.raises(CertificateNotYetValid) as info:
        verifier.verify(later.cert_pem)
    assert info.value.not_before == later.credentials.valid_from


def test_verify_expired_certificate(verifier: CertificateVerifier, member: Callable[..., Any]) -> None:
    old = member(Role.DEVICE, not_before=int(time.time()) - 10 * 86400, valid_days=1)
    with pytest.raises(CertificateExpired) as info:
        verifier.verify(old.cert_pem)
    assert info.value.not_after == old.credentials.valid_until


def test_verify_revoked_certificate_via_crl(authority: CertificateAuthority, verifier: CertificateVerifier,
                                           member: Callable[..., Any]) -> None:
    device = member(Role.DEVICE, "device-1")
    verifier.verify(device.cert_pem)
    authority.revoke("device-1")
    with pytest.raises(CertificateRevoked) as info:
        verifier.verify(device.cert_pem)  # the verifier reads the CRL through authority.crl_pem each time
    assert info.value.source == "crl" and info.value.member_id == "device-1"


def test_verify_with_static_crl_snapshot(authority: CertificateAuthority, member: Callable[..., Any]) -> None:
    device = member(Role.DEVICE, "device-1")
    authority.revoke("device-1")
    snapshot = CertificateVerifier(authority.root_pem, authority.crl_pem())
    with pytest.raises(CertificateRevoked):
        snapshot.verify(device.cert_pem)


def test_verify_rejects_crl_signed_by_another_ca(authority: CertificateAuthority, other_authority: CertificateAuthority,
                                                 member: Callable[..., Any]) -> None:
    device = member(Role.DEVICE)
    with pytest.raises(CrlUnavailable) as info:
        CertificateVerifier(authority.root_pem, other_authority.crl_pem()).verify(device.cert_pem)
    assert info.value.reason == "bad_signature"


def test_verify_rejects_stale_crl(authority: CertificateAuthority, member: Callable[..., Any]) -> None:
    device = member(Role.DEVICE, valid_days=365)
    later = CertificateVerifier(authority.root_pem, authority.crl_pem(), clock=lambda: time.time() + 30 * 86400)
    with pytest.raises(CrlUnavailable):
        later.verify(device.cert_pem)


def test_verify_chain_status_false_is_revoked_on_chain(authority: CertificateAuthority,
                                                       member: Callable[..., Any]) -> None:
    device = member(Role.DEVICE, "device-1")
    asked: list[tuple[str, Role]] = []

    def chain_status(address: str, role: Role) -> bool:
        asked.append((address, role))
        return False

    verifier = CertificateVerifier(authority.root_pem, authority.crl_pem, chain_status=chain_status)
    with pytest.raises(CertificateRevoked) as info:
        verifier.verify(device.cert_pem)
    assert info.value.source == "chain"
    assert asked == [(device.address, Role.DEVICE)]


def test_for_one_request_asks_each_members_chain_status_once(authority: CertificateAuthority,
                                                              member: Callable[..., Any]) -> None:
    device, sp = member(Role.DEVICE, "device-1"), member(Role.SERVICE_PROVIDER, "sp-1")
    asked: list[tuple[str, Role]] = []

    def chain_status(address: str, role: Role) -> bool:
        asked.append((address, role))
        return True

    verifier = CertificateVerifier(authority.root_pem, authority.crl_pem, chain_status=chain_status)
    request = verifier.for_one_request()
    for pem in (device.cert_pem, sp.cert_pem, device.cert_pem, sp.cert_pem, device.cert_pem):
        request.verify(pem)
    assert asked == [(device.address, Role.DEVICE), (sp.address, Role.SERVICE_PROVIDER)]
    verifier.verify(device.cert_pem)  # the verifier it came from keeps asking every time
    verifier.for_one_request().verify(device.cert_pem)  # and so does the next request's
    assert asked[2:] == [(device.address, Role.DEVICE)] * 2


def test_for_one_request_keeps_no_failed_read_and_checks_the_crl_every_time(authority: CertificateAuthority,
                                                                          member: Callable[..., Any]) -> None:
    device = member(Role.DEVICE, "device-1")
    answers: list[bool | Exception] = [ChainUnreachable("isActive: node error", function="isActive"), True]

    def chain_status(address: str, role: Role) -> bool:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    request = CertificateVerifier(authority.root_pem, authority.crl_pem, chain_status=chain_status).for_one_request()
    with pytest.raises(ChainUnreachable):
        request.verify(device.cert_pem)
    assert request.verify(device.cert_pem).eth_address == device.address  # read again, not the failure kept
    assert answers == []
    authority.revoke("device-1")
    with pytest.raises(CertificateRevoked) as info:  # only the on-chain status is kept, never the CRL's answer
        request.verify(device.cert_pem)
    assert info.value.source == "crl"


def test_for_one_request_without_chain_status_verifies_as_before(verifier: CertificateVerifier,
                                                                 member: Callable[..., Any]) -> None:
    device = member(Role.DEVICE, "device-1")
    assert verifier.for_one_request().verify(device.cert_pem) == verifier.verify(device.cert_pem)


def test_verify_wrong_role(verifier: CertificateVerifier, member: Callable[..., Any]) -> None:
    device = member(Role.DEVICE, "device-1")
    with pytest.raises(WrongRole) as info:
        verifier.verify(device.cert_pem, Role.CLEARING_CENTER)
    assert (info.value.role, info.value.expected_role) == ("DEVICE", "CLEARING_CENTER")
    assert info.value.http_status == 403


def test_verify_signer_matches_certificate_address(verifier: CertificateVerifier, member: Callable[..., Any]) -> None:
    bank = member(Role.BANK)
    assert verifier.verify_signer(bank.cert_pem, bank.address.lower(), Role.BANK).eth_address == bank.address


def test_verify_signer_mismatch_is_identity_mismatch(verifier: CertificateVerifier, member: Callable[..., Any],
                                                     eth_keypair: Callable[[], tuple[bytes, str]]) -> None:
    bank = member(Role.BANK)
    _, someone_else = eth_keypair()
    with pytest.raises(IdentityMismatch) as info:
        verifier.verify_signer(bank.cert_pem, someone_else)
    assert info.value.signer == someone_else and info.value.certificate_address == bank.address


# --- Envelope ------------------------------------------------------------------------------------------------------
def transfer_request(payee: str, amount: int = 1_000) -> TransferRequest:
    return TransferRequest(request_id=bytes(range(32)), payee=payee, amount=amount)


def sealed_by(sender: Any, message: Any) -> Envelope:
    return Envelope.seal(message, DOMAIN, sender.eth_key, sender.cert_pem)


def test_envelope_round_trip_opens_to_message_and_identity(verifier: CertificateVerifier,
                                                           member: Callable[..., Any]) -> None:
    cc = member(Role.CLEARING_CENTER, "cc-1")
    message = transfer_request(cc.address)
    envelope = Envelope.from_json(sealed_by(cc, message).to_json())
    opened, identity = envelope.open(verifier, DOMAIN, Role.CLEARING_CENTER)
    assert opened == message
    assert (identity.member_id, identity.eth_address) == ("cc-1", cc.address)
    assert envelope.kind == "TransferRequest" and envelope.signature.startswith("0x")


def test_envelope_tampered_message_is_identity_mismatch(verifier: CertificateVerifier,
                                                        member: Callable[..., Any]) -> None:
    cc = member(Role.CLEARING_CENTER)
    envelope = sealed_by(cc, transfer_request(cc.address, amount=1_000))
    tampered = Envelope(envelope.kind, {**envelope.message, "amount": 1_000_000}, envelope.signature,
                        envelope.certificate)
    with pytest.raises(IdentityMismatch) as info:
        tampered.open(verifier, DOMAIN, Role.CLEARING_CENTER)
    assert info.value.certificate_address == cc.address and info.value.signer != cc.address


def test_envelope_with_certificate_of_another_member_is_identity_mismatch(
        verifier: CertificateVerifier, member: Callable[..., Any]) -> None:
    honest, thief = member(Role.SERVICE_PROVIDER, "sp-1"), member(Role.SERVICE_PROVIDER, "sp-2")
    log = ReceiveLog(usage_batch=bytes(32), payer=honest.address, received_at=1_700_000_000)
    signed_by_thief = sealed_by(thief, log)
    wearing_honest_cert = Envelope(signed_by_thief.kind, signed_by_thief.message, signed_by_thief.signature,
                                   honest.cert_pem.decode())
    with pytest.raises(IdentityMismatch) as info:
        wearing_honest_cert.open(verifier, DOMAIN, Role.SERVICE_PROVIDER)
    assert (info.value.signer, info.value.member_id) == (thief.address, "sp-1")


def test_envelope_other_domain_is_identity_mismatch(verifier: CertificateVerifier, member: Callable[..., Any]) -> None:
    cc = member(Role.CLEARING_CENTER)
    other_chain = Domain(chain_id=1, verifying_contract=DOMAIN.verifying_contract)
    envelope = Envelope.seal(transfer_request(cc.address), other_chain, cc.eth_key, cc.cert_pem)
    with pytest.raises(IdentityMismatch):
        envelope.open(verifier, DOMAIN, Role.CLEARING_CENTER)


def test_envelope_must_match_tls_peer(verifier: CertificateVerifier, member: Callable[..., Any]) -> None:
    cc, other = member(Role.CLEARING_CENTER, "cc-1"), member(Role.CLEARING_CENTER, "cc-2")
    envelope = sealed_by(cc, transfer_request(cc.address))
    peer = verifier.verify(other.cert_pem)
    with pytest.raises(IdentityMismatch) as info:
        envelope.open(verifier, DOMAIN, Role.CLEARING_CENTER, peer=peer)
    assert (info.value.expected_member, info.value.got_member) == ("cc-2", "cc-1")
    assert envelope.open(verifier, DOMAIN, Role.CLEARING_CENTER, peer=verifier.verify(cc.cert_pem))[1].member_id == "cc-1"


def test_envelope_wrong_role_and_untrusted_certificate(verifier: CertificateVerifier, member: Callable[..., Any],
                                                      attacker_member: Callable[..., Any]) -> None:
    device = member(Role.DEVICE)
    with pytest.raises(WrongRole):
        sealed_by(device, transfer_request(device.address)).open(verifier, DOMAIN, Role.CLEARING_CENTER)
    forged = attacker_member(Role.CLEARING_CENTER)
    with pytest.raises(UntrustedCertificate):
        sealed_by(forged, transfer_request(forged.address)).open(verifier, DOMAIN, Role.CLEARING_CENTER)


def test_envelope_malformed_inputs(verifier: CertificateVerifier, member: Callable[..., Any]) -> None:
    cc = member(Role.CLEARING_CENTER)
    good = sealed_by(cc, transfer_request(cc.address)).to_json()
    with pytest.raises(MalformedMessage):
        Envelope.from_json({**good, "signature": 7})
    with pytest.raises(MalformedMessage):
        Envelope.from_json({**good, "kind": "Bogus"}).open(verifier, DOMAIN, None)
    with pytest.raises(SignatureError):
        Envelope.from_json({**good, "signature": "0x" + "ab" * 64}).open(verifier, DOMAIN, None)
    with pytest.raises(SignatureError):
        Envelope.from_json({**good, "signature": "0xzz"}).open(verifier, DOMAIN, None)


def test_verify_unreadable_crl_is_crl_unavailable(authority: CertificateAuthority, member: Callable[..., Any]) -> None:
    device = member(Role.DEVICE)

    def missing() -> bytes:
        raise FileNotFoundError("crl.pem")

    for source in (missing, lambda: b""):
        with pytest.raises(CrlUnavailable):
            CertificateVerifier(authority.root_pem, source).verify(device.cert_pem)


def test_verify_expired_certificate_of_another_ca_is_untrusted(authority: CertificateAuthority,
                                                               member: Callable[..., Any],
                                                               attacker_member: Callable[..., Any]) -> None:
    ours, forged = member(Role.DEVICE, valid_days=1), attacker_member(Role.DEVICE, valid_days=1)
    in_two_days = CertificateVerifier(authority.root_pem, clock=lambda: time.time() + 2 * 86400)
    with pytest.raises(UntrustedCertificate):
        in_two_days.verify(forged.cert_pem)
    with pytest.raises(CertificateExpired):
        in_two_days.verify(ours.cert_pem)


def test_verify_after_root_expiry_is_untrusted(authority: CertificateAuthority, member: Callable[..., Any]) -> None:
    device = member(Role.DEVICE, valid_days=20 * 365)
    now = [time.time()]
    verifier = CertificateVerifier(authority.root_pem, clock=lambda: now[0])
    verifier.verify(device.cert_pem)  # caches the path
    now[0] += 11 * 365 * 86400
    with pytest.raises(UntrustedCertificate) as info:
        verifier.verify(device.cert_pem)
    assert info.value.reason == "root expired"
