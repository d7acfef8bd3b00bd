"""The multi-node panel of the overview: each node's head, peers and, on Clique, the signers' last sealed blocks.

Reads the network file (`--network-file`) that `clearhouse network up` writes (offchain/chain/network.py defines
it); this reader only needs each node's name and HTTP RPC URL, so it accepts `{"nodes": [{"name", "rpc_url"}]}`
with `rpc`/`http_url`/`url` as synonyms. A node that does not answer is shown as down, never hidden.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from web3 import Web3
from web3.exceptions import Web3Exception

from offchain.core.errors import PathError

URL_KEYS = ("rpc_url", "rpc", "http_url", "url")
NODE_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class NodeStatus:
    name: str
    url: str
    up: bool
    head: int | None = None
    head_hash: str = ""
    peers: int | None = None
    signers: tuple[tuple[str, int | None], ...] = ()  # (signer, last block it sealed among the recent ones)
    error: str = ""


def read_network_file(path: Path) -> list[tuple[str, str]]:
    """(name, rpc url) of every node in the network file."""
    try:
        data = json.loads(Path(path).read_text())
        nodes = data["nodes"] if isinstance(data, dict) else data
        found = []
        for i, node in enumerate(nodes):
            url = next((node[k] for k in URL_KEYS if node.get(k)), None)
            if url is None:
                raise KeyError(f"nodes[{i}] has none of {URL_KEYS}")
            found.append((str(node.get("name", f"node{i}")), str(url)))
        return found
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PathError(f"cannot read the network file {path}: {exc}", path=str(path)) from None


def _rpc(w3: Web3, method: str, params: list[Any]) -> Any:
    reply = w3.provider.make_request(method, params)  # type: ignore[arg-type]
    if "error" in reply:
        raise ValueError(reply["error"].get("message", str(reply["error"])))
    return reply["result"]


def _signers(w3: Web3) -> tuple[tuple[str, int | None], ...]:
    """Clique signers and the last block each sealed (from the snapshot's recents); () elsewhere."""
    try:
        snapshot = _rpc(w3, "clique_getSnapshot", ["latest"])
    except (ValueError, requests.RequestException):
        return ()
    last: dict[str, int] = {}
    for number, signer in (snapshot.get("recents") or {}).items():
        address = Web3.to_checksum_address(signer)
        last[address] = max(last.get(address, -1), int(number))
    return tuple((Web3.to_checksum_address(s), last.get(Web3.to_checksum_address(s)))
                 for s in sorted(snapshot.get("signers") or {}))


def node_status(name: str, url: str) -> NodeStatus:
    w3 = Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": NODE_TIMEOUT_S}))
    try:
        block = w3.eth.get_block("latest")
    except (OSError, ValueError, Web3Exception, requests.RequestException) as exc:
        return NodeStatus(name=name, url=url, up=False, error=type(exc).__name__)
    try:
        peers: int | None = int(_rpc(w3, "net_peerCount", []), 16)
    except (ValueError, requests.RequestException):  # dev nodes (anvil) have no peer-to-peer layer
        peers = None
    return NodeStatus(name=name, url=url, up=True, head=int(block["number"]),
                      head_hash="0x" + bytes(block["hash"]).hex(), peers=peers, signers=_signers(w3))


def network_status(path: Path | None) -> list[NodeStatus] | None:
    """None without a network file (the panel is left out)."""
    if path is None:
        return None
    return [node_status(name, url) for name, url in read_network_file(path)]
