"""Lists as the explorer shows and exports them: a `Table` of plain values, CSV and JSON bytes, and a manifest.

The manifest names what the file is evidence of: the chain id, the contract, the block range the index covered,
the head block's hash, and the SHA-256 of the exact bytes served, so a file handed to someone else can be
checked against the chain. It does not sign anything: anyone with the bytes can recompute the digest.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

FORMATS = ("csv", "json")
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class Table:
    """One list of a page; `key` names it in export URLs (`?export=<key>&format=csv`)."""

    key: str
    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]
    note: str = ""
    total_rows: int | None = None  # rows that exist when `rows` is only the first page of them
    links: dict[str, str] = field(default_factory=dict)  # column -> URL prefix the template links values to

    @property
    def count(self) -> int:
        return len(self.rows) if self.total_rows is None else self.total_rows

    @property
    def truncated(self) -> bool:
        return self.total_rows is not None and self.total_rows > len(self.rows)

    def dicts(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row)) for row in self.rows]


def table_csv(table: Table) -> bytes:
    """RFC 4180 CSV (CRLF line ends), header row first; values exactly as indexed (full hex, integers)."""
    stream = io.StringIO(newline="")
    writer = csv.writer(stream)
    writer.writerow(table.columns)
    writer.writerows(table.rows)
    return stream.getvalue().encode()


def table_json(table: Table) -> bytes:
    """`{"title", "columns", "rows": [{column: value}]}`, keys in column order, one trailing newline."""
    body = {"title": table.title, "columns": list(table.columns), "rows": table.dicts()}
    return (json.dumps(body, indent=1) + "\n").encode()


def render(table: Table, fmt: str) -> bytes:
    if fmt == "csv":
        return table_csv(table)
    if fmt == "json":
        return table_json(table)
    raise ValueError(f"unknown export format {fmt!r}")


def manifest(*, table: Table, fmt: str, data: bytes, chain_id: int, contract: str, from_block: int,
             to_block: int, head_hash: str, page: str) -> dict[str, Any]:
    """What `data` (the bytes of `table` in `fmt`) is evidence of."""
    return {
        "manifest_version": MANIFEST_VERSION,
        "page": page,
        "list": table.key,
        "title": table.title,
        "format": fmt,
        "rows": len(table.rows),
        "columns": list(table.columns),
        "chain_id": chain_id,
        "contract": contract,
        "block_range": [from_block, to_block],
        "head_hash": head_hash,
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
    }


def filename(page: str, table: Table, to_block: int, fmt: str) -> str:
    stem = "-".join(part for part in page.strip("/").replace("/", "-").split("-") if part)[:80] or "overview"
    return f"clearhouse-{stem}-{table.key}-at-{to_block}.{fmt}"


def column_sum(rows: Sequence[tuple[Any, ...]], index: int) -> int:
    return sum(int(row[index]) for row in rows)
