"""Service settings: role defaults, environment over file over defaults, TOML and JSON files, signing and
catalog keys, and the structlog set-up."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from offchain.core.errors import ConfigError
from offchain.core.settings import (
    BankSettings,
    ClearingCenterSettings,
    DeviceSettings,
    ServiceProviderSettings,
    configure_logging,
    load_settings,
)

KEY_HEX = "0x" + "11" * 32


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MEMBER_ID", "PORT", "DATABASE_URL", "SETTLE_INTERVAL_S", "ETH_PRIVATE_KEY", "LOG_LEVEL"):
        monkeypatch.delenv("CLEARHOUSE_" + name, raising=False)


def test_role_defaults_fill_port_and_database_url() -> None:
    cc = ClearingCenterSettings(member_id="cc-1")
    bank = BankSettings(member_id="bank-1")
    device = DeviceSettings(member_id="device-1")
    assert (cc.port, cc.database_url) == (8441, "sqlite:///var/clearing_center.db")
    assert (bank.port, bank.cc_management_account) == (8443, "cc:management")
    assert device.port == 0 and device.host == "127.0.0.1"


def test_env_overrides_toml_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "cc.toml"
    path.write_text('member_id = "cc-file"\nsettle_interval_s = 5\nport = 9100\n')
    monkeypatch.setenv("CLEARHOUSE_SETTLE_INTERVAL_S", "0.5")

    settings = load_settings(ClearingCenterSettings, path)

    assert (settings.member_id, settings.port, settings.settle_interval_s) == ("cc-file", 9100, 0.5)
    assert isinstance(settings, ClearingCenterSettings)


def test_json_file_and_explicit_overrides(tmp_path: Path) -> None:
    path = tmp_path / "sp.json"
    path.write_text(json.dumps({"member_id": "sp-1", "forward_batch_max": 8}))

    settings = load_settings(ServiceProviderSettings, path, forward_batch_max=16)

    assert (settings.member_id, settings.forward_batch_max) == ("sp-1", 16)


@pytest.mark.parametrize(
    "name, body",
    [("x.yaml", "member_id: a"), ("x.toml", 'member_id = "a"\nno_such_field = 1'), ("x.toml", "member_id = ")],
    ids=["wrong_suffix", "unknown_field", "bad_toml"],
)
def test_bad_settings_file_raises_config_error(tmp_path: Path, name: str, body: str) -> None:
    path = tmp_path / name
    path.write_text(body)
    with pytest.raises(ConfigError) as info:
        load_settings(BankSettings, path)
    assert info.value.path == str(path)


def test_missing_member_id_and_missing_file_raise_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="member_id"):
        load_settings(BankSettings)
    with pytest.raises(ConfigError, match="not found"):
        load_settings(BankSettings, tmp_path / "absent.toml")


def test_signing_key_from_secret_or_file(tmp_path: Path) -> None:
    assert BankSettings(member_id="b", eth_private_key=KEY_HEX).eth_private_key_bytes() == b"\x11" * 32
    key_file = tmp_path / "key.hex"
    key_file.write_text(KEY_HEX + "\n")
    assert BankSettings(member_id="b", eth_key_path=key_file).eth_private_key_bytes() == b"\x11" * 32
    assert KEY_HEX[2:] not in repr(BankSettings(member_id="b", eth_private_key=KEY_HEX))
    with pytest.raises(ConfigError):
        BankSettings(member_id="b").eth_private_key_bytes()
    with pytest.raises(ConfigError):
        BankSettings(member_id="b", eth_private_key="0x1234").eth_private_key_bytes()
    with pytest.raises(ConfigError):
        load_settings(BankSettings, member_id="b", eth_private_key=KEY_HEX, eth_key_path=key_file)


def test_catalog_key_required_and_checked() -> None:
    assert ServiceProviderSettings(member_id="sp", catalog_key="22" * 32).catalog_key_bytes() == b"\x22" * 32
    with pytest.raises(ConfigError):
        ServiceProviderSettings(member_id="sp").catalog_key_bytes()
    with pytest.raises(ConfigError):
        ServiceProviderSettings(member_id="sp", catalog_key="22" * 16).catalog_key_bytes()


def test_configure_logging_emits_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    log = configure_logging(BankSettings(member_id="bank-1", log_json=True, log_level="INFO"))
    log.info("deposit_recorded", amount_minor=5)
    log.debug("filtered_out")

    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    assert [line["event"] for line in lines] == ["deposit_recorded"]
    assert lines[0]["member_id"] == "bank-1" and lines[0]["amount_minor"] == 5 and lines[0]["level"] == "info"
