"""SQLAlchemy models, engine and small typed repository functions of the CC, SP and bank services.

Money rows are append-only (a correction is a new row) and unique constraints make every effect idempotent:
the same id with the same payload hash returns the stored row, with another payload raises DuplicateMessage.
This module stores what services decide; it does not verify signatures. The bank's ledger logic is in ledger.py.

Concurrency strategy. SQLite: every transaction starts with `BEGIN IMMEDIATE`, so writers are serialized and
a read-then-write never meets a stale snapshot (busy_timeout waits for the lock). PostgreSQL: READ COMMITTED
plus (1) unique constraints on idempotency keys, checked inside the same transaction as the effect, so a racing
duplicate fails with IntegrityError and is re-read, and (2) `SELECT ... FOR UPDATE` on the row whose balance
is debited (see `lock_account` in ledger.py) so that two debits cannot both pass a balance check. We do not use
SERIALIZABLE: it would be correct too, but every caller would have to retry serialization failures.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Dialect,
    Engine,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    select,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.pool import StaticPool
from sqlalchemy.types import JSON, TypeDecorator

from offchain.core.errors import ContainerTampered, DuplicateMessage, InvalidAmount, InvalidTransition, NotFound

SQLITE_INT_MAX = 2**63 - 1
MONEY_MAX = 10**38 - 1  # Numeric(38,0); uint96 (< 8e28) always fits


# --- engine and sessions ----------------------------------------------------------------------------------
def make_engine(url: str, *, echo: bool = False) -> Engine:
    """An Engine for `url`: SQLite (WAL, foreign keys, busy timeout, BEGIN IMMEDIATE) or PostgreSQL (psycopg2)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(url, parsed.database, echo)
    if parsed.get_backend_name() == "postgresql":
        if parsed.drivername == "postgresql":
            url = parsed.set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)
        return create_engine(
            url, echo=echo, pool_size=5, max_overflow=5, pool_pre_ping=True, pool_recycle=1800
        )
    return create_engine(url, echo=echo)


def _sqlite_engine(url: str, database: str | None, echo: bool) -> Engine:
    in_memory = database in (None, "", ":memory:")
    if in_memory:
        engine = create_engine(
            url, echo=echo, poolclass=StaticPool, connect_args={"check_same_thread": False}
        )
    else:
        Path(database).parent.mkdir(parents=True, exist_ok=True)  # type: ignore[arg-type]
        engine = create_engine(url, echo=echo, connect_args={"timeout": 30, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # let us emit BEGIN ourselves (pysqlite's own BEGIN is deferred)
        cursor = dbapi_connection.cursor()
        if not in_memory:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def create_schema(engine: Engine) -> None:
    """Create every table that does not exist yet (idempotent; migrations are out of scope)."""
    Base.metadata.create_all(engine)


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """One transaction: commits on success, rolls back on any exception; objects stay readable afterwards."""
    session = Session(engine, expire_on_commit=False)
    try:
        with session.begin():
            yield session
    finally:
        session.close()


def payload_hash(payload: Any) -> bytes:
    """SHA-256 of the canonical JSON of `payload` (sorted keys, no spaces): the idempotency fingerprint."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=_json_default)
    return hashlib.sha256(canonical.encode()).digest()


def _json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return "0x" + bytes(value).hex()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# --- column types -----------------------------------------------------------------------------------------
class Money(TypeDecorator[int]):
    """Integer minor units: NUMERIC(38,0) on PostgreSQL, INTEGER (int64) on SQLite; always `int` in Python."""

    impl = Numeric(38, 0)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(BigInteger())
        return dialect.type_descriptor(Numeric(38, 0))

    def process_bind_param(self, value: int | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidAmount("money must be an int in minor units", value=repr(value))
        limit = SQLITE_INT_MAX if dialect.name == "sqlite" else MONEY_MAX
        if abs(value) > limit:
            raise InvalidAmount("amount exceeds the database column", value=value, limit=limit)
        return value if dialect.name == "sqlite" else Decimal(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> int | None:
        return None if value is None else int(value)


def money(value: Any) -> int:
    """Convert an aggregate (SUM may return Decimal, int or None) to int minor units."""
    return 0 if value is None else int(value)


Bytes32 = LargeBinary(32)
Address = String(42)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, bytes: LargeBinary}


def _status_check(column: str, values: Sequence[str]) -> CheckConstraint:
    allowed = ", ".join(f"'{v}'" for v in values)
    return CheckConstraint(f"{column} IN ({allowed})", name=f"ck_{column}_values")


# --- clearing center --------------------------------------------------------------------------------------
class User(Base):
    __tablename__ = "users"
    user_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    user_id_hash: Mapped[bytes] = mapped_column(Bytes32, unique=True)
    display_name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[int] = mapped_column(BigInteger)


class Device(Base):
    __tablename__ = "devices"
    address: Mapped[str] = mapped_column(Address, primary_key=True)
    member_id: Mapped[str] = mapped_column(String(128), unique=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.user_id"), index=True)
    registered_at: Mapped[int] = mapped_column(BigInteger)


ISSUE_STATUSES = ("open", "closed")


class IssueLogRow(Base):
    """One signed issue log. A top-up in place re-signs the same serial, so the key is (serial, revision)."""

    __tablename__ = "issue_logs"
    __table_args__ = (_status_check("status", ISSUE_STATUSES),)
    serial: Mapped[bytes] = mapped_column(Bytes32, primary_key=True)
    revision: Mapped[int] = mapped_column(Integer, primary_key=True, default=0)
    device: Mapped[str] = mapped_column(ForeignKey("devices.address"), index=True)
    user_id_hash: Mapped[bytes] = mapped_column(Bytes32, index=True)
    cap: Mapped[int] = mapped_column(Money)
    expires_at: Mapped[int] = mapped_column(BigInteger)
    previous_serial: Mapped[bytes | None] = mapped_column(Bytes32)
    carried: Mapped[int] = mapped_column(Money)
    new_money: Mapped[int] = mapped_column(Money)
    status: Mapped[str] = mapped_column(String(16), default="open")
    cc_signature: Mapped[bytes] = mapped_column(LargeBinary(65))
    issue_log_json: Mapped[dict[str, Any]] = mapped_column(JSON)
    payload_hash: Mapped[bytes] = mapped_column(Bytes32)
    anchored_tx: Mapped[str | None] = mapped_column(String(66))
    created_at: Mapped[int] = mapped_column(BigInteger)


BALANCE_KINDS = ("deposit", "allocation", "carry")


class UserBalanceEntry(Base):
    """Append-only user balance database (claim 4): deposits credited, new money allocated, amounts carried."""

    __tablename__ = "user_balance_entries"
    __table_args__ = (_status_check("kind", BALANCE_KINDS), CheckConstraint("amount > 0", name="ck_amount_pos"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    idempotency_key: Mapped[str] = mapped_column(String(200), unique=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.user_id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    amount: Mapped[int] = mapped_column(Money)
    serial: Mapped[bytes | None] = mapped_column(Bytes32)
    reference: Mapped[str | None] = mapped_column(String(200))
    payload_hash: Mapped[bytes] = mapped_column(Bytes32)
    created_at: Mapped[int] = mapped_column(BigInteger)


SETTLEMENT_STATUSES = ("pending", "sent", "confirmed", "failed")


class SettlementOutbox(Base):
    """One settle() transaction: built, signed and stored before it is sent, so a crash can resend it."""

    __tablename__ = "settlement_outbox"
    __table_args__ = (_status_check("status", SETTLEMENT_STATUSES),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    tx_hash: Mapped[str | None] = mapped_column(String(66), unique=True)
    nonce: Mapped[int | None] = mapped_column(BigInteger)
    raw_tx: Mapped[bytes | None] = mapped_column(LargeBinary)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[int] = mapped_column(BigInteger)


RECEIVE_STATUSES = ("accepted", "submitted", "settled", "rejected")


class ReceiveLogRow(Base):
    """A receive log (SP-signed) with its usage batch (device-signed); id = the ReceiveLog EIP-712 digest."""

    __tablename__ = "receive_logs"
    __table_args__ = (
        _status_check("status", RECEIVE_STATUSES),
        Index("ix_receive_logs_serial_seq", "serial", "first_seq"),
    )
    id: Mapped[bytes] = mapped_column(Bytes32, primary_key=True)
    sp_address: Mapped[str] = mapped_column(Address, index=True)
    payer: Mapped[str] = mapped_column(Address)
    serial: Mapped[bytes] = mapped_column(Bytes32)
    first_seq: Mapped[int] = mapped_column(BigInteger)
    count: Mapped[int] = mapped_column(Integer)
    total: Mapped[int] = mapped_column(Money)
    usage_batch_json: Mapped[dict[str, Any]] = mapped_column(JSON)
    device_sig: Mapped[bytes] = mapped_column(LargeBinary(65))
    receiver_sig: Mapped[bytes] = mapped_column(LargeBinary(65))
    received_at: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), default="accepted", index=True)
    settlement_id: Mapped[int | None] = mapped_column(ForeignKey("settlement_outbox.id"), index=True)
    reject_reason: Mapped[str | None] = mapped_column(Text)
    payload_hash: Mapped[bytes] = mapped_column(Bytes32)


TRANSFER_STATUSES = ("requested", "sent_to_bank", "confirmed")


class TransferRequestRow(Base):
    """A transfer request the contract assigned (id = requestId), followed until the bank confirms it."""

    __tablename__ = "transfer_requests"
    __table_args__ = (_status_check("status", TRANSFER_STATUSES), CheckConstraint("amount > 0", name="ck_tr_pos"))
    request_id: Mapped[bytes] = mapped_column(Bytes32, primary_key=True)
    payee: Mapped[str] = mapped_column(Address, index=True)
    amount: Mapped[int] = mapped_column(Money)
    status: Mapped[str] = mapped_column(String(16), default="requested", index=True)
    bank_ref: Mapped[bytes | None] = mapped_column(Bytes32)
    tx_hash: Mapped[str | None] = mapped_column(String(66))
    created_at: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[int] = mapped_column(BigInteger)


# --- service provider -------------------------------------------------------------------------------------
class SpUsageLog(Base):
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


class SpBatch(Base):
    """A device-signed usage batch (id = its EIP-712 digest) and the SP's receive log, until the CC acks it."""

    __tablename__ = "sp_batches"
    __table_args__ = (
        _status_check("status", SP_BATCH_STATUSES),
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


class SpCatalogItem(Base):
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


# --- bank ledger (logic in offchain/ledger.py) ------------------------------------------------------------
class LedgerAccount(Base):
    __tablename__ = "ledger_accounts"
    account_id: Mapped[str] = mapped_column(String(120), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    opened_at: Mapped[int] = mapped_column(BigInteger)


class JournalEntry(Base):
    """One balanced business event; `idempotency_key` is the sender's id (deposit id, transfer request id)."""

    __tablename__ = "journal_entries"
    __table_args__ = (_status_check("kind", ("open", "deposit", "transfer", "correction")),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    idempotency_key: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(16), index=True)
    payload_hash: Mapped[bytes] = mapped_column(Bytes32)
    bank_ref: Mapped[bytes] = mapped_column(Bytes32, unique=True)
    external_ref: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[int] = mapped_column(BigInteger)


class Posting(Base):
    """One leg of a journal entry: positive raises the holder's balance, negative lowers it; legs sum to zero.

    external:cash is the counter-account of money entering the system, so its balance is minus all deposits.
    """

    __tablename__ = "postings"
    __table_args__ = (CheckConstraint("amount <> 0", name="ck_posting_nonzero"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    entry_id: Mapped[int] = mapped_column(ForeignKey("journal_entries.id"), index=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("ledger_accounts.account_id"), index=True)
    amount: Mapped[int] = mapped_column(Money)


# --- repository helpers: idempotency ----------------------------------------------------------------------
def _insert_idempotent(session: Session, row: Any, key: dict[str, Any], what: str) -> tuple[Any, bool]:
    """Insert `row` unless a row with the same key exists: same payload hash -> (existing, False), else raise.

    The insert runs in a SAVEPOINT so that losing a race on the unique key (PostgreSQL) leaves the caller's
    transaction usable; the winner's row is then re-read and compared like any other replay.
    """
    model = type(row)
    existing = session.scalars(select(model).filter_by(**key)).one_or_none()
    if existing is None:
        try:
            with session.begin_nested():
                session.add(row)
            return row, True
        except IntegrityError:
            existing = session.scalars(select(model).filter_by(**key)).one_or_none()
            if existing is None:
                raise
    if existing.payload_hash != row.payload_hash:
        raise DuplicateMessage(
            f"{what} {_show(key)} was already stored with a different payload; use a new id for a new effect",
            kind=what,
            key=_show(key),
            stored_hash=existing.payload_hash,
            got_hash=row.payload_hash,
        )
    return existing, False


def require_money(value: Any, field: str, *, positive: bool = False) -> int:
    """Check an amount before it reaches SQL (where the Money column would wrap the error in StatementError)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < (1 if positive else 0) or value > MONEY_MAX:
        raise InvalidAmount(f"{field} must be a {'positive ' if positive else ''}int in minor units", field=field,
                            value=repr(value))
    return value


def _show(key: dict[str, Any]) -> str:
    return ",".join(f"{k}={'0x' + v.hex() if isinstance(v, bytes) else v}" for k, v in key.items())


def _transition(row: Any, new_status: str, allowed: dict[str, tuple[str, ...]], what: str) -> None:
    """Move `row.status` forward along `allowed`; staying put is a no-op; anything else is InvalidTransition."""
    if row.status == new_status:
        return
    if new_status not in allowed.get(row.status, ()):
        raise InvalidTransition(
            f"{what} cannot go from {row.status} to {new_status}", kind=what, current=row.status, wanted=new_status
        )
    row.status = new_status


def _get(session: Session, model: type[Any], ident: Any, what: str) -> Any:
    row = session.get(model, ident)
    if row is None:
        shown = "0x" + ident.hex() if isinstance(ident, bytes) else str(ident)
        raise NotFound(f"unknown {what} {shown}", kind=what, id=shown)
    return row


# --- repository helpers: clearing center ------------------------------------------------------------------
def add_user(session: Session, user_id: str, user_id_hash: bytes, display_name: str, now: int) -> User:
    """Register a user once; the same user again is a no-op, a different hash or name is DuplicateMessage."""
    existing = session.get(User, user_id)
    if existing is None:
        user = User(user_id=user_id, user_id_hash=user_id_hash, display_name=display_name, created_at=now)
        session.add(user)
        session.flush()
        return user
    if (existing.user_id_hash, existing.display_name) != (user_id_hash, display_name):
        raise DuplicateMessage(f"user {user_id} exists with other data", kind="user", key=user_id)
    return existing


def add_device(session: Session, address: str, member_id: str, user_id: str, now: int) -> Device:
    """Bind a device address to a member id and a user once; rebinding to someone else is DuplicateMessage."""
    existing = session.get(Device, address)
    if existing is None:
        _get(session, User, user_id, "user")
        device = Device(address=address, member_id=member_id, user_id=user_id, registered_at=now)
        session.add(device)
        session.flush()
        return device
    if (existing.member_id, existing.user_id) != (member_id, user_id):
        raise DuplicateMessage(f"device {address} is bound to another member or user", kind="device", key=address)
    return existing


def device_user(session: Session, address: str) -> User:
    """The user owning device `address` (NotFound when the device is unknown)."""
    device = _get(session, Device, address, "device")
    return _get(session, User, device.user_id, "user")


@dataclass(frozen=True)
class IssueLogRecord:
    """What the CC stores for one signed issue log (revision > 0: a top-up in place of the same serial)."""

    serial: bytes
    revision: int
    device: str
    user_id_hash: bytes
    cap: int
    expires_at: int
    previous_serial: bytes | None
    carried: int
    new_money: int
    cc_signature: bytes
    issue_log_json: dict[str, Any]


def record_issue_log(session: Session, record: IssueLogRecord, now: int) -> tuple[IssueLogRow, bool]:
    """Store an issue log idempotently by (serial, revision); returns (row, created)."""
    for name in ("cap", "carried", "new_money"):
        require_money(getattr(record, name), name)
    fields = {k: getattr(record, k) for k in IssueLogRecord.__dataclass_fields__}
    row = IssueLogRow(**fields, payload_hash=payload_hash(fields), status="open", created_at=now)
    return _insert_idempotent(session, row, {"serial": record.serial, "revision": record.revision}, "issue_log")


def latest_issue_log(session: Session, serial: bytes) -> IssueLogRow | None:
    """The highest revision of `serial`, or None."""
    query = select(IssueLogRow).where(IssueLogRow.serial == serial).order_by(IssueLogRow.revision.desc()).limit(1)
    return session.scalars(query).first()


def close_issue_log(session: Session, serial: bytes) -> None:
    """Mark every revision of `serial` closed (renewal with a new serial or after expiry)."""
    session.execute(update(IssueLogRow).where(IssueLogRow.serial == serial).values(status="closed"))


def mark_issue_log_anchored(session: Session, serial: bytes, revision: int, tx_hash: str) -> None:
    """Remember the transaction that recorded the issue log on chain."""
    _get(session, IssueLogRow, (serial, revision), "issue_log").anchored_tx = tx_hash


@dataclass(frozen=True)
class UserFunds:
    """A user's totals from the append-only balance entries (claim 4)."""

    deposited: int
    allocated: int
    carried: int

    @property
    def available(self) -> int:
        return self.deposited - self.allocated


def append_balance_entry(
    session: Session,
    idempotency_key: str,
    user_id: str,
    kind: str,
    amount: int,
    now: int,
    *,
    serial: bytes | None = None,
    reference: str | None = None,
) -> tuple[UserBalanceEntry, bool]:
    """Append one user balance entry (deposit / allocation / carry) exactly once per idempotency key."""
    if kind not in BALANCE_KINDS:
        raise ValueError(f"kind must be one of {BALANCE_KINDS}")
    require_money(amount, "amount", positive=True)
    digest = payload_hash({"user_id": user_id, "kind": kind, "amount": amount, "serial": serial, "ref": reference})
    row = UserBalanceEntry(
        idempotency_key=idempotency_key, user_id=user_id, kind=kind, amount=amount, serial=serial,
        reference=reference, payload_hash=digest, created_at=now,
    )
    return _insert_idempotent(session, row, {"idempotency_key": idempotency_key}, "balance_entry")


def user_funds(session: Session, user_id: str) -> UserFunds:
    """Sum a user's balance entries per kind."""
    query = (
        select(UserBalanceEntry.kind, func.sum(UserBalanceEntry.amount))
        .where(UserBalanceEntry.user_id == user_id)
        .group_by(UserBalanceEntry.kind)
    )
    sums = {kind: money(total) for kind, total in session.execute(query)}
    return UserFunds(sums.get("deposit", 0), sums.get("allocation", 0), sums.get("carry", 0))


@dataclass(frozen=True)
class ReceiveLogRecord:
    """A verified receive log with its usage batch; `id` is the ReceiveLog EIP-712 digest."""

    id: bytes
    sp_address: str
    payer: str
    serial: bytes
    first_seq: int
    count: int
    total: int
    usage_batch_json: dict[str, Any]
    device_sig: bytes
    receiver_sig: bytes
    received_at: int


def upsert_receive_log_idempotent(session: Session, record: ReceiveLogRecord) -> tuple[ReceiveLogRow, bool]:
    """Store a receive log once: identical replay returns (existing, False); same id, other payload raises
    DuplicateMessage (fields: kind, key, stored_hash, got_hash)."""
    require_money(record.total, "total", positive=True)
    fields = {k: getattr(record, k) for k in ReceiveLogRecord.__dataclass_fields__}
    row = ReceiveLogRow(**fields, payload_hash=payload_hash(fields), status="accepted")
    return _insert_idempotent(session, row, {"id": record.id}, "receive_log")


def receive_logs_to_settle(session: Session, limit: int) -> list[ReceiveLogRow]:
    """Accepted receive logs in settlement order (per serial by first_seq, oldest first)."""
    query = (
        select(ReceiveLogRow)
        .where(ReceiveLogRow.status == "accepted")
        .order_by(ReceiveLogRow.received_at, ReceiveLogRow.serial, ReceiveLogRow.first_seq)
        .limit(limit)
    )
    return list(session.scalars(query))


_RECEIVE_FLOW = {"accepted": ("submitted", "rejected"), "submitted": ("settled", "accepted", "rejected")}
_SETTLEMENT_FLOW = {"pending": ("sent", "failed"), "sent": ("confirmed", "failed")}


def create_settlement(session: Session, receive_log_ids: Sequence[bytes], now: int) -> SettlementOutbox:
    """Open an outbox row for one settle() transaction and mark its receive logs submitted."""
    outbox = SettlementOutbox(status="pending", created_at=now, updated_at=now)
    session.add(outbox)
    session.flush()
    for log_id in receive_log_ids:
        row = _get(session, ReceiveLogRow, log_id, "receive_log")
        _transition(row, "submitted", _RECEIVE_FLOW, "receive_log")
        row.settlement_id = outbox.id
    return outbox


def update_settlement(
    session: Session,
    settlement_id: int,
    status: str,
    now: int,
    *,
    tx_hash: str | None = None,
    nonce: int | None = None,
    raw_tx: bytes | None = None,
    error: str | None = None,
) -> SettlementOutbox:
    """Advance a settlement; confirmed settles its receive logs, failed returns them to `accepted` for retry."""
    outbox = _get(session, SettlementOutbox, settlement_id, "settlement")
    _transition(outbox, status, _SETTLEMENT_FLOW, "settlement")
    for name, value in (("tx_hash", tx_hash), ("nonce", nonce), ("raw_tx", raw_tx), ("error", error)):
        if value is not None:
            setattr(outbox, name, value)
    outbox.updated_at = now
    if status in ("confirmed", "failed"):
        logs = session.scalars(select(ReceiveLogRow).where(ReceiveLogRow.settlement_id == settlement_id))
        for row in logs:
            _transition(row, "settled" if status == "confirmed" else "accepted", _RECEIVE_FLOW, "receive_log")
            if status == "failed":
                row.settlement_id = None
    return outbox


def reject_receive_log(session: Session, log_id: bytes, reason: str) -> ReceiveLogRow:
    """Take a receive log out of settlement for good (e.g. it reverted alone with a named contract error)."""
    row = _get(session, ReceiveLogRow, log_id, "receive_log")
    _transition(row, "rejected", _RECEIVE_FLOW, "receive_log")
    row.reject_reason = reason
    row.settlement_id = None
    return row


_TRANSFER_FLOW = {"requested": ("sent_to_bank", "confirmed"), "sent_to_bank": ("confirmed",)}


def record_transfer_request(
    session: Session, request_id: bytes, payee: str, amount: int, now: int, *, tx_hash: str | None = None
) -> tuple[TransferRequestRow, bool]:
    """Store a transfer request (from the TransferRequested event) once; another payee/amount raises."""
    require_money(amount, "amount", positive=True)
    row = TransferRequestRow(
        request_id=request_id, payee=payee, amount=amount, status="requested", tx_hash=tx_hash,
        created_at=now, updated_at=now,
    )
    existing = session.get(TransferRequestRow, request_id)
    if existing is None:
        session.add(row)
        session.flush()
        return row, True
    if (existing.payee, existing.amount) != (payee, amount):
        raise DuplicateMessage(
            f"transfer request 0x{request_id.hex()} exists with another payee or amount",
            kind="transfer_request", key="0x" + request_id.hex(), stored_amount=existing.amount, got_amount=amount,
        )
    return existing, False


def advance_transfer_request(
    session: Session, request_id: bytes, status: str, now: int, *, bank_ref: bytes | None = None
) -> TransferRequestRow:
    """Move a transfer request to `sent_to_bank` or `confirmed` (which needs the bank's reference)."""
    row = _get(session, TransferRequestRow, request_id, "transfer_request")
    if status == "confirmed":
        if bank_ref is None:
            raise ValueError("confirming a transfer request needs bank_ref")
        if row.bank_ref is not None and row.bank_ref != bank_ref:
            raise DuplicateMessage(
                "transfer request already confirmed with another bank_ref",
                kind="transfer_request", key="0x" + request_id.hex(), stored_ref=row.bank_ref, got_ref=bank_ref,
            )
        row.bank_ref = bank_ref
    _transition(row, status, _TRANSFER_FLOW, "transfer_request")
    row.updated_at = now
    return row


def transfer_requests_with_status(session: Session, status: str) -> list[TransferRequestRow]:
    """Transfer requests in one status, oldest first."""
    query = select(TransferRequestRow).where(TransferRequestRow.status == status)
    return list(session.scalars(query.order_by(TransferRequestRow.created_at, TransferRequestRow.request_id)))


# --- repository helpers: service provider -----------------------------------------------------------------
def record_sp_usage_log(
    session: Session, device: str, serial: bytes, seq: int, log_json: dict[str, Any], signature: bytes, now: int
) -> tuple[SpUsageLog, bool]:
    """Store a device's usage log once per (serial, seq); another log at the same position raises."""
    digest = payload_hash({"device": device, "log": log_json, "signature": signature})
    row = SpUsageLog(
        device=device, serial=serial, seq=seq, log_json=log_json, signature=signature,
        payload_hash=digest, received_at=now,
    )
    return _insert_idempotent(session, row, {"serial": serial, "seq": seq}, "usage_log")


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
    return _insert_idempotent(session, row, {"id": batch_id}, "usage_batch")


def attach_receive_log(
    session: Session, batch_id: bytes, receive_log_json: dict[str, Any], receiver_sig: bytes, now: int
) -> SpBatch:
    """Attach the SP's signed receive log to a batch (once; a different one raises DuplicateMessage)."""
    row = _get(session, SpBatch, batch_id, "usage_batch")
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
        row = _get(session, SpBatch, batch_id, "usage_batch")
        _transition(row, status, _SP_BATCH_FLOW, "usage_batch")
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
    row = _get(session, SpCatalogItem, (content_id, version), "catalog_item")
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
