"""Entry points of `clearhouse audit ...` (click lives in offchain.cli): open the index, build a trail, render
it, and return the exit code (1 when a re-verified signature or digest failed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from offchain.operator.audit.index import open_index
from offchain.operator.audit.render import render
from offchain.operator.audit.trails import content_trail, device_trail, payee_trail, serial_trail
from offchain.operator.audit.verify import verify_trail


def _run(trail_of: Any, output: str, stream: Any, **index_kwargs: Any) -> int:
    with open_index(**index_kwargs) as index:
        trail = trail_of(index)
    render(trail, output, stream)
    return 0 if trail.failures == 0 else 1


def main_serial(*, rpc_url: str, deployment_path: Path, serial: str, output: str = "table", verify: bool = True,
                cache_dir: Path | None = None, stream: Any = None) -> int:
    """`clearhouse audit serial SERIAL`: exit code 0, or 1 if a re-verified signature or digest failed."""
    return _run(lambda index: serial_trail(index, serial, verify=verify), output, stream, rpc_url=rpc_url,
                deployment_path=deployment_path, cache_dir=cache_dir)


def main_device(*, rpc_url: str, deployment_path: Path, device: str, output: str = "table", verify: bool = True,
                cache_dir: Path | None = None, stream: Any = None) -> int:
    """`clearhouse audit device ADDRESS`."""
    return _run(lambda index: device_trail(index, device, verify=verify), output, stream, rpc_url=rpc_url,
                deployment_path=deployment_path, cache_dir=cache_dir)


def main_payee(*, rpc_url: str, deployment_path: Path, payee: str, output: str = "table",
               cache_dir: Path | None = None, stream: Any = None) -> int:
    """`clearhouse audit payee ADDRESS`."""
    return _run(lambda index: payee_trail(index, payee), output, stream, rpc_url=rpc_url,
                deployment_path=deployment_path, cache_dir=cache_dir)


def main_content(*, rpc_url: str, deployment_path: Path, content_id: str, output: str = "table",
                 cache_dir: Path | None = None, stream: Any = None) -> int:
    """`clearhouse audit content CONTENT_ID`."""
    return _run(lambda index: content_trail(index, content_id), output, stream, rpc_url=rpc_url,
                deployment_path=deployment_path, cache_dir=cache_dir)


def main_verify(*, rpc_url: str, deployment_path: Path, output: str = "table", cache_dir: Path | None = None,
                stream: Any = None) -> int:
    """`clearhouse audit verify`: re-verify every signature on the contract; exit 1 on any failure."""
    return _run(verify_trail, output, stream, rpc_url=rpc_url, deployment_path=deployment_path,
                cache_dir=cache_dir)
