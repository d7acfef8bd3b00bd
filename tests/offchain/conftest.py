"""Shared fixtures for the off-chain tests: the `authority` (a CA in tmp_path) and member credentials per role.

`member` is a factory: `member(Role.DEVICE)` issues a certificate for a fresh secp256k1 Ethereum key and writes
cert/key/CA files, so TLS tests can start servers and clients from paths.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import coincurve
import pytest

from offchain.trust.ca import CertificateAuthority, MemberCredentials
from offchain.trust.certs import CertificateVerifier
from offchain.core.messages import Role, address_from_public_key


@dataclass(frozen=True)
class Member:
    """A test member: CA-issued credentials, its Ethereum key and the files TLS contexts load."""

    credentials: MemberCredentials
    eth_key: bytes
    cert_path: Path
    key_path: Path
    ca_path: Path

    @property
    def address(self) -> str:
        return self.credentials.eth_address

    @property
    def cert_pem(self) -> bytes:
        return self.credentials.cert_pem


def new_eth_key() -> tuple[bytes, str]:
    """A random secp256k1 private key and its checksummed address."""
    key = coincurve.PrivateKey(os.urandom(32))
    return key.secret, address_from_public_key(key.public_key.format(compressed=False))


MemberFactory = Callable[..., Member]


def make_member_factory(ca: CertificateAuthority, root: Path) -> MemberFactory:
    counter = itertools.count(1)

    def issue(role: Role, member_id: str | None = None, **kwargs: Any) -> Member:
        member_id = member_id or f"{Role(role).name.lower().replace('_', '-')}-{next(counter)}"
        eth_key, address = new_eth_key()
        if Role(role) == Role.DEVICE:  # the CA names the device's user (the CC takes the user from here)
            kwargs.setdefault("user_id", f"user-{member_id}")
        credentials = ca.issue_member(member_id, role, address, **kwargs)
        cert_path, key_path = credentials.write(root / member_id)
        return Member(credentials, eth_key, cert_path, key_path, ca.root_path)

    return issue


@pytest.fixture
def authority(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.create(tmp_path / "ca")


@pytest.fixture
def member(authority: CertificateAuthority, tmp_path: Path) -> MemberFactory:
    return make_member_factory(authority, tmp_path / "members")


@pytest.fixture
def eth_keypair() -> Callable[[], tuple[bytes, str]]:
    """Factory of fresh (secp256k1 private key, checksummed address) pairs."""
    return new_eth_key


@pytest.fixture
def verifier(authority: CertificateAuthority) -> CertificateVerifier:
    return CertificateVerifier(authority.root_pem, authority.crl_pem)


@pytest.fixture
def clearing_center_member(member: MemberFactory) -> Member:
    return member(Role.CLEARING_CENTER, "cc-1")


@pytest.fixture
def service_provider_member(member: MemberFactory) -> Member:
    return member(Role.SERVICE_PROVIDER, "sp-1")


@pytest.fixture
def content_provider_member(member: MemberFactory) -> Member:
    return member(Role.CONTENT_PROVIDER, "content-1")


@pytest.fixture
def bank_member(member: MemberFactory) -> Member:
    return member(Role.BANK, "bank-1")


@pytest.fixture
def device_member(member: MemberFactory) -> Member:
    return member(Role.DEVICE, "device-1")


@pytest.fixture
def other_authority(tmp_path: Path) -> CertificateAuthority:
    """A second, unrelated CA: what an attacker controls."""
    return CertificateAuthority.create(tmp_path / "other-ca", name="Attacker Root CA")


@pytest.fixture
def attacker_member(other_authority: CertificateAuthority, tmp_path: Path) -> MemberFactory:
    return make_member_factory(other_authority, tmp_path / "attacker")
