"""Revoking a member (`offchain.operator.provision.revoke_member`) against the real service processes: the CRL and
the chain both drop it, and its next request is refused. The refusals themselves (no certificate, another CA,
expired, CRL, on chain, wrong role), each with its positive control, are in test_mtls_refusals_controls.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from offchain.core.errors import CertificateRevoked
from offchain.transport.client import SyncJsonClient
from offchain.core.messages import Role

Services = Any  # tests/services/conftest.py Services


@pytest.fixture(scope="module")
def running(services: Services) -> Services:
    services.start("sp")
    return services


def client_with(services: Services, name: str, cert_pem: bytes, key_pem: bytes, directory: Path) -> SyncJsonClient:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cert.pem").write_bytes(cert_pem)
    (directory / "key.pem").write_bytes(key_pem)
    return SyncJsonClient(services.consortium.urls[name], str(directory / "cert.pem"), str(directory / "key.pem"),
                          str(services.consortium.root_path))


def test_revoke_member_updates_crl_and_chain(running: Services, actors: dict, w3: Any, tmp_path: Path) -> None:
    from offchain.chain import ClearhouseChain, Deployment
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
    with pytest.raises(CertificateRevoked) as info:
        client.get("/v1/catalog")
    assert info.value.fields["remote_status"] == 401  # an answer of the running SP, not a connection failure
    assert revoke_member(ca, authority, "lost-phone") == [lost.eth_address]  # idempotent: nothing sent twice
