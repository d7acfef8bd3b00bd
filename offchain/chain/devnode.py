"""A throwaway anvil dev node for tests, the demo and the benchmarks: started on a free port, killed on exit.

Not for production chains (see offchain.chain.network for a Clique network of geth signers).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Sequence

from web3 import Web3

from offchain.core.errors import ChainUnreachable, ToolMissing
from offchain.core.types import project_root

ANVIL_FALLBACK = Path("node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil")
# anvil keeps recent block states in memory and spills older ones to disk (~/.foundry/anvil/tmp by default), one
# JSON file of the whole state per block, unbounded and never removed when the node is killed: one test session
# wrote 19 GB, and the leftovers of earlier runs filled the disk. Every node we start gets its own spill folder,
# removed when it stops, and at most this many spilled states: state reads stay possible at least this many blocks
# back (nothing here reads further back; event logs do not need old states).
ANVIL_MAX_PERSISTED_STATES = 1024


def anvil_storage_args(cache_dir: Path) -> list[str]:
    """anvil's flags for a per-node spill folder with a bounded number of states (see ANVIL_MAX_PERSISTED_STATES)."""
    return ["--cache-path", str(cache_dir), "--max-persisted-states", str(ANVIL_MAX_PERSISTED_STATES)]


# --- anvil ----------------------------------------------------------------------------------------------------
_handed_out: set[int] = set()
_handed_out_lock = threading.Lock()
FREE_PORT_TRIES = 64


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it), and never one this process handed out
    before: once its probe socket is closed the OS may pick the same port again, and two nodes or services given
    one port collide (one of them cannot listen)."""
    with _handed_out_lock:
        for _ in range(FREE_PORT_TRIES):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind(("127.0.0.1", 0))
                port = int(sock.getsockname()[1])
            if port not in _handed_out:
                _handed_out.add(port)
                return port
    raise ToolMissing(f"no free TCP port on 127.0.0.1 that this process has not handed out already "
                      f"({FREE_PORT_TRIES} tries)", tool="free_port")


def anvil_binary() -> str:
    """The anvil executable: on PATH (bin/env.sh puts it there), else the npm package's binary."""
    found = shutil.which("anvil")
    if found:
        return found
    root = project_root()
    candidate = root / ANVIL_FALLBACK
    if candidate.exists():
        return str(candidate)
    raise ToolMissing("anvil not found on PATH: `source bin/env.sh` or run bin/setup", binary="anvil")


class AnvilProcess:
    """A throwaway anvil node (context manager): started on a free port, stopped (killed) on exit."""

    def __init__(self, port: int | None = None, hardfork: str = "paris", block_time: float | None = None,
                 extra_args: Sequence[str] = (), startup_timeout_s: float = 20.0) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [anvil_binary(), "--port", str(self.port), "--hardfork", hardfork, "--silent"]
        if block_time is not None:
            args += ["--block-time", str(block_time)]
        self._args = [*args, *extra_args]
        self._timeout_s = startup_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._cache_dir: Path | None = None

    def start(self) -> AnvilProcess:
        if self._proc is not None and self._proc.poll() is None:
            return self
        self._cache_dir = Path(tempfile.mkdtemp(prefix="clearhouse-anvil-"))
        self._proc = subprocess.Popen([*self._args, *anvil_storage_args(self._cache_dir)], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE)
        deadline = time.monotonic() + self._timeout_s
        w3 = self.web3()
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                raise ChainUnreachable(f"anvil exited at startup: {err.strip()}", url=self.url)
            try:
                w3.eth.chain_id
                return self
            except Exception:  # noqa: BLE001 - any connection error means "not up yet"
                time.sleep(0.05)
        self.stop()
        raise ChainUnreachable(f"anvil did not answer on {self.url} within {self._timeout_s}s", url=self.url)

    def web3(self) -> Web3:
        return Web3(Web3.HTTPProvider(self.url, request_kwargs={"timeout": 60}))

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(timeout=10)
        self._proc = None
        if self._cache_dir is not None:
            shutil.rmtree(self._cache_dir, ignore_errors=True)
            self._cache_dir = None

    def __enter__(self) -> AnvilProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_anvil(port: int | None = None, hardfork: str = "paris", block_time: float | None = None) -> AnvilProcess:
    """Start anvil and return the running process handle (use it as a context manager to stop it)."""
    return AnvilProcess(port=port, hardfork=hardfork, block_time=block_time).start()


__all__ = ["ANVIL_FALLBACK", "ANVIL_MAX_PERSISTED_STATES", "AnvilProcess", "anvil_binary", "anvil_storage_args",
           "free_port", "start_anvil"]
