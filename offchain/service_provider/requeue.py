"""Putting a parked usage batch back in the forwarding queue (`clearhouse sp requeue BATCH`), after the cause of the
CC's refusal is fixed (a member re-registered, a policy published, the CC upgraded).

Only a `rejected` batch moves, back to `pending`; its recorded refusal is kept in the log line, not in the row. The
forwarder of a running SP picks it up at its next round: the SP need not be stopped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine

from offchain.core.errors import InvalidTransition
from offchain.core.types import from_hex, to_hex
from offchain.service_provider.store import SpBatch, rejected_batches
from offchain.storage.session import get_row, session_scope


@dataclass(frozen=True)
class Requeued:
    batch_id: str
    serial: str
    first_seq: int
    count: int
    was_error: str | None
    was_message: str | None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def requeue(engine: Engine, batch_id_hex: str, now: int) -> Requeued:
    """Move the parked batch `batch_id_hex` back to `pending`; NotFound if unknown, InvalidTransition if not parked."""
    batch_id = from_hex(batch_id_hex, "batch")
    with session_scope(engine) as session:
        row = get_row(session, SpBatch, batch_id, "usage_batch")
        if row.status != "rejected":
            raise InvalidTransition(f"usage batch {to_hex(batch_id)} is {row.status}, not parked (rejected): only "
                                    "a parked batch is requeued", kind="usage_batch", current=row.status,
                                    wanted="pending")
        done = Requeued(to_hex(batch_id), to_hex(row.serial), row.first_seq, row.count, row.reject_error,
                        row.reject_message)
        row.status, row.updated_at, row.reject_error, row.reject_message = "pending", now, None, None
    return done


def parked(engine: Engine, limit: int = 100) -> list[dict[str, Any]]:
    """The latest parked batches with the CC's refusal (what `clearhouse sp parked` lists)."""
    with session_scope(engine) as session:
        return [{"batch_id": to_hex(r.id), "serial": to_hex(r.serial), "first_seq": r.first_seq, "count": r.count,
                 "error": r.reject_error, "message": r.reject_message, "updated_at": r.updated_at}
                for r in rejected_batches(session, limit)]


__all__ = ["requeue", "parked", "Requeued"]
