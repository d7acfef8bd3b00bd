"""The clearing center's state: the user balance database (claim 4), issue requests, receive logs, the settlement
outbox and transfer requests, on the shared models of `offchain.storage.engine`, plus the two CC-only tables defined here.

It stores what the CC decided; it reads no chain view (`offchain.chain.client.ClearhouseChain` does), verifies no signature
and sends no transaction.
Balances are derived from append-only `user_balance_entries` rows (deposit / allocation / carry), never updated.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, Engine, LargeBinary, String, func, select
from sqlalchemy.orm import Mapped, Session, mapped_column
from sqlalchemy.types import JSON

from offchain.storage import engine as db
from offchain.storage.engine import (
    Address,
    Base,
    Bytes32,
    Device,
    IssueLogRow,
    Money,
    ReceiveLogRow,
    SettlementOutbox,
    TransferRequestRow,
    User,
    UserBalanceEntry,
    session_scope,
)
from offchain.core.errors import NotFound
from offchain.core.messages import keccak

Clock = Callable[[], float]
OPEN_SEQ_LIMIT = (1 << 48) - 1  # the contract's seqLimit while an issue log is open


def user_id_hash(user_id: str) -> bytes:
    """keccak256 of the UTF-8 user id: the `userIdHash` on chain (the plain id never leaves the CC and the bank)."""
    return keccak(user_id.encode())


def hex32(value: bytes) -> str:
    return "0x" + value.hex()


# --- CC-only tables ------------------------------------------------------------------------------------------------
class IssueRequestRow(Base):
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


class TransferReceiptRow(Base):
    """The bank's signed TransferReceipt for one transfer request, kept as evidence (Envelope JSON)."""

    __tablename__ = "cc_transfer_receipts"
    request_id: Mapped[bytes] = mapped_column(Bytes32, primary_key=True)
    bank_ref: Mapped[bytes] = mapped_column(Bytes32)
    amount: Mapped[int] = mapped_column(Money)
    confirmed_at: Mapped[int] = mapped_column(BigInteger)
    bank_member_id: Mapped[str] = mapped_column(String(128))
    envelope: Mapped[dict[str, Any]] = mapped_column(JSON)
    received_at: Mapped[int] = mapped_column(BigInteger)


# --- balances --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Balance:
    user_id: str
    user_id_hash: bytes
    deposited: int
    allocated: int
    carried: int

    @property
    def available(self) -> int:
        return self.deposited - self.allocated


class CcStore:
    """Typed queries of the CC database; every method is one transaction."""

    def __init__(self, engine: Engine, clock: Clock) -> None:
        self.engine = engine
        self.clock = clock

    def now(self) -> int:
        return int(self.clock())

    def create_schema(self) -> None:
        db.create_schema(self.engine)  # includes the cc_* tables: this module registered them on db.Base

    # users, devices and deposits ----------------------------------------------------------------------------
    def bind_device(self, address: str, member_id: str, user_id: str) -> None:
        """First contact binds a device to a user; rebinding to another user or member is DuplicateMessage."""
        now = self.now()
        with session_scope(self.engine) as session:
            if session.get(User, user_id) is None:
                db.add_user(session, user_id, user_id_hash(user_id), user_id, now)
            db.add_device(session, address, member_id, user_id, now)

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
                db.add_user(session, user_id, user_id_hash(user_id), user_id, now)
            row, created = db.append_balance_entry(session, f"deposit:{hex32(deposit_id)}", user_id, "deposit",
                                                   amount, now, reference=tx_hash)
            return row.id, created

    def balance(self, user_id: str) -> Balance:
        with session_scope(self.engine) as session:
            return self._balance(session, user_id)

    @staticmethod
    def _balance(session: Session, user_id: str) -> Balance:
        funds = db.user_funds(session, user_id)
        return Balance(user_id, user_id_hash(user_id), funds.deposited, funds.allocated, funds.carried)

    def user_view(self, user_id: str) -> dict[str, Any]:
        """The balance database view of one user: totals, entries and issue logs."""
        with session_scope(self.engine) as session:
            if session.get(User, user_id) is None:
                raise NotFound(f"no user {user_id!r} in the balance database", user_id=user_id)
            balance = self._balance(session, user_id)
            entries = session.scalars(select(UserBalanceEntry).where(UserBalanceEntry.user_id == user_id)
                                      .order_by(UserBalanceEntry.id)).all()
            logs = session.scalars(select(IssueLogRow).where(IssueLogRow.user_id_hash == balance.user_id_hash)
                                   .order_by(IssueLogRow.created_at, IssueLogRow.revision)).all()
            return {
                "user_id": user_id, "user_id_hash": hex32(balance.user_id_hash), "deposited": balance.deposited,
                "allocated": balance.allocated, "available": balance.available, "carried": balance.carried,
                "entries": [{"kind": e.kind, "amount": e.amount, "key": e.idempotency_key, "reference": e.reference,
                             "serial": hex32(e.serial) if e.serial else None, "at": e.created_at} for e in entries],
                "issue_logs": [{"serial": hex32(r.serial), "revision": r.revision, "cap": r.cap,
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

    def reserved(self, user_id: str) -> int:
        """New money of planned, unfinished requests: held back from `available` until they complete or drop."""
        with session_scope(self.engine) as session:
            total = session.scalar(select(func.sum(IssueRequestRow.new_money)).where(
                IssueRequestRow.user_id == user_id, IssueRequestRow.status == "planned"))
            return db.money(total)

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

    def complete_issue_request(self, plan: IssueRequestRow, record: db.IssueLogRecord, tx_hash: str,
                               response: dict[str, Any]) -> None:
        """Record the signed issue log, the balance entries and the answer in one transaction (idempotent)."""
        now = self.now()
        with session_scope(self.engine) as session:
            row = session.get(IssueRequestRow, (plan.device, plan.request_id))
            if row is None or row.status == "done":
                return
            if plan.previous_serial is not None and plan.previous_serial != plan.serial:
                db.close_issue_log(session, plan.previous_serial)
            db.record_issue_log(session, record, now)
            db.mark_issue_log_anchored(session, record.serial, record.revision, tx_hash)
            key = f"{plan.kind}:{plan.device}:{plan.request_id}"
            if plan.new_money > 0:
                db.append_balance_entry(session, key + ":allocation", plan.user_id, "allocation", plan.new_money,
                                        now, serial=plan.serial, reference=plan.request_id)
            if plan.carried > 0:
                db.append_balance_entry(session, key + ":carry", plan.user_id, "carry", plan.carried, now,
                                        serial=plan.serial, reference=hex32(plan.previous_serial or bytes(32)))
            row.status, row.response = "done", response

    def next_revision(self, serial: bytes) -> int:
        with session_scope(self.engine) as session:
            latest = db.latest_issue_log(session, serial)
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

    def store_receive_log(self, record: db.ReceiveLogRecord) -> bool:
        """Persist one verified receive log; True when new, False for an identical replay (else DuplicateMessage)."""
        with session_scope(self.engine) as session:
            return db.upsert_receive_log_idempotent(session, record)[1]

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
        """Every policy id that appears in a settled receive log (candidates for transfer requests)."""
        with session_scope(self.engine) as session:
            batches = session.scalars(select(ReceiveLogRow.usage_batch_json)
                                      .where(ReceiveLogRow.status == "settled")).all()
        seen: dict[bytes, None] = {}
        for batch in batches:
            for pid in batch["policyIds"]:
                seen.setdefault(bytes.fromhex(pid[2:]), None)
        return list(seen)

    def reject_receive_logs(self, reasons: dict[bytes, str]) -> None:
        with session_scope(self.engine) as session:
            for log_id, reason in reasons.items():
                db.reject_receive_log(session, log_id, reason)

    def mark_settled_without_outbox(self, log_ids: Sequence[bytes]) -> None:
        """Accepted receive logs the chain already settled (nextSeq past them): settled, never re-sent."""
        with session_scope(self.engine) as session:
            for log_id in log_ids:
                row = session.get(ReceiveLogRow, log_id)
                if row is not None and row.status == "accepted":
                    row.status = "settled"

    # settlement outbox ----------------------------------------------------------------------------------------
    def create_settlement(self, log_ids: Sequence[bytes], *, tx_hash: str, nonce: int, raw_tx: bytes) -> int:
        """Outbox row (pending) with the signed transaction, and its logs submitted: one transaction, written
        before the broadcast so that recovery can always find out what was sent."""
        with session_scope(self.engine) as session:
            outbox = db.create_settlement(session, log_ids, self.now())
            outbox.tx_hash, outbox.nonce, outbox.raw_tx = tx_hash, nonce, raw_tx
            return outbox.id

    def update_settlement(self, settlement_id: int, status: str, **fields: Any) -> None:
        with session_scope(self.engine) as session:
            db.update_settlement(session, settlement_id, status, self.now(), **fields)

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
            for row in session.scalars(select(ReceiveLogRow).where(ReceiveLogRow.settlement_id == settlement_id)):
                row.status = "settled" if row.id in settled_ids else "accepted"
                row.settlement_id = None

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
                created += db.record_transfer_request(session, request_id, payee, amount, now, tx_hash=tx_hash)[1]
        return created

    def open_transfer_requests(self) -> list[TransferRequestRow]:
        with session_scope(self.engine) as session:
            return list(session.scalars(select(TransferRequestRow).where(TransferRequestRow.status != "confirmed")
                                        .order_by(TransferRequestRow.created_at)))

    def mark_transfer_sent(self, request_id: bytes) -> None:
        with session_scope(self.engine) as session:
            db.advance_transfer_request(session, request_id, "sent_to_bank", self.now())

    def record_transfer_receipt(self, receipt: TransferReceiptRow) -> None:
        """Keep the bank's signed receipt and mark the request confirmed (same receipt twice: no-op)."""
        with session_scope(self.engine) as session:
            db.advance_transfer_request(session, receipt.request_id, "confirmed", self.now(),
                                        bank_ref=receipt.bank_ref)
            if session.get(TransferReceiptRow, receipt.request_id) is None:
                session.add(receipt)


__all__ = [
    "CcStore", "Balance", "IssueRequestRow", "TransferReceiptRow", "OPEN_SEQ_LIMIT",
    "user_id_hash", "hex32",
]
