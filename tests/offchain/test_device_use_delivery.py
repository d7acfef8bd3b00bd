"""`clearhouse device use` through the real CLI, offline (issue 10 item 6): a use that fails before delivery
charges nothing, and a delivered use is charged exactly once. After every failure path the wallet's spent, next
seq and pending usage logs are what they were, and no temporary file is left; after success they moved by one
use and the destination holds the plaintext.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from devicekit import CONTENT, CONTENT_ID, PASSPHRASE, DeviceHome, device_home, wallet_state

from offchain.cli import main
from offchain.core.errors import AllowanceExceeded, ConfigError, ContainerTampered, NotFound, WrongDevice

PRICE, CAP = 300, 1_000
Member = Any  # tests/offchain/conftest.py Member


@pytest.fixture
def home(tmp_path: Path, authority: Any, member: Any, device_member: Member, clearing_center_member: Member,
         content_provider_member: Member, service_provider_member: Member) -> DeviceHome:
    return device_home(tmp_path / "device", authority, device_member, clearing_center_member,
                       content_provider_member, service_provider_member, cap=CAP, price=PRICE)


def use(home: DeviceHome, *args: str) -> Any:
    runner = CliRunner(mix_stderr=False) if "mix_stderr" in CliRunner.__init__.__code__.co_varnames else CliRunner()
    return runner.invoke(main, ["device", "--config", str(home.settings_path), "use", "0x" + CONTENT_ID.hex(),
                                *args], env={"CLEARHOUSE_DEVICE_PASSPHRASE": PASSPHRASE})


def error_code(result: Any) -> str:
    return result.stderr.split("]")[0].removeprefix("error [")


def test_use_to_a_file_charges_once_and_renames_into_place(home: DeviceHome, tmp_path: Path) -> None:
    out = tmp_path / "films" / "film.bin"
    out.parent.mkdir()
    result = use(home, "--out", str(out))
    assert result.exit_code == 0, result.stderr
    assert out.read_bytes() == CONTENT and [p.name for p in out.parent.iterdir()] == ["film.bin"]
    assert wallet_state(home) == (PRICE, 1, 1)


def test_use_to_stdout_streams_the_plaintext_and_reports_on_stderr(home: DeviceHome) -> None:
    result = use(home, "--out", "-", "--json")
    assert result.exit_code == 0, result.stderr
    assert result.stdout_bytes == CONTENT and json.loads(result.stderr)["balance"]["spent"] == PRICE
    assert wallet_state(home) == (PRICE, 1, 1)


@pytest.mark.parametrize("out", [None, "missing/film.bin", "."], ids=["no --out", "missing folder", "a directory"])
def test_unusable_destination_is_refused_before_any_charge(home: DeviceHome, tmp_path: Path, out: str | None,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    before = wallet_state(home)
    result = use(home, *(["--out", out] if out else []))
    assert result.exit_code == 1 and error_code(result) == ConfigError.code and "field: out" in result.stderr
    assert wallet_state(home) == before == (0, 0, 0)


def test_failed_use_charges_nothing_and_leaves_no_temporary_file(home: DeviceHome, tmp_path: Path) -> None:
    """Not downloaded, a wrapped key for another device, a tampered container, and a fee over the allowance."""
    folder = tmp_path / "out"
    folder.mkdir()
    key_file = home.content_dir / f"{CONTENT_ID.hex()}-1.key.json"
    blob_file = home.content_dir / f"{CONTENT_ID.hex()}-1.chsc"
    meta, blob = json.loads(key_file.read_text()), blob_file.read_bytes()
    failures = []
    key_file.unlink()
    failures.append(use(home, "--out", str(folder / "a.bin")))  # not downloaded
    key_file.write_text(json.dumps({**meta, "wrapped_key": {**meta["wrapped_key"], "device_member_id": "other"}}))
    failures.append(use(home, "--out", str(folder / "b.bin")))  # wrapped for another device
    key_file.write_text(json.dumps(meta))
    blob_file.write_bytes(blob[:-1] + bytes([blob[-1] ^ 1]))
    failures.append(use(home, "--out", str(folder / "c.bin")))  # tampered ciphertext
    assert [error_code(r) for r in failures] == [NotFound.code, WrongDevice.code, ContainerTampered.code]
    assert wallet_state(home) == (0, 0, 0) and list(folder.iterdir()) == []
    blob_file.write_bytes(blob)
    for name in ("d.bin", "e.bin", "f.bin"):  # three uses fit in 1,000, the fourth does not
        assert use(home, "--out", str(folder / name)).exit_code == 0
    over = use(home, "--out", str(folder / "g.bin"))
    assert error_code(over) == AllowanceExceeded.code
    assert wallet_state(home) == (3 * PRICE, 3, 3)
    assert sorted(p.name for p in folder.iterdir()) == ["d.bin", "e.bin", "f.bin"]
