"""A loaded consortium for the pipeline benchmark: a long settled history (settled receive logs with their packed
usage entries, bulk written straight into the clearing center's database, as the CC itself would have left them
after settling) and a large catalog at the SP (many titles, a few of them large containers).

Bench only: the rows carry made-up signatures and ids (the CC never re-verifies a settled log), serials that are not
on chain, and policies the caller names (they must exist on chain: the transfer worker reads them). Nothing here
signs, verifies or sends a transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, insert

from offchain.clearing_center.store import CcStore
from offchain.clearing_center.tables import ReceiveLogRow, SettledPolicyRow
from offchain.core.messages import UsageBatch, keccak, policy_id

HISTORY_SP = "0x" + "5e" * 20  # the receiver of the history's batches (an SP long gone)
INSERT_CHUNK = 2_000  # rows per executemany


@dataclass(frozen=True)
class History:
    logs: int  # usage logs settled in the history
    receive_logs: int  # rows written to receive_logs (one per usage batch)
    serials: int
    policies: tuple[bytes, ...]

    def to_json(self) -> dict[str, Any]:
        return {"settled_usage_logs": self.logs, "settled_receive_logs": self.receive_logs, "serials": self.serials,
                "policies": len(self.policies)}


@dataclass(frozen=True)
class Catalog:
    items: int
    large: int  # how many of them are large containers
    large_bytes: int  # content bytes of each large one
    publish_s: float

    def to_json(self) -> dict[str, Any]:
        return {"catalog_items": self.items, "large_containers": self.large, "large_container_bytes": self.large_bytes,
                "catalog_publish_s": round(self.publish_s, 1)}


def catalog_content_id(i: int) -> bytes:
    from offchain.content_provider.publisher import content_id_for

    return content_id_for(f"bench-catalog-{i}")


def catalog_policy_ids(items: int) -> list[bytes]:
    """The policy ids (version 1) of the bench catalog's titles, known before they are published."""
    return [policy_id(catalog_content_id(i), 1) for i in range(items)]


def publish_catalog(provider: Any, items: int, *, large: int, large_bytes: int, price_minor: int,
                    payees: Sequence[tuple[str, int]]) -> Catalog:
    """`provider` (a ContentProvider) publishes `items` titles at `price_minor`, the first `large` of them with
    `large_bytes` of content each (the rest a few KiB)."""
    import os
    import time

    started = time.perf_counter()
    for i in range(items):
        body = os.urandom(large_bytes) if i < large else f"catalog title {i}\n".encode() * 256
        provider.publish(body, content_id=catalog_content_id(i), version=1, price=price_minor, payees=payees,
                         title=f"catalog {i}")
    return Catalog(items=items, large=min(large, items), large_bytes=large_bytes,
                   publish_s=time.perf_counter() - started)


def history_batch(serial: bytes, first_seq: int, count: int, policies: Sequence[bytes], fee_minor: int,
                  used_at: int) -> UsageBatch:
    """One usage batch of `count` logs at `fee_minor` each, log i using policies[(first_seq + i) % len]."""
    chosen = [policies[(first_seq + i) % len(policies)] for i in range(count)]
    order = list(dict.fromkeys(chosen))
    index = {pid: i for i, pid in enumerate(order)}
    tail = fee_minor.to_bytes(11, "big") + used_at.to_bytes(4, "big")
    entries = b"".join(bytes((index[pid],)) + tail for pid in chosen)
    return UsageBatch(serial=serial, first_seq=first_seq, receiver=HISTORY_SP, policy_ids=tuple(order),
                      entries=entries)


def history_rows(logs: int, *, batch_logs: int, serials: int, policies: Sequence[bytes], fee_minor: int,
                 now: int) -> Any:
    """The receive_logs rows (dicts for one executemany) of `logs` settled usage logs over `serials` serials."""
    per_serial = -(-logs // serials)
    written = 0
    for s in range(serials):
        serial = keccak(b"bench-history-serial" + s.to_bytes(8, "big"))
        payer = "0x" + keccak(b"bench-history-device" + s.to_bytes(8, "big"))[-20:].hex()
        for first in range(0, per_serial, batch_logs):
            count = min(batch_logs, per_serial - first, logs - written)
            if count <= 0:
                return
            batch = history_batch(serial, first, count, policies, fee_minor, now - 86_400)
            row_id = keccak(serial + first.to_bytes(8, "big"))
            yield {"id": row_id, "sp_address": HISTORY_SP, "payer": payer, "serial": serial, "first_seq": first,
                   "count": count, "total": count * fee_minor, "usage_batch_json": batch.to_json(),
                   "device_sig": b"\x01" * 65, "receiver_sig": b"\x02" * 65, "received_at": now - 86_400,
                   "status": "settled", "settlement_id": None, "reject_reason": None,
                   "payload_hash": keccak(row_id)}
            written += count


def fill_settled_history(engine: Engine, logs: int, *, policies: Sequence[bytes], batch_logs: int = 16,
                         serials: int = 1_000, fee_minor: int = 10, now: int) -> History:
    """Create the CC schema (at head) if needed and write `logs` settled usage logs, plus the settled-policy set
    the CC keeps for them; returns what was written."""
    if not policies:
        raise ValueError("the history needs at least one policy id")
    CcStore(engine, lambda: now).create_schema()
    receive_logs, chunk = 0, []
    with engine.begin() as connection:
        for row in history_rows(logs, batch_logs=batch_logs, serials=serials, policies=policies,
                                fee_minor=fee_minor, now=now):
            chunk.append(row)
            if len(chunk) == INSERT_CHUNK:
                connection.execute(insert(ReceiveLogRow), chunk)
                receive_logs, chunk = receive_logs + len(chunk), []
        if chunk:
            connection.execute(insert(ReceiveLogRow), chunk)
            receive_logs += len(chunk)
        connection.execute(insert(SettledPolicyRow), [{"policy_id": pid, "first_settled_at": now - 86_400,
                                                       "last_settled_at": now - 86_400}
                                                      for pid in dict.fromkeys(policies)])
    return History(logs=logs, receive_logs=receive_logs, serials=serials, policies=tuple(dict.fromkeys(policies)))


__all__ = ["History", "Catalog", "fill_settled_history", "history_batch", "history_rows", "publish_catalog",
           "catalog_policy_ids", "HISTORY_SP"]
