"""The clearing center's tables: users and devices, the append-only user balance database, issue logs and issue
requests, receive logs, the settlement outbox, transfer requests and the bank's receipts, followed transactions.

Every CC table is declared here, on `CcTable` (its own MetaData: `create_schema` creates exactly these); rows only,
no queries (records.py holds the repository functions, store.py the transactions). Balances are derived from
append-only `user_balance_entries` rows (deposit / allocation / carry / release), never updated.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, Engine, ForeignKey, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.types import JSON

from offchain.storage import engine as storage
from offchain.storage.columns import Address, Base, Bytes32, Money, new_metadata, status_check


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
    receive logs settle (never rebuilt from their JSON, so a round costs the same whatever the history).
    `last_settled_at`: when a receive log of it last settled (only then can its accrued fees have grown)."""

    __tablename__ = "cc_settled_policies"
    policy_id: Mapped[bytes] = mapped_column(Bytes32, primary_key=True)
    first_settled_at: Mapped[int] = mapped_column(BigInteger)
    last_settled_at: Mapped[int] = mapped_column(BigInteger)


# void: its request id is not on the canonical chain (the transaction that assigned it was reorged out); the
# same id seen again in a canonical TransferRequested event revives it (cc_0005)
TRANSFER_STATUSES = ("requested", "sent_to_bank", "confirmed", "void")
OPEN_TRANSFER_STATUSES = ("requested", "sent_to_bank")


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
    """One transaction followed to finality (offchain.clearing_center.finality): a confirmed settlement, an
    anchored issue log or renewal, a transfer request (the CC's), a release whose IssueLogReleased it credits
    (whoever sent it). `included` until `confirmations` deep, then `final`; the
    recorded (block_number, block_hash) is what a reorg changes. `raw_tx` is the signed bytes re-broadcast when a
    reorg drops it; `dropped` when they can never be mined again (the state is re-derived from the chain)."""

    __tablename__ = "cc_chain_txs"
    __table_args__ = (status_check("state", CHAIN_TX_STATES),)
    tx_hash: Mapped[str] = mapped_column(String(66), primary_key=True)
    kind: Mapped[str] = mapped_column(String(24))  # settlement | issue | renew | transfer_request | release
    ref: Mapped[str] = mapped_column(String(200))  # outbox id, device:request_id, the tx hash, or the serial
    raw_tx: Mapped[bytes | None] = mapped_column(LargeBinary)
    block_number: Mapped[int | None] = mapped_column(BigInteger)
    block_hash: Mapped[str | None] = mapped_column(String(66))
    state: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    reorgs: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[int] = mapped_column(BigInteger)

__all__ = [
    "CcTable", "create_schema", "User", "Device", "IssueLogRow", "UserBalanceEntry", "SettlementOutbox",
    "ReceiveLogRow", "SettledPolicyRow", "TransferRequestRow", "IssueRequestRow", "TransferReceiptRow", "ChainTxRow",
    "ISSUE_STATUSES", "BALANCE_KINDS", "SETTLEMENT_STATUSES", "RECEIVE_STATUSES", "TRANSFER_STATUSES",
    "OPEN_TRANSFER_STATUSES", "CHAIN_TX_STATES",
]
