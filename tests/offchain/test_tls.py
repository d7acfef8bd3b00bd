"""Mutual TLS on loopback: real aiohttp servers and clients, handshake failures and application-layer checks."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web

from offchain.ca import CertificateAuthority
from offchain.certs import CertificateVerifier
from offchain.errors import InsufficientFunds, RemoteError, ServiceUnavailable, TlsHandshakeFailed
from offchain.messages import Role
from offchain.tls import (PEER_KEY, MtlsClient, client_ssl_context, mtls_middleware, require_role,
                          server_ssl_context)

Factory = Callable[..., Any]
# request["peer"] is the documented string key other services read; aiohttp prefers typed RequestKeys.
pytestmark = pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning")


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


async def whoami(request: web.Request) -> web.Response:
    tls_version = request.transport.get_extra_info("ssl_object").version() if request.transport else None
    return web.json_response({**request[PEER_KEY].to_json(), "tls_version": tls_version})


async def bank_only(request: web.Request) -> web.Response:
    identity = require_role(request, Role.BANK)
    return web.json_response({"bank": identity.member_id})


async def broke(_request: web.Request) -> web.Response:
    raise InsufficientFunds("user u1 has 5, wants 7", user_id="u1", available=5, wanted=7)


def build_app(verifier: CertificateVerifier) -> web.Application:
    roles = {"POST /v1/settle": {Role.CLEARING_CENTER}}
    app = web.Application(middlewares=[mtls_middleware(verifier, roles)])
    app.router.add_get("/v1/whoami", whoami)
    app.router.add_post("/v1/settle", whoami)
    app.router.add_get("/v1/bank", bank_only)
    app.router.add_get("/v1/broke", broke)
    return app


@asynccontextmanager
async def serving(app: web.Application, server: Any) -> AsyncIterator[str]:
    """Run `app` on an ephemeral loopback port with `server`'s certificate; yields the base URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    context = server_ssl_context(server.cert_path, server.key_path, server.ca_path)
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    try:
        yield f"https://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def call(app: web.Application, server: Any, context: ssl.SSLContext, method: str, path: str) -> Any:
    async with serving(app, server) as url, MtlsClient(url, context, timeout_s=10) as client:
        return await client.request_json(method, path, json={} if method == "POST" else None)


def context_of(member: Any) -> ssl.SSLContext:
    return client_ssl_context(member.cert_path, member.key_path, member.ca_path)


@pytest.fixture
def server(member: Factory) -> Any:
    return member(Role.CLEARING_CENTER, "cc-server")


@pytest.fixture
def app(verifier: CertificateVerifier) -> web.Application:
    return build_app(verifier)


def test_good_client_sees_its_identity(app: web.Application, server: Any, member: Factory) -> None:
    bank = member(Role.BANK, "bank-1")
    body = run(call(app, server, context_of(bank), "GET", "/v1/whoami"))
    assert body["member_id"] == "bank-1" and body["role"] == "BANK" and body["eth_address"] == bank.address
    assert body["fingerprint"] == "0x" + bank.credentials.fingerprint.hex()
    assert body["tls_version"] == "TLSv1.3"


def test_contexts_require_peer_certificates_and_tls12(server: Any) -> None:
    server_context = server_ssl_context(server.cert_path, server.key_path, server.ca_path)
    client_context = context_of(server)
    for context in (server_context, client_context):
        assert context.verify_mode == ssl.CERT_REQUIRED
        assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert client_context.check_hostname is True


def test_handshake_refused_without_client_certificate(app: web.Application, server: Any) -> None:
    anonymous = ssl.create_default_context(cafile=str(server.ca_path))
    with pytest.raises(TlsHandshakeFailed):
        run(call(app, server, anonymous, "GET", "/v1/whoami"))


def test_handshake_refused_for_certificate_of_another_ca(app: web.Application, server: Any,
                                                         attacker_member: Factory) -> None:
    forged = attacker_member(Role.CLEARING_CENTER, "cc-1")
    context = client_ssl_context(forged.cert_path, forged.key_path, server.ca_path)  # trusts our CA, wrong cert
    with pytest.raises(TlsHandshakeFailed):
        run(call(app, server, context, "GET", "/v1/whoami"))


def test_client_refuses_server_of_another_ca(verifier: CertificateVerifier, member: Factory,
                                             attacker_member: Factory) -> None:
    impostor = attacker_member(Role.CLEARING_CENTER, "cc-server")
    bank = member(Role.BANK)
    with pytest.raises(TlsHandshakeFailed):
        run(call(build_app(verifier), impostor, context_of(bank), "GET", "/v1/whoami"))


def test_handshake_refused_for_expired_certificate(app: web.Application, server: Any, member: Factory) -> None:
    old = member(Role.BANK, "bank-old", not_before=int(time.time()) - 10 * 86400, valid_days=1)
    with pytest.raises(TlsHandshakeFailed):
        run(call(app, server, context_of(old), "GET", "/v1/whoami"))


def test_revoked_certificate_refused_at_application_layer(app: web.Application, server: Any, member: Factory,
                                                          authority: CertificateAuthority) -> None:
    bank = member(Role.BANK, "bank-1")
    authority.revoke("bank-1")
    with pytest.raises(RemoteError) as info:
        run(call(app, server, context_of(bank), "GET", "/v1/whoami"))
    assert (info.value.status, info.value.remote_code) == (401, "certificate_revoked")
    assert info.value.remote_fields["member_id"] == "bank-1"


def test_chain_status_inactive_refused(authority: CertificateAuthority, server: Any, member: Factory) -> None:
    bank = member(Role.BANK, "bank-1")
    verifier = CertificateVerifier(authority.root_pem, authority.crl_pem,
                                   chain_status=lambda address, role: address != bank.address)
    with pytest.raises(RemoteError) as info:
        run(call(build_app(verifier), server, context_of(bank), "GET", "/v1/whoami"))
    assert (info.value.status, info.value.remote_fields["source"]) == (401, "chain")


def test_wrong_role_for_route_table_is_403(app: web.Application, server: Any, member: Factory) -> None:
    device = member(Role.DEVICE)
    with pytest.raises(RemoteError) as info:
        run(call(app, server, context_of(device), "POST", "/v1/settle"))
    assert (info.value.status, info.value.remote_code) == (403, "wrong_role")
    assert info.value.remote_fields["expected_role"] == "CLEARING_CENTER"


def test_right_role_for_route_table_passes(app: web.Application, server: Any, member: Factory) -> None:
    cc = member(Role.CLEARING_CENTER, "cc-2")
    assert run(call(app, server, context_of(cc), "POST", "/v1/settle"))["member_id"] == "cc-2"


def test_require_role_in_handler_is_403(app: web.Application, server: Any, member: Factory) -> None:
    sp = member(Role.SERVICE_PROVIDER)
    with pytest.raises(RemoteError) as info:
        run(call(app, server, context_of(sp), "GET", "/v1/bank"))
    assert (info.value.status, info.value.remote_code) == (403, "wrong_role")


def test_handler_error_travels_as_json(app: web.Application, server: Any, member: Factory) -> None:
    bank = member(Role.BANK)
    with pytest.raises(RemoteError) as info:
        run(call(app, server, context_of(bank), "GET", "/v1/broke"))
    assert (info.value.status, info.value.remote_code) == (422, "insufficient_funds")
    assert info.value.remote_fields == {"user_id": "u1", "available": 5, "wanted": 7}


def test_unknown_route_is_json_404(app: web.Application, server: Any, member: Factory) -> None:
    bank = member(Role.BANK)
    with pytest.raises(RemoteError) as info:
        run(call(app, server, context_of(bank), "GET", "/v1/nothing"))
    assert (info.value.status, info.value.remote_code) == (404, "not_found")


def test_connection_refused_is_service_unavailable(member: Factory) -> None:
    bank = member(Role.BANK)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again before the client connects: nobody listens there

    async def attempt() -> None:
        async with MtlsClient(f"https://127.0.0.1:{port}", context_of(bank), timeout_s=5) as client:
            await client.get_json("/v1/whoami")

    with pytest.raises(ServiceUnavailable) as info:
        run(attempt())
    assert info.value.url.endswith("/v1/whoami")
