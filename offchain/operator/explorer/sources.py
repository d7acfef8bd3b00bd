"""Where the explorer's facts come from: the audit index (events and decoded calldata), the node, and optional
CC/bank databases for the reconciliation status.

Read-only: nothing here sends a transaction or writes anything but the audit index's own cache. Every page
re-reads the index after syncing it to the chain head, so a page never shows a block the index has not checked.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable
from typing import Any, Protocol

from web3 import Web3

from offchain.core.errors import SettingError
from offchain.operator.audit import (
    AuditIndex,
    ChainEvent,
    Check,
    ContractRef,
    SettledItem,
    content_trail,
    hex32,
    open_index,
    payee_pairs,
    payee_trail,
    policies,
    renewal_mode,
    serial_origin,
    split_amount,
    verify_item,
    verify_renewals,
)

DEFAULT_CONFIRMATIONS = 6  # blocks by distinct signers before money counts as final (docs: Clique, floor(N/2)+1)

__all__ = ["AuditIndex", "ChainEvent", "Check", "ContractRef", "SettledItem", "ExplorerConfig", "Sources",
           "hex32", "payee_pairs", "policies", "renewal_mode", "serial_origin", "split_amount", "verify_item",
           "verify_renewals", "usage_rows", "usage_summary", "usage_by_batch_policy", "settled_blocks", "content_trail",
           "payee_trail", "DEFAULT_CONFIRMATIONS"]


class IndexReader(Protocol):
    """What the pages read: an AuditIndex (the protocol keeps test doubles honest)."""

    w3: Web3
    ref: ContractRef
    contract: Any
    db: sqlite3.Connection

    @property
    def last_block(self) -> int: ...

    def sync(self, to_block: int | None = None) -> Any: ...

    def events(self, name: str, **where: str | bytes) -> list[ChainEvent]: ...

    def settled_items(self, tx_hash: str) -> list[SettledItem]: ...


@dataclass(frozen=True)
class ExplorerConfig:
    """Everything `clearhouse explorer` is started with (paths are read lazily, in the serving thread)."""

    rpc_url: str
    deployment_path: Path
    cache_dir: Path | None = None
    confirmations: int = DEFAULT_CONFIRMATIONS
    network_file: Path | None = None
    cc_db_url: str | None = None
    bank_db_url: str | None = None
    display_rows: int = 200

    def __post_init__(self) -> None:
        if self.confirmations < 1:
            raise SettingError(f"--confirmations must be at least 1, got {self.confirmations}",
                               confirmations=self.confirmations)


class Sources:
    """The open audit index plus the configuration; `refresh()` syncs the index when the chain moved."""

    def __init__(self, config: ExplorerConfig, index: AuditIndex) -> None:
        self.config = config
        self.index = index
        self._memo: dict[tuple[str, int, str], Any] = {}

    def per_head(self, name: str, compute: Callable[[], Any]) -> Any:
        """`compute()` once per indexed head (number and hash): repeated views of an unchanged chain reuse it."""
        key = (name, self.index.last_block, self.head_hash())
        if key not in self._memo:
            self._memo = {k: v for k, v in self._memo.items() if k[1:] == key[1:]}  # drop older heads
            self._memo[key] = compute()
        return self._memo[key]

    @classmethod
    def open(cls, config: ExplorerConfig) -> Sources:
        return cls(config, open_index(rpc_url=config.rpc_url, deployment_path=config.deployment_path,
                                      cache_dir=config.cache_dir))

    @property
    def w3(self) -> Web3:
        return self.index.w3

    @property
    def ref(self) -> ContractRef:
        return self.index.ref

    def refresh(self) -> int:
        """Sync the index if the node's head moved (or was replaced); return the indexed head."""
        if self.w3.eth.block_number != self.index.last_block:
            self.index.sync()
        return self.index.last_block

    def head_hash(self) -> str:
        return "0x" + bytes(self.w3.eth.get_block(self.index.last_block)["hash"]).hex()

    def close(self) -> None:
        self.index.close()


# --- reads the audit index does not offer yet (paged usage logs and their aggregates) ---------------------------
# They read the index's `usage_logs` table directly; move them into offchain.operator.audit when its split lands.
_USAGE_KEYS = ("serial", "seq", "policy_id", "fee", "receiver", "used_at", "tx_hash", "block")


def _where(serials: list[str] | None, policy_ids: list[str] | None) -> tuple[str, list[str]]:
    clauses, params = [], []
    for column, values in (("serial", serials), ("policy_id", policy_ids)):
        if values is not None:
            clauses.append(f"{column} IN ({','.join('?' * len(values))})" if values else "0")
            params += [v.lower() for v in values]
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def usage_rows(index: IndexReader, *, serials: list[str] | None = None, policy_ids: list[str] | None = None,
               limit: int | None = None) -> list[dict[str, Any]]:
    """Usage logs decoded from settle calldata, in chain order, optionally only the first `limit`."""
    where, params = _where(serials, policy_ids)
    sql = f"SELECT {', '.join(_USAGE_KEYS)} FROM usage_logs{where} ORDER BY block, serial, seq"  # noqa: S608
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    return [dict(zip(_USAGE_KEYS, row)) for row in index.db.execute(sql, params)]


def usage_summary(index: IndexReader, *, serials: list[str] | None = None, policy_ids: list[str] | None = None,
                  group_by: str | None = None) -> list[tuple[Any, int, int]]:
    """(group, count, sum of fees) of the usage logs; group is None without `group_by` (one row)."""
    if group_by not in (None, "policy_id", "serial", "receiver"):
        raise SettingError(f"cannot group usage logs by {group_by!r}", group_by=group_by)
    where, params = _where(serials, policy_ids)
    key = group_by or "NULL"
    sql = f"SELECT {key}, COUNT(*), COALESCE(SUM(fee), 0) FROM usage_logs{where}"  # noqa: S608
    if group_by:
        sql += f" GROUP BY {group_by} ORDER BY {group_by}"
    return [(r[0], int(r[1]), int(r[2])) for r in index.db.execute(sql, params)]


def usage_by_batch_policy(index: IndexReader, serials: list[str]) -> list[tuple[str, str, int, str, int, int]]:
    """(tx_hash, serial, block, policy_id, count, fees) of the usage logs of `serials`, per settle tx and policy."""
    where, params = _where(serials, None)
    sql = (f"SELECT tx_hash, serial, block, policy_id, COUNT(*), SUM(fee) FROM usage_logs{where} "  # noqa: S608
           "GROUP BY tx_hash, serial, policy_id ORDER BY block, serial, policy_id")
    return [(r[0], r[1], int(r[2]), r[3], int(r[4]), int(r[5])) for r in index.db.execute(sql, params)]


def settled_blocks(index: IndexReader) -> list[tuple[int, int]]:
    """(block, settled fees) per block that settled usage."""
    sql = "SELECT block, SUM(fee) FROM usage_logs GROUP BY block ORDER BY block"
    return [(int(r[0]), int(r[1])) for r in index.db.execute(sql)]
