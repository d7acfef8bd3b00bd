"""Output people can read and tools can load: `reconcile --csv` writes one table per --section with a stable
header (csv/pandas-ready), tables follow the terminal's width (COLUMNS), and table times are ISO 8601 while --json
keeps raw seconds."""

from __future__ import annotations

import csv
import io

import pytest
from click.testing import CliRunner

from offchain.cli import main
from offchain.core.errors import ConfigError
from offchain.operator.cli_ops import iso
from offchain.operator.reconcile import DIFFERENCE_COLUMNS, Difference, Report, render

REPORT = Report(differences=(Difference("deposits", "0xab", "on chain, not in the bank ledger", chain=500),
                             Difference("transfers", "0xcd", "requested, not yet paid", True, chain=70, bank=0)),
                totals={"deposited": 500, "issued_new_money": 0, "settled": 0, "requested": 70, "confirmed": 0,
                        "bank_paid": 0})


def test_reconcile_csv_differences_have_a_stable_header() -> None:
    out = io.StringIO()
    render(REPORT, "csv", out)
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert tuple(rows[0]) == DIFFERENCE_COLUMNS
    assert [(r["status"], r["area"], r["chain"], r["bank"]) for r in rows] == \
        [("unexplained", "deposits", "500", ""), ("in_flight", "transfers", "70", "0")]


def test_reconcile_csv_totals_is_one_row_and_unknown_sections_are_named() -> None:
    out = io.StringIO()
    render(REPORT, "csv", out, section="totals")
    assert list(csv.DictReader(io.StringIO(out.getvalue()))) == [{k: str(v) for k, v in REPORT.totals.items()}]
    with pytest.raises(ConfigError) as refused:
        render(REPORT, "csv", io.StringIO(), section="everything")
    assert refused.value.field == "section"


def test_reconcile_command_offers_csv_and_section() -> None:
    text = CliRunner().invoke(main, ["reconcile", "--help"]).output
    assert "--csv" in text and "--section [differences|totals]" in text


@pytest.mark.parametrize("columns", [60, 120])
def test_tables_follow_the_terminal_width(columns: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", str(columns))
    out = io.StringIO()
    long = Report(differences=(Difference("books", "entry 1", "a cause long enough to need every column " * 8),),
                  totals=REPORT.totals)
    render(long, "table", out)
    widths = [len(line) for line in out.getvalue().splitlines()]
    assert max(widths) <= columns and max(widths) > columns - 20  # uses the width it has, not a fixed 200


def test_table_times_are_iso_8601_utc() -> None:
    assert iso(0) == "1970-01-01T00:00:00Z" and iso(1_700_000_000) == "2023-11-14T22:13:20Z" and iso(None) == ""
