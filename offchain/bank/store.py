"""The bank's tables: ledger accounts, journal entries and their postings (the double-entry logic is ledger.py).

Every bank table is declared here, on `BankTable` (its own MetaData: `create_schema` creates exactly these).
Rows are append-only; a correction is a new entry.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, CheckConstraint, Engine, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from offchain.storage import engine as storage
from offchain.storage.columns import Base, Bytes32, Money, new_metadata, status_check


class BankTable(Base):
    """Abstract base of the bank's tables (their own MetaData)."""

    __abstract__ = True
    metadata = new_metadata()


def create_schema(engine: Engine) -> None:
    """Create the ledger tables that do not exist yet (idempotent)."""
    storage.create_schema(engine, BankTable.metadata)


class LedgerAccount(BankTable):
    __tablename__ = "ledger_accounts"
    account_id: Mapped[str] = mapped_column(String(120), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    opened_at: Mapped[int] = mapped_column(BigInteger)


class JournalEntry(BankTable):
    """One balanced business event; `idempotency_key` is the sender's id (deposit id, transfer request id)."""

    __tablename__ = "journal_entries"
    __table_args__ = (status_check("kind", ("open", "deposit", "transfer", "correction")),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    idempotency_key: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(16), index=True)
    payload_hash: Mapped[bytes] = mapped_column(Bytes32)
    bank_ref: Mapped[bytes] = mapped_column(Bytes32, unique=True)
    external_ref: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[int] = mapped_column(BigInteger)


class Posting(BankTable):
    """One leg of a journal entry: positive raises the holder's balance, negative lowers it; legs sum to zero.

    external:cash is the counter-account of money entering the system, so its balance is minus all deposits.
    """

    __tablename__ = "postings"
    __table_args__ = (CheckConstraint("amount <> 0", name="ck_posting_nonzero"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    entry_id: Mapped[int] = mapped_column(ForeignKey("journal_entries.id"), index=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("ledger_accounts.account_id"), index=True)
    amount: Mapped[int] = mapped_column(Money)
