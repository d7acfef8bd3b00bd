"""Shared aiohttp plumbing of the Clearhouse services: role-checked routes, pydantic bodies, JSON errors, OpenAPI.

A `Route` names the roles allowed to call it; `add_routes` takes the TLS peer identity through an injected
`identify` callable (normally `offchain.trust.tls.peer_identity` bound to the service's CertificateVerifier), checks the
role, parses the body and maps every `ClearhouseError` to `{"error", "message", "fields"}`. No business logic here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
import ssl
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from pydantic import BaseModel, ValidationError

from offchain.core import errors
from offchain.core.errors import (ClearhouseError, ConfigError, InvalidRequest, ServiceUnavailable, TlsHandshakeFailed,
                             WrongRole)
from offchain.core.messages import Domain, Role

log = logging.getLogger(__name__)

Identity = Any  # offchain.trust.certs.MemberIdentity (kept loose so this module does not import the TLS stack)
Handler = Callable[[web.Request, Identity, Any], Awaitable[Any]]
Identify = Callable[[web.Request], Identity]
PROBE_TIMEOUT_S = 5.0  # JsonClient: the probe that tells a refused certificate from a dropped connection


@dataclass(frozen=True)
class Route:
    """One HTTP route: `roles` empty means any member of our CA; `body`/`response` are pydantic models."""

    method: str
    path: str
    handler: Handler
    roles: tuple[Role, ...] = ()
    body: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    summary: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)


# --- server side ---------------------------------------------------------------------------------------------------
def error_response(error: ClearhouseError) -> web.Response:
    return web.json_response(error.to_dict(), status=error.http_status)


@web.middleware
async def error_middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                           ) -> web.StreamResponse:
    """Map ClearhouseError to its JSON body and status; unknown exceptions become an opaque 500."""
    try:
        return await handler(request)
    except ClearhouseError as exc:
        return error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = "not_found" if exc.status == 404 else "http_error"
        return web.json_response({"error": code, "message": exc.reason, "fields": {"path": request.path}},
                                 status=exc.status)
    except Exception:  # the HTTP edge: log the detail, never leak it
        log.exception("unhandled error on %s %s", request.method, request.path)
        return web.json_response({"error": "internal_error", "message": "internal error; see the service log",
                                  "fields": {}}, status=500)


def parse_model(model: type[BaseModel], payload: Any) -> BaseModel:
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise InvalidRequest(f"request body does not match {model.__name__}: {problems}",
                             model=model.__name__, errors=problems) from None


async def parse_body(request: web.Request, model: type[BaseModel]) -> BaseModel:
    try:
        payload = await request.json()
    except ValueError:
        raise InvalidRequest("request body is not JSON", model=model.__name__, errors="invalid json") from None
    return parse_model(model, payload)


def check_role(peer: Identity, roles: tuple[Role, ...], path: str) -> None:
    if roles and peer.role not in roles:
        allowed = ",".join(r.name for r in roles)
        raise WrongRole(f"{peer.member_id} has role {Role(peer.role).name}; {path} accepts {allowed}",
                        member_id=peer.member_id, role=Role(peer.role).name, expected_role=allowed)


def to_json_response(result: Any) -> web.StreamResponse:
    if isinstance(result, web.StreamResponse):
        return result
    if isinstance(result, BaseModel):
        return web.json_response(result.model_dump(mode="json"))
    return web.json_response(result)


def _wrap(route: Route, identify: Identify) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def endpoint(request: web.Request) -> web.StreamResponse:
        peer = identify(request)
        check_role(peer, route.roles, route.path)
        body = await parse_body(request, route.body) if route.body is not None else None
        return to_json_response(await route.handler(request, peer, body))

    endpoint.__name__ = getattr(route.handler, "__name__", "endpoint")
    return endpoint


def add_routes(app: web.Application, routes: Iterable[Route], identify: Identify, *, title: str,
               version: str = "1.0.0") -> None:
    """Register `routes` plus `GET /openapi.json` (any member) on `app`; install the error middleware first."""
    routes = list(routes)
    document = openapi_document(title, version, routes)

    async def openapi(_request: web.Request, _peer: Identity, _body: Any) -> dict[str, Any]:
        return document

    for route in [*routes, Route("GET", "/openapi.json", openapi, summary="This document")]:
        app.router.add_route(route.method, route.path, _wrap(route, identify))


def new_app(**state: Any) -> web.Application:
    """An Application with the error middleware and `state` stored under string keys."""
    app = web.Application(middlewares=[error_middleware], client_max_size=64 * 1024 * 1024)
    for key, value in state.items():
        app[key] = value
    return app


# --- OpenAPI -------------------------------------------------------------------------------------------------------
def openapi_document(title: str, version: str, routes: Iterable[Route]) -> dict[str, Any]:
    """OpenAPI 3.1 from the route table (pydantic JSON schemas; mTLS as the security scheme)."""
    paths: dict[str, dict[str, Any]] = {}
    schemas: dict[str, Any] = {"Error": _ERROR_SCHEMA}
    for route in routes:
        operation: dict[str, Any] = {
            "summary": route.summary or route.path,
            "operationId": getattr(route.handler, "__name__", route.path),
            "x-clearhouse-roles": [r.name.lower() for r in route.roles] or ["any_member"],
            "responses": {"200": _content(route.response, schemas),
                          "default": {"description": "error", "content": {"application/json": {
                              "schema": {"$ref": "#/components/schemas/Error"}}}}},
        }
        if route.body is not None:
            operation["requestBody"] = {"required": True, **_content(route.body, schemas)}
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    return {"openapi": "3.1.0", "info": {"title": title, "version": version}, "paths": paths,
            "components": {"schemas": schemas, "securitySchemes": {"mtls": {"type": "mutualTLS"}}},
            "security": [{"mtls": []}]}


_ERROR_SCHEMA = {"type": "object", "required": ["error", "message", "fields"],
                 "properties": {"error": {"type": "string"}, "message": {"type": "string"},
                                "fields": {"type": "object"}}}


def _content(model: type[BaseModel] | None, schemas: dict[str, Any]) -> dict[str, Any]:
    if model is None:
        return {"description": "JSON", "content": {"application/json": {"schema": {"type": "object"}}}}
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(schema.pop("$defs", {}))
    schemas[model.__name__] = schema
    return {"description": model.__name__,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}


# --- running ---------------------------------------------------------------------------------------------------------
async def run_app(app: web.Application, host: str, port: int, ssl_context: ssl.SSLContext | None, *,
                  shutdown_timeout_s: float = 5.0, ready: Callable[[], None] | None = None) -> None:
    """Serve until SIGTERM/SIGINT, then stop accepting, let in-flight requests finish and run cleanups."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    runner = web.AppRunner(app, shutdown_timeout=shutdown_timeout_s, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, ssl_context=ssl_context, reuse_address=True).start()
        log.info("listening on %s:%d", host, port)
        if ready is not None:
            ready()
        await stop.wait()
        log.info("shutting down")
    finally:
        await runner.cleanup()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


# --- service wiring -------------------------------------------------------------------------------------------------
def deployment_domain(deployment_path: Path) -> Domain:
    """The EIP-712 domain named by a deployment file (docs/design.md "Deployment file")."""
    try:
        data = json.loads(Path(deployment_path).read_text())
        return Domain(chain_id=int(data["chain_id"]),
                      verifying_contract=data["contracts"]["Clearhouse"]["address"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"cannot read the deployment file {deployment_path}: {exc!r}",
                          path=str(deployment_path)) from None


def file_reader(path: Path | None) -> Callable[[], bytes] | None:
    """A callable returning the current bytes of `path` (the CA rewrites its CRL in place), or None."""
    if path is None:
        return None
    return lambda: Path(path).read_bytes()


def require_path(value: Path | None, name: str) -> Path:
    if value is None:
        raise ConfigError(f"setting {name} is required for this service", field=name)
    return Path(value)


def connect_chain(settings: Any) -> Any:
    """The ClearhouseChain client of a service's settings (rpc_url, deployment_path, its signing key)."""
    from web3 import Web3

    from offchain.chain.client import ClearhouseChain, Deployment

    w3 = Web3(Web3.HTTPProvider(settings.rpc_url, request_kwargs={"timeout": 60}))
    return ClearhouseChain(w3, Deployment.load(settings.deployment_path), settings.eth_signing_key())


def member_verifier(settings: Any, chain: Any, clock: Callable[[], float]) -> Any:
    """The certificate verifier every service uses for peers and signers: our CA, the current CRL, and the
    member's on-chain status (a member revoked on chain only is refused too)."""
    from offchain.trust.certs import CertificateVerifier

    return CertificateVerifier(require_path(settings.ca_path, "ca_path").read_bytes(), file_reader(settings.crl_path),
                               chain_status=lambda address, role: chain.is_active(address, int(role)), clock=clock)


def serve_app(settings: Any, app: web.Application) -> None:
    """Serve `app` over mutual TLS on the settings' host and port until SIGTERM/SIGINT."""
    from offchain.trust import tls
    ssl_context = tls.server_ssl_context(settings.cert_path, settings.key_path,
                                         require_path(settings.ca_path, "ca_path"))
    asyncio.run(run_app(app, settings.host, settings.port, ssl_context))


# --- client side -----------------------------------------------------------------------------------------------------
def _error_classes() -> dict[str, type[ClearhouseError]]:
    found: dict[str, type[ClearhouseError]] = {}
    pending: list[type[ClearhouseError]] = [ClearhouseError]
    while pending:
        cls = pending.pop()
        found.setdefault(cls.code, cls)
        pending.extend(cls.__subclasses__())
    return found


def error_from_payload(status: int, payload: Any, url: str) -> ClearhouseError:
    """Rebuild the named error a peer service answered with (unknown codes become TransportError)."""
    if not isinstance(payload, dict) or "error" not in payload:
        return errors.TransportError(f"{url} answered HTTP {status} without an error body", url=url, status=status)
    cls = _error_classes().get(str(payload["error"]), errors.TransportError)
    fields = payload.get("fields") if isinstance(payload.get("fields"), dict) else {}
    error = cls(str(payload.get("message", "")), **{k: v for k, v in fields.items() if k != "message"})
    error.fields.setdefault("remote_status", status)
    return error


class JsonClient:
    """Async JSON-over-mTLS client for service-to-service calls; raises the peer's named errors.

    A failed call raises one of three kinds: the peer's named error (it answered non-2xx), TlsHandshakeFailed
    (one side refused the other's certificate: a configuration problem, retrying does not help) or
    ServiceUnavailable (refused, dropped or timed out: retry later).
    """

    def __init__(self, base_url: str, ssl_context: ssl.SSLContext, *, timeout_s: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._ssl = ssl_context
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def request(self, method: str, path: str, body: Any = None) -> Any:
        url = self.base_url + path
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with self._session.request(method, url, json=body, ssl=self._ssl) as response:
                payload = await response.json(content_type=None)
                status = response.status
        except (aiohttp.ClientSSLError, ssl.SSLError) as exc:
            raise TlsHandshakeFailed(f"TLS handshake with {url} failed: {exc}", url=url, reason=str(exc)) from None
        except aiohttp.ServerDisconnectedError as exc:
            raise await _diagnose_disconnect(method, url, self._ssl, exc) from None
        except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
            raise ServiceUnavailable(f"{method} {url} failed: {exc!r}; retry later", url=url,
                                     reason=type(exc).__name__) from None
        if status >= 400:
            raise error_from_payload(status, payload, url)
        return payload

    async def post(self, path: str, body: Any) -> Any:
        return await self.request("POST", path, body)

    async def get(self, path: str) -> Any:
        return await self.request("GET", path)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


async def _diagnose_disconnect(method: str, url: str, context: ssl.SSLContext, exc: BaseException
                               ) -> ClearhouseError:
    """Tell a refused client certificate (TlsHandshakeFailed) from a dropped connection (ServiceUnavailable).

    Under TLS 1.3 the server checks our certificate after our side of the handshake has completed, and asyncio
    servers close without sending the alert: the request only sees a disconnect. A fresh probe connection that is
    closed again without a single byte of HTTP answer means the server refused our certificate.
    """
    parts = urlsplit(url)
    host, port = parts.hostname or "localhost", parts.port or 443
    try:
        answered = await asyncio.wait_for(_probe_answers(host, port, context), PROBE_TIMEOUT_S)
    except (OSError, asyncio.TimeoutError) as probe_exc:  # ssl.SSLError is an OSError
        return ServiceUnavailable(f"{method} {url}: connection lost ({exc!r}) and the probe failed "
                                  f"({probe_exc!r}); retry later", url=url, reason=type(probe_exc).__name__)
    if answered:
        return ServiceUnavailable(f"{method} {url}: connection lost ({exc!r}); retry later", url=url,
                                  reason=type(exc).__name__)
    return TlsHandshakeFailed(f"{url} closed the TLS connection without answering: it refused our client "
                              "certificate (another CA, expired, or none presented)", url=url,
                              reason="closed after handshake")


async def _probe_answers(host: str, port: int, context: ssl.SSLContext) -> bool:
    """Connect, send a bare HTTP request and report whether any byte comes back before the server closes."""
    reader, writer = await asyncio.open_connection(host, port, ssl=context, server_hostname=host)
    try:
        writer.write(f"HEAD / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        return bool(await reader.read(1))
    finally:
        writer.close()


class SyncJsonClient:
    """Blocking JSON-over-mTLS client for operator tools and devices (CLI, demo); same error mapping.

    Uses the stdlib (urllib) with exactly `offchain.trust.tls.client_ssl_context`: our CA only, no system roots."""

    def __init__(self, base_url: str, cert_path: str, key_path: str, ca_path: str, *,
                 timeout_s: float = 30.0) -> None:
        from offchain.trust import tls
        self.base_url = base_url.rstrip("/")
        self._ssl = tls.client_ssl_context(cert_path, key_path, ca_path)
        self._timeout_s = timeout_s

    def request(self, method: str, path: str, body: Any = None) -> Any:
        url = self.base_url + path
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method,
                                         headers={"Content-Type": "application/json", "Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, context=self._ssl, timeout=self._timeout_s) as response:
                return _json_or_none(response.read())
        except urllib.error.HTTPError as exc:
            raise error_from_payload(exc.code, _json_or_none(exc.read()), url) from None
        except (urllib.error.URLError, OSError) as exc:
            raise ServiceUnavailable(f"{method} {url} failed: {exc!r}; retry later", url=url,
                                     reason=type(exc).__name__) from None

    def post(self, path: str, body: Any) -> Any:
        return self.request("POST", path, body)

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def server_identity(self, verifier: Any, expected_role: Role | None = None) -> Identity:
        """The server's verified identity: a TLS connection to `base_url` (our CA only), its certificate checked by
        `verifier` (offchain.trust.certs.CertificateVerifier), WrongRole unless it has `expected_role`. Nothing is sent.

        The check runs on its own connection, as every request does; a server swapping certificates between
        connections still needs a certificate and key from our CA for each."""
        parts = urlsplit(self.base_url)
        host, port = parts.hostname or "localhost", parts.port or 443
        try:
            with socket.create_connection((host, port), timeout=self._timeout_s) as raw:
                with self._ssl.wrap_socket(raw, server_hostname=host) as connection:
                    der = connection.getpeercert(binary_form=True)
        except OSError as exc:  # ssl.SSLError is an OSError
            raise ServiceUnavailable(f"TLS connection to {self.base_url} failed: {exc!r}; retry later",
                                     url=self.base_url, reason=type(exc).__name__) from None
        if not der:
            raise TlsHandshakeFailed(f"{self.base_url} presented no certificate", url=self.base_url,
                                     reason="no server certificate")
        return verifier.verify(ssl.DER_cert_to_PEM_cert(der), expected_role)

    def close(self) -> None:
        """Nothing to release: every request uses its own connection."""


def _json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


__all__ = [
    "Route", "add_routes", "new_app", "error_middleware", "error_response", "parse_body", "parse_model",
    "check_role", "openapi_document", "run_app", "deployment_domain", "file_reader", "require_path", "error_from_payload", "JsonClient", "SyncJsonClient",
]
