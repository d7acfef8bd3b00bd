"""The service provider (SP): sells secure containers, receives signed usage logs, signs receive logs for the CC.

Usage uploads are verified (mTLS peer == attached certificate == batch and log signer, fees == catalog price,
seq continuity; signature checks run off the event loop) and committed, log rows in one bulk insert, before the
answer, so nothing acked is lost. Content keys are AES-256-GCM encrypted at rest with `catalog_key`
(service_provider/store.py); the SP never decrypts content. Routes and app: api.py; the forwarder: forwarder.py.
"""

from __future__ import annotations

import time
from pathlib import Path
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from offchain import storage
from offchain.core import messages
from offchain.core.errors import (ContentOwnerMismatch, DuplicateMessage, FeeMismatch, IdentityMismatch, InvalidRequest, MalformedMessage,
                                    NotFound, PolicyMismatch, SequenceError, SettingError)
from offchain.core.gas import DEFAULT_GAS_BUDGET, check_batch_fits
from offchain.core.messages import Domain, ReceiveLog, UsageBatch, UsageLog
from offchain.core.types import Clock, Role, to_hex
from offchain.service_provider import store as sp_store
from offchain.service_provider.container_files import ContainerFiles
from offchain.service_provider.bodies import (CatalogItemOut, KeptReceiveLog, UsageAck, UsageAcksResponse,
                                              UsageUploadBody, request_hex)
from offchain.service_provider.forwarder import Rejection
from offchain.trust import container as containers
from offchain.trust.agreement import verify_attestation
from offchain.trust.certs import CertificateVerifier, Envelope, MemberIdentity

STATUS_REJECTED_MAX = 100
USAGE_ACKS_MAX = 256  # receive logs per `usage_acks` answer; the device asks again from where it stopped
PolicyHashLookup = Callable[[bytes], bytes | None]  # policy id -> on-chain policyHash (None: unknown policy)
SerialOwnerLookup = Callable[[bytes], str | None]  # serial -> its device on chain (None: not on chain)
PolicyOwnerLookup = Callable[[bytes], str | None]  # policy id -> its content id's on-chain owner (None: unknown)


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
    signatures = tuple(request_hex(sig, "log signature") for _log, sig in signed_logs)
    batch_signature = request_hex(batch_signature_hex, "batch_signature")
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
                 serial_owner_lookup: SerialOwnerLookup | None = None,
                 policy_owner_lookup: PolicyOwnerLookup | None = None,
                 settle_gas_budget: int = DEFAULT_GAS_BUDGET,
                 container_files: ContainerFiles | None = None) -> None:
        self.engine = engine
        self.container_files = container_files  # where containers are kept (required to publish)
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
        self._policy_owner_lookup = policy_owner_lookup
        self._settle_gas_budget = settle_gas_budget  # a batch bigger than one settle tx carries is refused

    # --- catalog ------------------------------------------------------------------------------------------------
    def _files(self) -> ContainerFiles:
        if self.container_files is None:
            raise SettingError("no container_dir configured: containers cannot be stored", field="container_dir")
        return self.container_files

    def publish(self, blob: bytes, content_key: bytes, provider: MemberIdentity) -> tuple[bytes, int]:
        """Verify and store a container from its provider (the TLS peer); idempotent for the same container."""
        temp, sha256 = self._files().write_chunks([blob])
        return self.publish_file(temp, sha256, content_key, provider)

    def publish_file(self, temp: Path, sha256: bytes, content_key: bytes,
                     provider: MemberIdentity) -> tuple[bytes, int]:
        """`publish` of a container already written to `temp` (the streamed route): verified from the file, then
        moved to its content address; the catalog row keeps only path and hash. `temp` is gone afterwards."""
        try:
            return self._publish_file(temp, sha256, content_key, provider)
        finally:
            temp.unlink(missing_ok=True)

    def _publish_file(self, temp: Path, sha256: bytes, content_key: bytes,
                      provider: MemberIdentity) -> tuple[bytes, int]:
        blob = temp.read_bytes()
        box = containers.verify_container(blob, self._verifier, expected_owner=self._owner_of_container(blob))
        if box.provider.fingerprint != provider.fingerprint:
            raise IdentityMismatch(f"container signed by {box.provider.member_id}, uploaded by {provider.member_id}",
                                   expected=provider.member_id, got=box.provider.member_id)
        self._check_on_chain(box.policy)
        self._check_owner(box.policy.content_id, box.policy.version, box.provider.eth_address)
        box.decrypt(content_key)  # ContainerTampered unless this key opens this container (key commitment + GCM)
        policy = box.policy
        sealed = sp_store.seal_content_key(self._catalog_aead, policy.content_id, policy.version, content_key)
        del blob
        final = self._files().adopt(temp, sha256)
        with storage.session_scope(self.engine) as session:
            sp_store.add_catalog_item(session, content_id=policy.content_id, version=policy.version,
                                      container_path=str(final), container_sha256=sha256, sealed_key=sealed, policy_json={**policy.to_json(), "title": box.header.title},
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

    def _owner_of_container(self, blob: bytes) -> str | None:
        """The on-chain owner of the content id a container's header names (None without a chain)."""
        if self._policy_owner_lookup is None:
            return None
        policy = containers.ContainerHeader.decode(containers.decode_frame(blob).header).policy
        return self._policy_owner_lookup(policy.policy_id) or containers.ZERO_ADDRESS

    def _check_owner(self, content_id: bytes, version: int, signer: str) -> None:
        """The container's signer must be the content id's on-chain owner (when a chain is wired)."""
        if self._policy_owner_lookup is None:
            return
        owner = self._policy_owner_lookup(messages.policy_id(content_id, version))
        if owner != signer:
            raise ContentOwnerMismatch("the container is signed by another provider than the content id's owner",
                                       content_id=content_id, owner=owner, signer=signer)

    def catalog(self) -> list[CatalogItemOut]:
        with storage.session_scope(self.engine) as session:
            rows = sp_store.catalog_items(session)
            return [CatalogItemOut(content_id=to_hex(r.content_id), version=r.version, title=r.policy_json["title"],
                                   price=int(r.policy_json["price"]),
                                   policy_id=to_hex(messages.policy_id(r.content_id, r.version))) for r in rows]

    def download(self, content_id: bytes, version: int, peer: MemberIdentity,
                 agreement: Any) -> tuple[bytes, dict[str, Any]]:
        """`download_source` with the container read into memory (the JSON route, for small containers)."""
        source, wrapped = self.download_source(content_id, version, peer, agreement)
        return (source.read_bytes() if isinstance(source, Path) else source), wrapped

    def download_source(self, content_id: bytes, version: int, peer: MemberIdentity,
                        agreement: Any) -> tuple[Path | bytes, dict[str, Any]]:
        """The container (its file, or the bytes of a row from before container files) and its content key wrapped to the device's CA-attested agreement key (never its TLS
        key): the attestation must be the root's and name the TLS peer's own certificate (offchain.trust.agreement)."""
        if agreement is None:
            raise MalformedMessage("a download needs the device's agreement key attestation (`agreement`): content "
                                   "keys are no longer wrapped to the TLS key; re-provision the device's keystore",
                                   type="DownloadBody", field="agreement", reason="missing")
        attested = verify_attestation(agreement, self._verifier.root, peer)
        with storage.session_scope(self.engine) as session:
            row = sp_store.catalog_item(session, content_id, version)
            blob: Path | bytes = Path(row.container_path) if row.container_path else row.container_bytes
            sealed = row.content_key_encrypted
            provider = str(row.policy_json.get("provider", ""))
        self._check_owner(content_id, version, provider)  # never serve a container of a hijacked id
        content_key = sp_store.open_content_key(self._catalog_aead, content_id, version, sealed)
        wrapped = containers.wrap_content_key(content_key, content_id, attested.public_key_pem(), peer.member_id)
        return blob, wrapped.to_json()

    def prices(self, policy_ids: Sequence[bytes]) -> dict[bytes, int]:
        """Catalog price of each policy id this SP sells (others are absent)."""
        with storage.session_scope(self.engine) as session:
            return sp_store.catalog_prices(session, policy_ids)

    # --- usage intake -------------------------------------------------------------------------------------------
    def verify_device(self, body: UsageUploadBody, peer: MemberIdentity) -> MemberIdentity:
        """The attached certificate is a valid device certificate and the TLS peer's."""
        device = self._verifier.verify(canonical_certificate_pem(body.certificate), Role.DEVICE)
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
        """This SP is the receiver, one settle transaction can carry the batch, the serial is on chain and the
        uploader's, and every fee is the catalog price of its policy."""
        batch = upload.batch
        if batch.receiver != self.address:
            raise IdentityMismatch("usage batch names another receiver", expected=self.address, got=batch.receiver)
        check_batch_fits(batch.count, len(batch.policy_ids), self._settle_gas_budget)  # BatchTooLarge
        owner = None if self._serial_owner_lookup is None else self._serial_owner_lookup(batch.serial)
        if owner is None and self._serial_owner_lookup is not None:  # a pending issue or renew: nobody's yet
            raise NotFound("usage batch for a serial not recorded on chain; upload once its issue log is mined",
                           serial=batch.serial)
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
            if existing is not None and (existing.device != upload.device.eth_address
                                         or bytes(existing.device_sig) != upload.batch_signature):
                # the digest does not cover the signer: someone else's copy of this batch is not its receipt
                raise DuplicateMessage("this usage batch was received with another signature (another signer)",
                                       serial=batch.serial, first_seq=batch.first_seq, kind="UsageBatch",
                                       highest_received=None)
            if existing is not None:
                return UsageAck(receive_log_id=existing.receive_log_json["id"], acked_through_seq=last_seq,
                                receive_log=existing.receive_log_json["envelope"])
            self._check_continuity(session, batch, upload.device.eth_address)
            envelope = Envelope.seal(ReceiveLog(usage_batch=batch.struct_hash(), payer=upload.device.eth_address,
                                                received_at=now), self.domain, self._private_key, self._cert_pem)
            receive_id = to_hex(envelope.decode().id(self.domain))
            sp_store.store_upload(session, _log_rows(upload, now), sp_store.SpBatch(
                id=batch_id, device=upload.device.eth_address, serial=batch.serial, first_seq=batch.first_seq,
                count=batch.count,
                # batch_json carries the device certificate too: the CC needs it with the batch (certificate-carrying logs)
                batch_json={"usage_batch": batch.to_json(), "device_certificate": upload.device_certificate},
                device_sig=upload.batch_signature, receive_log_json={"id": receive_id, "envelope": envelope.to_json()},
                receiver_sig=envelope.signature_bytes(), status="pending", payload_hash=payload,
                created_at=now, updated_at=now))
        return UsageAck(receive_log_id=receive_id, acked_through_seq=last_seq, receive_log=envelope.to_json())

    def usage_acks(self, serial: bytes, from_seq: int, peer: MemberIdentity) -> UsageAcksResponse:
        """The signed receive logs of the batches the TLS peer itself uploaded for `serial` holding a seq >=
        `from_seq` (at most USAGE_ACKS_MAX, by first seq): how a device whose ack was lost (its re-formed batch was
        answered DuplicateMessage) gets its proof back. Only the serial's own device asks (IdentityMismatch, as
        for uploads), and only its own rows answer: a copy of its batch under another signer is never its receipt.
        NotFound when this device uploaded nothing from `from_seq` (or the serial is not on chain)."""
        owner = None if self._serial_owner_lookup is None else self._serial_owner_lookup(serial)
        if owner is None and self._serial_owner_lookup is not None:
            raise NotFound("no issue log with this serial is recorded on chain", serial=serial, seq=from_seq)
        if owner is not None and owner != peer.eth_address:
            raise IdentityMismatch("receive logs of a serial issued to another device", serial=serial,
                                   expected=owner, got=peer.eth_address)
        with storage.session_scope(self.engine) as session:
            rows = sp_store.device_batches_from(session, peer.eth_address, serial, from_seq, USAGE_ACKS_MAX)
        if not rows:
            raise NotFound("this device uploaded no usage batch of this serial from this seq", serial=serial,
                           seq=from_seq, device=peer.eth_address)
        return UsageAcksResponse(acks=[KeptReceiveLog(first_seq=first, count=count, receive_log_id=log["id"],
                                                      receive_log=log["envelope"]) for first, count, log in rows])

    def _check_continuity(self, session: Session, batch: UsageBatch, uploader: str) -> None:
        """Contiguous, non-overlapping batches per (device, serial): rows another device stored for this serial
        (a squatter's, before the serial was on chain) never block its own device; whose serial it is, is the
        chain's answer (check_terms)."""
        highest = sp_store.latest_usage_log(session, uploader, batch.serial)
        if highest is None:
            return
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
                            "device_signature": to_hex(r.device_sig),
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
            return [{"receive_log_id": r.receive_log_json["id"], "serial": to_hex(r.serial), "first_seq": r.first_seq,
                     "count": r.count, "error": r.reject_error, "message": r.reject_message,
                     "rejected_at": r.updated_at} for r in rows]


MAX_CERTIFICATE_PEM_CHARS = 16_384  # a device certificate is ~1 KB of PEM; padding beyond this is refused


def canonical_certificate_pem(text: str) -> str:
    """Exactly one PEM certificate of bounded size, re-encoded: MalformedMessage for anything else."""
    if len(text) > MAX_CERTIFICATE_PEM_CHARS:
        raise MalformedMessage(f"certificate of {len(text)} characters: at most {MAX_CERTIFICATE_PEM_CHARS}",
                               field="certificate", reason="size", value=len(text))
    if text.count("-----BEGIN") != 1 or not text.strip().startswith("-----BEGIN CERTIFICATE-----") \
            or not text.strip().endswith("-----END CERTIFICATE-----"):
        raise MalformedMessage("certificate must be exactly one PEM CERTIFICATE block and nothing else",
                               field="certificate", reason="pem")
    try:
        certificate = x509.load_pem_x509_certificate(text.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise MalformedMessage("certificate does not parse", field="certificate", reason="pem") from None
    return certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")


def upload_signature_args(body: UsageUploadBody, domain: Domain,
                          device: MemberIdentity) -> tuple[dict[str, Any], str, list[tuple[dict[str, Any], str]],
                                                           Domain, str]:
    """The arguments of `check_usage_signatures` for one upload: plain data, cheap to send to another process."""
    return (body.batch, body.batch_signature, [(item.log, item.signature) for item in body.logs], domain,
            device.eth_address)


def verified_upload(checked: CheckedUsage, device: MemberIdentity, certificate: str) -> VerifiedUpload:
    """The upload to store and forward: with the canonical re-encoding of the certificate, never the text the
    peer sent (padding around the block, extra blocks)."""
    return VerifiedUpload(checked.batch, checked.batch_signature, checked.logs, checked.signatures, device,
                          canonical_certificate_pem(certificate), checked.log_json, checked.payload_hashes)


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


__all__ = ["ServiceProvider", "CheckedUsage", "VerifiedUpload", "check_usage_signatures", "upload_signature_args",
           "verified_upload", "PolicyHashLookup", "SerialOwnerLookup"]
