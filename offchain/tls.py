"""Mutual TLS for Clearhouse services: SSL contexts, the peer's identity, an aiohttp middleware and a JSON client.

The TLS layer only proves the peer holds a key certified by our root; the middleware then re-verifies the peer
certificate at the application layer (validity, CRL, on-chain status, role), because OpenSSL here is not given
the CRL. It does not check that a log inside a body was signed by the peer: use `Envelope.open(..., peer=...)`.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable, Collection, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from offchain.certs import CertificateVerifier, MemberIdentity
from offchain.errors import (ClearhouseError, RemoteError, ServiceUnavailable, TlsHandshakeFailed,
                             UntrustedCertificate, WrongRole)
from offchain.messages import Role

__all__ = ["server_ssl_context", "client_ssl_context", "peer_identity", "mtls_middleware", "require_role",
           "error_response", "MtlsClient", "PEER_KEY"]

PEER_KEY = "peer"  # request[PEER_KEY] holds the MemberIdentity set by mtls_middleware
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
PROBE_TIMEOUT_S = 5.0
log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _base_context(protocol: int, cert_path: Path | str, key_path: Path | str, ca_path: Path | str) -> ssl.SSLContext:
    context = ssl.SSLContext(protocol)
    context.minimum_version = ssl.TLSVersion.TLSv1_2  # TLS 1.3 is negotiated whenever both ends have it
    context.set_ciphers(TLS12_CIPHERS)
    context.load_cert_chain(str(cert_path), str(key_path))
    context.load_verify_locations(cafile=str(ca_path))
    context.verify_mode = ssl.CERT_REQUIRED
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    return context


def server_ssl_context(cert_path: Path | str, key_path: Path | str, ca_path: Path | str) -> ssl.SSLContext:
    """Server side: presents our certificate and requires a client certificate issued by the CA in `ca_path`."""
    return _base_context(ssl.PROTOCOL_TLS_SERVER, cert_path, key_path, ca_path)


def client_ssl_context(cert_path: Path | str, key_path: Path | str, ca_path: Path | str) -> ssl.SSLContext:
    """Client side: presents our certificate, verifies the server against our CA and its hostname/IP SAN."""
    context = _base_context(ssl.PROTOCOL_TLS_CLIENT, cert_path, key_path, ca_path)
    context.check_hostname = True
    return context


def peer_identity(request: web.Request, verifier: CertificateVerifier) -> MemberIdentity:
    """The verified identity of the TLS peer (cached on the request); CertificateError subclasses otherwise."""
    cached = request.get(PEER_KEY)
    if isinstance(cached, MemberIdentity):
        return cached
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if ssl_object is None:
        raise UntrustedCertificate("the request did not arrive over TLS", reason="no_tls")
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        raise UntrustedCertificate("the TLS peer presented no certificate", reason="no_peer_certificate")
    return verifier.verify(ssl.DER_cert_to_PEM_cert(der).encode())


def require_role(request: web.Request, *roles: Role) -> MemberIdentity:
    """The peer identity set by `mtls_middleware`, or WrongRole when its role is not one of `roles`."""
    identity = request.get(PEER_KEY)
    if not isinstance(identity, MemberIdentity):
        raise UntrustedCertificate("no authenticated peer on this request (is mtls_middleware installed?)",
                                   reason="no_peer")
    if identity.role not in roles:
        raise WrongRole(f"{identity.member_id} is a {identity.role.name}; {request.method} {request.path} needs "
                        f"{' or '.join(Role(r).name for r in roles)}", member_id=identity.member_id,
                        role=identity.role.name, expected_role=",".join(Role(r).name for r in roles))
    return identity


def error_response(error: ClearhouseError) -> web.Response:
    """The wire form of an error: `{"error": code, "message": ..., "fields": {...}}` with its HTTP status."""
    return web.json_response(error.to_dict(), status=error.http_status)


def _route_key(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else request.path


def _allowed_roles(request: web.Request, roles_by_route: Mapping[str, Collection[Role]],
                   default_roles: Collection[Role] | None) -> Collection[Role] | None:
    canonical = _route_key(request)
    for key in (f"{request.method} {canonical}", canonical):
        if key in roles_by_route:
            return roles_by_route[key]
    return default_roles


def mtls_middleware(verifier: CertificateVerifier, roles_by_route: Mapping[str, Collection[Role]] | None = None,
                    default_roles: Collection[Role] | None = None) -> Any:
    """aiohttp middleware: verify the peer, put it in request["peer"], enforce the route's roles, JSON errors.

    `roles_by_route` keys are "METHOD /canonical/{path}" or "/canonical/{path}"; routes not listed accept
    `default_roles` (None = any verified member).
    """
    table = dict(roles_by_route or {})

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            identity = peer_identity(request, verifier)
            request[PEER_KEY] = identity
            allowed = _allowed_roles(request, table, default_roles)
            if allowed is not None:
                require_role(request, *allowed)
            return await handler(request)
        except ClearhouseError as exc:
            return error_response(exc)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            code = exc.reason.lower().replace(" ", "_")
            return web.json_response({"error": code, "message": exc.text or exc.reason, "fields": {}},
                                     status=exc.status)
        except Exception:  # the HTTP edge: never leak a traceback to the peer
            log.exception("unhandled error in %s %s", request.method, request.path)
            return web.json_response({"error": "internal_error", "message": "internal server error", "fields": {}},
                                     status=500)

    return middleware


class MtlsClient:
    """JSON over mutual TLS to one peer service; non-2xx answers become RemoteError with the peer's error code."""

    def __init__(self, base_url: str, ssl_context: ssl.SSLContext, *, timeout_s: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._ssl = ssl_context
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_paths(cls, base_url: str, cert_path: Path | str, key_path: Path | str, ca_path: Path | str,
                   **kwargs: Any) -> MtlsClient:
        return cls(base_url, client_ssl_context(cert_path, key_path, ca_path), **kwargs)

    async def __aenter__(self) -> MtlsClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(ssl=self._ssl)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
        return self._session

    async def post_json(self, path: str, body: Any) -> Any:
        return await self.request_json("POST", path, json=body)

    async def get_json(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        return await self.request_json("GET", path, params=params)

    async def request_json(self, method: str, path: str, *, json: Any = None,
                           params: Mapping[str, str] | None = None) -> Any:
        """One request; TlsHandshakeFailed / ServiceUnavailable / RemoteError on the three ways it can fail."""
        url = self.base_url + path
        try:
            async with self._get_session().request(method, url, json=json, params=params) as response:
                body = await _read_json(response)
                if response.status >= 300:
                    raise _remote_error(method, url, response.status, body)
                return body
        except aiohttp.ClientSSLError as exc:
            raise TlsHandshakeFailed(f"TLS handshake with {url} failed: {exc}", url=url, reason=str(exc)) from None
        except aiohttp.ClientConnectorError as exc:
            raise ServiceUnavailable(f"cannot connect to {url}: {exc}; is the service running?", url=url,
                                     reason=str(exc)) from None
        except aiohttp.ServerDisconnectedError as exc:
            raise await self._diagnose_disconnect(url, exc) from None
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise ServiceUnavailable(f"connection to {url} failed: {type(exc).__name__}: {exc}; retry later",
                                     url=url, reason=f"{type(exc).__name__}: {exc}") from None

    async def _diagnose_disconnect(self, url: str, exc: BaseException) -> ClearhouseError:
        """Tell a rejected client certificate from a dropped connection.

        Under TLS 1.3 the server checks our certificate after the client's handshake already completed, and
        asyncio servers close without sending the alert: the client only sees a disconnect. A fresh probe
        connection that is closed again without a single byte of HTTP answer means our certificate was refused.
        """
        parts = urlsplit(url)
        host, port = parts.hostname or "localhost", parts.port or 443
        try:
            answered = await asyncio.wait_for(_probe_answers(host, port, self._ssl), PROBE_TIMEOUT_S)
        except (OSError, asyncio.TimeoutError) as probe_exc:
            return ServiceUnavailable(f"connection to {url} lost ({exc}) and the probe failed: {probe_exc}",
                                      url=url, reason=str(probe_exc))
        if answered:
            return ServiceUnavailable(f"connection to {url} lost: {exc}; retry later", url=url, reason=str(exc))
        return TlsHandshakeFailed(f"{url} closed the TLS connection without answering: it refused our client "
                                  "certificate (unknown CA, expired, or none presented)", url=url,
                                  reason="closed after handshake")


async def _read_json(response: aiohttp.ClientResponse) -> Any:
    text = await response.text()
    if not text:
        return None
    try:
        return await response.json(content_type=None)
    except ValueError:
        return {"error": "not_json", "message": text[:500], "fields": {}}


def _remote_error(method: str, url: str, status: int, body: Any) -> RemoteError:
    body = body if isinstance(body, dict) else {}
    code = str(body.get("error", f"http_{status}"))
    message = str(body.get("message", ""))
    return RemoteError(f"{method} {url} answered {status} {code}: {message}", url=url, status=status,
                       remote_code=code, remote_message=message, remote_fields=body.get("fields", {}))


async def _probe_answers(host: str, port: int, context: ssl.SSLContext) -> bool:
    """Connect, send a bare HTTP request and report whether any byte comes back before the server closes."""
    reader, writer = await asyncio.open_connection(host, port, ssl=context, server_hostname=host)
    try:
        writer.write(f"HEAD / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        return bool(await reader.read(1))
    finally:
        writer.close()
