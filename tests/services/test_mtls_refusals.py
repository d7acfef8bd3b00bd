"""Mutual TLS refusals against the real service processes: no client certificate, a certificate from another CA,
an expired one, a revoked one (CRL, and on chain for every service) and a member calling a route of another role.
"""

from __future__ import annotations

import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from offchain.trust.ca import CertificateAuthority
from offchain.core.errors import CertificateExpired, CertificateRevoked, ServiceUnavailable, WrongRole
from offchain.transport.client import SyncJsonClient
from offchain.core.messages import Role

Services = Any  # tests/services/conftest.py Services
DEVICE_ADDRESS = "0x000000000000000000000000000000000000dEaD"


@pytest.fixture(scope="module")
def running(services: Services) -> Services:
    services.start("sp")
    services.start("bank")
    services.start("cc")
    return services


def client_with(services: Services, name: str, cert_pem: bytes, key_pem: bytes, directory: Path) -> SyncJsonClient:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cert.pem").write_bytes(cert_pem)
    (directory / "key.pem").write_bytes(key_pem)
    return SyncJsonClient(services.consortium.urls[name], str(directory / "cert.pem"), str(directory / "key.pem"),
                          str(services.consortium.root_path))


def test_request_without_client_certificate_is_refused(running: Services) -> None:
    context = ssl.create_default_context(cafile=str(running.consortium.root_path))
    for name in ("sp", "bank"):
        with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
            urllib.request.urlopen(running.consortium.urls[name] + "/openapi.json", context=context, timeout=10)


def test_certificate_from_another_ca_is_refused(running: Services, tmp_path: Path) -> None:
    rogue = CertificateAuthority.create(tmp_path / "rogue-ca")
    creds = rogue.issue_member("alice-phone", Role.DEVICE, DEVICE_ADDRESS, user_id="alice")
    client = client_with(running, "sp", creds.cert_pem, creds.key_pem, tmp_path / "rogue")
    with pytest.raises(ServiceUnavailable) as info:
        client.get("/v1/catalog")
    assert "remote_status" not in info.value.fields  # refused in the handshake: no HTTP answer at all


def test_expired_certificate_is_refused(running: Services, tmp_path: Path) -> None:
    ca = running.consortium.ca()
    creds = ca.issue_member("old-phone", Role.DEVICE, DEVICE_ADDRESS, valid_days=1, user_id="alice",
                            not_before=int(time.time()) - 3 * 86400)
    client = client_with(running, "sp", creds.cert_pem, creds.key_pem, tmp_path / "expired")
    with pytest.raises((ServiceUnavailable, CertificateExpired)):
        client.get("/v1/catalog")


def authority_of(running: Services, actors: dict, w3: Any) -> Any:
    from offchain.chain.client import ClearhouseChain, Deployment

    return ClearhouseChain(w3, Deployment.load(running.consortium.deployment_path), actors["authority"].key)


def test_revoked_certificate_is_refused_after_crl_update(running: Services, actors: dict, w3: Any,
                                                         tmp_path: Path) -> None:
    from offchain.operator.provision import MemberSpec, create_member

    ca = running.consortium.ca()
    stolen = create_member(ca, authority_of(running, actors, w3), w3, tmp_path,
                           MemberSpec("stolen-phone", Role.DEVICE, user_id="alice"))
    client = client_with(running, "sp", stolen.cert_path.read_bytes(), stolen.key_path.read_bytes(),
                         tmp_path / "revoked")
    assert "items" in client.get("/v1/catalog")  # valid until revoked
    ca.revoke("stolen-phone")
    with pytest.raises(CertificateRevoked) as info:
        client.get("/v1/catalog")
    assert info.value.fields["remote_status"] == 401


def test_member_not_active_on_chain_is_refused_by_bank(running: Services, tmp_path: Path) -> None:
    ca = running.consortium.ca()
    creds = ca.issue_member("ghost-bank", Role.BANK, DEVICE_ADDRESS)  # CA-issued, never registered on chain
    client = client_with(running, "bank", creds.cert_pem, creds.key_pem, tmp_path / "ghost")
    with pytest.raises(CertificateRevoked) as info:
        client.get("/v1/ledger")
    assert info.value.fields["source"] == "chain"


@pytest.mark.parametrize(("service", "path"), [("sp", "/v1/catalog"), ("cc", "/v1/users/alice")])
def test_member_refused_when_revoked_on_chain_only(running: Services, actors: dict, w3: Any, tmp_path: Path,
                                                   service: str, path: str) -> None:
    from offchain.operator.provision import MemberSpec, create_member

    ca = running.consortium.ca()
    authority = authority_of(running, actors, w3)
    gone = create_member(ca, authority, w3, tmp_path, MemberSpec(f"gone-{service}", Role.DEVICE, user_id="alice"))
    client = client_with(running, service, gone.cert_path.read_bytes(), gone.key_path.read_bytes(), tmp_path / "gone")
    client.get("/openapi.json")  # active: accepted
    authority.revoke_member(gone.eth_address)  # on chain only: the CRL does not list it
    assert not ca.is_revoked(gone.member_id)
    with pytest.raises(CertificateRevoked) as info:
        client.get(path)
    assert info.value.fields["source"] == "chain"
    assert info.value.fields["remote_status"] == 401


@pytest.mark.parametrize(("member_id", "service", "method", "path"), [
    ("alice-phone", "sp", "POST", "/v1/catalog"),
    ("studio", "sp", "POST", "/v1/usage"),
    ("sp", "bank", "GET", "/v1/ledger"),
    ("alice-phone", "bank", "POST", "/v1/deposits"),
    ("bank", "bank", "POST", "/v1/transfers"),
])
def test_wrong_role_is_refused(running: Services, member_id: str, service: str, method: str, path: str) -> None:
    client = running.client(member_id, service)
    with pytest.raises(WrongRole) as info:
        client.request(method, path, {} if method == "POST" else None)
    assert info.value.fields["remote_status"] == 403


def test_revoke_member_updates_crl_and_chain(running: Services, actors: dict, w3: Any, tmp_path: Path) -> None:
    from offchain.chain.client import ClearhouseChain, Deployment
    from offchain.operator.provision import MemberSpec, create_member, revoke_member

    consortium = running.consortium
    ca = consortium.ca()
    authority = ClearhouseChain(w3, Deployment.load(consortium.deployment_path), actors["authority"].key)
    lost = create_member(ca, authority, w3, tmp_path, MemberSpec("lost-phone", Role.DEVICE, user_id="alice"))
    client = client_with(running, "sp", lost.cert_path.read_bytes(), lost.key_path.read_bytes(), tmp_path / "lost")
    assert "items" in client.get("/v1/catalog")
    assert authority.is_active(lost.eth_address, int(Role.DEVICE))

    assert revoke_member(ca, authority, "lost-phone") == [lost.eth_address]

    assert not authority.is_active(lost.eth_address, int(Role.DEVICE))
    assert authority.member(lost.eth_address).revoked
    with pytest.raises(CertificateRevoked):
        client.get("/v1/catalog")
    assert revoke_member(ca, authority, "lost-phone") == [lost.eth_address]  # idempotent: nothing sent twice
