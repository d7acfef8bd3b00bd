"""The service provider's tables and repository: usage logs, usage batches with their receive logs, and the
catalog of secure containers.

Every SP table is declared here, on `SpTable` (its own MetaData: `create_schema` creates exactly these). It
stores what the SP decided and verifies no signature. Content keys are stored sealed with AES-256-GCM under the
settings' `catalog_key`, bound to their (content id, version); the SP never decrypts content itself.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import (BigInteger, CheckConstraint, Engine, Integer, LargeBinary, String, Text, UniqueConstraint,
                        func, insert, select, update)
from sqlalchemy.orm import Mapped, Session, defer, mapped_column
from sqlalchemy.types import JSON

from offchain.core import messages
from offchain.core.errors import DuplicateMessage, MemberSetupError, NotFound
from offchain.storage import engine as storage
from offchain.storage.columns import Address, Base, Bytes32, new_metadata, status_check
from offchain.storage.session import get_row, transition


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
    # keyed by (device, serial): another device's rows for a serial never block its own device's logs
    __table_args__ = (UniqueConstraint("device", "serial", "seq", name="uq_sp_usage_device_serial_seq"),)
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
        UniqueConstraint("device", "serial", "first_seq", name="uq_sp_batch_device_serial_seq"),
    )
    id: Mapped[bytes] = mapped_column(Bytes32, primary_key=True)
    device: Mapped[str] = mapped_column(Address)  # the batch's signer (the digest `id` does not cover it)
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
    # keccak(abi.encode(content_id, uint32 version)): what usage logs name, so a price look-up reads only its rows
    policy_id: Mapped[bytes] = mapped_column(Bytes32, index=True)
    container_path: Mapped[str | None] = mapped_column(String(500))  # the content-addressed file (container_dir)
    container_sha256: Mapped[bytes | None] = mapped_column(Bytes32)  # of the file; rows with bytes predate files
    container_bytes: Mapped[bytes | None] = mapped_column(LargeBinary)
    content_key_encrypted: Mapped[bytes] = mapped_column(LargeBinary)
    policy_json: Mapped[dict[str, Any]] = mapped_column(JSON)
    policy_hash: Mapped[bytes] = mapped_column(Bytes32)
    created_at: Mapped[int] = mapped_column(BigInteger)



# --- repository functions (one session each; the agent owns the transaction) --------------------------------------
_SP_BATCH_FLOW = {"pending": ("forwarded", "acked", "rejected"), "forwarded": ("acked", "pending", "rejected")}
OPEN_BATCH_STATUSES = ("pending", "forwarded")  # neither accepted nor refused for good by the CC


def catalog_aad(content_id: bytes, version: int) -> bytes:
    """The AES-GCM associated data of a sealed content key: content id || version (4 bytes, big-endian), so a
    sealed key moved to another catalog row does not open."""
    return content_id + version.to_bytes(4, "big")


def seal_content_key(aead: AESGCM, content_id: bytes, version: int, content_key: bytes) -> bytes:
    """nonce (12 bytes) || AES-256-GCM(content_key) bound to (content_id, version): what `sp_catalog` stores."""
    nonce = os.urandom(12)
    return nonce + aead.encrypt(nonce, content_key, catalog_aad(content_id, version))


def open_content_key(aead: AESGCM, content_id: bytes, version: int, sealed: bytes) -> bytes:
    """The content key of a catalog row; ConfigError when `aead` (the settings' catalog_key) cannot open it."""
    try:
        return aead.decrypt(sealed[:12], sealed[12:], catalog_aad(content_id, version))
    except InvalidTag:
        raise MemberSetupError("catalog key cannot open a stored content key (catalog_key changed?)",
                               content_id=content_id, version=version) from None


def add_catalog_item(session: Session, *, content_id: bytes, version: int, sealed_key: bytes,
                     policy_json: dict[str, Any], policy_hash: bytes, now: int, container: bytes | None = None,
                     container_path: str | None = None, container_sha256: bytes | None = None) -> bool:
    """Offer a container once per (content id, version); True when new. The same container again is a no-op,
    another one under the same id and version is DuplicateMessage. The SP stores a file (`container_path` and its
    `container_sha256`); `container` (bytes in the row) is what rows from before container files hold."""
    existing = session.get(SpCatalogItem, (content_id, version),
                           options=[defer(SpCatalogItem.container_bytes)])
    if existing is not None:
        same = existing.container_sha256 == container_sha256 if container_sha256 is not None \
            else existing.container_bytes == container
        if existing.policy_hash != policy_hash or not same:
            raise DuplicateMessage("this content id and version is already published with another container",
                                   content_id=content_id, version=version)
        return False
    session.add(SpCatalogItem(content_id=content_id, version=version,
                              policy_id=messages.policy_id(content_id, version), container_bytes=container,
                              container_path=container_path, container_sha256=container_sha256,
                              content_key_encrypted=sealed_key, policy_json=policy_json, policy_hash=policy_hash,
                              created_at=now))
    return True


def catalog_item(session: Session, content_id: bytes, version: int) -> SpCatalogItem:
    """One catalog row (NotFound when this SP does not offer it)."""
    row = session.get(SpCatalogItem, (content_id, version))
    if row is None:
        raise NotFound("no such content in the catalog", content_id=content_id, version=version)
    return row


def catalog_items(session: Session) -> list[SpCatalogItem]:
    """Every catalog row, oldest first (the SP's listing and its price list), without the container bytes: the
    listing and every usage upload's price look-up must not read megabytes per title (only `catalog_item` does)."""
    return list(session.scalars(select(SpCatalogItem).options(defer(SpCatalogItem.container_bytes, raiseload=True))
                                .order_by(SpCatalogItem.created_at)))


def catalog_prices(session: Session, policy_ids: Sequence[bytes]) -> dict[bytes, int]:
    """The price of each of `policy_ids` this SP sells (others absent): one query over the policy id index that
    reads only the rows named, whatever the catalog's size."""
    wanted = sorted(set(policy_ids))
    if not wanted:
        return {}
    rows = session.execute(select(SpCatalogItem.policy_id, SpCatalogItem.policy_json)
                           .where(SpCatalogItem.policy_id.in_(wanted)))
    return {bytes(pid): int(policy["price"]) for pid, policy in rows}


def find_batch(session: Session, batch_id: bytes) -> SpBatch | None:
    return session.get(SpBatch, batch_id)


def latest_usage_log(session: Session, device: str, serial: bytes) -> int | None:
    """The highest seq of the usage logs `device` uploaded for `serial`, or None (continuity is per device and
    serial: rows another device stored for this serial say nothing about this device's logs)."""
    row = session.execute(select(SpUsageLog.seq).where(SpUsageLog.device == device, SpUsageLog.serial == serial)
                          .order_by(SpUsageLog.seq.desc()).limit(1)).first()
    return None if row is None else int(row[0])


def device_batches_from(session: Session, device: str, serial: bytes, from_seq: int,
                        limit: int) -> list[tuple[int, int, dict[str, Any]]]:
    """(first seq, count, receive log) of the batches `device` uploaded for `serial` that hold a seq >= `from_seq`,
    by first seq, at most `limit`: only this device's own rows (another signer's never answer it). Any status:
    a receipt stays a receipt whatever the CC did with the batch."""
    rows = session.execute(select(SpBatch.first_seq, SpBatch.count, SpBatch.receive_log_json)
                           .where(SpBatch.device == device, SpBatch.serial == serial,
                                  SpBatch.first_seq + SpBatch.count > from_seq,
                                  SpBatch.receive_log_json.is_not(None))
                           .order_by(SpBatch.first_seq).limit(limit))
    return [(int(first), int(count), receive_log) for first, count, receive_log in rows]


def store_upload(session: Session, log_rows: Sequence[dict[str, Any]], batch: SpBatch) -> None:
    """The logs of one upload (one bulk INSERT) and its batch row, in the caller's transaction."""
    if log_rows:
        session.execute(insert(SpUsageLog), list(log_rows))
    session.add(batch)


def open_batches(session: Session, limit: int) -> list[SpBatch]:
    """Batches the CC has neither accepted nor refused for good, oldest first (what the forwarder sends)."""
    return list(session.scalars(select(SpBatch).where(SpBatch.status.in_(OPEN_BATCH_STATUSES))
                                .order_by(SpBatch.created_at, SpBatch.serial, SpBatch.first_seq).limit(limit)))


def ack_batches(session: Session, receive_log_ids: Sequence[str], now: int) -> int:
    """Mark `acked` the open batches whose receive log id the CC accepted; returns how many. Reads only the id
    and receive log of the open batches (never their usage batches, kilobytes each), then updates by key."""
    wanted = set(receive_log_ids)
    if not wanted:
        return 0
    open_rows = session.execute(select(SpBatch.id, SpBatch.receive_log_json)
                                .where(SpBatch.status.in_(OPEN_BATCH_STATUSES)))
    done = [bytes(batch_id) for batch_id, receive_log in open_rows if (receive_log or {}).get("id") in wanted]
    if done:
        session.execute(update(SpBatch).where(SpBatch.id.in_(done), SpBatch.status.in_(OPEN_BATCH_STATUSES))
                        .values(status="acked", updated_at=now))
    return len(done)


def reject_batch(session: Session, batch_id: bytes, error: str, message: str, now: int) -> None:
    """Park a batch the CC refused for good (`rejected`, with the CC's error code and message)."""
    row = get_row(session, SpBatch, batch_id, "usage_batch")
    transition(row, "rejected", _SP_BATCH_FLOW, "usage_batch")
    row.updated_at, row.reject_error, row.reject_message = now, error, message


def batch_status_counts(session: Session) -> dict[str, int]:
    """How many batches are in each status (every status listed, zero included): one GROUP BY, not a row each."""
    counts = dict(session.execute(select(SpBatch.status, func.count()).group_by(SpBatch.status)).all())
    return {status: int(counts.get(status, 0)) for status in SP_BATCH_STATUSES}


def rejected_batches(session: Session, limit: int) -> list[SpBatch]:
    """The latest batches the CC refused for good."""
    return list(session.scalars(select(SpBatch).where(SpBatch.status == "rejected")
                                .order_by(SpBatch.updated_at.desc()).limit(limit)))
