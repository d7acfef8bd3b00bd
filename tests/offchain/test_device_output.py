"""`clearhouse device ...` output, offline through the real CLI: a readable table by default (the terminal's real
width, expiry as ISO 8601), `--json` for tools (stdout holds one JSON document with raw Unix seconds, a failure
included), and the table renderers of catalog, download and upload at the width they are given.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from devicekit import CONTENT_ID, DOMAIN, PASSPHRASE, SERIAL, DeviceHome, device_home, write_deployment

from offchain.cli import main
from offchain.core.errors import WalletDeploymentMismatch
from offchain.core.messages import Domain
from offchain.device import output
from offchain.device.client import UploadResult

EXPIRES_AT = 4_000_000_000
EXPIRES_ISO = "2096-10-02T07:06:40Z"
Member = Any


@pytest.fixture
def home(tmp_path: Path, authority: Any, device_member: Member, clearing_center_member: Member,
         content_provider_member: Member, service_provider_member: Member) -> DeviceHome:
    return device_home(tmp_path / "device", authority, device_member, clearing_center_member,
                       content_provider_member, service_provider_member, cap=1_000, price=100,
                       expires_at=EXPIRES_AT)


def device(home: DeviceHome, *args: str, columns: int = 100) -> Any:
    runner = CliRunner(mix_stderr=False)
    return runner.invoke(main, ["device", "--config", str(home.settings_path), *args],
                         env={"CLEARHOUSE_DEVICE_PASSPHRASE": PASSPHRASE, "COLUMNS": str(columns)})


def test_balance_is_a_table_with_iso_times_by_default(home: DeviceHome) -> None:
    result = device(home, "balance")
    assert result.exit_code == 0, result.stderr
    assert "expires at" in result.stdout and EXPIRES_ISO in result.stdout
    assert str(EXPIRES_AT) not in result.stdout  # raw seconds stay in --json
    assert "0x" + SERIAL.hex() in result.stdout.replace("\n", "").replace("│", "").replace(" ", "")
    assert max(len(line) for line in result.stdout.splitlines()) <= 100


def test_balance_table_follows_the_terminal_width(home: DeviceHome) -> None:
    narrow, wide = device(home, "balance", columns=60), device(home, "balance", columns=200)
    assert max(len(line) for line in narrow.stdout.splitlines()) <= 60
    assert max(len(line) for line in wide.stdout.splitlines()) > 60  # the serial fits on one line when it can


def test_balance_json_is_one_document_with_raw_seconds(home: DeviceHome) -> None:
    result = device(home, "balance", "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc == {"serial": "0x" + SERIAL.hex(), "cap": 1_000, "spent": 0, "remaining": 1_000, "next_seq": 0,
                   "expires_at": EXPIRES_AT, "pending_count": 0, "renewal_pending": False}


def test_use_reports_a_table_or_json(home: DeviceHome, tmp_path: Path) -> None:
    table = device(home, "use", "0x" + CONTENT_ID.hex(), "--out", str(tmp_path / "a.bin"))
    assert table.exit_code == 0, table.stderr
    assert "Used " in table.stdout and EXPIRES_ISO in table.stdout
    doc = json.loads(device(home, "use", "0x" + CONTENT_ID.hex(), "--out", str(tmp_path / "b.bin"), "--json").stdout)
    assert doc["balance"]["spent"] == 200 and doc["used_bytes"] == (tmp_path / "b.bin").stat().st_size


def test_a_failure_with_json_is_json_on_stdout(home: DeviceHome) -> None:
    device(home, "balance").stdout  # binds the wallet to DOMAIN
    write_deployment(home.deployment_path, Domain(chain_id=DOMAIN.chain_id, verifying_contract="0x" + "ee" * 20))
    failed = device(home, "balance", "--json")
    assert failed.exit_code == 1
    body = json.loads(failed.stdout)
    assert body["error"] == WalletDeploymentMismatch.code and body["fields"]["path"] == str(home.wallet_path)
    assert failed.stderr.startswith(f"error [{WalletDeploymentMismatch.code}]")
    plain = device(home, "balance")  # positive control: without --json stdout stays empty on failure
    assert plain.exit_code == 1 and plain.stdout == ""


def test_catalog_download_and_upload_tables_fit_the_width(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    items = [{"content_id": "0x" + "c1" * 32, "version": 1, "title": "A film with a long title", "price": 120,
              "policy_id": "0x" + "9a" * 32}]
    for render in (lambda s: output.render_catalog(items, s),
                   lambda s: output.render_download(Path("/tmp/x/" + "c1" * 32 + "-1.chsc"), CONTENT_ID, 1, s),
                   lambda s: output.render_upload(UploadResult(2, 17, ("0x" + "ab" * 32, "0x" + "cd" * 32)), s)):
        stream = io.StringIO()
        render(stream)
        text = stream.getvalue()
        assert text and max(len(line) for line in text.splitlines()) <= 80  # a StringIO is no tty: 80 columns
    stream = io.StringIO()
    output.render_catalog(items, stream)  # 80 columns: one block per item, the content id folded in its cell
    flat = stream.getvalue().replace("\n", "").replace("│", "").replace(" ", "")
    assert "0x" + "c1" * 32 in flat and "0x" + "9a" * 32 in flat  # folded, never cut



def test_catalog_is_one_table_on_a_wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    items = [{"content_id": "0x" + "c1" * 32, "version": 1, "title": "A film [red]", "price": 120,
              "policy_id": "0x" + "9a" * 32}]
    monkeypatch.setenv("COLUMNS", "200")  # what rich reads for the terminal's width
    wide = io.StringIO()
    output.render_catalog(items, wide)
    assert any("0x" + "c1" * 32 in line and "A film [red]" in line for line in wide.getvalue().splitlines())
