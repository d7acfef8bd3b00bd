"""Mutual TLS on loopback: real aiohttp servers built like the services (`offchain.transport.server` routes with
`offchain.trust.tls.peer_identity`) and `offchain.transport.client.JsonClient`: handshake failures and application-layer checks."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import pytest
from aiohttp import web

from offchain.transport import server as http
from offchain.transport.client import JsonClient, SyncJsonClient
from offchain.trust.ca import CertificateAuthority
from offchain.trust.certs import CertificateVerifier, MemberIdentity
from offchain.core.errors import (CertificateError, CertificateRevoked, InsufficientFunds, NotFound, ServiceUnavailable,
                             TlsHandshakeFailed, WrongRole)
from offchain.core.messages import Role
from offchain.trust.tls import client_ssl_context, peer_identity, server_ssl_context

Factory = Callable[..., Any]


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


async def whoami(request: web.Request, peer: MemberIdentity, _body: Any) -> dict[str, Any]:
    tls_version = request.transport.get_extra_info("ssl_object").version() if request.transport else None
    return {**peer.to_json(), "tls_version": tls_version}


async def broke(_request: web.Request, _peer: MemberIdentity, _body: Any) -> dict[str, Any]:
    raise InsufficientFunds("user u1 has 5, wants 7", user_id="u1", available=5, wanted=7)


async def hang_up(request: web.Request, _peer: MemberIdentity, _body: Any) -> dict[str, Any]:
    assert request.transport is not None
    request.transport.close()  # a dropped connection: the certificate was accepted, no answer comes
    await asyncio.sleep(1)
    return {}


def build_app(verifier: CertificateVerifier) -> web.Application:
    app = http.new_app()
    http.add_routes(app, [
        http.Route("GET", "/v1/whoami", whoami),
        http.Route("POST", "/v1/settle", whoami, roles=(Role.CLEARING_CENTER,)),
        http.Route("GET", "/v1/ledger", whoami, roles=(Role.BANK, Role.CLEARING_CENTER)),
        http.Route("GET", "/v1/broke", broke),
        http.Route("GET", "/v1/hang-up", hang_up),
    ], lambda request: peer_identity(request, verifier), title="tls test")
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
    async with serving(app, server) as url:
        client = JsonClient(url, context, timeout_s=10)
        try:
            return await client.request(method, path, {} if method == "POST" else None)
        finally:
            await client.close()


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
    with pytest.raises(CertificateRevoked) as info:
        run(call(app, server, context_of(bank), "GET", "/v1/whoami"))
    assert (info.value.fields["remote_status"], info.value.code) == (401, "certificate_revoked")
    assert info.value.fields["member_id"] == "bank-1"


def test_chain_status_inactive_refused(authority: CertificateAuthority, server: Any, member: Factory) -> None:
    bank = member(Role.BANK, "bank-1")
    verifier = CertificateVerifier(authority.root_pem, authority.crl_pem,
                                   chain_status=lambda address, role: address != bank.address)
    with pytest.raises(CertificateError) as info:
        run(call(build_app(verifier), server, context_of(bank), "GET", "/v1/whoami"))
    assert (info.value.fields["remote_status"], info.value.fields["source"]) == (401, "chain")


def test_wrong_role_for_route_is_403(app: web.Application, server: Any, member: Factory) -> None:
    device = member(Role.DEVICE)
    with pytest.raises(WrongRole) as info:
        run(call(app, server, context_of(device), "POST", "/v1/settle"))
    assert (info.value.fields["remote_status"], info.value.code) == (403, "wrong_role")
    assert info.value.fields["expected_role"] == "CLEARING_CENTER"


def test_right_role_for_route_passes(app: web.Application, server: Any, member: Factory) -> None:
    cc = member(Role.CLEARING_CENTER, "cc-2")
    assert run(call(app, server, context_of(cc), "POST", "/v1/settle"))["member_id"] == "cc-2"


def test_wrong_role_for_route_of_several_roles_is_403(app: web.Application, server: Any, member: Factory) -> None:
    sp = member(Role.SERVICE_PROVIDER)
    with pytest.raises(WrongRole) as info:
        run(call(app, server, context_of(sp), "GET", "/v1/ledger"))
    assert (info.value.fields["remote_status"], info.value.code) == (403, "wrong_role")
    assert info.value.fields["expected_role"] == "BANK,CLEARING_CENTER"


def test_handler_error_travels_as_json(app: web.Application, server: Any, member: Factory) -> None:
    bank = member(Role.BANK)
    with pytest.raises(InsufficientFunds) as info:
        run(call(app, server, context_of(bank), "GET", "/v1/broke"))
    assert (info.value.fields["remote_status"], info.value.code) == (422, "insufficient_funds")
    assert info.value.fields == {"user_id": "u1", "available": 5, "wanted": 7, "remote_status": 422}


def test_unknown_route_is_json_404(app: web.Application, server: Any, member: Factory) -> None:
    bank = member(Role.BANK)
    with pytest.raises(NotFound) as info:
        run(call(app, server, context_of(bank), "GET", "/v1/nothing"))
    assert (info.value.fields["remote_status"], info.value.code) == (404, "not_found")


def test_dropped_connection_is_service_unavailable(app: web.Application, server: Any, member: Factory) -> None:
    bank = member(Role.BANK)  # accepted certificate, then the server hangs up: not a TLS refusal
    with pytest.raises(ServiceUnavailable) as info:
        run(call(app, server, context_of(bank), "GET", "/v1/hang-up"))
    assert info.value.url.endswith("/v1/hang-up")


def test_connection_refused_is_service_unavailable(member: Factory) -> None:
    bank = member(Role.BANK)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again before the client connects: nobody listens there

    async def attempt() -> None:
        client = JsonClient(f"https://127.0.0.1:{port}", context_of(bank), timeout_s=5)
        try:
            await client.get("/v1/whoami")
        finally:
            await client.close()

    with pytest.raises(ServiceUnavailable) as info:
        run(attempt())
    assert info.value.url.endswith("/v1/whoami")


# --- the blocking client (devices, CLI, demo): the same three kinds of failure as JsonClient -------------------------
@contextmanager
def serving_in_thread(app: web.Application, server: Any, *, tls12_only: bool = False) -> Iterator[str]:
    """`serving` on an event loop in a thread, so a blocking client can call it; yields the base URL."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    runner = web.AppRunner(app)
    started: dict[str, Any] = {}

    async def start() -> None:
        await runner.setup()
        context = server_ssl_context(server.cert_path, server.key_path, server.ca_path)
        if tls12_only:
            context.maximum_version = ssl.TLSVersion.TLSv1_2
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        started["url"] = f"https://127.0.0.1:{runner.addresses[0][1]}"

    def serve() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(start())
        except BaseException as exc:  # surfaced to the test below
            started["error"] = exc
        ready.set()
        if "url" in started:
            loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    ready.wait()
    if "error" in started:
        raise started["error"]
    try:
        yield started["url"]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()


def sync_client(url: str, member: Any) -> SyncJsonClient:
    return SyncJsonClient(url, str(member.cert_path), str(member.key_path), str(member.ca_path), timeout_s=10)


@pytest.mark.parametrize("tls12_only", [False, True], ids=["tls13", "tls12"])
def test_sync_client_expired_certificate_is_tls_handshake_failed(app: web.Application, server: Any, member: Factory,
                                                                 tls12_only: bool) -> None:
    """A device with an expired certificate must be told its certificate was refused, not to retry later."""
    good = member(Role.DEVICE, "device-ok")
    old = member(Role.DEVICE, "device-old", not_before=int(time.time()) - 10 * 86400, valid_days=1)
    with serving_in_thread(app, server, tls12_only=tls12_only) as url:
        assert sync_client(url, good).get("/v1/whoami")["member_id"] == "device-ok"  # positive control
        with pytest.raises(TlsHandshakeFailed) as info:
            sync_client(url, old).get("/v1/whoami")
    assert info.value.url == url + "/v1/whoami"


def test_sync_client_certificate_of_another_ca_is_tls_handshake_failed(app: web.Application, server: Any,
                                                                       member: Factory,
                                                                       attacker_member: Factory) -> None:
    forged = attacker_member(Role.DEVICE, "device-1")
    client = SyncJsonClient("", str(forged.cert_path), str(forged.key_path), str(server.ca_path), timeout_s=10)
    with serving_in_thread(app, server) as url:
        client.base_url = url
        assert sync_client(url, member(Role.DEVICE, "device-1")).get("/v1/whoami")["member_id"] == "device-1"
        with pytest.raises(TlsHandshakeFailed):
            client.get("/v1/whoami")


def test_sync_client_refuses_server_of_another_ca(verifier: CertificateVerifier, member: Factory,
                                                  attacker_member: Factory) -> None:
    impostor = attacker_member(Role.CLEARING_CENTER, "cc-server")
    with serving_in_thread(build_app(verifier), impostor) as url:
        with pytest.raises(TlsHandshakeFailed) as info:
            sync_client(url, member(Role.DEVICE)).get("/v1/whoami")
    assert info.value.url == url + "/v1/whoami"


def test_sync_client_pinned_expired_certificate_is_tls_handshake_failed(app: web.Application, server: Any,
                                                                        member: Factory,
                                                                        verifier: CertificateVerifier) -> None:
    """After `server_identity` (which sends nothing, so TLS 1.3 lets it through), the request itself is refused."""
    old = member(Role.DEVICE, "device-old", not_before=int(time.time()) - 10 * 86400, valid_days=1)
    with serving_in_thread(app, server) as url:
        good = sync_client(url, member(Role.DEVICE, "device-ok"))
        good.server_identity(verifier, Role.CLEARING_CENTER)
        assert good.get("/v1/whoami")["member_id"] == "device-ok"  # positive control on the pinned path
        client = sync_client(url, old)
        assert client.server_identity(verifier, Role.CLEARING_CENTER).member_id == "cc-server"
        with pytest.raises(TlsHandshakeFailed):
            client.get("/v1/whoami")


def test_sync_client_dropped_connection_is_service_unavailable(app: web.Application, server: Any,
                                                               member: Factory) -> None:
    with serving_in_thread(app, server) as url:  # accepted certificate, then the server hangs up
        with pytest.raises(ServiceUnavailable) as info:
            sync_client(url, member(Role.DEVICE)).get("/v1/hang-up")
    assert info.value.url == url + "/v1/hang-up"


def test_sync_client_connection_refused_is_service_unavailable(member: Factory) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again before the client connects: nobody listens there
    with pytest.raises(ServiceUnavailable):
        sync_client(f"https://127.0.0.1:{port}", member(Role.DEVICE)).get("/v1/whoami")
