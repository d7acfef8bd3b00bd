"""Certificate authority: root and member certificate shape, persistence, revocation and the CRL."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ipaddress
import stat
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from offchain.trust.ca import CertificateAuthority
from offchain.trust.certs import CertificateVerifier
from offchain.core.errors import ConfigError, NotFound
from offchain.core.messages import Role


def test_root_is_a_ca_certificate_and_key_is_private(authority: CertificateAuthority) -> None:
    root = x509.load_pem_x509_certificate(authority.root_pem)
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    usage = root.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    assert root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    mode = (authority.directory / "root.key.pem").stat().st_mode
    assert stat.S_IMODE(mode) == 0o600


def test_member_certificate_names_member_role_and_address(member: Callable[..., Any]) -> None:
    device = member(Role.DEVICE, "device-7")
    cert = device.credentials.certificate
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    assert "urn:clearhouse:member:device-7" in uris
    assert "urn:clearhouse:role:device" in uris
    assert f"urn:clearhouse:eth:{device.address}" in uris
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and usage.key_agreement and not usage.key_cert_sign
    assert stat.S_IMODE(device.key_path.stat().st_mode) == 0o600


def test_credentials_expose_chain_registration_fields(member: Callable[..., Any]) -> None:
    bank = member(Role.BANK, "bank-9", valid_days=30)
    creds = bank.credentials
    assert len(creds.fingerprint) == 32
    assert creds.valid_until - creds.valid_from == 30 * 86400
    assert abs(creds.valid_from - time.time()) < 600


def test_load_restores_index_and_issuing_continues(authority: CertificateAuthority, member: Callable[..., Any],
                                                    eth_keypair: Callable[[], tuple[bytes, str]]) -> None:
    first = member(Role.SERVICE_PROVIDER, "sp-1")
    loaded = CertificateAuthority.load(authority.directory)
    assert loaded.root_pem == authority.root_pem
    assert [e["member_id"] for e in loaded.issued] == ["sp-1"]
    assert loaded.issued[0]["serial"] == hex(first.credentials.serial_number)
    _, address = eth_keypair()
    again = loaded.issue_member("cc-1", Role.CLEARING_CENTER, address)
    CertificateVerifier(authority.root_pem).verify(again.cert_pem, Role.CLEARING_CENTER)


def test_create_refuses_existing_directory(authority: CertificateAuthority) -> None:
    with pytest.raises(ConfigError):
        CertificateAuthority.create(authority.directory)


def test_load_missing_directory_raises_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        CertificateAuthority.load(tmp_path / "nowhere")
    assert info.value.directory == str(tmp_path / "nowhere")


def test_issue_member_rejects_role_none(authority: CertificateAuthority,
                                        eth_keypair: Callable[[], tuple[bytes, str]]) -> None:
    _, address = eth_keypair()
    with pytest.raises(ConfigError):
        authority.issue_member("nobody", Role.NONE, address)


def test_revoke_lists_every_serial_of_member_on_signed_crl(authority: CertificateAuthority,
                                                           member: Callable[..., Any]) -> None:
    old = member(Role.DEVICE, "device-1")
    new = member(Role.DEVICE, "device-1")
    other = member(Role.DEVICE, "device-2")
    authority.revoke("device-1")
    authority.revoke("device-1")  # idempotent
    crl = x509.load_pem_x509_crl(authority.crl_pem())
    root = x509.load_pem_x509_certificate(authority.root_pem)
    assert crl.is_signature_valid(root.public_key())
    assert crl.next_update_utc is not None and crl.next_update_utc.timestamp() > time.time()
    revoked = {r.serial_number for r in crl}
    assert revoked == {old.credentials.serial_number, new.credentials.serial_number}
    assert other.credentials.serial_number not in revoked
    assert authority.is_revoked("device-1") and not authority.is_revoked("device-2")


def test_revoke_unknown_member_raises_not_found(authority: CertificateAuthority) -> None:
    with pytest.raises(NotFound) as info:
        authority.revoke("ghost")
    assert info.value.member_id == "ghost"


def test_crl_is_resigned_when_half_its_validity_passed(tmp_path: Path) -> None:
    now = [1_900_000_000.0]
    ca = CertificateAuthority.create(tmp_path / "ca", clock=lambda: now[0])
    first = x509.load_pem_x509_crl(ca.crl_pem())
    now[0] += 5 * 86400
    second = x509.load_pem_x509_crl(ca.crl_pem())
    assert second.last_update_utc > first.last_update_utc
    assert second.next_update_utc is not None and second.next_update_utc.timestamp() > now[0]


def test_device_certificate_names_user_when_issued_with_user_id(authority: CertificateAuthority,
                                                                eth_keypair: Callable[[], tuple[bytes, str]]) -> None:
    _, address = eth_keypair()
    creds = authority.issue_member("phone-1", Role.DEVICE, address, user_id="alice")
    uris = creds.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value \
        .get_values_for_type(x509.UniformResourceIdentifier)
    assert "urn:clearhouse:user:alice" in uris
    assert CertificateVerifier(authority.root_pem).verify(creds.cert_pem).user_id == "alice"


def test_issue_member_refuses_device_without_user_id(authority: CertificateAuthority,
                                                     eth_keypair: Callable[[], tuple[bytes, str]]) -> None:
    _, address = eth_keypair()
    with pytest.raises(ConfigError) as info:
        authority.issue_member("phone-1", Role.DEVICE, address)
    assert info.value.fields["member_id"] == "phone-1"
    assert authority.issued == []


@pytest.mark.parametrize("user_id", ["", "a:b", "with space", "x" * 129])
def test_issue_member_refuses_device_with_bad_user_id(authority: CertificateAuthority,
                                                      eth_keypair: Callable[[], tuple[bytes, str]],
                                                      user_id: str) -> None:
    _, address = eth_keypair()
    with pytest.raises(ConfigError):
        authority.issue_member("phone-1", Role.DEVICE, address, user_id=user_id)


def test_issue_member_refuses_user_id_for_non_device(authority: CertificateAuthority,
                                                     eth_keypair: Callable[[], tuple[bytes, str]]) -> None:
    _, address = eth_keypair()
    with pytest.raises(ConfigError):
        authority.issue_member("sp-1", Role.SERVICE_PROVIDER, address, user_id="alice")


def test_non_device_certificate_has_no_user_id(authority: CertificateAuthority, member: Callable[..., Any]) -> None:
    provider = member(Role.SERVICE_PROVIDER, "sp-9")
    assert CertificateVerifier(authority.root_pem).verify(provider.cert_pem).user_id is None
