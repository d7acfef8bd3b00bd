"""The service provider's tables and repository: usage logs, usage batches with their receive logs, and the
catalog of secure containers.

Every SP table is declared here, on `SpTable` (its own MetaData: `create_schema` creates exactly these). It
stores what the SP decided and verifies no signature.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import BigInteger, CheckConstraint, Engine, Integer, LargeBinary, String, Text, UniqueConstraint, select
from sqlalchemy.orm import Mapped, Session, mapped_column
from sqlalchemy.types import JSON

from offchain.core.errors import ContainerTampered, DuplicateMessage
from offchain.storage import engine as storage
from offchain.storage.columns import Address, Base, Bytes32, new_metadata, status_check
from offchain.storage.session import get_row, insert_idempotent, payload_hash, transition


class SpTable(Base):
    """Abstract base of the service provider's tables (their own MetaData)."""

    __abstract__ = True
    metadata = new_metadata()


def create_schema(engine: Engine) -> None:
    """Create the SP tables that do not exist yet (idempotent)."""
    storage.create_schema(engine, SpTable.metadata)


# --- tables --------------------------------------------------------------------------------------------------------
class SpUsageLog(SpTable):
    __tablename__ = "sp_usage_logs"
    __table_args__ = (UniqueConstraint("serial", "seq", name="uq_sp_usage_serial_seq"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device: Mapped[str] = mapped_column(Address, index=True)
    serial: Mapped[bytes] = mapped_column(Bytes32)
    seq: Mapped[int] = mapped_column(BigInteger)
    log_json: Mapped[dict[str, Any]] = mapped_column(JSON)
    signature: Mapped[bytes] = mapped_column(LargeBinary(65))
    payload_hash: Mapped[bytes] = mapped_column(Bytes32)
    received_at: Mapped[int] = mapped_column(BigInteger)


SP_BATCH_STATUSES = ("pending", "forwarded", "acked", "rejected")  # rejected: the CC refused it for good


class SpBatch(SpTable):
    """A device-signed usage batch (id = its EIP-712 digest) and the SP's receive log, until the CC acks it."""

    __tablename__ = "sp_batches"
    __table_args__ = (
        status_check("status", SP_BATCH_STATUSES),
        UniqueConstraint("serial", "first_seq", name="uq_sp_batch_serial_seq"),
    )
    id: Mapped[bytes] = mapped_column(Bytes32, primary_key=True)
    serial: Mapped[bytes] = mapped_column(Bytes32)
    first_seq: Mapped[int] = mapped_column(BigInteger)
    count: Mapped[int] = mapped_column(Integer)
    batch_json: Mapped[dict[str, Any]] = mapped_column(JSON)
    device_sig: Mapped[bytes] = mapped_column(LargeBinary(65))
    receive_log_json: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    receiver_sig: Mapped[bytes | None] = mapped_column(LargeBinary(65))
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    payload_hash: Mapped[bytes] = mapped_column(Bytes32)
    created_at: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[int] = mapped_column(BigInteger)
    reject_error: Mapped[str | None] = mapped_column(String(64))  # the CC's error code, when `rejected`
    reject_message: Mapped[str | None] = mapped_column(Text)


class SpCatalogItem(SpTable):
    """A secure container on offer. The content key is AES-256-GCM encrypted with the settings' catalog key."""

    __tablename__ = "sp_catalog"
    __table_args__ = (
        CheckConstraint(
            "(container_path IS NULL) <> (container_bytes IS NULL)", name="ck_catalog_one_container_source"
        ),
    )
    content_id: Mapped[bytes] = mapped_column(Bytes32, primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    container_path: Mapped[str | None] = mapped_column(String(500))
    container_bytes: Mapped[bytes | None] = mapped_column(LargeBinary)
    content_key_encrypted: Mapped[bytes] = mapped_column(LargeBinary)
    policy_json: Mapped[dict[str, Any]] = mapped_column(JSON)
    policy_hash: Mapped[bytes] = mapped_column(Bytes32)
    created_at: Mapped[int] = mapped_column(BigInteger)



# --- repository functions ----------------------------------------------------------------------------------------
def record_sp_usage_log(
    session: Session, device: str, serial: bytes, seq: int, log_json: dict[str, Any], signature: bytes, now: int
) -> tuple[SpUsageLog, bool]:
    """Store a device's usage log once per (serial, seq); another log at the same position raises."""
    digest = payload_hash({"device": device, "log": log_json, "signature": signature})
    row = SpUsageLog(
        device=device, serial=serial, seq=seq, log_json=log_json, signature=signature,
        payload_hash=digest, received_at=now,
    )
    return insert_idempotent(session, row, {"serial": serial, "seq": seq}, "usage_log")


def record_sp_batch(
    session: Session, batch_id: bytes, batch_json: dict[str, Any], device_sig: bytes, now: int,
    *, serial: bytes, first_seq: int, count: int,
) -> tuple[SpBatch, bool]:
    """Store a usage batch once by its digest; another batch at the same (serial, first_seq) raises."""
    digest = payload_hash({"batch": batch_json, "device_sig": device_sig})
    row = SpBatch(
        id=batch_id, serial=serial, first_seq=first_seq, count=count, batch_json=batch_json,
        device_sig=device_sig, status="pending", payload_hash=digest, created_at=now, updated_at=now,
    )
    by_position = session.scalars(select(SpBatch).filter_by(serial=serial, first_seq=first_seq)).one_or_none()
    if by_position is not None and by_position.id != batch_id:
        raise DuplicateMessage(
            "another usage batch already starts at this sequence number",
            kind="usage_batch", key=f"serial=0x{serial.hex()},first_seq={first_seq}", stored_id=by_position.id,
        )
    return insert_idempotent(session, row, {"id": batch_id}, "usage_batch")


def attach_receive_log(
    session: Session, batch_id: bytes, receive_log_json: dict[str, Any], receiver_sig: bytes, now: int
) -> SpBatch:
    """Attach the SP's signed receive log to a batch (once; a different one raises DuplicateMessage)."""
    row = get_row(session, SpBatch, batch_id, "usage_batch")
    if row.receive_log_json is not None and (row.receive_log_json, row.receiver_sig) != (
        receive_log_json, receiver_sig
    ):
        raise DuplicateMessage("batch already has another receive log", kind="usage_batch", key=batch_id)
    row.receive_log_json, row.receiver_sig, row.updated_at = receive_log_json, receiver_sig, now
    return row


_SP_BATCH_FLOW = {"pending": ("forwarded", "acked", "rejected"), "forwarded": ("acked", "pending", "rejected")}


def sp_batches_with_status(session: Session, status: str, limit: int) -> list[SpBatch]:
    """Batches in one status, oldest first (the forwarder reads `pending`)."""
    query = select(SpBatch).where(SpBatch.status == status).order_by(SpBatch.created_at, SpBatch.serial)
    return list(session.scalars(query.limit(limit)))


def set_sp_batch_status(session: Session, batch_ids: Sequence[bytes], status: str, now: int) -> None:
    """forwarded after sending, acked when the CC accepted, back to pending when forwarding failed."""
    for batch_id in batch_ids:
        row = get_row(session, SpBatch, batch_id, "usage_batch")
        transition(row, status, _SP_BATCH_FLOW, "usage_batch")
        row.updated_at = now


@dataclass(frozen=True)
class CatalogEntry:
    """A catalog item with its content key decrypted (keep it in memory only)."""

    content_id: bytes
    version: int
    container_path: str | None
    container_bytes: bytes | None
    content_key: bytes
    policy_json: dict[str, Any]
    policy_hash: bytes


def _catalog_aad(content_id: bytes, version: int) -> bytes:
    return b"clearhouse-sp-catalog|" + content_id + version.to_bytes(4, "big")


def put_catalog_item(session: Session, entry: CatalogEntry, at_rest_key: bytes, now: int) -> SpCatalogItem:
    """Offer a container; its content key is sealed with AES-256-GCM bound to (content_id, version)."""
    nonce = os.urandom(12)
    sealed = nonce + AESGCM(at_rest_key).encrypt(
        nonce, entry.content_key, _catalog_aad(entry.content_id, entry.version)
    )
    row = SpCatalogItem(
        content_id=entry.content_id, version=entry.version, container_path=entry.container_path,
        container_bytes=entry.container_bytes, content_key_encrypted=sealed, policy_json=entry.policy_json,
        policy_hash=entry.policy_hash, created_at=now,
    )
    session.add(row)
    session.flush()
    return row


def get_catalog_item(session: Session, content_id: bytes, version: int, at_rest_key: bytes) -> CatalogEntry:
    """Read a catalog item and decrypt its content key (ContainerTampered if the sealed key does not open)."""
    row = get_row(session, SpCatalogItem, (content_id, version), "catalog_item")
    sealed = row.content_key_encrypted
    try:
        content_key = AESGCM(at_rest_key).decrypt(sealed[:12], sealed[12:], _catalog_aad(content_id, version))
    except Exception as exc:  # cryptography raises InvalidTag; a wrong key looks the same
        raise ContainerTampered(
            "stored content key does not decrypt: wrong catalog_key or tampered row",
            content_id=content_id, version=version,
        ) from exc
    return CatalogEntry(
        content_id, version, row.container_path, row.container_bytes, content_key, row.policy_json, row.policy_hash
    )


def latest_catalog_items(session: Session) -> list[SpCatalogItem]:
    """Every catalog row, by content id and version (the SP's listing)."""
    return list(session.scalars(select(SpCatalogItem).order_by(SpCatalogItem.content_id, SpCatalogItem.version)))
