"""The server side of the Clearhouse services: role-checked routes, pydantic bodies, JSON errors, OpenAPI, running.

A `Route` names the roles allowed to call it; `add_routes` takes the TLS peer identity through an injected
`identify` callable (normally `offchain.trust.tls.peer_identity` bound to the service's CertificateVerifier), checks the
role, parses the body and maps every `ClearhouseError` to `{"error", "message", "fields"}`. No business logic here.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import signal
import ssl
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web
from pydantic import BaseModel, ValidationError

from offchain.core.errors import ClearhouseError, InvalidRequest, StorageFull, WrongRole
from offchain.core.messages import Role
from offchain.transport.wiring import require_path

log = logging.getLogger(__name__)

Identity = Any  # offchain.trust.certs.MemberIdentity (kept loose so this module does not import the TLS stack)
Handler = Callable[[web.Request, Identity, Any], Awaitable[Any]]
Identify = Callable[[web.Request], Identity]


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
    except Exception as exc:  # the HTTP edge: log the detail, never leak it
        full = storage_full(exc)
        if full is not None:  # a full disk is the operator's to fix, and named as such (HTTP 507)
            log.error("storage full on %s %s: %s", request.method, request.path, full.detail)
            return error_response(full)
        log.exception("unhandled error on %s %s", request.method, request.path)
        return web.json_response({"error": "internal_error", "message": "internal error; see the service log",
                                  "fields": {}}, status=500)


def storage_full(exc: BaseException) -> StorageFull | None:
    """`StorageFull` when `exc` (or what it wraps: SQLAlchemy's `.orig`, a cause or context) says the database or
    its disk cannot grow: SQLite's SQLITE_FULL, PostgreSQL's SQLSTATE 53100 (disk_full), ENOSPC/EDQUOT; else None."""
    pending: list[BaseException] = [exc]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if id(current) in seen or len(seen) > 16:
            continue
        seen.add(id(current))
        text = str(current)[:300]
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            return StorageFull("the service's disk is full", backend="filesystem", detail=text)
        if "database or disk is full" in text:
            return StorageFull("the service's database is full (SQLITE_FULL)", backend="sqlite", detail=text)
        if "53100" in (str(getattr(current, "pgcode", "")), str(getattr(current, "sqlstate", ""))):
            return StorageFull("the service's database is full (disk_full)", backend="postgresql", detail=text)
        pending.extend(e for e in (getattr(current, "orig", None), current.__cause__, current.__context__)
                       if isinstance(e, BaseException))
    return None


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
    """An Application with the request-metrics and error middlewares and `state` stored under string keys; its
    `ServiceMetrics` is `app[ops.METRICS_KEY]` (served by the ops listener, see offchain/transport/ops.py)."""
    from offchain.transport import ops
    metrics = ops.ServiceMetrics()
    app = web.Application(middlewares=[ops.request_metrics(metrics), error_middleware],
                          client_max_size=64 * 1024 * 1024)
    app[ops.METRICS_KEY] = metrics
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
                  shutdown_timeout_s: float = 5.0, ready: Callable[[], None] | None = None,
                  ops_listener: Callable[[], Awaitable[web.AppRunner | None]] | None = None) -> None:
    """Serve until SIGTERM/SIGINT, then stop accepting, let in-flight requests finish and run cleanups.
    `ops_listener` starts the plain-HTTP health/metrics listener once the service port is open."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    runner = web.AppRunner(app, shutdown_timeout=shutdown_timeout_s, handle_signals=False)
    await runner.setup()
    ops_runner: web.AppRunner | None = None
    try:
        await _start_site(web.TCPSite(runner, host, port, ssl_context=ssl_context, reuse_address=True), host, port,
                          "port")
        ops_runner = await ops_listener() if ops_listener is not None else None
        log.info("listening on %s:%d", host, port)
        if ready is not None:
            ready()
        await stop.wait()
        log.info("shutting down")
    finally:
        if ops_runner is not None:
            await ops_runner.cleanup()
        await runner.cleanup()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


async def _start_site(site: web.BaseSite, host: str, port: int, setting: str) -> None:
    """Start `site`; a port another process holds is a ConfigError naming the setting, not an OSError traceback."""
    import errno

    from offchain.core.errors import SettingError
    try:
        await site.start()
    except OSError as exc:
        if exc.errno in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
            raise SettingError(f"cannot listen on {host}:{port}: {exc.strerror}; stop the process using it or change "
                               f"`{setting}` (CLEARHOUSE_{setting.upper()})", field=setting, got=port) from None
        raise


# --- service wiring -------------------------------------------------------------------------------------------------
class ServiceModule(Protocol):
    """What `clearhouse serve <role>` runs: a role's api module (offchain.clearing_center.api,
    offchain.service_provider.api, offchain.bank.api) implements this with module-level functions."""

    def load_settings(self, config_path: Path | None = None, **overrides: Any) -> Any: ...

    def build_app(self, settings: Any, **wiring: Any) -> web.Application: ...

    def serve(self, settings: Any) -> None: ...


def serve_app(settings: Any, app: web.Application, *, counts: Any = None) -> None:
    """Serve `app` over mutual TLS on the settings' host and port until SIGTERM/SIGINT; with `metrics_port` set,
    /healthz and /metrics on a plain-HTTP listener too (`counts`: the role's `ops.Counts` of its tables)."""
    from offchain.transport import ops
    from offchain.trust import tls
    ssl_context = tls.server_ssl_context(settings.cert_path, settings.key_path,
                                         require_path(settings.ca_path, "ca_path"))
    asyncio.run(run_app(app, settings.host, settings.port, ssl_context,
                        ops_listener=lambda: ops.start_ops_listener(settings, app, counts)))


__all__ = [
    "Route", "add_routes", "new_app", "error_middleware", "error_response", "parse_body", "parse_model", "storage_full",
    "check_role", "openapi_document", "run_app", "serve_app", "ServiceModule",
]
