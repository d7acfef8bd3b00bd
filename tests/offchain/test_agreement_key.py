"""The device's content-key agreement key (issue 10 item 4): a dedicated P-256 key inside the encrypted keystore,
attested by the CA for the device's member certificate. Offline: the attestation verifies only against the root
and for the very certificate it names; a key wrapped to the attested key opens with the keystore and passphrase,
and the TLS key file alone (key.pem) opens nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from offchain.core.errors import IdentityMismatch, MalformedMessage, UntrustedCertificate, WrongDevice, WrongPassphrase
from offchain.core.messages import Role
from offchain.device.secure_module import (DeviceKeys, KdfParams, SecureModule, Wallet, create_keystore,
                                           device_keys_with_agreement, unlock_keystore)
from offchain.trust.agreement import AgreementAttestation, verify_attestation
from offchain.trust.certs import CertificateVerifier
from offchain.trust.container import Payee, Policy, derive_kek, package, verify_container, wrap_content_key

CONTENT_ID = bytes.fromhex("a9" * 32)
Member = Any


@pytest.fixture
def keys(authority: Any, device_member: Member) -> DeviceKeys:
    return device_keys_with_agreement(authority, device_member.credentials.member_id, device_member.eth_key,
                                      device_member.cert_pem, now=1_000)


def test_agreement_key_is_not_the_tls_key_and_is_attested_for_the_certificate(
        keys: DeviceKeys, device_member: Member, verifier: CertificateVerifier) -> None:
    assert keys.agreement_key_pem != device_member.key_path.read_bytes()
    peer = verifier.verify(device_member.cert_pem, Role.DEVICE)
    attested = verify_attestation(keys.agreement_attestation, verifier.root, peer)
    assert attested.public_key().public_numbers() == keys.agreement_key().public_key().public_numbers()
    assert (attested.member_id, attested.eth_address, attested.certificate_fingerprint) == (
        peer.member_id, peer.eth_address, peer.fingerprint)


def test_attestation_for_another_certificate_or_from_another_ca_is_refused(
        keys: DeviceKeys, member: Any, other_authority: Any, verifier: CertificateVerifier,
        device_member: Member) -> None:
    other_device = verifier.verify(member(Role.DEVICE, "device-9").cert_pem, Role.DEVICE)
    with pytest.raises(IdentityMismatch):  # alice's attestation presented by another device
        verify_attestation(keys.agreement_attestation, verifier.root, other_device)
    peer = verifier.verify(device_member.cert_pem, Role.DEVICE)
    forged = device_keys_with_agreement(other_authority, device_member.credentials.member_id,
                                        device_member.eth_key, device_member.cert_pem)
    with pytest.raises(UntrustedCertificate) as info:  # right fields, signed by an attacker's CA
        verify_attestation(forged.agreement_attestation, verifier.root, peer)
    assert info.value.reason == "agreement attestation signature"
    swapped = {**keys.agreement_attestation, "agreement_public_key": forged.agreement_attestation[
        "agreement_public_key"]}
    with pytest.raises(UntrustedCertificate):  # our CA's signature over another key
        verify_attestation(swapped, verifier.root, peer)
    with pytest.raises(MalformedMessage):
        verify_attestation({**keys.agreement_attestation, "extra": 1}, verifier.root, peer)
    verify_attestation(keys.agreement_attestation, verifier.root, peer)  # the control still verifies


def test_keystore_keeps_the_attestation_authenticated(keys: DeviceKeys, tmp_path: Path) -> None:
    path = tmp_path / "keystore.json"
    create_keystore(path, "pw", keys, KdfParams(n=2**4))
    assert unlock_keystore(path, "pw").agreement_attestation == keys.agreement_attestation
    edited = path.read_text().replace(keys.agreement_attestation["issued_at"].__str__() + ",", "1001,", 1)
    assert edited != path.read_text()
    path.write_text(edited)
    with pytest.raises(WrongPassphrase):
        unlock_keystore(path, "pw")


def test_with_the_tls_key_file_alone_a_content_key_does_not_unwrap(
        keys: DeviceKeys, device_member: Member, content_provider_member: Member, tmp_path: Path,
        verifier: CertificateVerifier) -> None:
    policy = Policy(CONTENT_ID, 1, 10, (Payee(content_provider_member.address, 10_000),),
                    content_provider_member.address)
    blob, content_key = package(b"secret film", CONTENT_ID, policy, content_provider_member.credentials)
    attestation = AgreementAttestation.from_json(keys.agreement_attestation)
    member_id = device_member.credentials.member_id
    wrapped = wrap_content_key(content_key, CONTENT_ID, attestation.public_key_pem(), member_id)  # what the SP does
    tls_key = serialization.load_pem_private_key(device_member.key_path.read_bytes(), password=None)
    assert isinstance(tls_key, ec.EllipticCurvePrivateKey)
    epk = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), wrapped.ephemeral_public_key)
    kek = derive_kek(tls_key.exchange(ec.ECDH(), epk), wrapped.ephemeral_public_key, wrapped.info())
    with pytest.raises(InvalidTag):  # raw ECDH with key.pem, skipping every check: not the content key
        AESGCM(kek).decrypt(wrapped.nonce, wrapped.ciphertext, wrapped.info())
    container = verify_container(blob, verifier)
    thief = SecureModule(DeviceKeys(member_id, device_member.eth_key, device_member.key_path.read_bytes()),
                         Wallet(tmp_path / "thief.db"))
    with pytest.raises(WrongDevice):  # a secure module built around key.pem refuses before any charge
        thief._unwrap(wrapped, container)
    owner = SecureModule(keys, Wallet(tmp_path / "owner.db"))  # the keystore's agreement key: it opens
    assert container.decrypt(owner._unwrap(wrapped, container)) == b"secret film"
