"""The demo end to end, in a subprocess as a user runs it: exit 0, both renewal claims, a clean reconciliation,
and nothing left running afterwards; plus the failure path (a taken port) prints a hint, not a traceback."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEMO_TIMEOUT_S = 300


def _run_demo(*args: str) -> subprocess.CompletedProcess[str]:
    code = ("import sys; from pathlib import Path; from offchain.operator.demo import main_demo; "
            f"sys.exit(main_demo({', '.join(args)}))")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=DEMO_TIMEOUT_S, env={**os.environ, "COLUMNS": "160"})


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess[str], Path]:
    workdir = tmp_path_factory.mktemp("demo")
    return _run_demo(f"workdir=Path({str(workdir)!r})"), workdir


def test_demo_exits_zero_with_clean_reconciliation(demo_run) -> None:
    result, _ = demo_run
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "reconciled: no unexplained difference" in result.stdout
    assert "demo complete" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_demo_report_shows_new_serial_while_unsettled_and_top_up_in_place(demo_run) -> None:
    result, _ = demo_run
    claim14 = re.search(r"new serial while unsettled: alice-phone .* -> new_serial: new serial (0x[0-9a-f]{64}) \(old (0x[0-9a-f]{64})",
                        result.stdout)
    claim13 = re.search(r"top-up in place: bob-tablet .* -> top_up: serial (0x[0-9a-f]{64}) cap (\d+) -> (\d+)",
                        result.stdout)
    assert claim14 and claim14.group(1) != claim14.group(2)
    assert claim13 and int(claim13.group(3)) > int(claim13.group(2))


def test_demo_report_shows_balances_gas_and_verified_trail(demo_run) -> None:
    result, _ = demo_run
    out = result.stdout
    assert "Bank ledger balances" in out and "studio (content_provider)" in out
    assert re.search(r"settle\s+│\s+\d+\s+│\s+[\d,]+", out)
    assert "device 0x" in out and re.search(r"(\d+)/\1 checks passed", out)


def test_demo_stops_every_process_it_started(demo_run) -> None:
    result, workdir = demo_run
    assert result.returncode == 0
    leftovers = subprocess.run(["pgrep", "-af", str(workdir)], capture_output=True, text=True).stdout
    assert leftovers.strip() == ""
    assert (workdir / "cc.log").exists() and (workdir / "bank.log").exists()


def test_demo_on_taken_port_prints_hint_not_traceback(tmp_path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = _run_demo(f"workdir=Path({str(tmp_path)!r})", f"anvil_port={port}")
    assert result.returncode == 1
    assert f"port {port} is taken" in result.stdout and "what to do:" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
