"""What `clearhouse device ...` prints: a rich table for people (the terminal's real width, times as ISO 8601 UTC,
bytes as 0x-hex) or one JSON document for tools (`--json`: raw Unix seconds, nothing else on the stream).

Presentation only: the values come from `DeviceClient`; nothing here talks to the network or the wallet.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any

from offchain.device.client import SkipResult, UploadResult
from offchain.device.secure_module import KeptAck, WalletBalance

BALANCE_LABELS = {"serial": "serial", "cap": "cap (minor units)", "spent": "spent", "remaining": "remaining",
                  "next_seq": "next usage log seq", "expires_at": "expires at", "pending_count": "pending usage logs",
                  "renewal_pending": "renewal pending"}
CATALOG_COLUMNS = ("content_id", "version", "title", "price", "policy_id")


def iso_utc(ts: int | float) -> str:
    """ISO 8601 UTC of a Unix time: 2026-12-01T15:25:57Z (tables; --json keeps the seconds)."""
    return dt.datetime.fromtimestamp(int(ts), dt.timezone.utc).isoformat().replace("+00:00", "Z")


def _plain(value: Any) -> Any:
    return "0x" + value.hex() if isinstance(value, bytes) else value


# --- JSON documents ------------------------------------------------------------------------------------------------
def balance_doc(balance: WalletBalance) -> dict[str, Any]:
    return {k: _plain(v) for k, v in asdict(balance).items()}


def upload_doc(result: UploadResult) -> dict[str, Any]:
    return {"batches": result.batches, "logs": result.logs, "receive_log_ids": list(result.receive_log_ids)}


def ack_doc(ack: KeptAck) -> dict[str, Any]:
    """One kept SP ack, without its envelope: serial, seqs, receiver, total, when the SP received the batch."""
    return {"serial": _plain(ack.serial), "first_seq": ack.first_seq, "count": ack.count, "receiver": ack.receiver,
            "total": ack.total, "received_at": ack.received_at, "state": ack.state}


def skip_doc(result: SkipResult) -> dict[str, Any]:
    return {"skipped": [ack_doc(a) for a in result.skipped], "released": [ack_doc(a) for a in result.released],
            "settled": [ack_doc(a) for a in result.settled], "waiting": [ack_doc(a) for a in result.waiting]}


def download_doc(path: Path, content_id: bytes, version: int) -> dict[str, Any]:
    return {"content_id": "0x" + content_id.hex(), "version": version, "path": str(path)}


def use_doc(size: int, balance: WalletBalance) -> dict[str, Any]:
    return {"used_bytes": size, "balance": balance_doc(balance)}


# --- tables --------------------------------------------------------------------------------------------------------
def _console(stream: IO[str] | None) -> Any:
    from rich.console import Console

    return Console(file=stream, highlight=False)  # rich reads COLUMNS or the tty's width; 80 when piped


def _print_fields(console: Any, title: str, rows: Sequence[tuple[str, str]]) -> None:
    """The title on a line of its own (a table title would wrap at the table's narrow width), then field | value."""
    from rich.table import Table
    from rich.text import Text

    table = Table(show_header=False)
    table.add_column("field", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")
    for label, value in rows:
        table.add_row(label, Text(value))  # Text: a title like "[x]" is shown, never read as rich markup
    console.print(Text(title, style="bold"))
    console.print(table)


def _balance_rows(balance: WalletBalance) -> list[tuple[str, str]]:
    doc = balance_doc(balance)
    shown = {**doc, "expires_at": iso_utc(balance.expires_at), "renewal_pending": "yes" if balance.renewal_pending
             else "no"}
    return [(label, str(shown[key])) for key, label in BALANCE_LABELS.items()]


def render_balance(balance: WalletBalance, title: str = "Wallet", stream: IO[str] | None = None) -> None:
    _print_fields(_console(stream), title, _balance_rows(balance))


WIDE_CATALOG_COLUMNS = 120  # below this a catalog item is a block of its own, so a full content id still fits


def render_catalog(items: Sequence[Mapping[str, Any]], stream: IO[str] | None = None) -> None:
    """One row per item on a wide terminal; one block per item on a narrow one (full ids either way: a content id
    is what `device download` takes)."""
    from rich.table import Table

    from rich.text import Text

    console = _console(stream)
    title = f"Catalog of the service provider ({len(items)} items)"
    if console.width < WIDE_CATALOG_COLUMNS:
        console.print(Text(title, style="bold"))
        for item in items:
            _print_fields(console, str(item.get("title", "")),
                          [(c, str(item.get(c, ""))) for c in CATALOG_COLUMNS if c != "title"])
        return
    table = Table(title=title, title_justify="left")
    for column in CATALOG_COLUMNS:
        table.add_column(column, overflow="fold", justify="right" if column in ("version", "price") else "left",
                         min_width=66 if column == "content_id" else None)
    for item in items:
        table.add_row(*(Text(str(item.get(column, ""))) for column in CATALOG_COLUMNS))
    console.print(table)


def render_download(path: Path, content_id: bytes, version: int, stream: IO[str] | None = None) -> None:
    doc = download_doc(path, content_id, version)
    _print_fields(_console(stream), "Downloaded", [(k, str(v)) for k, v in doc.items()])


def render_upload(result: UploadResult, stream: IO[str] | None = None) -> None:
    rows = [("batches", str(result.batches)), ("usage logs", str(result.logs)),
            ("receive log ids", "\n".join(result.receive_log_ids) or "-")]
    _print_fields(_console(stream), "Uploaded to the service provider", rows)


def render_skip(result: SkipResult, stream: IO[str] | None = None) -> None:
    """One line per kept ack the run looked at: skipped on chain, found settled, or still waiting."""
    def line(ack: KeptAck) -> str:
        last = ack.first_seq + ack.count - 1
        return f"{_plain(ack.serial)} seqs {ack.first_seq}..{last} ({ack.total}) from {ack.receiver}, " \
               f"received {iso_utc(ack.received_at)}"

    rows = [(label, "\n".join(line(a) for a in acks) or "-") for label, acks in (
        ("skipped (SkipRange sent)", result.skipped), ("released (batch settled from this device)", result.released),
        ("settled by its SP", result.settled),
        ("waiting", result.waiting))]
    _print_fields(_console(stream), "Batches acknowledged by a service provider and not settled", rows)


def render_use(size: int, balance: WalletBalance, stream: IO[str] | None = None) -> None:
    _print_fields(_console(stream), f"Used {size} bytes; wallet", _balance_rows(balance))


def write_json(doc: Any, stream: IO[str]) -> None:
    stream.write(json.dumps(doc, indent=2, default=str) + "\n")
    stream.flush()


__all__ = ["balance_doc", "upload_doc", "download_doc", "use_doc", "ack_doc", "skip_doc", "render_balance",
           "render_catalog", "render_download", "render_upload", "render_skip", "render_use", "write_json", "iso_utc",
           "CATALOG_COLUMNS"]
