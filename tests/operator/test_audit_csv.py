"""`clearhouse audit ... --csv` writes one table per `--section`, `--csv-dir DIR` one file per section, each with
the section's own stable header, loadable as it is by `csv.DictReader` and `pandas.read_csv`; a missing or wrong
section name lists the trail's sections; tables show chain times as ISO 8601 while CSV keeps the Unix seconds.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from pathlib import Path
from typing import Any as ChainWorld  # the `world` fixture of tests/operator/conftest.py

import pandas
import pytest
from click.testing import CliRunner

from offchain.cli import main
from offchain.core.errors import ConfigError
from offchain.core.types import to_hex
from offchain.operator import audit
from offchain.operator.audit.render import CHECK_COLUMNS, csv_tables, render_csv, section_key


@pytest.fixture()
def trail(world: ChainWorld, tmp_path: Path) -> audit.Trail:
    with audit.open_index(rpc_url=world.w3.provider.endpoint_uri, deployment_path=world.deployment_path,
                          cache_dir=tmp_path) as index:
        return audit.serial_trail(index, world.notes["serials"]["s1"])


def run(world: ChainWorld, tmp_path: Path, *args: str) -> object:
    return CliRunner(mix_stderr=False).invoke(main, ["audit", "serial", to_hex(world.notes["serials"]["s1"]),
                                                     "--rpc", world.w3.provider.endpoint_uri, "--deployment",
                                                     str(world.deployment_path), "--cache-dir", str(tmp_path / "c"),
                                                     *args])


def test_section_keys_are_stable_slugs() -> None:
    assert section_key("Usage logs (decoded from settle calldata)") == "usage-logs"
    assert section_key("Renewals into this serial (top-up when old == new)") == "renewals-into-this-serial"
    assert section_key("Accruals requested (payee's split share)") == "accruals-requested"


def test_each_section_is_one_table_with_its_own_header(trail: audit.Trail) -> None:
    for section in trail.sections:
        out = io.StringIO()
        render_csv(trail, out, section_key(section.title))
        rows = list(csv.DictReader(io.StringIO(out.getvalue())))
        assert len(rows) == len(section.rows)
        assert out.getvalue().splitlines()[0].split(",") == list(section.columns)
        frame = pandas.read_csv(io.StringIO(out.getvalue()))
        assert tuple(frame.columns) == section.columns and len(frame) == len(section.rows)
    usage = trail.section("Usage logs (decoded from settle calldata)")
    out = io.StringIO()
    render_csv(trail, out, "usage-logs")
    frame = pandas.read_csv(io.StringIO(out.getvalue()))
    assert list(frame["fee"]) == [row[5] for row in usage.rows] == [100, 250, 100]
    assert list(frame["used_at"]) == [row[7] for row in usage.rows]  # raw Unix seconds, not ISO text


def test_a_missing_or_unknown_section_lists_the_sections(trail: audit.Trail) -> None:
    for section in (None, "everything"):
        with pytest.raises(ConfigError) as info:
            render_csv(trail, io.StringIO(), section)
        assert info.value.field == "section" and info.value.got == section
        assert info.value.candidates == list(csv_tables(trail)) and "usage-logs" in info.value.candidates


def test_cli_csv_section_and_csv_dir(world: ChainWorld, tmp_path: Path) -> None:
    one = run(world, tmp_path, "--csv", "--section", "usage-logs")
    assert one.exit_code == 0, one.stderr
    assert one.stdout.splitlines()[0] == "block,tx,serial,seq,policy_id,fee,receiver,used_at"
    assert len(pandas.read_csv(io.StringIO(one.stdout))) == 3
    checks = run(world, tmp_path, "--csv", "--section", "checks")
    assert checks.stdout.splitlines()[0] == ",".join(CHECK_COLUMNS)
    assert set(pandas.read_csv(io.StringIO(checks.stdout))["ok"]) == {True}
    unnamed = run(world, tmp_path, "--csv")
    assert unnamed.exit_code == 1 and unnamed.stdout == "" and "--section one of origin," in unnamed.stderr
    out = tmp_path / "tables"
    every = run(world, tmp_path, "--csv-dir", str(out))
    assert every.exit_code == 0, every.stderr
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted(f"{key}.csv" for key in ("origin", "deposits-of-the-user", "issue-log-recorded",
                                                    "renewals-into-this-serial", "renewals-closing-this-serial",
                                                    "settled-batches", "usage-logs", "checks"))
    assert (out / "usage-logs.csv").read_text() == one.stdout
    for path in out.iterdir():
        pandas.read_csv(path)  # every file loads as it is
        assert f"wrote {path}" in every.stderr


def test_tables_show_chain_times_as_iso_8601(world: ChainWorld, tmp_path: Path, trail: audit.Trail) -> None:
    issued = trail.section("Issue log recorded")
    expires_at = issued.rows[0][issued.columns.index("expiresAt")]
    iso = dt.datetime.fromtimestamp(expires_at, dt.timezone.utc).isoformat().replace("+00:00", "Z")
    table = CliRunner(mix_stderr=False).invoke(main, ["audit", "serial", to_hex(world.notes["serials"]["s1"]),
                                                      "--rpc", world.w3.provider.endpoint_uri, "--deployment",
                                                      str(world.deployment_path), "--cache-dir", str(tmp_path / "c")],
                                               env={"COLUMNS": "250"})
    assert table.exit_code == 0, table.stderr
    assert iso in table.stdout and str(expires_at) not in table.stdout  # raw seconds stay in --json and CSV
