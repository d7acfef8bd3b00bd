"""Rendering a `Trail` as a rich table, JSON or CSV (tables abbreviate bytes32 and show times as ISO 8601 UTC; JSON
and CSV keep every digit and the raw Unix seconds). CSV is one table per section, each with its own stable header,
so `csv.DictReader` or `pandas.read_csv` loads it as it is.
"""

from __future__ import annotations

import csv
import io
import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

from offchain.core.errors import PathError, SettingError
from offchain.operator.audit.index import Trail


# --- rendering ---------------------------------------------------------------------------------------------------
OUTPUT_FORMATS = ("table", "json", "csv")


_BYTES32_RE = re.compile(r"0x([0-9a-fA-F]{8})[0-9a-fA-F]{50}([0-9a-fA-F]{6})(?![0-9a-fA-F])")


def _short(value: Any) -> str:
    """Tables abbreviate bytes32 hex (0x12345678…abcdef); JSON and CSV keep every digit."""
    return _BYTES32_RE.sub(r"0x\1…\2", str(value))


TIME_COLUMNS = frozenset({"used_at", "expiresAt", "attestedAt", "receivedAt"})  # Unix seconds on chain
CHECKS_SECTION = "checks"
CHECK_COLUMNS = ("subject", "check", "ok", "detail")


def _cell(column: str, value: Any) -> str:
    if column in TIME_COLUMNS and isinstance(value, int) and not isinstance(value, bool):
        return dt.datetime.fromtimestamp(value, dt.timezone.utc).isoformat().replace("+00:00", "Z")
    return _short(value)


def section_key(title: str) -> str:
    """The --section name of a table: its title without the parenthesis, lower case, words joined by '-'
    ("Usage logs (decoded from settle calldata)" -> "usage-logs")."""
    return re.sub(r"[^a-z0-9]+", "-", re.sub(r"\(.*?\)", "", title).lower()).strip("-")


def csv_tables(trail: Trail) -> dict[str, tuple[tuple[str, ...], list[tuple[Any, ...]]]]:
    """section key -> (header, rows) of every table of the trail, the checks last."""
    tables = {section_key(s.title): (s.columns, list(s.rows)) for s in trail.sections}
    if trail.checks:
        tables[CHECKS_SECTION] = (CHECK_COLUMNS, [(c.subject, c.what, c.ok, c.detail) for c in trail.checks])
    return tables


def render_table(trail: Trail, console: Any) -> None:
    from rich.table import Table

    console.rule(f"[bold]{trail.title}")
    for section in trail.sections:
        table = Table(title=section.title, caption=section.note or None, title_justify="left")
        for column in section.columns:
            table.add_column(column, overflow="fold")
        for row in section.rows:
            table.add_row(*(_cell(c, v) for c, v in zip(section.columns, row)))
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


def render_csv(trail: Trail, stream: io.TextIOBase | Any, section: str | None = None) -> None:
    """One CSV table: the header of SECTION's columns, then its rows (raw values). Without a section, the trail's
    only table, or a ConfigError naming the sections to choose from."""
    tables = csv_tables(trail)
    if section is None and len(tables) == 1:
        section = next(iter(tables))
    if section not in tables:
        choose = ", ".join(tables)
        what = "name one table" if section is None else f"no section {section!r} in this trail"
        raise SettingError(f"--csv writes one table: {what}; --section one of {choose}, or --csv-dir DIR for all",
                           field="section", got=section, candidates=list(tables))
    header, rows = tables[section]
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)


def write_csv_dir(trail: Trail, directory: Path) -> list[Path]:
    """Every table of the trail as DIRECTORY/<section>.csv (created if needed); returns the files written."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PathError(f"cannot create the directory {directory}: {exc.strerror}; choose a writable path",
                        field="csv_dir", directory=str(directory)) from None
    written = []
    for key in csv_tables(trail):
        path = directory / f"{key}.csv"
        with path.open("w", newline="") as stream:
            render_csv(trail, stream, key)
        written.append(path)
    return written


def render(trail: Trail, output: str = "table", stream: Any = None, *, section: str | None = None,
           csv_dir: Path | None = None) -> None:
    import sys

    from rich.console import Console

    if output not in OUTPUT_FORMATS:
        raise SettingError(f"unknown output format {output!r}; use one of {OUTPUT_FORMATS}", output=output)
    stream = stream if stream is not None else sys.stdout
    if csv_dir is not None:
        for path in write_csv_dir(trail, csv_dir):
            print(f"wrote {path}", file=sys.stderr, flush=True)
    elif output == "json":
        stream.write(json.dumps(trail.to_json(), indent=2) + "\n")
    elif output == "csv":
        render_csv(trail, stream, section)
    else:
        render_table(trail, Console(file=stream))  # the terminal's width (COLUMNS or the tty; 80 when piped)
