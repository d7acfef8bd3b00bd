"""Secure container tests: round trip, every-byte tampering, truncation, untrusted/foreign/wrong-role providers,
on-chain policy hash mismatch, provider-signed bad policies, and wrapped-key records (format in docs/container.md).
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Callable
from hashlib import sha256
from typing import Any

import coincurve
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from offchain.trust.ca import MemberCredentials
from offchain.trust.certs import CertificateVerifier
from offchain.trust.container import (
    ContainerHeader,
    Payee,
    Policy,
    WrappedKey,
    canonical_json,
    decode_frame,
    key_commitment,
    package,
    policy_hash,
    seal,
    verify_container,
    wrap_content_key,
)
from offchain.core.errors import (
    CertificateError,
    ContainerError,
    ContainerTampered,
    ContainerTruncated,
    ContentOwnerMismatch,
    IdentityMismatch,
    InvalidAmount,
    InvalidPolicy,
    PolicyMismatch,
    UntrustedCertificate,
    WrongRole,
)
from offchain.core.messages import Role, address_from_public_key, keccak, policy_id

Member = Any  # tests/offchain/conftest.py Member (conftest modules are not importable by name here)
MemberFactory = Callable[..., Any]


def new_eth_key() -> tuple[bytes, str]:
    key = coincurve.PrivateKey(os.urandom(32))
    return key.secret, address_from_public_key(key.public_key.format(compressed=False))

CONTENT_ID = bytes.fromhex("c0" * 32)
CONTENT = b"Clearhouse test movie: ten frames of nothing."


def make_policy(provider: Member, *, price: int = 250, payees: tuple[Payee, ...] | None = None) -> Policy:
    _, second = new_eth_key()
    return Policy(content_id=CONTENT_ID, version=1, price=price,
                  payees=payees or (Payee(provider.address, 7000), Payee(second, 3000)), provider=provider.address)


def forge(provider: MemberCredentials, policy_json: dict, content: bytes = CONTENT) -> tuple[bytes, bytes]:
    """A provider-signed container whose policy skips `package`'s checks (what a faulty provider could ship)."""
    key = bytes(range(32))
    header = {"format": "CHSC/1", "content_id": "0x" + CONTENT_ID.hex(), "provider_member_id": provider.member_id,
              "provider_address": provider.eth_address,
              "provider_cert_sha256": "0x" + sha256(provider.cert_pem).hexdigest(),
              "policy": policy_json, "title": "forged", "media_type": "text/plain", "cipher": "AES-256-GCM",
              "nonce": "0x" + "00" * 12, "content_length": len(content),
              "key_commitment": "0x" + key_commitment(key, CONTENT_ID).hex()}
    return seal(canonical_json(header), content, key, provider), key


def self_signed_provider(address: str) -> MemberCredentials:
    """A content provider certificate that no CA issued: same names, self-signed."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "content-1")])
    now = dt.datetime.now(dt.timezone.utc)
    san = x509.SubjectAlternativeName([
        x509.UniformResourceIdentifier("urn:clearhouse:member:content-1"),
        x509.UniformResourceIdentifier("urn:clearhouse:role:content_provider"),
        x509.UniformResourceIdentifier(f"urn:clearhouse:eth:{address}")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30)).add_extension(san, critical=False)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return MemberCredentials("content-1", Role.CONTENT_PROVIDER, address, cert.public_bytes(serialization.Encoding.PEM),
                             key_pem)


@pytest.fixture
def content_provider(content_provider_member: Member) -> Member:
    return content_provider_member


@pytest.fixture
def policy(content_provider: Member) -> Policy:
    return make_policy(content_provider)


@pytest.fixture
def packaged(content_provider: Member, policy: Policy) -> tuple[bytes, bytes]:
    return package(CONTENT, CONTENT_ID, policy, content_provider.credentials, title="t", media_type="text/plain")


def test_package_verify_decrypt_round_trip(packaged: tuple[bytes, bytes], verifier: CertificateVerifier,
                                           policy: Policy, content_provider: Member) -> None:
    blob, key = packaged
    container = verify_container(blob, verifier, policy_hash(policy))
    assert container.decrypt(key) == CONTENT
    assert container.policy == policy
    assert container.provider.member_id == content_provider.credentials.member_id
    assert container.policy.policy_id == policy_id(CONTENT_ID, 1)
    assert CONTENT not in blob and key not in blob


def test_policy_hash_is_keccak_of_canonical_policy_json(policy: Policy) -> None:
    expected = json.dumps(policy.to_json(), sort_keys=True, separators=(",", ":")).encode()
    assert policy_hash(policy) == keccak(expected)
    assert policy.to_json()["remainder_payee"] == policy.payees[0].account
    bumped = Policy(policy.content_id, policy.version, policy.price + 1, policy.payees, policy.provider)
    assert policy_hash(bumped) != policy_hash(policy)


def test_verify_every_flipped_byte_raises_named_error(packaged: tuple[bytes, bytes],
                                                      verifier: CertificateVerifier, policy: Policy) -> None:
    blob, key = packaged
    expected_hash = policy_hash(policy)
    names: set[str] = set()
    for position in range(len(blob)):
        for mask in (0x01, 0x80):
            tampered = bytearray(blob)
            tampered[position] ^= mask
            with pytest.raises((ContainerError, CertificateError)) as caught:
                verify_container(bytes(tampered), verifier, expected_hash).decrypt(key)
            names.add(type(caught.value).__name__)
    assert "ContainerTampered" in names and "ContainerTruncated" in names


def test_verify_every_truncation_raises_truncated(packaged: tuple[bytes, bytes], verifier: CertificateVerifier) -> None:
    blob, _ = packaged
    for length in range(len(blob)):
        with pytest.raises(ContainerTruncated):
            verify_container(blob[:length], verifier)


def test_verify_trailing_bytes_tampered(packaged: tuple[bytes, bytes], verifier: CertificateVerifier) -> None:
    with pytest.raises(ContainerTampered):
        verify_container(packaged[0] + b"\x00", verifier)


def test_verify_self_signed_provider_untrusted(policy: Policy, verifier: CertificateVerifier,
                                              content_provider: Member) -> None:
    rogue = self_signed_provider(content_provider.address)
    blob, _ = package(CONTENT, CONTENT_ID, policy, rogue)
    with pytest.raises(UntrustedCertificate):
        verify_container(blob, verifier)


def test_verify_foreign_ca_provider_untrusted(policy: Policy, verifier: CertificateVerifier,
                                             attacker_member: MemberFactory) -> None:
    rogue = attacker_member(Role.CONTENT_PROVIDER, "content-1")
    blob, _ = package(CONTENT, CONTENT_ID, policy, rogue.credentials)
    with pytest.raises(UntrustedCertificate):
        verify_container(blob, verifier)


def test_verify_device_signed_container_wrong_role(policy: Policy, verifier: CertificateVerifier,
                                                   device_member: Member) -> None:
    blob, _ = package(CONTENT, CONTENT_ID, policy, device_member.credentials)
    with pytest.raises(WrongRole):
        verify_container(blob, verifier)


def test_verify_certificate_swapped_for_another_provider(packaged: tuple[bytes, bytes], verifier: CertificateVerifier,
                                                         member: MemberFactory) -> None:
    other = member(Role.CONTENT_PROVIDER, "content-2")
    frame = decode_frame(packaged[0])
    header = json.loads(frame.header)
    header["provider_cert_sha256"] = "0x" + sha256(other.cert_pem).hexdigest()
    blob = seal(canonical_json(header), CONTENT, packaged[1], other.credentials)
    with pytest.raises(IdentityMismatch):
        verify_container(blob, verifier)


def test_verify_policy_hash_differs_from_chain_mismatch(packaged: tuple[bytes, bytes], verifier: CertificateVerifier,
                                                        content_provider: Member) -> None:
    on_chain = policy_hash(make_policy(content_provider, price=999))
    with pytest.raises(PolicyMismatch) as caught:
        verify_container(packaged[0], verifier, on_chain)
    assert caught.value.expected == on_chain


@pytest.mark.parametrize("price", [-1, 0, 2**88])
def test_verify_provider_signed_bad_price_invalid_amount(price: int, content_provider: Member,
                                                         verifier: CertificateVerifier) -> None:
    policy_json = make_policy(content_provider).to_json() | {"price": price}
    blob, _ = forge(content_provider.credentials, policy_json)
    with pytest.raises(InvalidAmount) as caught:
        verify_container(blob, verifier)
    assert caught.value.value == price


def test_verify_provider_signed_bad_split_invalid_policy(content_provider: Member,
                                                         verifier: CertificateVerifier) -> None:
    policy_json = make_policy(content_provider).to_json()
    policy_json["payees"][1]["bps"] = 2999
    blob, _ = forge(content_provider.credentials, policy_json)
    with pytest.raises(InvalidPolicy) as caught:
        verify_container(blob, verifier)
    assert caught.value.sum_bps == 9999


@pytest.mark.parametrize("payees", [(), (Payee("0x" + "0" * 40, 10_000),), "duplicate"])
def test_package_bad_payees_rejected(payees: object, content_provider: Member) -> None:
    if payees == "duplicate":
        payees = (Payee(content_provider.address, 5000), Payee(content_provider.address, 5000))
    policy = Policy(CONTENT_ID, 1, 100, payees, content_provider.address)  # type: ignore[arg-type]
    with pytest.raises(InvalidPolicy):
        package(CONTENT, CONTENT_ID, policy, content_provider.credentials)


def test_decrypt_wrong_key_tampered(packaged: tuple[bytes, bytes], verifier: CertificateVerifier) -> None:
    container = verify_container(packaged[0], verifier)
    with pytest.raises(ContainerTampered):
        container.decrypt(bytes(32))


def test_header_decode_rejects_non_canonical_json(packaged: tuple[bytes, bytes]) -> None:
    header = decode_frame(packaged[0]).header
    spaced = json.dumps(json.loads(header), sort_keys=True).encode()
    assert ContainerHeader.decode(header).content_id == CONTENT_ID
    with pytest.raises(ContainerTampered):
        ContainerHeader.decode(spaced)


def test_wrapped_key_json_round_trip(packaged: tuple[bytes, bytes], device_member: Member,
                                     verifier: CertificateVerifier) -> None:
    wrapped = wrap_content_key(packaged[1], CONTENT_ID, device_member.cert_pem, "device-1", verifier=verifier)
    assert WrappedKey.from_json(json.loads(json.dumps(wrapped.to_json()))) == wrapped
    assert packaged[1] not in json.dumps(wrapped.to_json()).encode()
    broken = wrapped.to_json() | {"ciphertext": "0x00"}
    with pytest.raises(ContainerTampered):
        WrappedKey.from_json(broken)


def test_wrap_for_non_device_certificate_wrong_role(packaged: tuple[bytes, bytes], content_provider: Member,
                                                    verifier: CertificateVerifier) -> None:
    with pytest.raises(WrongRole):
        wrap_content_key(packaged[1], CONTENT_ID, content_provider.cert_pem, "content-1", verifier=verifier)


def test_wrap_member_id_differs_from_certificate_identity_mismatch(packaged: tuple[bytes, bytes],
                                                                   device_member: Member,
                                                                   verifier: CertificateVerifier) -> None:
    with pytest.raises(IdentityMismatch):
        wrap_content_key(packaged[1], CONTENT_ID, device_member.cert_pem, "device-2", verifier=verifier)


def test_container_of_copied_policy_signed_by_another_provider_refused_owner_unaffected(
        member: MemberFactory, verifier: CertificateVerifier, content_provider: Member, policy: Policy,
        packaged: tuple[bytes, bytes]) -> None:
    """Issue 9 item 4: a provider copies the victim's public policy and packages its own bytes under the id."""
    thief = member(Role.CONTENT_PROVIDER, "thief-1")
    registered = policy_hash(policy)
    copied, _key = package(b"not the film", CONTENT_ID, policy, thief.credentials)  # policy names the victim
    with pytest.raises(ContentOwnerMismatch) as caught:
        verify_container(copied, verifier, registered, expected_owner=content_provider.address)
    assert (caught.value.owner, caught.value.signer) == (content_provider.address, thief.address)
    with pytest.raises(IdentityMismatch) as named:  # no owner given: the policy still names another provider
        verify_container(copied, verifier, registered)
    assert (named.value.expected, named.value.got) == (content_provider.address, thief.address)
    own = Policy(CONTENT_ID, 1, policy.price, policy.payees, thief.address)  # its own policy: another hash
    blob, _ = package(b"not the film", CONTENT_ID, own, thief.credentials)
    with pytest.raises(PolicyMismatch):
        verify_container(blob, verifier, registered)
    box = verify_container(packaged[0], verifier, registered, expected_owner=content_provider.address)
    assert box.decrypt(packaged[1]) == CONTENT  # the owner's container still verifies


def test_policy_without_provider_address_invalid(content_provider: Member) -> None:
    policy = Policy(CONTENT_ID, 1, 100, (Payee(content_provider.address, 10_000),), "0x" + "0" * 40)
    with pytest.raises(InvalidPolicy) as caught:
        package(CONTENT, CONTENT_ID, policy, content_provider.credentials)
    assert caught.value.field == "provider"
