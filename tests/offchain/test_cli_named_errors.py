"""Failures an operator meets by hand are named and actionable, never a traceback: a payee without basis points,
a missing passphrase without a terminal, a busy port, an http:// peer URL, a broken pipe, `device use --help`
without a config file, and `--json` keeping stdout pure JSON.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from offchain.cli import main
from offchain.core.errors import ConfigError
from offchain.core.settings import BankSettings, DeviceSettings, load_settings
from offchain.operator.cli_ops import parse_payees, passphrase_from_env

ROOT = Path(__file__).resolve().parents[2]
ADDRESS = "0x" + "ab" * 20


def invoke(*args: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return CliRunner(mix_stderr=False).invoke(main, list(args), env=env)


def test_payee_without_basis_points_is_named() -> None:
    assert parse_payees([f"{ADDRESS}:7000", f"{ADDRESS}:3000"]) == [(ADDRESS, 7000), (ADDRESS, 3000)]  # control
    for bad in (ADDRESS, f"{ADDRESS}:", f"{ADDRESS}:seventy", "alice:7000"):
        with pytest.raises(ConfigError) as refused:
            parse_payees([bad])
        assert refused.value.field == "payee" and refused.value.got == bad
        assert "is not ADDRESS:BPS" in refused.value.message


def test_missing_passphrase_without_a_terminal_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLEARHOUSE_DEVICE_PASSPHRASE", "pw")
    assert passphrase_from_env("CLEARHOUSE_DEVICE_PASSPHRASE") == "pw"  # positive control
    monkeypatch.delenv("CLEARHOUSE_DEVICE_PASSPHRASE")
    monkeypatch.setattr(sys, "stdin", open("/dev/null"))  # noqa: SIM115 - no terminal
    with pytest.raises(ConfigError) as refused:
        passphrase_from_env("CLEARHOUSE_DEVICE_PASSPHRASE")
    assert refused.value.env == "CLEARHOUSE_DEVICE_PASSPHRASE"
    assert "set CLEARHOUSE_DEVICE_PASSPHRASE" in refused.value.message


def test_device_use_help_needs_no_config_file() -> None:
    result = invoke("device", "use", "--help")
    assert result.exit_code == 0 and "Use downloaded content offline" in result.stdout
    missing = invoke("device", "balance")
    assert missing.exit_code == 1 and "device --config FILE" in missing.stderr and "Traceback" not in missing.stderr


def test_http_peer_url_is_refused_at_load(tmp_path: Path) -> None:
    path = tmp_path / "device.json"
    path.write_text(json.dumps({"member_id": "d", "sp_url": "https://127.0.0.1:8442"}))
    assert load_settings(DeviceSettings, path).sp_url.startswith("https://")  # positive control
    path.write_text(json.dumps({"member_id": "d", "sp_url": "http://127.0.0.1:8442"}))
    with pytest.raises(ConfigError) as refused:
        load_settings(DeviceSettings, path)
    assert "sp_url is 'http://127.0.0.1:8442'" in refused.value.message and "https://" in refused.value.message
    path.write_text(json.dumps({"member_id": "b", "cc_url": ""}))
    assert load_settings(BankSettings, path).cc_url == ""  # "no CC" stays allowed


def test_busy_port_is_a_named_error() -> None:
    from aiohttp import web

    from offchain.transport.server import run_app

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        with pytest.raises(ConfigError) as refused:
            asyncio.run(run_app(web.Application(), "127.0.0.1", port, None))
    assert (refused.value.field, refused.value.got) == ("port", port)
    assert f"cannot listen on 127.0.0.1:{port}" in refused.value.message


def test_broken_pipe_exits_quietly() -> None:
    script = ("import click\nfrom offchain.cli import _edge\n@click.command()\n@_edge\ndef tool():\n"
              "    raise BrokenPipeError(32, 'Broken pipe')\ntool()\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, timeout=60)
    assert done.returncode == 141 and done.stderr == b""  # the shell's SIGPIPE status, no traceback
    control = subprocess.run([sys.executable, "-c", script.replace("BrokenPipeError(32, 'Broken pipe')",
                                                                   "KeyError('x')")], cwd=ROOT, capture_output=True)
    assert control.returncode == 2 and b"unexpected failure" in control.stderr  # positive control: other errors


def test_json_output_gives_errors_as_json_on_stdout(tmp_path: Path) -> None:
    result = invoke("member", "list", "--ca-dir", str(tmp_path), "--no-chain", "--json")
    assert result.exit_code == 1
    body = json.loads(result.stdout)  # stdout holds only JSON, the failure included
    assert set(body) == {"error", "message", "fields"} and result.stderr.startswith(f"error [{body['error']}]: ")
    plain = invoke("member", "list", "--ca-dir", str(tmp_path), "--no-chain")
    assert plain.exit_code == 1 and plain.stdout == "" and plain.stderr == result.stderr  # no JSON without --json


def test_an_uncreatable_demo_work_directory_is_named(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = invoke("demo", "--workdir", str(blocker / "demo"))
    assert result.exit_code == 1
    assert "cannot create the work directory" in result.stdout and "--workdir" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
