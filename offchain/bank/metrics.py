"""The bank's scrape-time metrics, read from its ledger tables (offchain/transport/ops.py serves them).

Counts only, no balances; the ledger is append-only, so the totals are monotonic and survive a restart.
"""

from __future__ import annotations

from sqlalchemy import Engine, func, select

from offchain.bank.store import JournalEntry, LedgerAccount
from offchain.storage.session import session_scope
from offchain.transport.ops import Sample


def counts(engine: Engine) -> list[Sample]:
    with session_scope(engine) as session:
        kinds = dict(session.execute(select(JournalEntry.kind, func.count()).group_by(JournalEntry.kind)).all())
        accounts = session.scalar(select(func.count()).select_from(LedgerAccount)) or 0
    return [
        Sample("clearhouse_transfer_requests_paid", "Transfer requests the bank paid (journal entries).",
               float(kinds.get("transfer", 0)), counter=True),
        Sample("clearhouse_deposits", "Deposits credited (journal entries).", float(kinds.get("deposit", 0)),
               counter=True),
        Sample("clearhouse_ledger_accounts", "Ledger accounts opened.", float(accounts)),
    ]


__all__ = ["counts"]
