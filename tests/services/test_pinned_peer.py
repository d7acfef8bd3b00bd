"""A device checks the SP's and the CC's certificate on the same TLS connection that carries its request: once a
client verified a server, a request that reaches another member (a swapped port, a DNS change) is refused before
a byte of it is sent."""

from __future__ import annotations

from typing import Any

import pytest

from offchain.core.errors import IdentityMismatch, WrongRole
from offchain.core.messages import Role
from offchain.trust.certs import CertificateVerifier

Services = Any  # tests/services/conftest.py Services


@pytest.fixture(scope="module")
def cc_and_bank(services: Services) -> Services:
    services.start("bank")
    services.start("cc")
    return services


def verifier(services: Services) -> CertificateVerifier:
    consortium = services.consortium
    return CertificateVerifier(consortium.root_path.read_bytes(), lambda: consortium.crl_path.read_bytes())


def test_a_pinned_client_refuses_another_member_on_the_request_connection(cc_and_bank: Services) -> None:
    client = cc_and_bank.client("alice-phone", "cc")
    identity = client.server_identity(verifier(cc_and_bank), Role.CLEARING_CENTER)
    assert identity.member_id == "cc"
    assert "paths" in client.get("/openapi.json")  # positive control: the verified server answers
    client.base_url = cc_and_bank.consortium.urls["bank"]  # the same client now reaches the bank's port
    with pytest.raises((IdentityMismatch, WrongRole)) as refused:
        client.get("/openapi.json")
    assert refused.value.code == "wrong_role"  # the bank's certificate, refused before the request is written


def test_a_pinned_client_refuses_the_same_role_from_another_member(cc_and_bank: Services) -> None:
    client = cc_and_bank.client("alice-phone", "bank")
    client.server_identity(verifier(cc_and_bank), None)  # pinned to the bank member, any role accepted
    client.base_url = cc_and_bank.consortium.urls["cc"]
    with pytest.raises(IdentityMismatch) as refused:
        client.get("/openapi.json")
    assert (refused.value.expected_member, refused.value.got_member) == ("bank", "cc")
