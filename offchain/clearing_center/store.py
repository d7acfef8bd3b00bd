"""The clearing center's tables and repository: users and devices, the append-only user balance database,
issue logs and issue requests, receive logs, the settlement outbox, transfer requests and the bank's receipts.

Every CC table is declared here, on `CcTable` (its own MetaData: `create_schema` creates exactly these). It
stores what the CC decided; it reads no chain view, verifies no signature and sends no transaction. Balances are
derived from append-only `user_balance_entries` rows (deposit / allocation / carry / release), never updated.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (BigInteger, CheckConstraint, Engine, ForeignKey, Index, Integer, LargeBinary, String, Text,
                        func, select, update)
from sqlalchemy.orm import Mapped, Session, mapped_column
from sqlalchemy.types import JSON

from offchain.core.errors import DuplicateMessage, NotFound
from offchain.core.types import Clock, to_hex, user_id_hash
from offchain.storage import engine as storage
from offchain.storage.columns import Address, Base, Bytes32, Money, money, new_metadata, require_money, status_check
from offchain.storage.session import get_row, insert_idempotent, payload_hash, session_scope, transition


class CcTable(Base):
    """Abstract base of the clearing center's tables (their own MetaData)."""

    __abstract__ = True
    metadata = new_metadata()


def create_schema(engine: Engine) -> None:
    """Create the CC tables that do not exist yet (idempotent)."""
    storage.create_schema(engine, CcTable.metadata)


# --- tables --------------------------------------------------------------------------------------------------------
class User(CcTable):
    __tablename__ = "users"
    user_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    user_id_hash: Mapped[bytes] = mapped_column(Bytes32, unique=True)
    display_name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[int] = mapped_column(BigInteger)


class Device(CcTable):
    __tablename__ = "devices"
    address: Mapped[str] = mapped_column(Address, primary_key=True)
    member_id: Mapped[str] = mapped_column(String(128), unique=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.user_id"), index=True)
    registered_at: Mapped[int] = mapped_column(BigInteger)


ISSUE_STATUSES = ("open", "closed")


class IssueLogRow(CcTable):
    """One signed issue log. A top-up in place re-signs the same serial, so the key is (serial, revision)."""

    __tablename__ = "issue_logs"
    __table_args__ = (status_check("status", ISSUE_STATUSES),)
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


BALANCE_KINDS = ("deposit", "allocation", "carry", "release")


class UserBalanceEntry(CcTable):
    """Append-only user balance database: deposits credited, new money allocated, amounts carried, and
    the unsettled rest of a revoked or expired device's log released back (IssueLogReleased, one row per serial)."""

    __tablename__ = "user_balance_entries"
    __table_args__ = (status_check("kind", BALANCE_KINDS), CheckConstraint("amount > 0", name="ck_amount_pos"))
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


class SettlementOutbox(CcTable):
    """One settle() transaction: built, signed and stored before it is sent, so a crash can resend it."""

    __tablename__ = "settlement_outbox"
    __table_args__ = (status_check("status", SETTLEMENT_STATUSES),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    tx_hash: Mapped[str | None] = mapped_column(String(66), unique=True)
    nonce: Mapped[int | None] = mapped_column(BigInteger)
    raw_tx: Mapped[bytes | None] = mapped_column(LargeBinary)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[int] = mapped_column(BigInteger)


RECEIVE_STATUSES = ("accepted", "submitted", "settled", "rejected")


class ReceiveLogRow(CcTable):
    """A receive log (SP-signed) with its usage batch (device-signed); id = the ReceiveLog EIP-712 digest."""

    __tablename__ = "receive_logs"
    __table_args__ = (
        status_check("status", RECEIVE_STATUSES),
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


class SettledPolicyRow(CcTable):
    """A policy id that appears in at least one settled receive log: the transfer worker's candidates, kept as
    receive logs settle (never rebuilt from their JSON, so a round costs the same whatever the history)."""

    __tablename__ = "cc_settled_policies"
    policy_id: Mapped[bytes] = mapped_column(Bytes32, primary_key=True)
    first_settled_at: Mapped[int] = mapped_column(BigInteger)


TRANSFER_STATUSES = ("requested", "sent_to_bank", "confirmed")


class TransferRequestRow(CcTable):
    """A transfer request the contract assigned (id = requestId), followed until the bank confirms it."""

    __tablename__ = "transfer_requests"
    __table_args__ = (status_check("status", TRANSFER_STATUSES), CheckConstraint("amount > 0", name="ck_tr_pos"))
    request_id: Mapped[bytes] = mapped_column(Bytes32, primary_key=True)
    payee: Mapped[str] = mapped_column(Address, index=True)
    amount: Mapped[int] = mapped_column(Money)
    status: Mapped[str] = mapped_column(String(16), default="requested", index=True)
    bank_ref: Mapped[bytes | None] = mapped_column(Bytes32)
    tx_hash: Mapped[str | None] = mapped_column(String(66))
    created_at: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[int] = mapped_column(BigInteger)



class IssueRequestRow(CcTable):
    """A device's issue/renew request (id = request_id, scoped by device): planned before the chain call, answered
    from here on a retry, so an interrupted request resumes with the same serial, amount and expiry."""

    __tablename__ = "cc_issue_requests"
    device: Mapped[str] = mapped_column(Address, primary_key=True)
    request_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # issue | renew
    payload_hash: Mapped[bytes] = mapped_column(Bytes32)
    user_id: Mapped[str] = mapped_column(String(128))
    serial: Mapped[bytes] = mapped_column(Bytes32)
    previous_serial: Mapped[bytes | None] = mapped_column(Bytes32)
    new_money: Mapped[int] = mapped_column(Money)
    carried: Mapped[int] = mapped_column(Money)
    cap: Mapped[int] = mapped_column(Money)  # the cap the chain holds for `serial` once the request is applied
    old_cap: Mapped[int] = mapped_column(Money)  # renew: the old serial's cap before (detects an applied top-up)
    expires_at: Mapped[int] = mapped_column(BigInteger)
    mode: Mapped[str] = mapped_column(String(16))  # issue | new_serial | top_up
    status: Mapped[str] = mapped_column(String(16), default="planned")  # planned | done
    response: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[int] = mapped_column(BigInteger)
    # The signed chain call, written before it is broadcast (NULL: nothing was ever sent for this plan). A retry
    # trusts only this transaction's receipt, never the issue log's cap, so a top-up can never apply twice.
    tx_hash: Mapped[str | None] = mapped_column(String(66))
    tx_nonce: Mapped[int | None] = mapped_column(BigInteger)
    raw_tx: Mapped[bytes | None] = mapped_column(LargeBinary)


class TransferReceiptRow(CcTable):
    """The bank's signed TransferReceipt for one transfer request, kept as evidence (Envelope JSON)."""

    __tablename__ = "cc_transfer_receipts"
    request_id: Mapped[bytes] = mapped_column(Bytes32, primary_key=True)
    bank_ref: Mapped[bytes] = mapped_column(Bytes32)
    amount: Mapped[int] = mapped_column(Money)
    confirmed_at: Mapped[int] = mapped_column(BigInteger)
    bank_member_id: Mapped[str] = mapped_column(String(128))
    envelope: Mapped[dict[str, Any]] = mapped_column(JSON)
    received_at: Mapped[int] = mapped_column(BigInteger)


CHAIN_TX_STATES = ("pending", "included", "final", "reorged", "dropped")


class ChainTxRow(CcTable):
    """One CC transaction followed to finality (offchain.clearing_center.finality): a confirmed settlement, an
    anchored issue log or renewal, a transfer request. `included` until `confirmations` deep, then `final`; the
    recorded (block_number, block_hash) is what a reorg changes. `raw_tx` is the signed bytes re-broadcast when a
    reorg drops it; `dropped` when they can never be mined again (the state is re-derived from the chain)."""

    __tablename__ = "cc_chain_txs"
    __table_args__ = (status_check("state", CHAIN_TX_STATES),)
    tx_hash: Mapped[str] = mapped_column(String(66), primary_key=True)
    kind: Mapped[str] = mapped_column(String(24))  # settlement | issue | renew | transfer_request
    ref: Mapped[str] = mapped_column(String(200))  # outbox id, device:request_id, or the tx hash
    raw_tx: Mapped[bytes | None] = mapped_column(LargeBinary)
    block_number: Mapped[int | None] = mapped_column(BigInteger)
    block_hash: Mapped[str | None] = mapped_column(String(66))
    state: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    reorgs: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[int] = mapped_column(BigInteger)


# --- repository functions (one session each; CcStore runs them in transactions) -------------------------------
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
        get_row(session, User, user_id, "user")
        device = Device(address=address, member_id=member_id, user_id=user_id, registered_at=now)
        session.add(device)
        session.flush()
        return device
    if (existing.member_id, existing.user_id) != (member_id, user_id):
        raise DuplicateMessage(f"device {address} is bound to another member or user", kind="device", key=address)
    return existing


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
    return insert_idempotent(session, row, {"serial": record.serial, "revision": record.revision}, "issue_log")


def latest_issue_log(session: Session, serial: bytes) -> IssueLogRow | None:
    """The highest revision of `serial`, or None."""
    query = select(IssueLogRow).where(IssueLogRow.serial == serial).order_by(IssueLogRow.revision.desc()).limit(1)
    return session.scalars(query).first()


def close_issue_log(session: Session, serial: bytes) -> None:
    """Mark every revision of `serial` closed (renewal with a new serial or after expiry)."""
    session.execute(update(IssueLogRow).where(IssueLogRow.serial == serial).values(status="closed"))


def mark_issue_log_anchored(session: Session, serial: bytes, revision: int, tx_hash: str) -> None:
    """Remember the transaction that recorded the issue log on chain."""
    get_row(session, IssueLogRow, (serial, revision), "issue_log").anchored_tx = tx_hash


@dataclass(frozen=True)
class Balance:
    """A user's totals from the append-only balance entries; `available` is not yet allocated:
    deposits minus allocations plus what releases returned (the chain's `allocated -= cap - spent`)."""

    user_id: str
    user_id_hash: bytes
    deposited: int
    allocated: int
    carried: int
    released: int = 0

    @property
    def available(self) -> int:
        return self.deposited - self.allocated + self.released


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
    """Append one user balance entry (deposit / allocation / carry / release) exactly once per idempotency key."""
    if kind not in BALANCE_KINDS:
        raise ValueError(f"kind must be one of {BALANCE_KINDS}")
    require_money(amount, "amount", positive=True)
    digest = payload_hash({"user_id": user_id, "kind": kind, "amount": amount, "serial": serial, "ref": reference})
    row = UserBalanceEntry(
        idempotency_key=idempotency_key, user_id=user_id, kind=kind, amount=amount, serial=serial,
        reference=reference, payload_hash=digest, created_at=now,
    )
    return insert_idempotent(session, row, {"idempotency_key": idempotency_key}, "balance_entry")


def user_funds(session: Session, user_id: str) -> Balance:
    """Sum a user's balance entries per kind."""
    query = (
        select(UserBalanceEntry.kind, func.sum(UserBalanceEntry.amount))
        .where(UserBalanceEntry.user_id == user_id)
        .group_by(UserBalanceEntry.kind)
    )
    sums = {kind: money(total) for kind, total in session.execute(query)}
    return Balance(user_id, user_id_hash(user_id), sums.get("deposit", 0), sums.get("allocation", 0),
                   sums.get("carry", 0), sums.get("release", 0))


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
    return insert_idempotent(session, row, {"id": record.id}, "receive_log")


def note_settled_policies(session: Session, batches: Iterable[dict[str, Any]], now: int) -> int:
    """Add the policy ids of newly settled usage batches (their JSON) to `cc_settled_policies`; returns how many
    were new. Called in the transaction that settles them, so the set never lags the receive logs."""
    wanted = {bytes.fromhex(pid[2:]) for batch in batches for pid in batch["policyIds"]}
    if not wanted:
        return 0
    known = set(session.scalars(select(SettledPolicyRow.policy_id).where(SettledPolicyRow.policy_id.in_(wanted))))
    new = wanted - known
    session.add_all(SettledPolicyRow(policy_id=pid, first_settled_at=now) for pid in sorted(new))
    return len(new)


_RECEIVE_FLOW = {"accepted": ("submitted", "rejected"), "submitted": ("settled", "accepted", "rejected")}
_SETTLEMENT_FLOW = {"pending": ("sent", "failed"), "sent": ("confirmed", "failed")}


def create_settlement(session: Session, receive_log_ids: Sequence[bytes], now: int) -> SettlementOutbox:
    """Open an outbox row for one settle() transaction and mark its receive logs submitted."""
    outbox = SettlementOutbox(status="pending", created_at=now, updated_at=now)
    session.add(outbox)
    session.flush()
    for log_id in receive_log_ids:
        row = get_row(session, ReceiveLogRow, log_id, "receive_log")
        transition(row, "submitted", _RECEIVE_FLOW, "receive_log")
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
    outbox = get_row(session, SettlementOutbox, settlement_id, "settlement")
    transition(outbox, status, _SETTLEMENT_FLOW, "settlement")
    for name, value in (("tx_hash", tx_hash), ("nonce", nonce), ("raw_tx", raw_tx), ("error", error)):
        if value is not None:
            setattr(outbox, name, value)
    outbox.updated_at = now
    if status in ("confirmed", "failed"):
        logs = list(session.scalars(select(ReceiveLogRow).where(ReceiveLogRow.settlement_id == settlement_id)))
        for row in logs:
            transition(row, "settled" if status == "confirmed" else "accepted", _RECEIVE_FLOW, "receive_log")
            if status == "failed":
                row.settlement_id = None
        if status == "confirmed":
            note_settled_policies(session, (row.usage_batch_json for row in logs), now)
    return outbox


def reject_receive_log(session: Session, log_id: bytes, reason: str) -> ReceiveLogRow:
    """Take a receive log out of settlement for good (e.g. it reverted alone with a named contract error)."""
    row = get_row(session, ReceiveLogRow, log_id, "receive_log")
    transition(row, "rejected", _RECEIVE_FLOW, "receive_log")
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
    row = get_row(session, TransferRequestRow, request_id, "transfer_request")
    if status == "confirmed":
        if bank_ref is None:
            raise ValueError("confirming a transfer request needs bank_ref")
        if row.bank_ref is not None and row.bank_ref != bank_ref:
            raise DuplicateMessage(
                "transfer request already confirmed with another bank_ref",
                kind="transfer_request", key="0x" + request_id.hex(), stored_ref=row.bank_ref, got_ref=bank_ref,
            )
        row.bank_ref = bank_ref
    transition(row, status, _TRANSFER_FLOW, "transfer_request")
    row.updated_at = now
    return row



class CcStore:
    """Typed queries of the CC database; every method is one transaction."""

    def __init__(self, engine: Engine, clock: Clock) -> None:
        self.engine = engine
        self.clock = clock

    def now(self) -> int:
        return int(self.clock())

    def create_schema(self) -> None:
        create_schema(self.engine)

    # users, devices and deposits ----------------------------------------------------------------------------
    def bind_device(self, address: str, member_id: str, user_id: str) -> None:
        """First contact binds a device to a user; rebinding to another user or member is DuplicateMessage."""
        now = self.now()
        with session_scope(self.engine) as session:
            if session.get(User, user_id) is None:
                add_user(session, user_id, user_id_hash(user_id), user_id, now)
            add_device(session, address, member_id, user_id, now)

    def device_user(self, address: str) -> str | None:
        with session_scope(self.engine) as session:
            device = session.get(Device, address)
            return None if device is None else device.user_id

    def credit_deposit(self, deposit_id: bytes, user_id: str, amount: int, tx_hash: str) -> tuple[int, bool]:
        """Append the deposit entry once per deposit id; returns (entry id, created). Same id, other payload
        (user, amount or transaction): DuplicateMessage."""
        now = self.now()
        with session_scope(self.engine) as session:
            if session.get(User, user_id) is None:
                add_user(session, user_id, user_id_hash(user_id), user_id, now)
            row, created = append_balance_entry(session, f"deposit:{to_hex(deposit_id)}", user_id, "deposit",
                                                   amount, now, reference=tx_hash)
            return row.id, created

    def credit_release(self, serial: bytes, user_id: str, amount: int, tx_hash: str) -> bool:
        """Append the release entry of `serial` once (key release:<serial>) and close its issue log rows; returns
        created. The same serial with another amount or user: DuplicateMessage (a serial is released once)."""
        now = self.now()
        with session_scope(self.engine) as session:
            if session.get(User, user_id) is None:
                add_user(session, user_id, user_id_hash(user_id), user_id, now)
            close_issue_log(session, serial)
            if amount == 0:
                return False
            _row, created = append_balance_entry(session, f"release:{to_hex(serial)}", user_id, "release", amount,
                                                 now, serial=serial, reference=tx_hash)
            return created

    def balance(self, user_id: str) -> Balance:
        with session_scope(self.engine) as session:
            return user_funds(session, user_id)

    def user_view(self, user_id: str) -> dict[str, Any]:
        """The balance database view of one user: totals, entries and issue logs."""
        with session_scope(self.engine) as session:
            if session.get(User, user_id) is None:
                raise NotFound(f"no user {user_id!r} in the balance database", user_id=user_id)
            balance = user_funds(session, user_id)
            entries = session.scalars(select(UserBalanceEntry).where(UserBalanceEntry.user_id == user_id)
                                      .order_by(UserBalanceEntry.id)).all()
            logs = session.scalars(select(IssueLogRow).where(IssueLogRow.user_id_hash == balance.user_id_hash)
                                   .order_by(IssueLogRow.created_at, IssueLogRow.revision)).all()
            return {
                "user_id": user_id, "user_id_hash": to_hex(balance.user_id_hash), "deposited": balance.deposited,
                "allocated": balance.allocated, "available": balance.available, "carried": balance.carried,
                "released": balance.released,
                "entries": [{"kind": e.kind, "amount": e.amount, "key": e.idempotency_key, "reference": e.reference,
                             "serial": to_hex(e.serial) if e.serial else None, "at": e.created_at} for e in entries],
                "issue_logs": [{"serial": to_hex(r.serial), "revision": r.revision, "cap": r.cap,
                                "carried": r.carried, "new_money": r.new_money, "expires_at": r.expires_at,
                                "status": r.status, "tx_hash": r.anchored_tx} for r in logs],
            }

    # issue requests -----------------------------------------------------------------------------------------
    def issue_request(self, device: str, request_id: str) -> IssueRequestRow | None:
        with session_scope(self.engine) as session:
            return session.get(IssueRequestRow, (device, request_id))

    def plan_issue_request(self, row: IssueRequestRow) -> IssueRequestRow:
        """Store the plan (serial, money, expiry) before the chain call; a racing twin is re-read and compared."""
        with session_scope(self.engine) as session:
            existing = session.get(IssueRequestRow, (row.device, row.request_id))
            if existing is not None:
                return existing
            session.add(row)
            return row

    def planned_issue_requests(self) -> list[IssueRequestRow]:
        """Every plan not yet completed or dropped, oldest first (resolved from the chain at start and on a timer)."""
        with session_scope(self.engine) as session:
            return list(session.scalars(select(IssueRequestRow).where(IssueRequestRow.status == "planned")
                                        .order_by(IssueRequestRow.created_at)))

    def renewal_of(self, device: str, serial: bytes) -> IssueRequestRow | None:
        """The latest completed renewal of `serial` requested by `device` (to answer a device whose answer was lost)."""
        with session_scope(self.engine) as session:
            return session.scalars(select(IssueRequestRow).where(
                IssueRequestRow.device == device, IssueRequestRow.kind == "renew",
                IssueRequestRow.previous_serial == serial, IssueRequestRow.status == "done")
                .order_by(IssueRequestRow.created_at.desc())).first()

    def reserved(self, user_id: str) -> int:
        """New money of planned, unfinished requests: held back from `available` until they complete or drop."""
        with session_scope(self.engine) as session:
            total = session.scalar(select(func.sum(IssueRequestRow.new_money)).where(
                IssueRequestRow.user_id == user_id, IssueRequestRow.status == "planned"))
            return money(total)

    def drop_issue_request(self, device: str, request_id: str) -> None:
        """Forget a planned request the chain refused (a revert before sending, or its transaction reverted),
        so the id can be retried."""
        with session_scope(self.engine) as session:
            row = session.get(IssueRequestRow, (device, request_id))
            if row is not None and row.status == "planned":
                session.delete(row)

    def record_issue_tx(self, device: str, request_id: str, tx_hash: str, nonce: int, raw_tx: bytes) -> None:
        """Keep the signed transaction of a planned request before it is broadcast (the outbox write)."""
        with session_scope(self.engine) as session:
            row = session.get(IssueRequestRow, (device, request_id))
            if row is None or row.status != "planned":
                raise NotFound("no planned issue request to attach a transaction to", device=device,
                               request_id=request_id, tx_hash=tx_hash)
            row.tx_hash, row.tx_nonce, row.raw_tx = tx_hash, nonce, raw_tx

    def forget_issue_tx(self, device: str, request_id: str, tx_hash: str) -> None:
        """Detach a transaction that can never be mined (its nonce went to another one), so the plan resends."""
        with session_scope(self.engine) as session:
            row = session.get(IssueRequestRow, (device, request_id))
            if row is not None and row.status == "planned" and row.tx_hash == tx_hash:
                row.tx_hash, row.tx_nonce, row.raw_tx = None, None, None

    def complete_issue_request(self, plan: IssueRequestRow, record: IssueLogRecord, tx_hash: str,
                               response: dict[str, Any]) -> None:
        """Record the signed issue log, the balance entries and the answer in one transaction (idempotent)."""
        now = self.now()
        with session_scope(self.engine) as session:
            row = session.get(IssueRequestRow, (plan.device, plan.request_id))
            if row is None or row.status == "done":
                return
            if plan.previous_serial is not None and plan.previous_serial != plan.serial:
                close_issue_log(session, plan.previous_serial)
            record_issue_log(session, record, now)
            mark_issue_log_anchored(session, record.serial, record.revision, tx_hash)
            key = f"{plan.kind}:{plan.device}:{plan.request_id}"
            if plan.new_money > 0:
                append_balance_entry(session, key + ":allocation", plan.user_id, "allocation", plan.new_money,
                                        now, serial=plan.serial, reference=plan.request_id)
            if plan.carried > 0:
                append_balance_entry(session, key + ":carry", plan.user_id, "carry", plan.carried, now,
                                        serial=plan.serial, reference=to_hex(plan.previous_serial or bytes(32)))
            row.status, row.response = "done", response

    def next_revision(self, serial: bytes) -> int:
        with session_scope(self.engine) as session:
            latest = latest_issue_log(session, serial)
            return 0 if latest is None else latest.revision + 1

    # receive logs ---------------------------------------------------------------------------------------------
    def receive_log(self, receive_log_id: bytes) -> ReceiveLogRow | None:
        with session_scope(self.engine) as session:
            return session.get(ReceiveLogRow, receive_log_id)

    def live_receive_logs(self, serial: bytes) -> list[ReceiveLogRow]:
        """Receive logs of `serial` that are held and not rejected (accepted, submitted or settled)."""
        with session_scope(self.engine) as session:
            return list(session.scalars(select(ReceiveLogRow).where(ReceiveLogRow.serial == serial,
                                                                    ReceiveLogRow.status != "rejected")
                                        .order_by(ReceiveLogRow.first_seq)))

    def store_receive_log(self, record: ReceiveLogRecord) -> bool:
        """Persist one verified receive log; True when new, False for an identical replay (else DuplicateMessage)."""
        with session_scope(self.engine) as session:
            return upsert_receive_log_idempotent(session, record)[1]

    def accepted_receive_logs(self) -> list[ReceiveLogRow]:
        """Accepted (not yet submitted) receive logs per serial in seq order."""
        with session_scope(self.engine) as session:
            return list(session.scalars(select(ReceiveLogRow).where(ReceiveLogRow.status == "accepted")
                                        .order_by(ReceiveLogRow.serial, ReceiveLogRow.first_seq)))

    def receive_logs_of(self, settlement_id: int) -> list[ReceiveLogRow]:
        with session_scope(self.engine) as session:
            return list(session.scalars(select(ReceiveLogRow).where(ReceiveLogRow.settlement_id == settlement_id)
                                        .order_by(ReceiveLogRow.serial, ReceiveLogRow.first_seq)))

    def settled_policy_ids(self) -> list[bytes]:
        """Every policy id that appears in a settled receive log (candidates for transfer requests), in the order
        they first settled: read from `cc_settled_policies`, one row per policy, whatever the history's length.
        A reorg that un-settles a log leaves its policy here; the transfer worker skips policies with nothing
        accrued, so a candidate too many costs one view call, never a transfer."""
        with session_scope(self.engine) as session:
            return list(session.scalars(select(SettledPolicyRow.policy_id)
                                        .order_by(SettledPolicyRow.first_settled_at, SettledPolicyRow.policy_id)))

    def reject_receive_logs(self, reasons: dict[bytes, str]) -> None:
        with session_scope(self.engine) as session:
            for log_id, reason in reasons.items():
                reject_receive_log(session, log_id, reason)

    def mark_settled_without_outbox(self, log_ids: Sequence[bytes]) -> None:
        """Accepted receive logs the chain already settled (nextSeq past them): settled, never re-sent."""
        with session_scope(self.engine) as session:
            settled = []
            for log_id in log_ids:
                row = session.get(ReceiveLogRow, log_id)
                if row is not None and row.status == "accepted":
                    row.status = "settled"
                    settled.append(row.usage_batch_json)
            note_settled_policies(session, settled, self.now())

    # settlement outbox ----------------------------------------------------------------------------------------
    def create_settlement(self, log_ids: Sequence[bytes], *, tx_hash: str, nonce: int, raw_tx: bytes) -> int:
        """Outbox row (pending) with the signed transaction, and its logs submitted: one transaction, written
        before the broadcast so that recovery can always find out what was sent."""
        with session_scope(self.engine) as session:
            outbox = create_settlement(session, log_ids, self.now())
            outbox.tx_hash, outbox.nonce, outbox.raw_tx = tx_hash, nonce, raw_tx
            return outbox.id

    def update_settlement(self, settlement_id: int, status: str, **fields: Any) -> None:
        with session_scope(self.engine) as session:
            update_settlement(session, settlement_id, status, self.now(), **fields)

    def unfinished_settlements(self) -> list[SettlementOutbox]:
        with session_scope(self.engine) as session:
            return list(session.scalars(select(SettlementOutbox)
                                        .where(SettlementOutbox.status.in_(("pending", "sent")))
                                        .order_by(SettlementOutbox.id)))

    def resolve_unknown_settlement(self, settlement_id: int, settled_ids: set[bytes], error: str) -> None:
        """The transaction is unknown to the chain: logs the chain shows settled (nextSeq past them) become
        settled, the others go back to `accepted`; the outbox row fails with `error`. One transaction."""
        now = self.now()
        with session_scope(self.engine) as session:
            outbox = session.get(SettlementOutbox, settlement_id)
            if outbox is None or outbox.status not in ("pending", "sent"):
                return
            # The chain never saw this transaction; re-signing the same logs at the same nonce can produce the very
            # same hash, so the hash moves into the error text and the unique column is freed for the new row.
            outbox.error = f"{error} (signed tx {outbox.tx_hash}, nonce {outbox.nonce}, never mined)"
            outbox.status, outbox.tx_hash, outbox.updated_at = "failed", None, now
            settled = []
            for row in session.scalars(select(ReceiveLogRow).where(ReceiveLogRow.settlement_id == settlement_id)):
                row.status = "settled" if row.id in settled_ids else "accepted"
                row.settlement_id = None
                if row.status == "settled":
                    settled.append(row.usage_batch_json)
            note_settled_policies(session, settled, now)

    def settlement_counts(self) -> dict[str, int]:
        with session_scope(self.engine) as session:
            rows = session.execute(select(ReceiveLogRow.status, func.count()).group_by(ReceiveLogRow.status)).all()
            return {status: count for status, count in rows}

    # transfer requests ----------------------------------------------------------------------------------------
    def record_transfer_requests(self, requests: Iterable[tuple[bytes, str, int, str]]) -> int:
        """Store (request_id, payee, amount, tx_hash) rows read from TransferRequested events; returns new count."""
        now, created = self.now(), 0
        with session_scope(self.engine) as session:
            for request_id, payee, amount, tx_hash in requests:
                created += record_transfer_request(session, request_id, payee, amount, now, tx_hash=tx_hash)[1]
        return created

    def open_transfer_requests(self) -> list[TransferRequestRow]:
        with session_scope(self.engine) as session:
            return list(session.scalars(select(TransferRequestRow).where(TransferRequestRow.status != "confirmed")
                                        .order_by(TransferRequestRow.created_at)))

    def mark_transfer_sent(self, request_id: bytes) -> None:
        with session_scope(self.engine) as session:
            advance_transfer_request(session, request_id, "sent_to_bank", self.now())

    def record_transfer_receipt(self, receipt: TransferReceiptRow) -> None:
        """Keep the bank's signed receipt and mark the request confirmed (same receipt twice: no-op)."""
        with session_scope(self.engine) as session:
            advance_transfer_request(session, receipt.request_id, "confirmed", self.now(),
                                        bank_ref=receipt.bank_ref)
            if session.get(TransferReceiptRow, receipt.request_id) is None:
                session.add(receipt)

    # finality of the CC's transactions (cc_chain_txs) ---------------------------------------------------------
    def untracked_transactions(self) -> list[tuple[str, str, str, bytes | None]]:
        """(kind, ref, tx_hash, raw_tx) of confirmed settlements, completed issue/renew requests and transfer
        requests whose transaction is not yet followed in cc_chain_txs."""
        with session_scope(self.engine) as session:
            known = select(ChainTxRow.tx_hash)
            out: list[tuple[str, str, str, bytes | None]] = []
            for s_id, tx, raw in session.execute(select(SettlementOutbox.id, SettlementOutbox.tx_hash,
                                                        SettlementOutbox.raw_tx)
                                                 .where(SettlementOutbox.status == "confirmed",
                                                        SettlementOutbox.tx_hash.is_not(None),
                                                        SettlementOutbox.tx_hash.not_in(known))):
                out.append(("settlement", str(s_id), tx, raw))
            for kind, device, request_id, tx, raw in session.execute(
                    select(IssueRequestRow.kind, IssueRequestRow.device, IssueRequestRow.request_id,
                           IssueRequestRow.tx_hash, IssueRequestRow.raw_tx)
                    .where(IssueRequestRow.status == "done", IssueRequestRow.tx_hash.is_not(None),
                           IssueRequestRow.tx_hash.not_in(known))):
                out.append((kind, f"{device}:{request_id}", tx, raw))
            for (tx,) in session.execute(select(TransferRequestRow.tx_hash).distinct()
                                         .where(TransferRequestRow.tx_hash.is_not(None),
                                                TransferRequestRow.tx_hash.not_in(known))):
                out.append(("transfer_request", tx, tx, None))
            return out

    def track_transaction(self, kind: str, ref: str, tx_hash: str, raw_tx: bytes | None) -> None:
        """Follow `tx_hash` to finality (idempotent by hash)."""
        with session_scope(self.engine) as session:
            if session.get(ChainTxRow, tx_hash) is None:
                session.add(ChainTxRow(tx_hash=tx_hash, kind=kind, ref=ref, raw_tx=raw_tx, state="pending",
                                       reorgs=0, updated_at=self.now()))

    def unfinal_transactions(self) -> list[ChainTxRow]:
        """Followed transactions not yet final (nor dropped), oldest first."""
        with session_scope(self.engine) as session:
            return list(session.scalars(select(ChainTxRow)
                                        .where(ChainTxRow.state.in_(("pending", "included", "reorged")))
                                        .order_by(ChainTxRow.updated_at, ChainTxRow.tx_hash)))

    def chain_tx(self, tx_hash: str) -> ChainTxRow | None:
        with session_scope(self.engine) as session:
            return session.get(ChainTxRow, tx_hash)

    def set_chain_tx(self, tx_hash: str, state: str, *, block: tuple[int, str] | None = None,
                     raw_tx: bytes | None = None, reorged: bool = False) -> None:
        """Record what the tracker says now: the state, the inclusion (None clears it), the signed bytes."""
        with session_scope(self.engine) as session:
            row = get_row(session, ChainTxRow, tx_hash, "chain_tx")
            row.state = state
            row.block_number, row.block_hash = block if block is not None else (None, None)
            if raw_tx is not None:
                row.raw_tx = raw_tx
            if reorged:
                row.reorgs += 1
            row.updated_at = self.now()

    def chain_tx_counts(self) -> dict[str, int]:
        with session_scope(self.engine) as session:
            return dict(session.execute(select(ChainTxRow.state, func.count()).group_by(ChainTxRow.state)).all())

    def reopen_settlement(self, settlement_id: int, why: str) -> None:
        """A reorg undid a confirmed settlement whose signed transaction can no longer be mined: back to `sent`, so
        the worker's recovery re-derives each log from the chain (settled nextSeq) and re-queues the others."""
        with session_scope(self.engine) as session:
            outbox = get_row(session, SettlementOutbox, settlement_id, "settlement")
            if outbox.status == "confirmed":
                outbox.status, outbox.error, outbox.updated_at = "sent", why, self.now()


__all__ = [
    "CcStore", "Balance", "CcTable", "create_schema", "IssueLogRecord", "ReceiveLogRecord", "User", "Device",
    "IssueLogRow", "UserBalanceEntry", "SettlementOutbox", "ReceiveLogRow", "TransferRequestRow", "IssueRequestRow",
    "TransferReceiptRow", "ChainTxRow", "CHAIN_TX_STATES", "SettledPolicyRow", "note_settled_policies",
]
