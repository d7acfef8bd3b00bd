"""A kept demo has a lifecycle another terminal can drive: it writes a state file (pids, ports, URLs, env) and a
try-it script whose commands are complete (real ids) and all succeed, `demo status` sees every process alive and
listening, `demo logs cc` shows the CC's log, and `demo stop` (the script's last line) stops everything."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from offchain.cli import main

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def kept_demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    workdir = tmp_path_factory.mktemp("kept-demo")
    with open(workdir.parent / "kept-demo.out", "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "offchain.cli", "demo", "--keep", "--workdir", str(workdir)],
                                   cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                   env={**os.environ, "COLUMNS": "160"})
    deadline = time.monotonic() + START_TIMEOUT_S
    while not (workdir / "demo-state.json").exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail("the kept demo did not come up: "
                        + (workdir.parent / "kept-demo.out").read_text(errors="replace")[-3000:])
        time.sleep(0.5)
    try:
        yield process, workdir
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(60)


def test_state_file_names_every_process_and_status_sees_them(kept_demo: tuple[subprocess.Popen[bytes], Path]) -> None:
    process, workdir = kept_demo
    state = json.loads((workdir / "demo-state.json").read_text())
    assert state["demo_pid"] == process.pid and sorted(state["services"]) == ["bank", "cc", "sp"]
    result = CliRunner(mix_stderr=False).invoke(main, ["demo", "status", "--workdir", str(workdir), "--json"])
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)["processes"]
    assert [(r["name"], r["alive"], r["listening"]) for r in rows] == \
        [("demo", True, True), ("bank", True, True), ("cc", True, True), ("sp", True, True)]
    logs = CliRunner(mix_stderr=False).invoke(main, ["demo", "logs", "cc", "--workdir", str(workdir), "-n", "5"])
    assert logs.exit_code == 0 and logs.stdout.startswith(f"==> {workdir / 'cc.log'} <==")


def test_kept_demo_serves_health_and_metrics_and_prints_their_urls_and_the_explorer(
        kept_demo: tuple[subprocess.Popen[bytes], Path]) -> None:
    _, workdir = kept_demo
    state = json.loads((workdir / "demo-state.json").read_text())
    printed = (workdir.parent / "kept-demo.out").read_text(errors="replace")
    for name in ("bank", "cc", "sp"):
        service = state["services"][name]
        assert service["healthz"].startswith("http://127.0.0.1:") and service["healthz"] in printed
        with urllib.request.urlopen(service["healthz"], timeout=10) as answer:
            assert answer.status == 200 and json.loads(answer.read())["ready"] is True
        with urllib.request.urlopen(service["metrics"], timeout=10) as answer:
            assert b"clearhouse_chain_up 1.0" in answer.read()
    explorer = f"clearhouse explorer --rpc {state['rpc_url']} --deployment {state['deployment']}"
    assert state["explorer"].startswith(explorer) and explorer in printed
    shown = CliRunner(mix_stderr=False).invoke(main, ["demo", "status", "--workdir", str(workdir)],
                                               env={"COLUMNS": "200"})
    assert state["services"]["cc"]["metrics"] in shown.stdout and f"explorer: {state['explorer']}" in shown.stdout


def test_device_commands_show_tables_and_json_against_the_kept_demo(
        kept_demo: tuple[subprocess.Popen[bytes], Path]) -> None:
    _, workdir = kept_demo
    state = json.loads((workdir / "demo-state.json").read_text())
    config = state["devices"]["alice-phone"]["config"]
    runner = CliRunner(mix_stderr=False)

    def device(*args: str) -> Any:
        result = runner.invoke(main, ["device", "--config", config, *args], env={**state["env"], "COLUMNS": "200"})
        assert result.exit_code == 0, result.stderr
        return result

    items = json.loads(device("catalog", "--json").stdout)
    assert items and all(item["content_id"].startswith("0x") for item in items)
    table = device("catalog").stdout
    assert "Catalog of the service provider" in table and all(item["content_id"] in table for item in items)
    content = items[0]
    got = json.loads(device("download", content["content_id"], "--version", str(content["version"]), "--json").stdout)
    assert Path(got["path"]).exists() and got["content_id"] == content["content_id"]
    assert "Downloaded" in device("download", content["content_id"], "--version", str(content["version"])).stdout
    before = json.loads(device("balance", "--json").stdout)
    balance = device("balance").stdout
    assert "expires at" in balance and str(before["expires_at"]) not in balance  # ISO 8601 in the table
    used = device("use", content["content_id"], "--version", str(content["version"]), "--out",
                  str(workdir / "table-use.bin")).stdout
    assert f"Used {(workdir / 'table-use.bin').stat().st_size} bytes" in used
    uploaded = json.loads(device("upload", "--json").stdout)
    assert uploaded["logs"] >= 1 and len(uploaded["receive_log_ids"]) == uploaded["batches"]
    assert "Uploaded to the service provider" in device("upload").stdout
    deposit = runner.invoke(main, ["bank", "deposit", "--config", state["services"]["bank"]["config"], "--user",
                                   state["devices"]["alice-phone"]["user"], "--amount", "300", "--deposit-id",
                                   "table-test-1"], env=state["env"])
    assert deposit.exit_code == 0, deposit.stderr
    renewed = device("renew").stdout
    assert "Renewed issue log" in renewed and "expires at" in renewed


def test_try_it_script_runs_clean_and_its_last_line_stops_the_demo(
        kept_demo: tuple[subprocess.Popen[bytes], Path]) -> None:
    process, workdir = kept_demo
    script = (workdir / "try-it.sh").read_text()
    assert "download 0x" in script and "use 0x" in script and "renew" in script and "upload" in script
    runner = f'clearhouse() {{ "{sys.executable}" -m offchain.cli "$@"; }}; export -f clearhouse; bash "$0"'
    done = subprocess.run(["bash", "-c", runner, str(workdir / "try-it.sh")], cwd=ROOT, capture_output=True,
                          text=True, timeout=START_TIMEOUT_S)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "stopped the demo" in done.stdout
    assert process.wait(60) in (0, 130)
    assert not (workdir / "demo-state.json").exists()
    gone = CliRunner(mix_stderr=False).invoke(main, ["demo", "status", "--workdir", str(workdir)])
    assert gone.exit_code == 1 and "no kept demo state" in gone.stderr
