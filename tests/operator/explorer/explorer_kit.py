"""Helpers shared by the explorer tests: an in-process client for routing tests, the explorer as its own process
for the browser tests, and the tampering factory (one stored signature byte altered in the audit index)."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from web3 import Web3

from offchain.operator.explorer import ExplorerConfig, build_app

ROOT = Path(__file__).resolve().parents[3]


@dataclass(frozen=True)
class Fetched:
    status: int
    text: str
    headers: dict[str, str]
    body: bytes


def fetch(config: ExplorerConfig, paths: Sequence[str]) -> list[Fetched]:
    """GET each path from a fresh explorer app (aiohttp's test server), redirects not followed."""

    async def go() -> list[Fetched]:
        async with TestClient(TestServer(build_app(config))) as client:
            out = []
            for path in paths:
                response = await client.get(path, allow_redirects=False)
                body = await response.read()
                out.append(Fetched(response.status, body.decode(errors="replace"), dict(response.headers), body))
            return out

    return asyncio.run(go())


@contextmanager
def explorer_process(config: ExplorerConfig, *extra: str) -> Iterator[str]:
    """`clearhouse explorer` as its own process on a free loopback port; yields its URL (read from its stdout)."""
    args = [sys.executable, "-m", "offchain.cli", "explorer", "--rpc", config.rpc_url,
            "--deployment", str(config.deployment_path), "--port", "0", "--confirmations",
            str(config.confirmations), *extra]
    if config.cache_dir is not None:
        args += ["--cache-dir", str(config.cache_dir)]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until the explorer announces its URL (or exits)
        if "http" not in line:
            proc.kill()
            raise AssertionError(f"explorer did not start: {line!r} {proc.stderr.read() if proc.stderr else ''}")
        yield line.strip().split()[-1].rstrip("/")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def tamper_device_signature(cache_path: Path, contract: Any, tx_hash: str, item: int = 0, byte: int = 10) -> None:
    """Flip one byte of the device signature of settle item `item` in the calldata the audit index stored for
    `tx_hash` (an attacker with write access to the auditor's cache, or a corrupted disk)."""
    db = sqlite3.connect(str(cache_path))
    (raw,) = db.execute("SELECT input FROM calls WHERE tx_hash = ?", (tx_hash,)).fetchone()
    fn, params = contract.decode_function_input(bytes(raw))
    items = [list(i.values()) if isinstance(i, dict) else list(i) for i in params["items"]]
    batch = items[item][0]
    items[item][0] = tuple(batch.values()) if isinstance(batch, dict) else tuple(batch)
    for other in items[:item] + items[item + 1:]:
        other[0] = tuple(other[0].values()) if isinstance(other[0], dict) else tuple(other[0])
    signature = bytearray(items[item][1])
    signature[byte] ^= 0x01
    items[item][1] = bytes(signature)
    tampered = bytes.fromhex(contract.encode_abi(fn.fn_name, [[tuple(i) for i in items]])[2:])
    assert tampered != bytes(raw)
    db.execute("UPDATE calls SET input = ? WHERE tx_hash = ?", (tampered, tx_hash))
    db.commit()
    db.close()


def rpc_url(w3: Web3) -> str:
    return str(w3.provider.endpoint_uri)  # type: ignore[attr-defined]
