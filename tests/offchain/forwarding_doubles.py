"""A test double of the SP's ForwardingQueue (offchain/service_provider/forwarder.py), shared by the forwarder
tests: batches oldest first, what was acked and what was parked."""

from __future__ import annotations

from typing import Any

from offchain.service_provider.forwarder import Rejection


class Queue:
    """The SP's queue of unforwarded batches (ForwardingQueue), oldest first."""

    def __init__(self, items: list[tuple[bytes, dict[str, Any]]]) -> None:
        self.items = list(items)
        self.acked: list[str] = []
        self.rejected: list[Rejection] = []

    def unforwarded(self, limit: int) -> list[tuple[bytes, dict[str, Any]]]:
        done = set(self.acked) | {r.batch_id.hex() for r in self.rejected}
        return [i for i in self.items if i[0].hex() not in done][:limit]

    def mark_acked(self, receive_log_ids: list[str]) -> int:
        self.acked.extend(receive_log_ids)
        return len(receive_log_ids)

    def mark_rejected(self, rejections: list[Rejection]) -> int:
        self.rejected.extend(rejections)
        return len(rejections)
