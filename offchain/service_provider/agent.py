"""The service provider (SP): sells secure containers, receives signed usage logs, signs receive logs for the CC.

Usage uploads are verified (mTLS peer == attached certificate == batch and log signer, fees == catalog price,
seq continuity; signature checks run in a thread pool, off the event loop) and committed, log rows in one bulk
insert, before the answer, so nothing acked is lost; a background forwarder retries the
CC until it accepts, except a batch the CC refuses for good, which it keeps as `rejected` for the operator. Content keys are AES-256-GCM encrypted at rest with `catalog_key`; the SP never decrypts content.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import multiprocessing
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import BaseModel, Field
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from offchain.trust import container as containers
from offchain import storage
from offchain.service_provider import store as sp_store
from offchain.core import messages
from offchain.trust.certs import CertificateVerifier, Envelope, MemberIdentity
from offchain.core.errors import (
    ChainError,
    ChainUnreachable,
    ClearhouseError,
    ConfigError,
    ContractReverted,
    CrlUnavailable,
    DuplicateMessage,
    FeeMismatch,
    IdentityMismatch,
    InvalidRequest,
    NotFound,
    PolicyMismatch,
    RemoteError,
    SequenceError,
    ServiceUnavailable,
    TlsHandshakeFailed,
    TransportError,
)
from offchain.transport.client import JsonClient
from offchain.transport.server import Route, add_routes, new_app, serve_app
from offchain.transport.wiring import connect_chain, deployment_domain, member_verifier, require_path
from offchain.core.messages import Domain, ReceiveLog, Role, UsageBatch, UsageLog
from offchain.core.settings import ServiceProviderSettings, configure_logging
from offchain.core.settings import load_settings as _load_settings

log = logging.getLogger(__name__)
Clock = Callable[[], float]
# Per-item refusals that may pass on a later round (the CC, its chain node or its CRL was unreachable, or it
# failed internally): the batch stays pending. Any other error code the CC reports for a batch is final for it.
TRANSIENT_ERROR_CODES = frozenset({
    TransportError.code, TlsHandshakeFailed.code, RemoteError.code, ServiceUnavailable.code,
    ChainError.code, ChainUnreachable.code, CrlUnavailable.code, ConfigError.code, "internal_error",
})
REJECT_MESSAGE_MAX = 2_000
STATUS_REJECTED_MAX = 100
VERIFY_THREADS = 4  # usage uploads checked at once in thread mode (devices upload concurrently)
PolicyHashLookup = Callable[[bytes], bytes | None]  # policy id -> on-chain policyHash (None: unknown policy)
SerialOwnerLookup = Callable[[bytes], str | None]  # serial -> its device on chain (None: not on chain)


# --- HTTP bodies ----------------------------------------------------------------------------------------------------
class PublishBody(BaseModel):
    container_b64: str
    content_key_b64: str


class PublishResponse(BaseModel):
    content_id: str
    version: int


class CatalogItemOut(BaseModel):
    content_id: str
    version: int
    title: str
    price: int
    policy_id: str


class CatalogResponse(BaseModel):
    items: list[CatalogItemOut]


class DownloadBody(BaseModel):
    content_id: str = Field(pattern=r"^0x[0-9a-fA-F]{64}$")
    version: int = Field(ge=1, lt=2**32)


class DownloadResponse(BaseModel):
    container_b64: str
    wrapped_key: dict[str, Any]


class SignedLog(BaseModel):
    log: dict[str, Any]
    signature: str


class UsageUploadBody(BaseModel):
    batch: dict[str, Any]
    batch_signature: str
    logs: list[SignedLog]
    certificate: str


class UsageAck(BaseModel):
    receive_log_id: str
    acked_through_seq: int


# --- value objects -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CheckedUsage:
    """The signatures of one upload, checked: the batch, the logs it packs (each one's own signature verified
    against its digest), each log's canonical JSON and payload hash (what its row stores). Picklable."""

    batch: UsageBatch
    batch_signature: bytes
    logs: tuple[UsageLog, ...]
    signatures: tuple[bytes, ...]
    log_json: tuple[dict[str, Any], ...]
    payload_hashes: tuple[bytes, ...]


@dataclass(frozen=True)
class VerifiedUpload:
    """A usage upload whose every signature and certificate has been checked (not yet checked against the store)."""

    batch: UsageBatch
    batch_signature: bytes
    logs: tuple[UsageLog, ...]
    signatures: tuple[bytes, ...]
    device: MemberIdentity
    device_certificate: str
    log_json: tuple[dict[str, Any], ...] = ()
    payload_hashes: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class Rejection:
    """The CC refused one forwarded batch for good: its error code and message."""

    batch_id: bytes
    error: str
    message: str


def permanent_rejections(batch_ids: Sequence[bytes], rejected: Sequence[Any]) -> list[Rejection]:
    """The CC's per-item refusals (`index` into the posted items) that are final; transient or malformed entries
    are left out, so those batches are simply forwarded again."""
    final: list[Rejection] = []
    for entry in rejected:
        if not isinstance(entry, dict):
            continue
        index, code = entry.get("index"), entry.get("error")
        if not isinstance(index, int) or not 0 <= index < len(batch_ids) or not isinstance(code, str):
            continue
        if code not in TRANSIENT_ERROR_CODES:
            final.append(Rejection(batch_ids[index], code, str(entry.get("message", ""))[:REJECT_MESSAGE_MAX]))
    return final


def _hex(data: bytes) -> str:
    return "0x" + bytes(data).hex()


def _unhex(value: str, name: str) -> bytes:
    try:
        return bytes.fromhex(value.removeprefix("0x"))
    except (ValueError, AttributeError):
        raise InvalidRequest(f"{name} is not hex", model=name, errors="not hex") from None


def _b64(value: str, name: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        raise InvalidRequest(f"{name} is not base64", model=name, errors="not base64") from None


def check_usage_signatures(batch_json: dict[str, Any], batch_signature_hex: str,
                           signed_logs: Sequence[tuple[dict[str, Any], str]], domain: Domain,
                           signer: str) -> CheckedUsage:
    """The posted logs must be exactly the logs the batch packs, and the batch and every log signed by `signer`.

    CPU-bound and free of I/O and shared state, so the SP runs it off its event loop (threads or processes). The
    logs are built once, from the batch; a posted log is compared as canonical JSON and parsed only when that
    differs (so a non-canonical but equal spelling is still accepted, and a different log still refused). Each
    log's own signature is then checked against the digest of its batch-derived twin, which it equals.
    """
    batch = UsageBatch.from_json(batch_json)
    logs = tuple(batch.logs())
    log_json = tuple(item.to_json() for item in logs)
    if len(signed_logs) != len(logs) or not all(
            posted == wanted or _parsed_log(posted) == item
            for (posted, _sig), wanted, item in zip(signed_logs, log_json, logs)):
        raise InvalidRequest("the signed usage logs are not exactly the logs the batch packs",
                             model="UsageUploadBody", errors="logs differ from batch")
    signatures = tuple(_unhex(sig, "log signature") for _log, sig in signed_logs)
    batch_signature = _unhex(batch_signature_hex, "batch_signature")
    messages.verify(batch, domain, batch_signature, signer)
    messages.verify_usage_logs(logs, signatures, domain, signer)
    return CheckedUsage(batch, batch_signature, logs, signatures, log_json,
                        tuple(storage.payload_hash(item) for item in log_json))


def _parsed_log(data: Any) -> UsageLog:
    return UsageLog.from_json(data)  # MalformedMessage on a bad field, as before


# --- the service logic ---------------------------------------------------------------------------------------------
class ServiceProvider:
    """Catalog, downloads and usage intake of one SP; every effect is one database transaction."""

    def __init__(self, *, engine: Engine, domain: Domain, private_key: bytes, cert_pem: bytes,
                 verifier: CertificateVerifier, catalog_key: bytes, clock: Clock = time.time,
                 policy_hash_lookup: PolicyHashLookup | None = None,
                 serial_owner_lookup: SerialOwnerLookup | None = None) -> None:
        self.engine = engine
        self.domain = domain
        self.address = messages.address_from_public_key(_public_key(private_key)) \
            if isinstance(private_key, (bytes, bytearray)) else private_key.address  # a PKCS#11 Signer
        self._private_key = private_key
        self._cert_pem = cert_pem
        self._verifier = verifier
        self._catalog_aead = AESGCM(catalog_key)
        self._clock = clock
        self._policy_hash_lookup = policy_hash_lookup
        self._serial_owner_lookup = serial_owner_lookup

    # --- catalog ------------------------------------------------------------------------------------------------
    def publish(self, blob: bytes, content_key: bytes, provider: MemberIdentity) -> tuple[bytes, int]:
        """Verify and store a container from its provider (the TLS peer); idempotent for the same container."""
        box = containers.verify_container(blob, self._verifier)
        if box.provider.fingerprint != provider.fingerprint:
            raise IdentityMismatch(f"container signed by {box.provider.member_id}, uploaded by {provider.member_id}",
                                   expected=provider.member_id, got=box.provider.member_id)
        self._check_on_chain(box.policy)
        box.decrypt(content_key)  # ContainerTampered unless this key opens this container (key commitment + GCM)
        policy = box.policy
        sealed = sp_store.seal_content_key(self._catalog_aead, policy.content_id, policy.version, content_key)
        with storage.session_scope(self.engine) as session:
            sp_store.add_catalog_item(session, content_id=policy.content_id, version=policy.version, container=blob,
                                      sealed_key=sealed, policy_json={**policy.to_json(), "title": box.header.title},
                                      policy_hash=containers.policy_hash(policy), now=int(self._clock()))
        return policy.content_id, policy.version

    def _check_on_chain(self, policy: containers.Policy) -> None:
        """The policy must be registered on chain with this container's policy hash (when a chain is wired)."""
        if self._policy_hash_lookup is None:
            return
        registered = self._policy_hash_lookup(policy.policy_id)
        got = containers.policy_hash(policy)
        if registered != got:
            raise PolicyMismatch("the container's policy is not registered on chain with this policy hash",
                                 policy_id=policy.policy_id, expected=registered or b"", got=got)

    def catalog(self) -> list[CatalogItemOut]:
        with storage.session_scope(self.engine) as session:
            rows = sp_store.catalog_items(session)
            return [CatalogItemOut(content_id=_hex(r.content_id), version=r.version, title=r.policy_json["title"],
                                   price=int(r.policy_json["price"]),
                                   policy_id=_hex(messages.policy_id(r.content_id, r.version))) for r in rows]

    def download(self, content_id: bytes, version: int, device_cert_pem: bytes,
                 device_member_id: str) -> tuple[bytes, dict[str, Any]]:
        """The container and its content key wrapped to the requesting device's certificate key."""
        with storage.session_scope(self.engine) as session:
            row = sp_store.catalog_item(session, content_id, version)
            blob, sealed = row.container_bytes, row.content_key_encrypted
        content_key = sp_store.open_content_key(self._catalog_aead, content_id, version, sealed)
        wrapped = containers.wrap_content_key(content_key, content_id, device_cert_pem, device_member_id)
        return blob, wrapped.to_json()

    def prices(self, policy_ids: Sequence[bytes]) -> dict[bytes, int]:
        """Catalog price of each policy id this SP sells (others are absent)."""
        with storage.session_scope(self.engine) as session:
            rows = sp_store.catalog_items(session)
            by_id = {messages.policy_id(r.content_id, r.version): int(r.policy_json["price"]) for r in rows}
        return {pid: by_id[pid] for pid in policy_ids if pid in by_id}

    # --- usage intake -------------------------------------------------------------------------------------------
    def verify_device(self, body: UsageUploadBody, peer: MemberIdentity) -> MemberIdentity:
        """The attached certificate is a valid device certificate and the TLS peer's."""
        device = self._verifier.verify(body.certificate, Role.DEVICE)
        if device.fingerprint != peer.fingerprint:
            raise IdentityMismatch("the attached certificate is not the TLS peer's", expected=peer.member_id,
                                   got=device.member_id)
        return device

    def verify_upload(self, body: UsageUploadBody, peer: MemberIdentity) -> VerifiedUpload:
        """Certificate == TLS peer == signer of the batch and of every log; logs == the batch's logs."""
        device = self.verify_device(body, peer)
        checked = check_usage_signatures(*upload_signature_args(body, self.domain, device))
        return verified_upload(checked, device, body.certificate)

    def check_terms(self, upload: VerifiedUpload) -> None:
        """This SP is the receiver, the serial is not another device's on chain, and every fee is the catalog price
        of its policy."""
        batch = upload.batch
        if batch.receiver != self.address:
            raise IdentityMismatch("usage batch names another receiver", expected=self.address, got=batch.receiver)
        owner = None if self._serial_owner_lookup is None else self._serial_owner_lookup(batch.serial)
        if owner is not None and owner != upload.device.eth_address:
            raise IdentityMismatch("usage batch for a serial issued to another device", serial=batch.serial,
                                   expected=owner, got=upload.device.eth_address)
        prices = self.prices(batch.policy_ids)
        for item in upload.logs:
            expected = prices.get(item.policy_id)
            if expected is None:
                raise NotFound("usage of a policy this SP does not sell", policy_id=item.policy_id, seq=item.seq)
            if item.fee != expected:
                raise FeeMismatch("usage fee differs from the policy price", policy_id=item.policy_id,
                                  expected=expected, got=item.fee, seq=item.seq)

    def accept_usage(self, upload: VerifiedUpload) -> UsageAck:
        """Persist logs, batch and a signed receive log in one transaction, then answer (idempotent by batch id)."""
        self.check_terms(upload)
        batch = upload.batch
        batch_id = batch.digest(self.domain)
        payload = storage.payload_hash({"batch": batch.to_json(), "sig": upload.batch_signature})
        last_seq = batch.first_seq + batch.count - 1
        now = int(self._clock())
        with storage.session_scope(self.engine) as session:
            existing = sp_store.find_batch(session, batch_id)
            if existing is not None:
                return UsageAck(receive_log_id=existing.receive_log_json["id"], acked_through_seq=last_seq)
            self._check_continuity(session, batch, upload.device.eth_address)
            envelope = Envelope.seal(ReceiveLog(usage_batch=batch.struct_hash(), payer=upload.device.eth_address,
                                                received_at=now), self.domain, self._private_key, self._cert_pem)
            receive_id = _hex(envelope.decode().id(self.domain))
            sp_store.store_upload(session, _log_rows(upload, now), sp_store.SpBatch(
                id=batch_id, serial=batch.serial, first_seq=batch.first_seq, count=batch.count,
                # batch_json carries the device certificate too: the CC needs it with the batch (claim 8)
                batch_json={"usage_batch": batch.to_json(), "device_certificate": upload.device_certificate},
                device_sig=upload.batch_signature, receive_log_json={"id": receive_id, "envelope": envelope.to_json()},
                receiver_sig=envelope.signature_bytes(), status="pending", payload_hash=payload,
                created_at=now, updated_at=now))
        return UsageAck(receive_log_id=receive_id, acked_through_seq=last_seq)

    def _check_continuity(self, session: Session, batch: UsageBatch, uploader: str) -> None:
        latest = sp_store.latest_usage_log(session, batch.serial)
        if latest is None:
            return
        highest, device = latest
        if device != uploader:  # another device's rows would block the owner's own logs of this serial
            raise IdentityMismatch("usage logs of this serial were received from another device",
                                   serial=batch.serial, expected=device, got=uploader)
        if batch.first_seq <= highest:
            raise DuplicateMessage("usage logs with these sequence numbers were already received in another batch",
                                   serial=batch.serial, first_seq=batch.first_seq, highest_received=highest)
        if batch.first_seq != highest + 1:
            raise SequenceError("usage batch leaves a sequence gap; upload the missing logs first",
                                serial=batch.serial, expected=highest + 1, got=batch.first_seq)

    # --- forwarding to the CC -----------------------------------------------------------------------------------
    def unforwarded(self, limit: int) -> list[tuple[bytes, dict[str, Any]]]:
        """(batch id, receive-log item in the CC's wire format) of batches neither accepted nor rejected by the CC,
        oldest first."""
        with storage.session_scope(self.engine) as session:
            rows = sp_store.open_batches(session, limit)
            return [(r.id, {"receive_log": r.receive_log_json["envelope"], "usage_batch": r.batch_json["usage_batch"],
                            "device_signature": _hex(r.device_sig),
                            "device_certificate": r.batch_json["device_certificate"]}) for r in rows]

    def mark_acked(self, receive_log_ids: Sequence[str]) -> int:
        with storage.session_scope(self.engine) as session:
            return sp_store.ack_batches(session, receive_log_ids, int(self._clock()))

    def mark_rejected(self, rejections: Sequence[Rejection]) -> int:
        """Park batches the CC refused for good (status `rejected`, its error kept); they are not forwarded again."""
        now = int(self._clock())
        with storage.session_scope(self.engine) as session:
            for rejection in rejections:
                sp_store.reject_batch(session, rejection.batch_id, rejection.error, rejection.message, now)
        return len(rejections)

    def forwarding_status(self) -> dict[str, int]:
        with storage.session_scope(self.engine) as session:
            return sp_store.batch_status_counts(session)

    def rejected_batches(self, limit: int = STATUS_REJECTED_MAX) -> list[dict[str, Any]]:
        """The latest batches the CC refused for good, with its error: what an operator has to look at."""
        with storage.session_scope(self.engine) as session:
            rows = sp_store.rejected_batches(session, limit)
            return [{"receive_log_id": r.receive_log_json["id"], "serial": _hex(r.serial), "first_seq": r.first_seq,
                     "count": r.count, "error": r.reject_error, "message": r.reject_message,
                     "rejected_at": r.updated_at} for r in rows]


def upload_signature_args(body: UsageUploadBody, domain: Domain,
                          device: MemberIdentity) -> tuple[dict[str, Any], str, list[tuple[dict[str, Any], str]],
                                                           Domain, str]:
    """The arguments of `check_usage_signatures` for one upload: plain data, cheap to send to another process."""
    return (body.batch, body.batch_signature, [(item.log, item.signature) for item in body.logs], domain,
            device.eth_address)


def verified_upload(checked: CheckedUsage, device: MemberIdentity, certificate: str) -> VerifiedUpload:
    return VerifiedUpload(checked.batch, checked.batch_signature, checked.logs, checked.signatures, device,
                          certificate, checked.log_json, checked.payload_hashes)


def _log_rows(upload: VerifiedUpload, now: int) -> list[dict[str, Any]]:
    """Column values of every log row (for one bulk insert); JSON and hash precomputed off the loop if present."""
    log_json = upload.log_json or tuple(item.to_json() for item in upload.logs)
    hashes = upload.payload_hashes or tuple(storage.payload_hash(item) for item in log_json)
    device = upload.device.eth_address
    return [{"device": device, "serial": item.serial, "seq": item.seq, "log_json": data, "signature": sig,
             "payload_hash": digest, "received_at": now}
            for item, sig, data, digest in zip(upload.logs, upload.signatures, log_json, hashes)]


def _public_key(private_key: bytes) -> bytes:
    import coincurve

    return coincurve.PrivateKey(private_key).public_key.format(compressed=False)


class Forwarder:
    """Background task: send unacked receive logs to the CC (`POST /v1/receive-logs`) until it accepts them."""

    def __init__(self, provider: ServiceProvider, client: JsonClient, *, batch_max: int, interval_s: float) -> None:
        self._provider = provider
        self._client = client
        self._batch_max = batch_max
        self._interval_s = interval_s
        self.last_error: ClearhouseError | None = None

    async def forward_once(self) -> int:
        """One round; returns how many receive logs the CC accepted. A batch the CC refuses for good is parked as
        `rejected`; a failed request or a transient refusal is retried next round (kept in `last_error`)."""
        pending = await asyncio.to_thread(self._provider.unforwarded, self._batch_max)
        if not pending:
            return 0
        try:
            answer = await self._client.post("/v1/receive-logs", {"items": [item for _id, item in pending]})
        except ClearhouseError as exc:
            self.last_error = exc
            log.warning("forwarding %d receive logs failed: %s (%s); will retry", len(pending), exc.code,
                        exc.message)
            return 0
        self.last_error = None
        rejections = permanent_rejections([batch_id for batch_id, _item in pending], answer.get("rejected") or [])
        if rejections:
            await asyncio.to_thread(self._provider.mark_rejected, rejections)
            for rejection in rejections:
                log.warning("the CC rejected usage batch %s for good: %s (%s)", _hex(rejection.batch_id),
                            rejection.error, rejection.message)
        return await asyncio.to_thread(self._provider.mark_acked, answer.get("accepted", []))

    async def run(self) -> None:
        while True:
            try:
                accepted = await self.forward_once()
            except Exception:  # keep the loop alive; the next round retries
                log.exception("forwarder round failed")
                accepted = 0
            if accepted < self._batch_max:
                await asyncio.sleep(self._interval_s)


# --- HTTP ------------------------------------------------------------------------------------------------------------
def routes(provider: ServiceProvider, verify_pool: Executor | None = None) -> list[Route]:
    """The SP's routes; usage signature checks run in `verify_pool` (None: the default thread pool)."""

    async def publish(_request: web.Request, peer: MemberIdentity, body: PublishBody) -> PublishResponse:
        content_id, version = await asyncio.to_thread(
            provider.publish, _b64(body.container_b64, "container_b64"), _b64(body.content_key_b64, "content_key_b64"),
            peer)
        return PublishResponse(content_id=_hex(content_id), version=version)

    async def catalog(_request: web.Request, _peer: MemberIdentity, _body: None) -> CatalogResponse:
        return CatalogResponse(items=await asyncio.to_thread(provider.catalog))

    async def download(request: web.Request, peer: MemberIdentity, body: DownloadBody) -> DownloadResponse:
        cert_pem = _peer_certificate_pem(request)
        blob, wrapped = await asyncio.to_thread(provider.download, _unhex(body.content_id, "content_id"),
                                                body.version, cert_pem, peer.member_id)
        return DownloadResponse(container_b64=base64.b64encode(blob).decode(), wrapped_key=wrapped)

    async def usage(_request: web.Request, peer: MemberIdentity, body: UsageUploadBody) -> UsageAck:
        device = provider.verify_device(body, peer)
        # Off the event loop: other uploads are parsed, checked and persisted meanwhile.
        checked = await asyncio.get_running_loop().run_in_executor(
            verify_pool, check_usage_signatures, *upload_signature_args(body, provider.domain, device))
        return await asyncio.to_thread(provider.accept_usage, verified_upload(checked, device, body.certificate))

    async def status(_request: web.Request, _peer: MemberIdentity, _body: None) -> dict[str, Any]:
        return {"address": provider.address, "batches": await asyncio.to_thread(provider.forwarding_status),
                "rejected": await asyncio.to_thread(provider.rejected_batches)}

    return [
        Route("POST", "/v1/catalog", publish, (Role.CONTENT_PROVIDER,), PublishBody, PublishResponse,
              "Publish a secure container and its content key"),
        Route("GET", "/v1/catalog", catalog, (Role.DEVICE, Role.CONTENT_PROVIDER), None, CatalogResponse,
              "List the content on offer"),
        Route("POST", "/v1/downloads", download, (Role.DEVICE,), DownloadBody, DownloadResponse,
              "Download a container with its key wrapped to the calling device"),
        Route("POST", "/v1/usage", usage, (Role.DEVICE,), UsageUploadBody, UsageAck,
              "Upload signed usage logs (persisted before the answer)"),
        Route("GET", "/v1/status", status, (), None, None,
              "Forwarding status (any member): batch counts per status and the batches the CC rejected"),
    ]


def _peer_certificate_pem(request: web.Request) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if not der:
        raise IdentityMismatch("no TLS client certificate on this connection", expected="device", got="none")
    return x509.load_der_x509_certificate(der).public_bytes(Encoding.PEM)


def load_settings(config_path: Path | None = None, **overrides: Any) -> ServiceProviderSettings:
    return _load_settings(ServiceProviderSettings, config_path, **overrides)


def build_app(settings: ServiceProviderSettings, *, chain: Any = None, clock: Clock = time.time) -> web.Application:
    """The SP application; starts the forwarder on startup and stops it on cleanup. Peers and signers must be
    active members on chain (`chain` defaults to a client built from the settings)."""
    from offchain.trust import tls
    chain = chain if chain is not None else connect_chain(settings)
    ca_path = require_path(settings.ca_path, "ca_path")
    verifier = member_verifier(settings, chain, clock)
    engine = storage.make_engine(settings.database_url)
    sp_store.create_schema(engine)
    provider = ServiceProvider(
        engine=engine, domain=deployment_domain(settings.deployment_path),
        private_key=settings.eth_signing_key(), cert_pem=require_path(settings.cert_path, "cert_path").read_bytes(),
        verifier=verifier, catalog_key=settings.catalog_key_bytes(), clock=clock,
        policy_hash_lookup=_policy_hash_lookup(chain), serial_owner_lookup=_serial_owner_lookup(chain))
    client = JsonClient(settings.cc_url, tls.client_ssl_context(settings.cert_path, settings.key_path, ca_path))
    forwarder = Forwarder(provider, client, batch_max=settings.forward_batch_max,
                          interval_s=settings.forward_interval_s)
    verify_pool = usage_verify_pool(settings.usage_verify_processes)
    app = new_app(provider=provider, forwarder=forwarder)
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


def _policy_hash_lookup(chain: Any) -> PolicyHashLookup:
    def lookup(policy_id: bytes) -> bytes | None:
        try:
            view = chain.policy(policy_id)
        except ContractReverted as exc:
            if exc.fields.get("error_name") == "UnknownPolicy":
                return None
            raise
        return None if int(view.provider, 16) == 0 else view.policy_hash

    return lookup


def _serial_owner_lookup(chain: Any) -> SerialOwnerLookup:
    def lookup(serial: bytes) -> str | None:
        view = chain.issue_log(serial)
        return view.device if view.exists else None  # not on chain: the CC refuses it when forwarded

    return lookup


def serve(settings: ServiceProviderSettings) -> None:
    """Run the SP until SIGTERM/SIGINT."""
    configure_logging(settings)
    serve_app(settings, build_app(settings))


if __name__ == "__main__":
    import sys

    serve(load_settings(Path(sys.argv[sys.argv.index("--config") + 1])))
