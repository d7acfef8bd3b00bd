"""The clearing center's scrape-time metrics, read from its own tables (offchain/transport/ops.py serves them).

Counts only: no amounts per user, no ids. The database is the source of truth, so totals survive a restart.
"""

from __future__ import annotations

from sqlalchemy import Engine, func, select

from offchain.clearing_center.tables import (
    RECEIVE_STATUSES, SETTLEMENT_STATUSES, TRANSFER_STATUSES, IssueLogRow, IssueRequestRow, ReceiveLogRow,
    SettlementOutbox, TransferRequestRow,
)
from offchain.storage.session import session_scope
from offchain.transport.ops import Sample, status_samples


def counts(engine: Engine) -> list[Sample]:
    with session_scope(engine) as session:
        receive = dict(session.execute(select(ReceiveLogRow.status, func.count()).group_by(ReceiveLogRow.status)).all())
        settle = dict(session.execute(select(SettlementOutbox.status, func.count())
                                      .group_by(SettlementOutbox.status)).all())
        transfers = dict(session.execute(select(TransferRequestRow.status, func.count())
                                         .group_by(TransferRequestRow.status)).all())
        issued = session.scalar(select(func.count()).select_from(IssueLogRow)) or 0
        planned = session.scalar(select(func.count()).select_from(IssueRequestRow)
                                 .where(IssueRequestRow.status == "planned")) or 0
    return [
        Sample("clearhouse_logs_received", "Logs received by this member, by kind.", float(sum(receive.values())),
               (("kind", "receive"),), counter=True),
        Sample("clearhouse_logs_issued", "Issue log revisions signed (a top-up re-signs the same serial).",
               float(issued), counter=True),
        *status_samples("clearhouse_receive_logs", "Receive logs by status (settled, rejected = parked).",
                        receive, RECEIVE_STATUSES),
        *status_samples("clearhouse_settlement_batches", "settle() transactions of the outbox by status.",
                        settle, SETTLEMENT_STATUSES),
        *status_samples("clearhouse_transfer_requests", "Transfer requests by status (confirmed = paid).",
                        transfers, TRANSFER_STATUSES),
        Sample("clearhouse_transfer_requests_paid", "Transfer requests the bank confirmed as paid.",
               float(transfers.get("confirmed", 0)), counter=True),
        Sample("clearhouse_outbox_depth", "Work waiting for the chain or a peer, by outbox.",
               float(settle.get("pending", 0) + settle.get("sent", 0)), (("outbox", "settlement"),)),
        Sample("clearhouse_outbox_depth", "Work waiting for the chain or a peer, by outbox.",
               float(transfers.get("requested", 0) + transfers.get("sent_to_bank", 0)), (("outbox", "transfers"),)),
        Sample("clearhouse_outbox_depth", "Work waiting for the chain or a peer, by outbox.", float(planned),
               (("outbox", "issue_requests"),)),
    ]


__all__ = ["counts"]
