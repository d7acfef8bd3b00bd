"""The SP's forwarder under a hostile queue head (issue 9, item 2): a request the CC refuses for what it carries
(HTTP 413 over its body limit, 422) is split until the one batch at fault is parked, and every other batch is
forwarded in the same round; requests are bounded by bytes as well as count; an unreachable CC parks nothing.
The CC is a `CcPoster` double (the forwarder's declared seam) that behaves like the real one's body limit."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from forwarding_doubles import Queue

from offchain.core.errors import ServiceUnavailable, from_payload
from offchain.service_provider.forwarder import Forwarder, within_bytes

LIMIT_BYTES = 4_000  # the double CC's body limit


class LimitedCc:
    """Accepts every item of a request under LIMIT_BYTES; answers a bigger request with a plain 413."""

    def __init__(self, down: bool = False) -> None:
        self.down = down
        self.requests: list[int] = []

    async def post(self, path: str, body: Any) -> Any:
        self.requests.append(len(body["items"]))
        if self.down:
            raise ServiceUnavailable("connection refused", url="https://cc")
        if len(json.dumps(body)) > LIMIT_BYTES:
            raise from_payload(413, None, "https://cc/v1/receive-logs")
        return {"accepted": [item["id"] for item in body["items"]], "rejected": []}


def item(n: int, padding: int = 0) -> tuple[bytes, dict[str, Any]]:
    batch_id = bytes([n]) * 32
    return batch_id, {"id": batch_id.hex(), "pad": "x" * padding}


def test_oversized_head_of_queue_parked_rest_forwarded_same_round() -> None:
    queue = Queue([item(0, padding=10_000)] + [item(n) for n in range(1, 9)])  # the padded batch sorts first
    cc = LimitedCc()
    forwarder = Forwarder(queue, cc, batch_max=64, interval_s=1.0, max_bytes=1_000_000)

    accepted = asyncio.run(forwarder.forward_once())

    assert accepted == 8 and sorted(queue.acked) == sorted(bytes([n]).hex() * 32 for n in range(1, 9))
    [parked] = queue.rejected
    assert parked.batch_id == bytes(32) and "HTTP 413" in parked.message
    assert asyncio.run(forwarder.forward_once()) == 0 and len(cc.requests) > 1  # nothing left, nothing looping


def test_forward_request_bounded_by_bytes() -> None:
    pending = [item(n, padding=300) for n in range(20)]
    chosen = within_bytes(pending, 2_000)
    assert 1 <= len(chosen) < 20
    assert sum(len(json.dumps(i, separators=(",", ":"))) for _, i in chosen) <= 2_000
    assert within_bytes([item(0, padding=5_000)], 2_000) == [item(0, padding=5_000)]  # one item always goes


def test_unreachable_cc_parks_nothing() -> None:
    queue = Queue([item(n) for n in range(3)])
    forwarder = Forwarder(queue, LimitedCc(down=True), batch_max=64, interval_s=1.0)
    assert asyncio.run(forwarder.forward_once()) == 0
    assert queue.rejected == [] and queue.acked == []
    assert forwarder.last_error is not None and forwarder.last_error.code == "service_unavailable"
