"""Entry points of `clearhouse audit ...` (click lives in offchain.cli): open the index, build a trail, render
it, and return the exit code (1 when a re-verified signature or digest failed).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from offchain.operator.audit.index import Check, open_index
from offchain.operator.audit.render import render
from offchain.operator.audit.trails import content_trail, device_trail, payee_trail, serial_trail
from offchain.operator.audit.verify import verify_trail


def _run(trail_of: Any, output: str, stream: Any, *, require_checks: bool = False, section: str | None = None,
         csv_dir: Path | None = None, **index_kwargs: Any) -> int:
    with open_index(**index_kwargs) as index:
        trail = trail_of(index)
        anchors = deployment_checks(index, Path(index_kwargs["deployment_path"]))
    own = list(trail.checks)
    if require_checks and not own:  # nothing re-verified is not a pass: wrong deployment, or nothing settled yet
        own.append(Check("trail", "signatures re-verified", False,
                         "zero checks: no settled batch or renewal found at this deployment"))
    trail = dataclasses.replace(trail, checks=(*anchors, *own))
    render(trail, output, stream, section=section, csv_dir=csv_dir)
    return 0 if trail.failures == 0 else 1


def deployment_checks(index: Any, deployment_path: Path) -> list[Check]:
    """The deployment file describes this chain: chain id (open_index refuses another), code at the address, and
    the deploy block's hash (a reset dev chain reuses the numbers, not the hashes)."""
    w3, ref = index.w3, index.ref
    data = json.loads(deployment_path.read_text())
    checks = [Check(str(deployment_path), "chain id", int(w3.eth.chain_id) == ref.chain_id,
                    f"node {int(w3.eth.chain_id)}, file {ref.chain_id}")]
    code = w3.eth.get_code(ref.address)
    checks.append(Check(ref.address, "contract code", len(code) > 0,
                        f"{len(code)} bytes" if code else "no code at the address: not this chain's deployment"))
    head = int(w3.eth.block_number)
    if ref.deploy_block > head:
        checks.append(Check(str(ref.deploy_block), "deploy block hash", False,
                            f"the chain's head is {head}, before the deploy block: a reset chain"))
        return checks
    recorded = data.get("deploy_block_hash")
    actual = "0x" + bytes(w3.eth.get_block(ref.deploy_block)["hash"]).hex()
    if recorded is None:
        checks.append(Check(str(ref.deploy_block), "deploy block hash", True,
                            f"{actual} (not recorded in the deployment file: unchecked)"))
    else:
        checks.append(Check(str(ref.deploy_block), "deploy block hash", recorded.lower() == actual,
                            f"chain {actual}, file {recorded}"))
    return checks


def main_serial(*, rpc_url: str, deployment_path: Path, serial: str, output: str = "table", verify: bool = True,
                cache_dir: Path | None = None, stream: Any = None, section: str | None = None,
                csv_dir: Path | None = None) -> int:
    """`clearhouse audit serial SERIAL`: exit code 0, or 1 if a re-verified signature or digest failed."""
    return _run(lambda index: serial_trail(index, serial, verify=verify), output, stream, rpc_url=rpc_url,
                deployment_path=deployment_path, cache_dir=cache_dir, section=section, csv_dir=csv_dir)


def main_device(*, rpc_url: str, deployment_path: Path, device: str, output: str = "table", verify: bool = True,
                cache_dir: Path | None = None, stream: Any = None, section: str | None = None,
                csv_dir: Path | None = None) -> int:
    """`clearhouse audit device ADDRESS`."""
    return _run(lambda index: device_trail(index, device, verify=verify), output, stream, rpc_url=rpc_url,
                deployment_path=deployment_path, cache_dir=cache_dir, section=section, csv_dir=csv_dir)


def main_payee(*, rpc_url: str, deployment_path: Path, payee: str, output: str = "table",
               cache_dir: Path | None = None, stream: Any = None, section: str | None = None,
               csv_dir: Path | None = None) -> int:
    """`clearhouse audit payee ADDRESS`."""
    return _run(lambda index: payee_trail(index, payee), output, stream, rpc_url=rpc_url,
                deployment_path=deployment_path, cache_dir=cache_dir, section=section, csv_dir=csv_dir)


def main_content(*, rpc_url: str, deployment_path: Path, content_id: str, output: str = "table",
                 cache_dir: Path | None = None, stream: Any = None, section: str | None = None,
                 csv_dir: Path | None = None) -> int:
    """`clearhouse audit content CONTENT_ID`."""
    return _run(lambda index: content_trail(index, content_id), output, stream, rpc_url=rpc_url,
                deployment_path=deployment_path, cache_dir=cache_dir, section=section, csv_dir=csv_dir)


def main_verify(*, rpc_url: str, deployment_path: Path, output: str = "table", cache_dir: Path | None = None,
                stream: Any = None, section: str | None = None,
                csv_dir: Path | None = None) -> int:
    """`clearhouse audit verify`: re-verify every signature on the contract; exit 1 on any failure."""
    return _run(verify_trail, output, stream, require_checks=True, rpc_url=rpc_url, deployment_path=deployment_path,
                cache_dir=cache_dir, section=section, csv_dir=csv_dir)
