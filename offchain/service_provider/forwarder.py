"""The SP's forwarder: a background task that sends unacked receive logs to the CC (`POST /v1/receive-logs`)
until it accepts them. A batch the CC refuses for good (any code not in TRANSIENT_ERROR_CODES) is parked as
`rejected` for the operator; a failed request or a transient refusal is retried next round. A request is bounded
by bytes as well as by count, and a request the CC refuses as a whole for what it carries (413, 422) is split
until the one item at fault is parked: one batch never holds back the queue behind it. A batch that failed
transiently (a transient per-item refusal, or a request that failed as a whole) waits RETRY_BASE_S * 2**attempts
(capped at RETRY_MAX_S) before it is sent again, while the batches behind it are forwarded meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from offchain.core.errors import (
    ChainError,
    ChainUnreachable,
    ClearhouseError,
    ConfigError,
    CrlUnavailable,
    RemoteError,
    ServiceUnavailable,
    TlsHandshakeFailed,
    TransportError,
)
from offchain.core.types import to_hex

log = logging.getLogger(__name__)
# Per-item refusals that may pass on a later round (the CC, its chain node or its CRL was unreachable, or it
# failed internally): the batch stays pending. Any other error code the CC reports for a batch is final for it.
TRANSIENT_ERROR_CODES = frozenset({
    TransportError.code, TlsHandshakeFailed.code, RemoteError.code, ServiceUnavailable.code,
    ChainError.code, ChainUnreachable.code, CrlUnavailable.code, ConfigError.code, "internal_error",
})
REJECT_MESSAGE_MAX = 2_000
FORWARD_MAX_BYTES = 8 * 1024 * 1024  # JSON bytes per forward request: well below the CC's HTTP body limit
# Whole-request refusals caused by what the request carries: split the request, park the one item at fault.
REQUEST_FAULT_STATUSES = frozenset({413, 422})
RETRY_BASE_S = 1.0  # first wait of a batch that failed transiently; doubles per failure
RETRY_MAX_S = 60.0  # the longest wait


def retry_delay_s(attempts: int, base_s: float = RETRY_BASE_S, max_s: float = RETRY_MAX_S) -> float:
    """The wait after the `attempts`-th transient failure of one batch (1 -> base_s, 2 -> 2 * base_s, ...)."""
    return min(max_s, base_s * 2 ** min(attempts - 1, 32))


def request_fault(exc: ClearhouseError) -> bool:
    """True when the CC refused the request for its content (too large, malformed), not for being unreachable."""
    status = getattr(exc, "remote_status", None)
    return status in REQUEST_FAULT_STATUSES and exc.code not in TRANSIENT_ERROR_CODES - {RemoteError.code}


def within_bytes(pending: Sequence[tuple[bytes, dict[str, Any]]], max_bytes: int) -> list[tuple[bytes, dict[str, Any]]]:
    """The longest prefix of `pending` whose items' JSON fits `max_bytes` (at least one item)."""
    chosen: list[tuple[bytes, dict[str, Any]]] = []
    total = 0
    for entry in pending:
        size = len(json.dumps(entry[1], separators=(",", ":")))
        if chosen and total + size > max_bytes:
            break
        chosen.append(entry)
        total += size
    return chosen


@dataclass(frozen=True)
class Rejection:
    """The CC refused one forwarded batch for good: its error code and message."""

    batch_id: bytes
    error: str
    message: str


def permanent_rejections(batch_ids: Sequence[bytes], rejected: Sequence[Any]) -> list[Rejection]:
    """The CC's per-item refusals (`index` into the posted items) that are final; transient or malformed entries
    are left out, so those batches are simply forwarded again."""
    final: list[Rejection] = []
    for entry in rejected:
        if not isinstance(entry, dict):
            continue
        index, code = entry.get("index"), entry.get("error")
        if not isinstance(index, int) or not 0 <= index < len(batch_ids) or not isinstance(code, str):
            continue
        if code not in TRANSIENT_ERROR_CODES:
            final.append(Rejection(batch_ids[index], code, str(entry.get("message", ""))[:REJECT_MESSAGE_MAX]))
    return final


def transient_rejections(batch_ids: Sequence[bytes], rejected: Sequence[Any]) -> list[bytes]:
    """The batches the CC refused for now (a transient code): they back off and are forwarded again."""
    return [batch_ids[entry["index"]] for entry in rejected
            if isinstance(entry, dict) and isinstance(entry.get("index"), int)
            and 0 <= entry["index"] < len(batch_ids) and entry.get("error") in TRANSIENT_ERROR_CODES]


class ForwardingQueue(Protocol):
    """What the forwarder needs from the SP (offchain.service_provider.agent.ServiceProvider implements it)."""

    def unforwarded(self, limit: int) -> list[tuple[bytes, dict[str, Any]]]: ...

    def mark_acked(self, receive_log_ids: Sequence[str]) -> int: ...

    def mark_rejected(self, rejections: Sequence[Rejection]) -> int: ...


class CcPoster(Protocol):
    """The CC endpoint the forwarder posts to (offchain.transport.client.JsonClient implements it)."""

    async def post(self, path: str, body: Any) -> Any: ...


class Forwarder:
    """Background task: send unacked receive logs to the CC (`POST /v1/receive-logs`) until it accepts them."""

    def __init__(self, provider: ForwardingQueue, client: CcPoster, *, batch_max: int, interval_s: float,
                 max_bytes: int = FORWARD_MAX_BYTES, clock: Callable[[], float] = time.monotonic,
                 retry_base_s: float = RETRY_BASE_S, retry_max_s: float = RETRY_MAX_S) -> None:
        self._provider = provider
        self._client = client
        self._batch_max = batch_max
        self._interval_s = interval_s
        self._max_bytes = max_bytes
        self._clock = clock
        self._retry_base_s = retry_base_s
        self._retry_max_s = retry_max_s
        self._retry: dict[bytes, tuple[int, float]] = {}  # batch id -> (transient failures, not before)
        self.last_error: ClearhouseError | None = None

    def backing_off(self) -> dict[bytes, float]:
        """Batches waiting after a transient failure: batch id -> the clock time before which it is not sent."""
        return {batch_id: not_before for batch_id, (_n, not_before) in self._retry.items()}

    def _failed_transiently(self, batch_ids: Sequence[bytes]) -> None:
        now = self._clock()
        for batch_id in batch_ids:
            attempts = self._retry.get(batch_id, (0, 0.0))[0] + 1
            self._retry[batch_id] = (attempts, now + retry_delay_s(attempts, self._retry_base_s, self._retry_max_s))

    def _due(self, pending: list[tuple[bytes, dict[str, Any]]]) -> list[tuple[bytes, dict[str, Any]]]:
        """`pending` without the batches still waiting out their backoff, at most batch_max of them."""
        now = self._clock()
        return [entry for entry in pending if self._retry.get(entry[0], (0, 0.0))[1] <= now][:self._batch_max]

    async def forward_once(self) -> int:
        """One round; returns how many receive logs the CC accepted. A batch the CC refuses for good is parked as
        `rejected`; a failed request or a transient refusal is retried next round (kept in `last_error`)."""
        # Read past the batches that are backing off, so that they never hold back the ones behind them.
        limit = self._batch_max + len(self._retry)
        pending = await asyncio.to_thread(self._provider.unforwarded, limit)
        if len(pending) < limit:  # the whole queue was read: forget batches no longer in it (acked, parked)
            open_ids = {batch_id for batch_id, _item in pending}
            self._retry = {k: v for k, v in self._retry.items() if k in open_ids}
        pending = self._due(pending)
        if not pending:
            return 0
        return await self._forward(within_bytes(pending, self._max_bytes))

    async def _forward(self, pending: list[tuple[bytes, dict[str, Any]]]) -> int:
        try:
            answer = await self._client.post("/v1/receive-logs", {"items": [item for _id, item in pending]})
        except ClearhouseError as exc:
            if request_fault(exc):
                return await self._split_or_park(pending, exc)
            self.last_error = exc
            self._failed_transiently([batch_id for batch_id, _item in pending])
            log.warning("forwarding %d receive logs failed: %s (%s); will retry", len(pending), exc.code,
                        exc.message)
            return 0
        self.last_error = None
        batch_ids = [batch_id for batch_id, _item in pending]
        rejections = permanent_rejections(batch_ids, answer.get("rejected") or [])
        transient = transient_rejections(batch_ids, answer.get("rejected") or [])
        for batch_id in set(batch_ids) - set(transient):
            self._retry.pop(batch_id, None)  # accepted or parked: nothing to wait for
        self._failed_transiently(transient)
        if rejections:
            await asyncio.to_thread(self._provider.mark_rejected, rejections)
            for rejection in rejections:
                log.warning("the CC rejected usage batch %s for good: %s (%s)", to_hex(rejection.batch_id),
                            rejection.error, rejection.message)
        return await asyncio.to_thread(self._provider.mark_acked, answer.get("accepted", []))

    async def _split_or_park(self, pending: list[tuple[bytes, dict[str, Any]]], exc: ClearhouseError) -> int:
        """The CC refused the request for what it carries: halve it until the one item at fault is parked."""
        if len(pending) == 1:
            status = getattr(exc, "remote_status", None)
            rejection = Rejection(pending[0][0], exc.code, f"HTTP {status}: {exc.message}"[:REJECT_MESSAGE_MAX])
            await asyncio.to_thread(self._provider.mark_rejected, [rejection])
            self._retry.pop(rejection.batch_id, None)
            log.warning("the CC refused usage batch %s alone (HTTP %s): parked", to_hex(rejection.batch_id), status)
            return 0
        middle = len(pending) // 2
        return await self._forward(pending[:middle]) + await self._forward(pending[middle:])

    async def run(self) -> None:
        from offchain.transport.ops import LoopBackoff

        gate = LoopBackoff("forwarder round", log, self._interval_s)
        while True:
            try:
                accepted = await self.forward_once()
                delay = gate.succeeded()
            except Exception as exc:  # keep the loop alive; the next round retries (one warning per outage)
                accepted, delay = 0, gate.failed(exc)
            if accepted < self._batch_max:
                await asyncio.sleep(delay)


__all__ = ["Forwarder", "ForwardingQueue", "CcPoster", "Rejection", "permanent_rejections", "TRANSIENT_ERROR_CODES",
           "REJECT_MESSAGE_MAX", "FORWARD_MAX_BYTES", "request_fault", "within_bytes", "retry_delay_s",
           "transient_rejections", "RETRY_BASE_S", "RETRY_MAX_S"]
