"""A kept demo has a lifecycle another terminal can drive: it writes a state file (pids, ports, URLs, env) and a
try-it script whose commands are complete (real ids) and all succeed, `demo status` sees every process alive and
listening, `demo logs cc` shows the CC's log, and `demo stop` (the script's last line) stops everything."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

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
