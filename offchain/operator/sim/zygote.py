"""Fresh `clearhouse` processes without paying Python's imports every time (the simulator's per-run template).

A seed starts CC, SP and bank, restarts them after every kill, and runs `clearhouse reconcile`: as
`python -m offchain.cli ...` each of those spent about 3.5 of its 4.5 s importing (web3, aiohttp, SQLAlchemy,
alembic, the services' own modules). Here one fork server per simulator run (multiprocessing's `forkserver`
context) imports that code once and touches nothing else: no settings, no database, no chain, no socket. Each
`spawn` forks a new process from it, which gets its own session, its log file on stdout and stderr, the
requested environment variables and working directory, and then runs the same click command line as
`python -m offchain.cli` would. Every service start is still a new process with its own PID, its own memory (a
copy of an interpreter that has imported modules and run nothing), a fresh database and the seed's own chain:
the consortium stays fresh per seed; only the import work is shared.

`CLEARHOUSE_SIM_FORKSERVER=0` falls back to plain `subprocess.Popen([python, -m, offchain.cli, ...])`.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import threading
from multiprocessing import spawn as mp_spawn
from pathlib import Path
from typing import Any

# What `clearhouse serve cc|sp|bank` and `clearhouse reconcile` import before they read any settings.
PRELOAD = ("offchain.cli", "offchain.clearing_center.api", "offchain.service_provider.api", "offchain.bank.api",
           "offchain.operator.preflight", "offchain.operator.reconcile", "offchain.storage.migrate",
           "alembic.runtime.migration", "alembic.runtime.environment", "alembic.script", "alembic.command",
           "alembic.autogenerate")
ENV_SWITCH = "CLEARHOUSE_SIM_FORKSERVER"

_lock = threading.Lock()
_context: Any = None


def enabled() -> bool:
    return os.environ.get(ENV_SWITCH, "1") != "0" and "forkserver" in multiprocessing.get_all_start_methods()


def _get_context() -> Any:
    global _context
    with _lock:
        if _context is None:
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(list(PRELOAD))
            _context = context
        return _context


def _child(argv: list[str], env: dict[str, str], log_path: str, cwd: str) -> None:
    """In the forked process: own session, the log on fds 1 and 2, the environment, then the command line."""
    os.setsid()
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # line-buffered, like PYTHONUNBUFFERED for a log
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    os.environ.update(env)
    os.chdir(cwd)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    from offchain.cli import main

    main.main(args=argv, prog_name="clearhouse", standalone_mode=True)


class Forked:
    """The part of `subprocess.Popen` the runner uses (pid, poll, wait, kill, send_signal) for a forked child."""

    def __init__(self, process: Any) -> None:
        self._process = process
        self.pid: int = process.pid
        self.args = process.name

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode

    def poll(self) -> int | None:
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self._process.exitcode is None:
            raise subprocess.TimeoutExpired(self.args, timeout or 0)
        return int(self._process.exitcode)

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:  # reaped children are never signalled (their PID may be someone else's by now)
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)


def spawn(argv: list[str], *, log_path: Path, cwd: Path, env: dict[str, str] | None = None) -> Any:
    """`clearhouse <argv>` as a new process writing to `log_path`; a `Forked` (or a Popen when disabled)."""
    extra = {"PYTHONUNBUFFERED": "1", **(env or {})}
    if not enabled():
        with open(log_path, "ab") as log:
            return subprocess.Popen([sys.executable, "-m", "offchain.cli", *argv], cwd=cwd, stdout=log,
                                    stderr=subprocess.STDOUT, env={**os.environ, **extra}, start_new_session=True)
    process = _get_context().Process(target=_child, args=(list(argv), extra, str(log_path), str(cwd)),
                                     name=f"clearhouse {' '.join(argv[:2])}", daemon=True)
    with _lock:  # the child must not re-import the caller's __main__ (pytest, a script): it runs the CLI only
        original = mp_spawn.get_preparation_data
        mp_spawn.get_preparation_data = _without_main(original)
        try:
            process.start()
        finally:
            mp_spawn.get_preparation_data = original
    return Forked(process)


def _without_main(get: Any) -> Any:
    def preparation_data(name: str) -> dict[str, Any]:
        data = dict(get(name))
        data.pop("init_main_from_path", None)
        data.pop("init_main_from_name", None)
        return data

    return preparation_data


def run(argv: list[str], *, log_path: Path, cwd: Path, timeout_s: float, env: dict[str, str] | None = None) -> int:
    """`clearhouse <argv>` to completion (output in `log_path`); its exit code."""
    process = spawn(argv, log_path=log_path, cwd=cwd, env=env)
    try:
        return int(process.wait(timeout_s))
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)
        raise


__all__ = ["spawn", "run", "Forked", "enabled", "PRELOAD"]
