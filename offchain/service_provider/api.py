"""The service provider's HTTP surface: routes (role-checked), the app with its forwarder and signature-check
pool, the chain lookups it is wired with, and `serve`.

Handlers only parse, check the caller's role and run the ServiceProvider's decision off the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import json
import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from aiohttp import web

from offchain import storage
from offchain.chain.protocols import ChainReader
from offchain.chain.views import FinalViews
from offchain.core.errors import ContractReverted, InvalidRequest
from offchain.core.settings import ServiceProviderSettings, configure_logging
from offchain.core.settings import load_settings as _load_settings
from offchain.core.types import Clock, Role, to_hex
from offchain.service_provider import metrics as sp_metrics
from offchain.service_provider import store as sp_store
from offchain.service_provider.agent import (PolicyHashLookup, PolicyOwnerLookup, SerialOwnerLookup, ServiceProvider,
                                             check_usage_signatures, upload_signature_args, verified_upload)
from offchain.service_provider.bodies import (CatalogResponse, DownloadBody, DownloadResponse, PublishBody,
                                              PublishResponse, UsageAck, UsageAcksResponse, UsageUploadBody,
                                              request_b64, request_hex)
from offchain.service_provider.container_files import CHUNK, ContainerFiles
from offchain.service_provider.forwarder import Forwarder
from offchain.transport.client import JsonClient
from offchain.transport.server import Route, add_routes, new_app, serve_app
from offchain.transport.wiring import connect_chain, deployment_domain, final_views, member_verifier, require_path
from offchain.trust.certs import MemberIdentity

CONTENT_KEY_HEADER = "X-Clearhouse-Content-Key"
WRAPPED_KEY_HEADER = "X-Clearhouse-Wrapped-Key"
VERIFY_THREADS = 4  # usage uploads checked at once in thread mode (devices upload concurrently)


# --- HTTP ------------------------------------------------------------------------------------------------------------
def routes(provider: ServiceProvider, verify_pool: Executor | None = None) -> list[Route]:
    """The SP's routes; usage signature checks run in `verify_pool` (None: the default thread pool)."""

    async def publish(_request: web.Request, peer: MemberIdentity, body: PublishBody) -> PublishResponse:
        content_id, version = await asyncio.to_thread(
            provider.publish, request_b64(body.container_b64, "container_b64"), request_b64(body.content_key_b64, "content_key_b64"),
            peer)
        return PublishResponse(content_id=to_hex(content_id), version=version)

    async def catalog(_request: web.Request, _peer: MemberIdentity, _body: None) -> CatalogResponse:
        return CatalogResponse(items=await asyncio.to_thread(provider.catalog))

    async def download(request: web.Request, peer: MemberIdentity, body: DownloadBody) -> DownloadResponse:
        blob, wrapped = await asyncio.to_thread(provider.download, request_hex(body.content_id, "content_id"),
                                                body.version, peer, body.agreement)
        return DownloadResponse(container_b64=base64.b64encode(blob).decode(), wrapped_key=wrapped)

    async def publish_stream(request: web.Request, peer: MemberIdentity, _body: None) -> PublishResponse:
        """The container is the raw request body, read in chunks to a file (never the HTTP body limit, at most
        `max_container_bytes`); its content key is the base64 header X-Clearhouse-Content-Key."""
        content_key = request_b64(request.headers.get(CONTENT_KEY_HEADER, ""), CONTENT_KEY_HEADER)
        temp, sha256 = await provider._files().write_stream(request.content.iter_chunked(CHUNK))
        content_id, version = await asyncio.to_thread(provider.publish_file, temp, sha256, content_key, peer)
        return PublishResponse(content_id=to_hex(content_id), version=version)

    async def download_stream(request: web.Request, peer: MemberIdentity, body: DownloadBody) -> web.StreamResponse:
        """The container streamed from its file; the wrapped key (JSON, base64) in X-Clearhouse-Wrapped-Key."""
        source, wrapped = await asyncio.to_thread(provider.download_source, request_hex(body.content_id, "content_id"),
                                                  body.version, peer, body.agreement)
        headers = {WRAPPED_KEY_HEADER: base64.b64encode(json.dumps(wrapped).encode()).decode(),
                   "Content-Type": "application/octet-stream"}
        if isinstance(source, Path):
            return web.FileResponse(source, chunk_size=CHUNK, headers=headers)
        return web.Response(body=source, headers=headers)  # a row from before container files

    async def usage(_request: web.Request, peer: MemberIdentity, body: UsageUploadBody) -> UsageAck:
        device = provider.verify_device(body, peer)
        # Off the event loop: other uploads are parsed, checked and persisted meanwhile.
        checked = await asyncio.get_running_loop().run_in_executor(
            verify_pool, check_usage_signatures, *upload_signature_args(body, provider.domain, device))
        return await asyncio.to_thread(provider.accept_usage, verified_upload(checked, device, body.certificate))

    async def usage_acks(request: web.Request, peer: MemberIdentity, _body: None) -> UsageAcksResponse:
        serial = request_hex(request.query.get("serial", ""), "serial")
        from_seq = _query_seq(request.query.get("from_seq", "0"))
        return await asyncio.to_thread(provider.usage_acks, serial, from_seq, peer)

    async def status(_request: web.Request, _peer: MemberIdentity, _body: None) -> dict[str, Any]:
        return {"address": provider.address, "batches": await asyncio.to_thread(provider.forwarding_status),
                "rejected": await asyncio.to_thread(provider.rejected_batches)}

    return [
        Route("POST", "/v1/catalog", publish, (Role.CONTENT_PROVIDER,), PublishBody, PublishResponse,
              "Publish a secure container and its content key"),
        Route("POST", "/v1/catalog/container", publish_stream, (Role.CONTENT_PROVIDER,), None, PublishResponse,
              "Publish a secure container streamed as the raw body (any size up to max_container_bytes); its "
              "content key base64 in the X-Clearhouse-Content-Key header"),
        Route("POST", "/v1/downloads/container", download_stream, (Role.DEVICE,), DownloadBody, None,
              "Download a container streamed as the raw body; its key wrapped to the calling device (JSON, "
              "base64) in the X-Clearhouse-Wrapped-Key header"),
        Route("GET", "/v1/catalog", catalog, (Role.DEVICE, Role.CONTENT_PROVIDER), None, CatalogResponse,
              "List the content on offer"),
        Route("POST", "/v1/downloads", download, (Role.DEVICE,), DownloadBody, DownloadResponse,
              "Download a container with its key wrapped to the calling device"),
        Route("POST", "/v1/usage", usage, (Role.DEVICE,), UsageUploadBody, UsageAck,
              "Upload signed usage logs (persisted before the answer)"),
        Route("GET", "/v1/usage/acks", usage_acks, (Role.DEVICE,), None, UsageAcksResponse,
              "The SP's signed receive logs of the calling device's own batches of ?serial= holding a seq >= "
              "?from_seq= (a device whose ack was lost gets its proof back; another device's serial: "
              "IdentityMismatch)"),
        Route("GET", "/v1/status", status, (), None, None,
              "Forwarding status (any member): batch counts per status and the batches the CC rejected"),
    ]


def _query_seq(text: str) -> int:
    """A non-negative uint64 query parameter; InvalidRequest otherwise."""
    if not text.isdigit() or int(text) >= 2**64:
        raise InvalidRequest("from_seq is not a sequence number", model="from_seq", errors="not a uint64")
    return int(text)


def load_settings(config_path: Path | None = None, **overrides: Any) -> ServiceProviderSettings:
    return _load_settings(ServiceProviderSettings, config_path, **overrides)


def build_app(settings: ServiceProviderSettings, *, chain: ChainReader | None = None, clock: Clock = time.time) -> web.Application:
    """The SP application; starts the forwarder on startup and stops it on cleanup. Peers and signers must be
    active members on chain (`chain` defaults to a client built from the settings)."""
    from offchain.trust import tls
    chain = chain if chain is not None else connect_chain(settings)
    ca_path = require_path(settings.ca_path, "ca_path")
    views = final_views(settings, chain)  # every chain fact the SP decides on, read at the finality depth
    verifier = member_verifier(settings, views, clock)
    engine = storage.make_engine(settings.database_url)
    sp_store.create_schema(engine)
    provider = ServiceProvider(
        engine=engine, domain=deployment_domain(settings.deployment_path),
        private_key=settings.eth_signing_key(), cert_pem=require_path(settings.cert_path, "cert_path").read_bytes(),
        verifier=verifier, catalog_key=settings.catalog_key_bytes(), clock=clock,
        policy_hash_lookup=_policy_hash_lookup(views), serial_owner_lookup=_serial_owner_lookup(views),
        policy_owner_lookup=_policy_owner_lookup(views),
        container_files=ContainerFiles(settings.container_dir_path(), settings.max_container_bytes))
    client = JsonClient(settings.cc_url, tls.client_ssl_context(settings.cert_path, settings.key_path, ca_path))
    forwarder = Forwarder(provider, client, batch_max=settings.forward_batch_max,
                          interval_s=settings.forward_interval_s)
    verify_pool = usage_verify_pool(settings.usage_verify_processes)
    app = new_app(provider=provider, forwarder=forwarder, chain=chain)  # /livez names the node its client uses
    add_routes(app, routes(provider, verify_pool), lambda request: tls.peer_identity(request, verifier),
               title="Clearhouse service provider")
    app.cleanup_ctx.append(_background(forwarder, client, verify_pool))
    return app


def usage_verify_pool(processes: int) -> Executor:
    """Where usage signatures are checked. Threads by default: coincurve releases the GIL during recovery, the
    rest (hashing, JSON) holds it. N > 0: N spawned processes (fork is unsafe in a threaded server)."""
    if processes > 0:
        return ProcessPoolExecutor(max_workers=processes, mp_context=multiprocessing.get_context("spawn"))
    return ThreadPoolExecutor(max_workers=VERIFY_THREADS, thread_name_prefix="usage-verify")


def _background(forwarder: Forwarder, client: JsonClient, verify_pool: Executor) -> Callable[[web.Application], Any]:
    async def context(_app: web.Application) -> Any:
        task = asyncio.create_task(forwarder.run())
        yield
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.close()
        verify_pool.shutdown(wait=False, cancel_futures=True)

    return context


def _policy_hash_lookup(chain: ChainReader | FinalViews) -> PolicyHashLookup:
    def lookup(policy_id: bytes) -> bytes | None:
        try:
            view = chain.policy(policy_id)
        except ContractReverted as exc:
            if exc.fields.get("error_name") == "UnknownPolicy":
                return None
            raise
        return None if int(view.provider, 16) == 0 else view.policy_hash

    return lookup


def _policy_owner_lookup(chain: ChainReader | FinalViews) -> PolicyOwnerLookup:
    def lookup(policy_id: bytes) -> str | None:
        try:
            owner = chain.policy(policy_id).provider
        except ContractReverted as exc:
            if exc.fields.get("error_name") == "UnknownPolicy":
                return None
            raise
        return None if int(owner, 16) == 0 else owner

    return lookup


def _serial_owner_lookup(chain: ChainReader | FinalViews) -> SerialOwnerLookup:
    def lookup(serial: bytes) -> str | None:
        view = chain.issue_log(serial)  # FinalViews: included but not final is NotFinal (retry later)
        return view.device if view.exists else None  # not on chain: the CC refuses it when forwarded

    return lookup


def serve(settings: ServiceProviderSettings) -> None:
    """Run the SP until SIGTERM/SIGINT."""
    configure_logging(settings)
    serve_app(settings, build_app(settings), counts=sp_metrics.counts)


if __name__ == "__main__":
    import sys

    serve(load_settings(Path(sys.argv[sys.argv.index("--config") + 1])))
