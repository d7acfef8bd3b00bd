"""Compile the contracts (py-solc-x through the wasm shim, settings from ape-config.yaml) and deploy them.

Artifacts are cached in `.build/` keyed by a hash of the sources and settings, so `make setup` recompiles only
when a source changes. Deploying needs a funded deployer key; it does not register members (provisioning does).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml
from eth_account import Account
from eth_utils import to_checksum_address
from web3 import Web3
from web3.types import TxReceipt

from offchain.core.errors import ChainError, PathError, ToolMissing
from offchain.core.messages import Domain
from offchain.core.types import project_root

ARTIFACTS_PATH = Path(".build") / "clearhouse-artifacts.json"
EIP170_LIMIT_BYTES = 24_576
RECEIPT_POLL_S = 0.005


# --- compile --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CompilerSettings:
    """Compiler settings read from ape-config.yaml's `solidity:` section."""

    version: str = "0.8.30"
    evm_version: str = "paris"
    optimize: bool = True
    runs: int = 10_000

    @classmethod
    def from_ape_config(cls, root: Path) -> CompilerSettings:
        path = Path(root) / "ape-config.yaml"
        if not path.exists():
            return cls()
        solidity = (yaml.safe_load(path.read_text()) or {}).get("solidity", {}) or {}
        return cls(
            version=str(solidity.get("version", cls.version)),
            evm_version=str(solidity.get("evm_version", cls.evm_version)),
            optimize=bool(solidity.get("optimize", cls.optimize)),
            runs=int(solidity.get("optimization_runs", cls.runs)),
        )


def _sources(root: Path) -> dict[str, str]:
    files = sorted((Path(root) / "contracts").rglob("*.sol"))
    return {str(p.relative_to(root)): p.read_text() for p in files}


def _standard_input(sources: dict[str, str], settings: CompilerSettings) -> dict[str, Any]:
    return {
        "language": "Solidity",
        "sources": {name: {"content": text} for name, text in sources.items()},
        "settings": {
            "evmVersion": settings.evm_version,
            "optimizer": {"enabled": settings.optimize, "runs": settings.runs},
            "outputSelection": {"*": {"*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"]}},
        },
    }


def compile_contracts(root: Path, *, force: bool = False) -> dict[str, dict]:
    """Compile every contract under `root/contracts` and return name -> {"abi", "bytecode", "deployed_bytecode"}.

    Artifacts are cached in `.build/clearhouse-artifacts.json`, keyed by a hash of the sources and settings.
    """
    root = Path(root)
    settings = CompilerSettings.from_ape_config(root)
    sources = _sources(root)
    std_input = _standard_input(sources, settings)
    key = hashlib.sha256(json.dumps([std_input, settings.version], sort_keys=True).encode()).hexdigest()
    cache = root / ARTIFACTS_PATH
    if not force and cache.exists():
        cached = json.loads(cache.read_text())
        if cached.get("key") == key:
            return cached["contracts"]
    contracts = _run_solc(root, std_input, settings)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"key": key, "settings": settings.__dict__, "contracts": contracts}))
    return contracts


def _run_solc(root: Path, std_input: dict[str, Any], settings: CompilerSettings) -> dict[str, dict]:
    import solcx  # imported lazily: only compiling needs it

    try:
        output = solcx.compile_standard(
            std_input, solc_version=settings.version, base_path=str(root), allow_paths=[str(root)]
        )
    except solcx.exceptions.SolcError as exc:
        raise ToolMissing(f"solc failed: {getattr(exc, 'message', exc)}", stage="compile") from exc
    errors = [e for e in output.get("errors", []) if e.get("severity") == "error"]
    if errors:
        raise ToolMissing("solc reported errors: " + "; ".join(e["formattedMessage"] for e in errors), stage="compile")
    contracts: dict[str, dict] = {}
    for source, by_name in output["contracts"].items():
        for name, art in by_name.items():
            contracts[name] = {
                "abi": art["abi"],
                "bytecode": "0x" + art["evm"]["bytecode"]["object"],
                "deployed_bytecode": "0x" + art["evm"]["deployedBytecode"]["object"],
                "source": source,
            }
    return contracts


# --- deploy ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Deployment:
    """Where Clearhouse lives on one network; the JSON form is docs/design.md's deployments/<network>.json."""

    network: str
    chain_id: int
    deploy_block: int
    authority: str
    address: str
    abi: list[dict[str, Any]] = field(repr=False)
    compiler: dict[str, str] = field(default_factory=dict)
    deploy_block_hash: str | None = None  # `clearhouse audit` checks it: a reset dev chain has another block there

    def to_json(self) -> dict[str, Any]:
        return {
            "network": self.network,
            "chain_id": self.chain_id,
            "deploy_block": self.deploy_block,
            **({"deploy_block_hash": self.deploy_block_hash} if self.deploy_block_hash else {}),
            "authority": self.authority,
            "contracts": {"Clearhouse": {"address": self.address, "abi": self.abi}},
            "compiler": self.compiler,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Deployment:
        try:
            entry = data["contracts"]["Clearhouse"]
            return cls(
                network=data["network"],
                chain_id=int(data["chain_id"]),
                deploy_block=int(data["deploy_block"]),
                authority=to_checksum_address(data["authority"]),
                address=to_checksum_address(entry["address"]),
                abi=entry["abi"],
                compiler=dict(data.get("compiler", {})),
                deploy_block_hash=data.get("deploy_block_hash"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise PathError(f"malformed deployment file: missing or bad {exc}", field=str(exc)) from exc

    def write(self, path: Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: Path) -> Deployment:
        path = Path(path)
        if not path.exists():
            raise PathError(f"no deployment file at {path}: run `ape run deploy` first", path=str(path))
        return cls.from_json(json.loads(path.read_text()))

    @property
    def domain(self) -> Domain:
        return Domain(chain_id=self.chain_id, verifying_contract=self.address)


def deploy(
    w3: Web3,
    deployer_key: bytes,
    authority: str,
    *,
    root: Path | None = None,
    network: str = "local",
    contract: str = "Clearhouse",
) -> Deployment:
    """Deploy Clearhouse (authority fixed as immutable) and return its Deployment; raises ChainError on failure."""
    root = Path(root or project_root())
    artifacts = compile_contracts(root)
    art = artifacts[contract]
    address, receipt = deploy_artifact(w3, deployer_key, art, [to_checksum_address(authority)])
    settings = CompilerSettings.from_ape_config(root)
    return Deployment(
        network=network,
        chain_id=w3.eth.chain_id,
        deploy_block=receipt["blockNumber"],
        authority=to_checksum_address(authority),
        address=address,
        abi=art["abi"],
        compiler={"version": settings.version, "evm_version": settings.evm_version},
        deploy_block_hash="0x" + bytes(receipt["blockHash"]).hex(),
    )


def deploy_artifact(w3: Web3, deployer_key: bytes, artifact: dict, args: Sequence[Any]) -> tuple[str, TxReceipt]:
    """Deploy any compiled artifact with constructor `args`; returns (address, receipt)."""
    account = Account.from_key(deployer_key)
    factory = w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
    tx = factory.constructor(*args).build_transaction(
        {"from": account.address, "nonce": w3.eth.get_transaction_count(account.address, "pending")}
    )
    signed = account.sign_transaction(tx)
    tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=60, poll_latency=RECEIPT_POLL_S)
    if receipt["status"] != 1 or not receipt.get("contractAddress"):
        raise ChainError(f"deploying failed in tx {tx_hash.hex()}", tx_hash=tx_hash.hex())
    return to_checksum_address(receipt["contractAddress"]), receipt



__all__ = ["ARTIFACTS_PATH", "EIP170_LIMIT_BYTES", "RECEIPT_POLL_S", "CompilerSettings", "compile_contracts",
           "Deployment", "deploy", "deploy_artifact"]
