"""The SP's forwarder backs off per batch (issue 9, item 2): a batch the CC refuses transiently waits
RETRY_BASE_S * 2**(failures - 1), capped, before it is sent again, and the batches queued behind it (of any
device) are forwarded meanwhile; the head of the queue never blocks the rest. The CC is a `CcPoster` double that
refuses one batch with a transient per-item code; the clock is a test clock (no sleeps, no wall time)."""

from __future__ import annotations

import asyncio
from typing import Any

from forwarding_doubles import Queue

from offchain.core.errors import ServiceUnavailable
from offchain.service_provider.forwarder import Forwarder, retry_delay_s


def item(n: int) -> tuple[bytes, dict[str, Any]]:
    batch_id = bytes([n]) * 32
    return batch_id, {"id": batch_id.hex()}


class FlakyCc:
    """Accepts every item except those in `failing`, which it refuses with a transient per-item code."""

    def __init__(self, failing: set[str], down: bool = False) -> None:
        self.failing = failing
        self.down = down
        self.sent: list[list[str]] = []

    async def post(self, path: str, body: Any) -> Any:
        ids = [entry["id"] for entry in body["items"]]
        self.sent.append(ids)
        if self.down:
            raise ServiceUnavailable("connection refused", url="https://cc")
        rejected = [{"index": i, "error": ServiceUnavailable.code, "message": "chain node unreachable"}
                    for i, batch_id in enumerate(ids) if batch_id in self.failing]
        return {"accepted": [b for b in ids if b not in self.failing], "rejected": rejected}


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def hexid(n: int) -> str:
    return (bytes([n]) * 32).hex()


def test_transiently_refused_head_backs_off_exponentially_while_later_batches_are_forwarded() -> None:
    queue = Queue([item(0)] + [item(n) for n in range(1, 4)])
    cc, clock = FlakyCc({hexid(0)}), Clock()
    forwarder = Forwarder(queue, cc, batch_max=2, interval_s=1.0, clock=clock, retry_base_s=1.0, retry_max_s=8.0)

    assert asyncio.run(forwarder.forward_once()) == 1  # head refused for now, batch 1 accepted
    assert cc.sent[-1] == [hexid(0), hexid(1)] and queue.rejected == []  # a transient refusal parks nothing
    assert asyncio.run(forwarder.forward_once()) == 2  # head waits: the two behind it fill the request
    assert cc.sent[-1] == [hexid(2), hexid(3)]
    assert asyncio.run(forwarder.forward_once()) == 0 and len(cc.sent) == 2  # only the head left, still waiting

    waits = []
    for _ in range(5):  # each further refusal doubles the wait, up to retry_max_s
        not_before = forwarder.backing_off()[bytes(32)]
        clock.now = not_before - 0.001
        sent_before = len(cc.sent)
        asyncio.run(forwarder.forward_once())
        assert len(cc.sent) == sent_before  # not yet due
        clock.now = not_before
        asyncio.run(forwarder.forward_once())
        assert len(cc.sent) == sent_before + 1 and cc.sent[-1] == [hexid(0)]
        waits.append(forwarder.backing_off()[bytes(32)] - clock.now)
    assert waits == [2.0, 4.0, 8.0, 8.0, 8.0]

    cc.failing.clear()  # the CC recovers: the head is accepted at its next due time and forgotten
    clock.now = forwarder.backing_off()[bytes(32)]
    assert asyncio.run(forwarder.forward_once()) == 1
    assert sorted(queue.acked) == sorted(hexid(n) for n in range(4)) and forwarder.backing_off() == {}


def test_unreachable_cc_backs_off_every_batch_it_tried_and_parks_nothing() -> None:
    queue = Queue([item(n) for n in range(3)])
    cc, clock = FlakyCc(set(), down=True), Clock()
    forwarder = Forwarder(queue, cc, batch_max=8, interval_s=1.0, clock=clock, retry_base_s=1.0, retry_max_s=8.0)
    assert asyncio.run(forwarder.forward_once()) == 0
    assert asyncio.run(forwarder.forward_once()) == 0 and len(cc.sent) == 1  # every batch waits its turn
    cc.down, clock.now = False, clock.now + 1.0
    assert asyncio.run(forwarder.forward_once()) == 3 and queue.rejected == []


def test_retry_delay_doubles_and_is_capped() -> None:
    assert [retry_delay_s(n, 1.0, 60.0) for n in (1, 2, 3, 7, 8, 100)] == [1.0, 2.0, 4.0, 60.0, 60.0, 60.0]
