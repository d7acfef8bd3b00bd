"""The service provider's scrape-time metrics, read from its own tables (offchain/transport/ops.py serves them).

Counts only; the database is the source of truth, so totals survive a restart.
"""

from __future__ import annotations

from sqlalchemy import Engine, func, select

from offchain.service_provider.store import SP_BATCH_STATUSES, SpBatch, SpCatalogItem, SpUsageLog
from offchain.storage.session import session_scope
from offchain.transport.ops import Sample, status_samples


def counts(engine: Engine) -> list[Sample]:
    with session_scope(engine) as session:
        logs = session.scalar(select(func.count()).select_from(SpUsageLog)) or 0
        batches = dict(session.execute(select(SpBatch.status, func.count()).group_by(SpBatch.status)).all())
        catalog = session.scalar(select(func.count()).select_from(SpCatalogItem)) or 0
    return [
        Sample("clearhouse_logs_received", "Logs received by this member, by kind.", float(logs),
               (("kind", "usage"),), counter=True),
        *status_samples("clearhouse_sp_batches", "Usage batches by status (forwarded to the CC, acked once its "
                        "receive log is settled or accepted, rejected = parked for `clearhouse sp requeue`).",
                        batches, SP_BATCH_STATUSES),
        Sample("clearhouse_outbox_depth", "Work waiting for the chain or a peer, by outbox.",
               float(batches.get("pending", 0) + batches.get("forwarded", 0)), (("outbox", "forward"),)),
        Sample("clearhouse_catalog_items", "Secure containers on offer.", float(catalog)),
    ]


__all__ = ["counts"]
