"""`clearhouse device ...` and `clearhouse content package` through the real CLI, offline: the wallet read from
the device's own files (table and --json), every networked command against a closed port failing as a named
`service_unavailable` error (JSON on stdout with --json), the user taken from the certificate (or a named error
when it names none), and the content provider's settings and payees checked before anything is published.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from devicekit import CONTENT_ID, PASSPHRASE, SERIAL, DeviceHome, device_home, wallet_state

from offchain.cli import main

Member = Any  # tests/offchain/conftest.py Member
ENV = {"CLEARHOUSE_DEVICE_PASSPHRASE": PASSPHRASE, "COLUMNS": "200"}


@pytest.fixture
def home(tmp_path: Path, authority: Any, member: Any, device_member: Member, clearing_center_member: Member,
         content_provider_member: Member, service_provider_member: Member) -> DeviceHome:
    return device_home(tmp_path / "device", authority, device_member, clearing_center_member,
                       content_provider_member, service_provider_member, cap=1_000, price=300)


def device(home: DeviceHome, *args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner(mix_stderr=False).invoke(main, ["device", "--config", str(home.settings_path), *args],
                                              env=ENV if env is None else env)


def test_balance_reads_the_wallet_as_a_table_and_as_json(home: DeviceHome) -> None:
    as_json = device(home, "balance", "--json")
    assert as_json.exit_code == 0, as_json.stderr
    body = json.loads(as_json.stdout)
    assert (body["serial"], body["cap"], body["spent"], body["remaining"], body["expires_at"]) == \
        ("0x" + SERIAL.hex(), 1_000, 0, 1_000, 4_000_000_000)
    table = device(home, "balance")
    assert table.exit_code == 0 and table.stdout.startswith("Wallet")
    assert "0x" + SERIAL.hex() in table.stdout and "2096-10-02T07:06:40Z" in table.stdout  # ISO time in tables


@pytest.mark.parametrize("args", [("upload",), ("catalog",), ("request", "--amount", "5"), ("renew",),
                                  ("download", "0x" + CONTENT_ID.hex()), ("download", "a film", "--version", "2")],
                         ids=lambda a: " ".join(a))
def test_networked_commands_name_the_unreachable_service(home: DeviceHome, args: tuple[str, ...]) -> None:
    result = device(home, *args)
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.startswith("error [service_unavailable]: ") and "127.0.0.1:9" in result.stderr
    assert "  reason: ConnectionRefusedError" in result.stderr and "Traceback" not in result.stderr
    as_json = device(home, *args, "--json")
    assert as_json.exit_code == 1
    assert json.loads(as_json.stdout)["error"] == "service_unavailable"
    assert wallet_state(home) == (0, 0, 0)  # nothing charged, nothing queued


def test_a_missing_passphrase_is_named_before_the_keystore_is_opened(home: DeviceHome) -> None:
    result = device(home, "balance", "--passphrase-env", "NO_SUCH_VARIABLE", env={})
    assert result.exit_code == 2  # --passphrase-env is the group's option: a usage error after the command name
    result = CliRunner(mix_stderr=False).invoke(
        main, ["device", "--config", str(home.settings_path), "--passphrase-env", "NO_SUCH_VARIABLE", "balance"],
        env={"CLEARHOUSE_DEVICE_PASSPHRASE": PASSPHRASE})
    assert result.exit_code == 1 and "set NO_SUCH_VARIABLE" in result.stderr and "  env: NO_SUCH_VARIABLE" in \
        result.stderr


def test_the_config_may_come_from_the_environment(home: DeviceHome) -> None:
    result = CliRunner(mix_stderr=False).invoke(main, ["device", "balance", "--json"],
                                                env={**ENV, "CLEARHOUSE_DEVICE_CONFIG": str(home.settings_path)})
    assert result.exit_code == 0 and json.loads(result.stdout)["cap"] == 1_000


def test_a_certificate_naming_no_user_needs_user(home: DeviceHome, clearing_center_member: Member) -> None:
    settings = json.loads(home.settings_path.read_text())
    settings["cert_path"] = str(clearing_center_member.cert_path)  # a member certificate without a user URN
    home.settings_path.write_text(json.dumps(settings))
    result = device(home, "balance")
    assert result.exit_code == 1
    assert result.stderr.splitlines()[0] == "error [config_error]: the device certificate names no user: pass --user"
    assert f"  cert_path: {clearing_center_member.cert_path}" in result.stderr


# --- content package -------------------------------------------------------------------------------------------
def _cp_settings(tmp_path: Path, cp: Member, deployment: Path, **drop: bool) -> Path:
    values = {"member_id": cp.credentials.member_id, "cert_path": str(cp.cert_path), "key_path": str(cp.key_path),
              "ca_path": str(cp.ca_path), "eth_private_key": "0x" + cp.eth_key.hex(), "rpc_url": "http://127.0.0.1:9",
              "deployment_path": str(deployment)}
    path = tmp_path / "cp.json"
    path.write_text(json.dumps({k: v for k, v in values.items() if not drop.get(k)}))
    return path


def package(config: Path, film: Path, *payees: str) -> Any:
    args = ["content", "package", "--config", str(config), "--sp-url", "https://127.0.0.1:9", "--file", str(film),
            "--name", "film", "--price", "100"]
    for payee in payees:
        args += ["--payee", payee]
    return CliRunner(mix_stderr=False).invoke(main, args)


def test_content_package_refuses_a_payee_without_basis_points(home: DeviceHome, tmp_path: Path,
                                                              content_provider_member: Member) -> None:
    film = tmp_path / "film.bin"
    film.write_bytes(b"frames")
    config = _cp_settings(tmp_path, content_provider_member, home.deployment_path)
    result = package(config, film, content_provider_member.address)
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.startswith(f"error [config_error]: --payee '{content_provider_member.address}' is not "
                                    "ADDRESS:BPS")
    assert "  field: payee" in result.stderr


def test_content_package_names_a_missing_certificate_setting(home: DeviceHome, tmp_path: Path,
                                                             content_provider_member: Member) -> None:
    film = tmp_path / "film.bin"
    film.write_bytes(b"frames")
    config = _cp_settings(tmp_path, content_provider_member, home.deployment_path, cert_path=True)
    result = package(config, film, f"{content_provider_member.address}:10000")
    assert result.exit_code == 1
    assert result.stderr.splitlines() == ["error [config_error]: setting cert_path is required for this service",
                                          "  field: cert_path"]
    missing = package(config, film)
    assert missing.exit_code == 2 and "Missing option '--payee'" in missing.stderr
