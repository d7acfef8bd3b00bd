"""The clearing center's repository: `CcStore`, the typed queries of the CC database, every method one
transaction over the session-level functions of records.py and the tables of tables.py.

It stores what the CC decided; it reads no chain view, verifies no signature and sends no transaction. Balances are
derived from append-only `user_balance_entries` rows, never updated.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Engine, func, select

from offchain.clearing_center.records import (
    TRANSFER_FLOW, Balance, IssueLogRecord, ReceiveLogRecord, add_device, add_user, advance_transfer_request,
    append_balance_entry, close_issue_log, create_settlement, latest_issue_log, mark_issue_log_anchored,
    mirror_transfer_request, note_settled_policies, record_issue_log, reject_receive_log, track_chain_tx,
    upsert_receive_log_idempotent, update_settlement, user_funds,
)
from offchain.clearing_center.tables import (
    OPEN_TRANSFER_STATUSES, ChainTxRow, Device, IssueLogRow, IssueRequestRow, ReceiveLogRow, SettledPolicyRow,
    SettlementOutbox, TransferReceiptRow, TransferRequestRow, User, UserBalanceEntry, create_schema,
)
from offchain.core.errors import NotFound
from offchain.core.types import Clock, to_hex, user_id_hash
from offchain.storage.columns import money
from offchain.storage.session import get_row, session_scope, transition


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

    def released_serials(self, user_id: str) -> set[bytes]:
        """The serials of this user whose release is already credited (a `release` entry): not checked again."""
        with session_scope(self.engine) as session:
            return {bytes(s) for s in session.scalars(
                select(UserBalanceEntry.serial).where(UserBalanceEntry.user_id == user_id,
                                                      UserBalanceEntry.kind == "release",
                                                      UserBalanceEntry.serial.is_not(None)))}

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
            if row.tx_hash is not None:
                track_chain_tx(session, row.kind, f"{row.device}:{row.request_id}", row.tx_hash, row.raw_tx, now)

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

    def settled_policy_ids(self, *, since: int | None = None) -> list[bytes]:
        """Every policy id that appears in a settled receive log (candidates for transfer requests), in the order
        they first settled: read from `cc_settled_policies`, one row per policy, whatever the history's length;
        with `since`, only those a receive log settled for at or after it. A reorg that un-settles a log leaves
        its policy here; the transfer worker skips policies with nothing accrued, so a candidate too many costs
        one view call, never a transfer."""
        query = select(SettledPolicyRow.policy_id)
        if since is not None:
            query = query.where(SettledPolicyRow.last_settled_at >= since)
        with session_scope(self.engine) as session:
            return list(session.scalars(query.order_by(SettledPolicyRow.first_settled_at,
                                                       SettledPolicyRow.policy_id)))

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
        return sum(1 for _id, outcome in self.mirror_transfer_requests(requests) if outcome == "created")

    def mirror_transfer_requests(self, requests: Iterable[tuple[bytes, str, int, str]]) -> list[tuple[bytes, str]]:
        """Mirror canonical (request_id, payee, amount, tx_hash) events (`mirror_transfer_request`), in one
        transaction; returns (request_id, outcome) per event."""
        now = self.now()
        with session_scope(self.engine) as session:
            return [(request_id, mirror_transfer_request(session, request_id, payee, amount, tx_hash, now))
                    for request_id, payee, amount, tx_hash in requests]

    def open_transfer_requests(self) -> list[TransferRequestRow]:
        """Requests to deliver to the bank (neither confirmed nor void), oldest first."""
        with session_scope(self.engine) as session:
            return list(session.scalars(select(TransferRequestRow)
                                        .where(TransferRequestRow.status.in_(OPEN_TRANSFER_STATUSES))
                                        .order_by(TransferRequestRow.created_at)))

    def transfer_requests_to_verify(self) -> list[TransferRequestRow]:
        """Open requests whose transaction is not followed to finality yet, not final, or was ever reorged: their
        id may be gone from the canonical chain. (A request whose transaction became final without a reorg is
        known to be on chain.)"""
        with session_scope(self.engine) as session:
            trusted = select(ChainTxRow.tx_hash).where(ChainTxRow.state == "final", ChainTxRow.reorgs == 0)
            return list(session.scalars(select(TransferRequestRow)
                                        .where(TransferRequestRow.status.in_(OPEN_TRANSFER_STATUSES),
                                               TransferRequestRow.tx_hash.is_not(None),
                                               TransferRequestRow.tx_hash.not_in(trusted))
                                        .order_by(TransferRequestRow.created_at)))

    def void_transfer_requests(self, request_ids: Iterable[bytes]) -> int:
        """Mark open requests `void` (their id is not on the canonical chain); returns how many changed."""
        now, changed = self.now(), 0
        with session_scope(self.engine) as session:
            for request_id in request_ids:
                row = get_row(session, TransferRequestRow, request_id, "transfer_request")
                if row.status in OPEN_TRANSFER_STATUSES:
                    transition(row, "void", TRANSFER_FLOW, "transfer_request")
                    row.updated_at, changed = now, changed + 1
        return changed

    def transfer_request_txs_in_flight(self) -> list[str]:
        """Transactions of open requests that are not final yet: one of them may still land (again) and request
        the accruals, so the worker requests nothing new meanwhile."""
        with session_scope(self.engine) as session:
            final = select(ChainTxRow.tx_hash).where(ChainTxRow.state == "final")
            return list(session.scalars(select(TransferRequestRow.tx_hash).distinct()
                                        .where(TransferRequestRow.status.in_(OPEN_TRANSFER_STATUSES),
                                               TransferRequestRow.tx_hash.is_not(None),
                                               TransferRequestRow.tx_hash.not_in(final))))

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
        requests whose transaction is not yet followed in cc_chain_txs. The rows that name them track them as
        they are written (`track_chain_tx`); this scan of the whole history is the finality watch's catch-up at
        start and its safety net every `FULL_SCAN_EVERY` ticks."""
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
            track_chain_tx(session, kind, ref, tx_hash, raw_tx, self.now())

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

__all__ = ["CcStore"]
