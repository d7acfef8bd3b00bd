"""The clearing center's value records (IssueLogRecord, Balance, ReceiveLogRecord) and the repository functions
that write and read its rows (tables.py) in the caller's session; CcStore (store.py) runs them in transactions.

They store what the CC decided; they read no chain view, verify no signature and send no transaction. An insert is
idempotent by its key (the same key with another payload is DuplicateMessage); a status moves only along its flow.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from offchain.clearing_center.tables import (
    BALANCE_KINDS, ChainTxRow, Device, IssueLogRow, ReceiveLogRow, SettledPolicyRow, SettlementOutbox, TransferRequestRow, User,
    UserBalanceEntry,
)
from offchain.core.errors import DuplicateMessage
from offchain.core.types import user_id_hash
from offchain.storage.columns import money, require_money
from offchain.storage.session import get_row, insert_idempotent, payload_hash, transition


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
    """Add the policy ids of newly settled usage batches (their JSON) to `cc_settled_policies` and stamp each
    one's `last_settled_at`; returns how many were new. Called in the transaction that settles them, so the set
    never lags the receive logs."""
    wanted = {bytes.fromhex(pid[2:]) for batch in batches for pid in batch["policyIds"]}
    if not wanted:
        return 0
    known = set(session.scalars(select(SettledPolicyRow.policy_id).where(SettledPolicyRow.policy_id.in_(wanted))))
    new = wanted - known
    if known:
        session.execute(update(SettledPolicyRow).where(SettledPolicyRow.policy_id.in_(known),
                                                       SettledPolicyRow.last_settled_at < now)
                        .values(last_settled_at=now))
    session.add_all(SettledPolicyRow(policy_id=pid, first_settled_at=now, last_settled_at=now) for pid in sorted(new))
    return len(new)


def track_chain_tx(session: Session, kind: str, ref: str, tx_hash: str, raw_tx: bytes | None, now: int) -> None:
    """Follow `tx_hash` to finality (cc_chain_txs), idempotent by hash. Called in the transaction that writes the
    row naming it (a settlement confirmed, an issue or renew request done, a transfer request mirrored), so the
    finality watch's tick reads only what is not final yet, never the whole history."""
    if session.get(ChainTxRow, tx_hash) is None:
        session.add(ChainTxRow(tx_hash=tx_hash, kind=kind, ref=ref, raw_tx=raw_tx, state="pending", reorgs=0,
                               updated_at=now))


RECEIVE_FLOW = {"accepted": ("submitted", "rejected"), "submitted": ("settled", "accepted", "rejected")}
SETTLEMENT_FLOW = {"pending": ("sent", "failed"), "sent": ("confirmed", "failed")}


def create_settlement(session: Session, receive_log_ids: Sequence[bytes], now: int) -> SettlementOutbox:
    """Open an outbox row for one settle() transaction and mark its receive logs submitted."""
    outbox = SettlementOutbox(status="pending", created_at=now, updated_at=now)
    session.add(outbox)
    session.flush()
    for log_id in receive_log_ids:
        row = get_row(session, ReceiveLogRow, log_id, "receive_log")
        transition(row, "submitted", RECEIVE_FLOW, "receive_log")
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
    transition(outbox, status, SETTLEMENT_FLOW, "settlement")
    for name, value in (("tx_hash", tx_hash), ("nonce", nonce), ("raw_tx", raw_tx), ("error", error)):
        if value is not None:
            setattr(outbox, name, value)
    outbox.updated_at = now
    if status in ("confirmed", "failed"):
        logs = list(session.scalars(select(ReceiveLogRow).where(ReceiveLogRow.settlement_id == settlement_id)))
        for row in logs:
            transition(row, "settled" if status == "confirmed" else "accepted", RECEIVE_FLOW, "receive_log")
            if status == "failed":
                row.settlement_id = None
        if status == "confirmed":
            note_settled_policies(session, (row.usage_batch_json for row in logs), now)
    if status == "confirmed" and outbox.tx_hash is not None:
        track_chain_tx(session, "settlement", str(outbox.id), outbox.tx_hash, outbox.raw_tx, now)
    return outbox


def reject_receive_log(session: Session, log_id: bytes, reason: str) -> ReceiveLogRow:
    """Take a receive log out of settlement for good (e.g. it reverted alone with a named contract error)."""
    row = get_row(session, ReceiveLogRow, log_id, "receive_log")
    transition(row, "rejected", RECEIVE_FLOW, "receive_log")
    row.reject_reason = reason
    row.settlement_id = None
    return row


TRANSFER_FLOW = {"requested": ("sent_to_bank", "confirmed", "void"), "sent_to_bank": ("confirmed", "void"),
                  "void": ("requested",)}


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
        if tx_hash is not None:
            track_chain_tx(session, "transfer_request", tx_hash, tx_hash, None, now)
        return row, True
    if (existing.payee, existing.amount) != (payee, amount):
        raise DuplicateMessage(
            f"transfer request 0x{request_id.hex()} exists with another payee or amount",
            kind="transfer_request", key="0x" + request_id.hex(), stored_amount=existing.amount, got_amount=amount,
        )
    return existing, False


def mirror_transfer_request(
    session: Session, request_id: bytes, payee: str, amount: int, tx_hash: str, now: int
) -> str:
    """Mirror one canonical TransferRequested event: 'created', 'same', or, for a row not yet confirmed, 'moved'
    (the id now comes from another transaction), 'revived' (a void id is on the chain again) or 'reassigned' (a
    reorg gave the id another payee or amount: request ids are derived from a contract counter, so a request
    landing again after a reorg can reuse an id). The chain is the truth for a row the bank has not confirmed:
    the old payload was never final, so this is not a second effect. A confirmed row that conflicts raises
    DuplicateMessage (a reorg deeper than the finality depth: the operator's business)."""
    require_money(amount, "amount", positive=True)
    track_chain_tx(session, "transfer_request", tx_hash, tx_hash, None, now)
    existing = session.get(TransferRequestRow, request_id)
    if existing is None:
        session.add(TransferRequestRow(request_id=request_id, payee=payee, amount=amount, status="requested",
                                       tx_hash=tx_hash, created_at=now, updated_at=now))
        session.flush()
        return "created"
    changed = (existing.payee, existing.amount) != (payee, amount)
    if existing.status == "confirmed":
        if changed:
            raise DuplicateMessage(
                f"transfer request 0x{request_id.hex()} was confirmed with another payee or amount than the chain "
                "now says (a reorg deeper than the finality depth)", kind="transfer_request",
                key="0x" + request_id.hex(), stored_amount=existing.amount, got_amount=amount)
        return "same"
    if not changed and existing.tx_hash == tx_hash and existing.status != "void":
        return "same"
    outcome = "reassigned" if changed else "revived" if existing.status == "void" else "moved"
    existing.payee, existing.amount, existing.tx_hash = payee, amount, tx_hash
    existing.status, existing.updated_at = "requested", now  # the bank has not seen this payload: send it anew
    return outcome


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
    transition(row, status, TRANSFER_FLOW, "transfer_request")
    row.updated_at = now
    return row

__all__ = [
    "IssueLogRecord", "Balance", "ReceiveLogRecord", "RECEIVE_FLOW", "SETTLEMENT_FLOW", "TRANSFER_FLOW", "add_user",
    "add_device", "record_issue_log", "latest_issue_log", "close_issue_log", "mark_issue_log_anchored",
    "append_balance_entry", "user_funds", "upsert_receive_log_idempotent", "note_settled_policies",
    "create_settlement", "update_settlement", "reject_receive_log", "record_transfer_request",
    "mirror_transfer_request", "advance_transfer_request",
]
