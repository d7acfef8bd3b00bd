"""Rendering a `Trail` as a rich table, JSON or CSV (tables abbreviate bytes32; JSON and CSV keep every digit).
"""

from __future__ import annotations

import csv
import io
import json
import re
from typing import Any

from offchain.core.errors import ConfigError
from offchain.operator.audit.index import Trail


# --- rendering ---------------------------------------------------------------------------------------------------
OUTPUT_FORMATS = ("table", "json", "csv")


_BYTES32_RE = re.compile(r"0x([0-9a-fA-F]{8})[0-9a-fA-F]{50}([0-9a-fA-F]{6})(?![0-9a-fA-F])")


def _short(value: Any) -> str:
    """Tables abbreviate bytes32 hex (0x12345678…abcdef); JSON and CSV keep every digit."""
    return _BYTES32_RE.sub(r"0x\1…\2", str(value))


def render_table(trail: Trail, console: Any) -> None:
    from rich.table import Table

    console.rule(f"[bold]{trail.title}")
    for section in trail.sections:
        table = Table(title=section.title, caption=section.note or None, title_justify="left")
        for column in section.columns:
            table.add_column(column, overflow="fold")
        for row in section.rows:
            table.add_row(*(_short(v) for v in row))
        console.print(table)
    if trail.checks:
        table = Table(title="Signature and consistency checks", title_justify="left")
        for column in ("subject", "check", "result", "detail"):
            table.add_column(column, overflow="fold")
        for check in trail.checks:
            result = "[green]ok" if check.ok else "[bold red]FAILED"
            table.add_row(_short(check.subject), check.what, result, check.detail)
        console.print(table)
        colour = "green" if trail.failures == 0 else "red"
        console.print(f"[{colour}]{len(trail.checks) - trail.failures}/{len(trail.checks)} checks passed")


def render_csv(trail: Trail, stream: io.TextIOBase | Any) -> None:
    """One CSV: each section starts with a header row (`section`, its columns), then its rows."""
    writer = csv.writer(stream)
    for section in trail.sections:
        writer.writerow(["section", *section.columns])
        writer.writerows([section.title, *row] for row in section.rows)
    if trail.checks:
        writer.writerow(["section", "subject", "check", "ok", "detail"])
        writer.writerows(["checks", c.subject, c.what, c.ok, c.detail] for c in trail.checks)


def render(trail: Trail, output: str = "table", stream: Any = None) -> None:
    import sys

    from rich.console import Console

    if output not in OUTPUT_FORMATS:
        raise ConfigError(f"unknown output format {output!r}; use one of {OUTPUT_FORMATS}", output=output)
    stream = stream if stream is not None else sys.stdout
    if output == "json":
        stream.write(json.dumps(trail.to_json(), indent=2) + "\n")
    elif output == "csv":
        render_csv(trail, stream)
    else:
        render_table(trail, Console(file=stream))  # the terminal's width (COLUMNS or the tty; 80 when piped)
