"""The explorer's aiohttp application: HTML pages rendered with Jinja2 on the server, CSV/JSON exports with a
manifest, a little vanilla JavaScript (raw hex toggles, copy buttons), no build step.

It binds to loopback unless told otherwise; with mTLS it accepts only clients holding a consortium certificate
(checked by OpenSSL against our CA, then by the application against the CRL when one is given). Handlers are
synchronous reads of the local audit index: one operator's tool, not a public explorer behind a load balancer.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import re
import signal
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web
from markupsafe import Markup, escape

from offchain.core.errors import ClearhouseError, NotFound
from offchain.operator.explorer import export, pages
from offchain.operator.explorer.sources import ExplorerConfig, Sources

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
SOURCES_KEY = web.AppKey("sources", Sources)
CONFIG_KEY = web.AppKey("config", ExplorerConfig)
JINJA_KEY = web.AppKey("jinja", jinja2.Environment)
Identify = Callable[[web.Request], Any]


# --- templates ---------------------------------------------------------------------------------------------------
_LONG_HEX = re.compile(r"0x([0-9a-fA-F]{8})[0-9a-fA-F]{8,}([0-9a-fA-F]{6})")


def short(value: Any) -> str:
    """Every long hex run as 0x1234abcd…ef56; the rest unchanged (title attributes keep the full value)."""
    return _LONG_HEX.sub(r"0x\1…\2", str(value))


def utc(seconds: Any) -> str:
    try:
        return dt.datetime.fromtimestamp(int(seconds), dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (ValueError, OverflowError, OSError):
        return str(seconds)


def minor(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


def cell(value: Any, link: str | None = None) -> Markup:
    """One table cell: hex abbreviated with the full value in `title`, optionally linked."""
    text = str(value)
    shown = escape(short(text))
    if link and text:
        shown = Markup(f'<a href="{escape(link + text)}">{shown}</a>')
    if shown != escape(text) or text.startswith("0x"):
        return Markup(f'<span class="hex" title="{escape(text)}">{shown}</span>')
    if text in ("ok", "FAILED"):
        return Markup(f'<span class="badge {"good" if text == "ok" else "bad"}">{escape(text)}</span>')
    return Markup(escape(minor(value)))


def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(HERE / "templates")),
                             autoescape=jinja2.select_autoescape(("html",)), undefined=jinja2.StrictUndefined)
    env.filters.update(short=short, utc=utc, minor=minor, cell=cell, tojson_pretty=lambda v: json.dumps(v, indent=2))
    return env


def render_html(request: web.Request, template: str, http_status: int = 200, **context: Any) -> web.Response:
    env = request.app[JINJA_KEY]
    html = env.get_template(template).render(path=request.path, query=request.query_string, **context)
    return web.Response(text=html, content_type="text/html", status=http_status)


# --- handlers -----------------------------------------------------------------------------------------------------
def _limit(request: web.Request) -> int | None:
    return None if "export" in request.query else request.app[CONFIG_KEY].display_rows


def _respond(request: web.Request, page: pages.Page) -> web.StreamResponse:
    if "export" in request.query:
        return _export(request, page)
    return render_html(request, page.template, page=page, title=page.title, **page.context)


def _export(request: web.Request, page: pages.Page) -> web.StreamResponse:
    key, fmt = request.query["export"], request.query.get("format", "csv")
    table = page.tables.get(key)
    if table is None:
        raise NotFound(f"{request.path} has no list {key!r}; it has {sorted(page.tables)}", list=key)
    if fmt not in export.FORMATS:
        raise NotFound(f"no export format {fmt!r}; use one of {export.FORMATS}", format=fmt)
    src = request.app[SOURCES_KEY]
    data = export.render(table, fmt)
    manifest = export.manifest(table=table, fmt=fmt, data=data, chain_id=src.ref.chain_id, contract=src.ref.address,
                               from_block=max(src.ref.deploy_block, 0), to_block=src.index.last_block,
                               head_hash=src.head_hash(), page=request.path)
    name = export.filename(request.path, table, src.index.last_block, fmt)
    if request.query.get("manifest"):
        return web.json_response(manifest, headers={
            "Content-Disposition": f'attachment; filename="{name}.manifest.json"'}, dumps=lambda v: json.dumps(
                v, indent=2) + "\n")
    content_type = "text/csv" if fmt == "csv" else "application/json"
    return web.Response(body=data, content_type=content_type, charset="utf-8", headers={
        "Content-Disposition": f'attachment; filename="{name}"', "X-Clearhouse-SHA256": manifest["sha256"],
        "X-Clearhouse-Block-Range": f"{manifest['block_range'][0]}-{manifest['block_range'][1]}"})


async def overview(request: web.Request) -> web.StreamResponse:
    src = request.app[SOURCES_KEY]
    src.refresh()
    return _respond(request, pages.overview(src, _limit(request)))


async def search(request: web.Request) -> web.StreamResponse:
    src = request.app[SOURCES_KEY]
    src.refresh()
    query = request.query.get("q", "").strip()
    if not query:
        raise web.HTTPFound("/")
    raise web.HTTPFound(pages.route(src, query))


def _page_handler(builder: pages.PageBuilder) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        src = request.app[SOURCES_KEY]
        src.refresh()
        return _respond(request, builder(src, request.match_info["ident"], _limit(request)))

    handler.__name__ = f"{builder.__name__}_handler"
    return handler


@web.middleware
async def html_errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                      ) -> web.StreamResponse:
    """NotFound -> 404 page, other named errors -> 400 page, anything else -> an opaque 500 page (logged)."""
    try:
        return await handler(request)
    except NotFound as exc:
        return render_html(request, "error.html", 404, title="Not found", error=exc)
    except ClearhouseError as exc:
        return render_html(request, "error.html", exc.http_status if exc.http_status < 500 else 400,
                           title="Cannot show this", error=exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        error = NotFound(f"nothing at {request.path}", path=request.path) if exc.status == 404 else \
            ClearhouseError(exc.reason)
        return render_html(request, "error.html", exc.status, title=exc.reason, error=error)
    except Exception:  # the HTTP edge: log the detail, never leak it
        log.exception("explorer failed on %s", request.path_qs)
        return render_html(request, "error.html", 500, title="Internal error",
                           error=ClearhouseError("internal error; see the explorer's log"))


def _member_gate(identify: Identify) -> Callable[..., Any]:
    @web.middleware
    async def gate(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                   ) -> web.StreamResponse:
        identify(request)  # raises a CertificateError subclass (rendered by html_errors) for non-members
        return await handler(request)

    return gate


def build_app(config: ExplorerConfig, *, identify: Identify | None = None,
              sources: Sources | None = None) -> web.Application:
    """The explorer; the audit index is opened (and synced) at startup in the serving thread unless given."""
    middlewares = [html_errors] + ([_member_gate(identify)] if identify is not None else [])
    app = web.Application(middlewares=middlewares)
    app[CONFIG_KEY] = config
    app[JINJA_KEY] = environment()

    async def open_sources(app: web.Application) -> None:
        app[SOURCES_KEY] = sources if sources is not None else Sources.open(config)

    async def close_sources(app: web.Application) -> None:
        if sources is None:
            app[SOURCES_KEY].close()

    app.on_startup.append(open_sources)
    app.on_cleanup.append(close_sources)
    app.router.add_get("/", overview)
    app.router.add_get("/search", search)
    for kind, builder in pages.PAGES.items():
        app.router.add_get(f"/{kind}/{{ident}}", _page_handler(builder))
    app.router.add_static("/static/", HERE / "static")
    return app


# --- serving ------------------------------------------------------------------------------------------------------
async def run(app: web.Application, host: str, port: int, ssl_context: ssl.SSLContext | None,
              announce: Callable[[str], None]) -> None:
    """Serve until SIGTERM/SIGINT; `announce` gets the URL once listening (port 0 picks a free port)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=2.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, ssl_context=ssl_context, reuse_address=True)
        await site.start()
        bound = runner.addresses[0][1]
        scheme = "https" if ssl_context is not None else "http"
        shown = f"[{host}]" if ":" in host else host
        announce(f"{scheme}://{shown}:{bound}/")
        await stop.wait()
    finally:
        await runner.cleanup()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


def serve(config: ExplorerConfig, *, host: str = "127.0.0.1", port: int = 8780,
          tls: tuple[Path, Path, Path] | None = None, crl_path: Path | None = None,
          announce: Callable[[str], None] = print) -> None:
    """`clearhouse explorer`: serve until interrupted. `tls` = (cert, key, ca) turns on mutual TLS."""
    ssl_context, identify = None, None
    if tls is not None:
        from offchain.trust.certs import CertificateVerifier
        from offchain.trust.tls import peer_identity, server_ssl_context

        cert, key, ca = tls
        ssl_context = server_ssl_context(cert, key, ca)
        verifier = CertificateVerifier(Path(ca).read_bytes(),
                                       (lambda: Path(crl_path).read_bytes()) if crl_path else None)
        identify = lambda request: peer_identity(request, verifier)  # noqa: E731
    asyncio.run(run(build_app(config, identify=identify), host, port, ssl_context, announce))


def _database_url(config_path: Path | None, settings_cls: str) -> str | None:
    if config_path is None:
        return None
    from offchain.core import settings

    return settings.load_settings(getattr(settings, settings_cls), Path(config_path)).database_url


def main_explorer(*, rpc_url: str, deployment_path: Path, cache_dir: Path | None = None, host: str = "127.0.0.1",
                  port: int = 8780, confirmations: int = 6, network_file: Path | None = None,
                  cc_config: Path | None = None, bank_config: Path | None = None, mtls: bool = False,
                  ca_path: Path | None = None, cert_path: Path | None = None, key_path: Path | None = None,
                  crl_path: Path | None = None) -> None:
    """The `clearhouse explorer` command: check the options, then serve until Ctrl-C."""
    from offchain.core.errors import SettingError

    tls = None
    if mtls:
        missing = [name for name, value in (("--ca", ca_path), ("--cert", cert_path), ("--key", key_path))
                   if value is None]
        if missing:
            raise SettingError(f"--mtls needs {', '.join(missing)}: the explorer's certificate and key from the "
                               "consortium CA, and the CA that signs its clients", missing=",".join(missing))
        tls = (Path(cert_path), Path(key_path), Path(ca_path))  # type: ignore[arg-type]
    elif any(v is not None for v in (ca_path, cert_path, key_path, crl_path)):
        raise SettingError("--ca/--cert/--key/--crl only apply with --mtls", mtls=False)
    config = ExplorerConfig(rpc_url=rpc_url, deployment_path=Path(deployment_path), cache_dir=cache_dir,
                            confirmations=confirmations, network_file=network_file,
                            cc_db_url=_database_url(cc_config, "ClearingCenterSettings"),
                            bank_db_url=_database_url(bank_config, "BankSettings"))
    serve(config, host=host, port=port, tls=tls, crl_path=crl_path,
          announce=lambda url: print(f"clearhouse explorer listening on {url}", flush=True))
