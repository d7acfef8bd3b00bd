"""Chain access for Clearhouse: compile (py-solc-x through the wasm shim), deploy, start anvil, and a thin client.

The client sends one signed transaction per contract call with a locally managed nonce and a fast receipt wait,
and turns every revert into `ContractReverted(error_name=..., error_args=...)` decoded from the ABI. It does not retry
effects: callers own idempotency (ids are in the logs). Private keys stay in memory; never log them.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml
from eth_abi import decode as abi_decode
from eth_account import Account
from eth_utils import keccak, to_checksum_address
from web3 import Web3
from web3.logs import DISCARD
from web3.types import TxReceipt

from offchain.core.errors import ChainError, ChainUnreachable, ConfigError, ContractReverted
from offchain.core.messages import Domain
from offchain.core.types import UserFunds, project_root

ARTIFACTS_PATH = Path(".build") / "clearhouse-artifacts.json"
ANVIL_FALLBACK = Path("node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil")
EIP170_LIMIT_BYTES = 24_576
RECEIPT_POLL_S = 0.005
ZERO_BYTES32 = b"\x00" * 32
FEE_CACHE_S = 2.0
PRIORITY_FEE_WEI = 1_000_000_000


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
        raise ConfigError(f"solc failed: {getattr(exc, 'message', exc)}", stage="compile") from exc
    errors = [e for e in output.get("errors", []) if e.get("severity") == "error"]
    if errors:
        raise ConfigError("solc reported errors: " + "; ".join(e["formattedMessage"] for e in errors), stage="compile")
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

    def to_json(self) -> dict[str, Any]:
        return {
            "network": self.network,
            "chain_id": self.chain_id,
            "deploy_block": self.deploy_block,
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
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"malformed deployment file: missing or bad {exc}", field=str(exc)) from exc

    def write(self, path: Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: Path) -> Deployment:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"no deployment file at {path}: run `ape run deploy` first", path=str(path))
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


# --- anvil ----------------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _anvil_binary() -> str:
    found = shutil.which("anvil")
    if found:
        return found
    root = project_root()
    candidate = root / ANVIL_FALLBACK
    if candidate.exists():
        return str(candidate)
    raise ConfigError("anvil not found on PATH: `source bin/env.sh` or run bin/setup", binary="anvil")


class AnvilProcess:
    """A throwaway anvil node (context manager): started on a free port, stopped (killed) on exit."""

    def __init__(self, port: int | None = None, hardfork: str = "paris", block_time: float | None = None,
                 extra_args: Sequence[str] = (), startup_timeout_s: float = 20.0) -> None:
        self.port = port or _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [_anvil_binary(), "--port", str(self.port), "--hardfork", hardfork, "--silent"]
        if block_time is not None:
            args += ["--block-time", str(block_time)]
        self._args = [*args, *extra_args]
        self._timeout_s = startup_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> AnvilProcess:
        if self._proc is not None and self._proc.poll() is None:
            return self
        self._proc = subprocess.Popen(self._args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
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

    def __enter__(self) -> AnvilProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_anvil(port: int | None = None, hardfork: str = "paris", block_time: float | None = None) -> AnvilProcess:
    """Start anvil and return the running process handle (use it as a context manager to stop it)."""
    return AnvilProcess(port=port, hardfork=hardfork, block_time=block_time).start()


# --- revert decoding ------------------------------------------------------------------------------------------
def _error_table(abi: Sequence[dict[str, Any]]) -> dict[bytes, tuple[str, list[str], list[str]]]:
    table: dict[bytes, tuple[str, list[str], list[str]]] = {}
    for item in abi:
        if item.get("type") != "error":
            continue
        types = [_abi_type(i) for i in item["inputs"]]
        names = [i["name"] for i in item["inputs"]]
        table[keccak(text=f"{item['name']}({','.join(types)})")[:4]] = (item["name"], types, names)
    return table


def _abi_type(param: dict[str, Any]) -> str:
    if param["type"].startswith("tuple"):
        inner = ",".join(_abi_type(c) for c in param["components"])
        return f"({inner}){param['type'][5:]}"
    return str(param["type"])


def _revert_data(exc: BaseException) -> bytes | None:
    """Dig the raw revert data out of whatever web3 raised."""
    candidates: list[Any] = [getattr(exc, "data", None), *getattr(exc, "args", ())]
    for value in candidates:
        if isinstance(value, dict):
            value = value.get("data") or (value.get("error") or {}).get("data")
        if isinstance(value, (bytes, bytearray)):
            return bytes(value)
        if isinstance(value, str) and value.startswith("0x") and len(value) >= 10:
            try:
                return bytes.fromhex(value[2:])
            except ValueError:
                continue
    return None


def _plain(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return "0x" + bytes(value).hex()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def decode_revert(abi: Sequence[dict[str, Any]], data: bytes | None, function: str) -> ContractReverted:
    """Build ContractReverted(error_name, args) from revert data; unknown data keeps its raw hex."""
    table = _error_table(abi)
    if data and data[:4] in table:
        name, types, names = table[data[:4]]
        values = abi_decode(types, data[4:])
        values = [to_checksum_address(v) if t == "address" else v for t, v in zip(types, values)]
        args = {n or f"arg{i}": v for i, (n, v) in enumerate(zip(names, values))}
        shown = ", ".join(f"{k}={_plain(v)}" for k, v in args.items())
        return ContractReverted(
            f"{function} reverted with {name}({shown})", error_name=name, error_args=args, function=function
        )
    raw = "0x" + data.hex() if data else "0x"
    return ContractReverted(
        f"{function} reverted without a known custom error (data {raw})", error_name=None, error_args={}, function=function,
        data=raw,
    )


# --- argument encoders ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SettlementItem:
    """One settle() item: a UsageBatch (offchain.core.messages or any object with its fields) and both signatures."""

    batch: Any
    device_signature: bytes
    received_at: int
    receiver_signature: bytes


def encode_usage_batch(batch: Any) -> tuple:
    """UsageBatch(serial, first_seq, receiver, policy_ids, entries) as the ABI tuple."""
    return (
        bytes(batch.serial),
        int(batch.first_seq),
        to_checksum_address(batch.receiver),
        [bytes(p) for p in batch.policy_ids],
        bytes(batch.entries),
    )


def encode_settlement_item(item: SettlementItem) -> tuple:
    return (
        encode_usage_batch(item.batch),
        bytes(item.device_signature),
        int(item.received_at),
        bytes(item.receiver_signature),
    )


def encode_balance_statement(statement: Any) -> tuple:
    """BalanceStatement(serial, next_seq, spent, attested_at) as the ABI tuple."""
    return (bytes(statement.serial), int(statement.next_seq), int(statement.spent), int(statement.attested_at))


# --- read models ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MemberInfo:
    role: int
    revoked: bool
    valid_from: int
    valid_until: int
    member_id: bytes
    cert_fingerprint: bytes
    user_id_hash: bytes = bytes(32)  # a device's user (keccak256 of the user id in its certificate)


@dataclass(frozen=True)
class IssueLogInfo:
    serial: bytes
    device: str
    user_id_hash: bytes
    cap: int
    spent: int
    next_seq: int
    seq_limit: int
    expires_at: int
    closed: bool

    @property
    def exists(self) -> bool:
        return int(self.device, 16) != 0


@dataclass(frozen=True)
class PolicyInfo:
    policy_id: bytes
    content_id: bytes
    version: int
    provider: str
    price: int
    policy_hash: bytes
    settled: int
    requested: int
    payees: tuple[tuple[str, int], ...]

    @property
    def accrued(self) -> int:
        return self.settled - self.requested


@dataclass(frozen=True)
class TransferRequestInfo:
    request_id: bytes
    payee: str
    amount: int
    confirmed: bool
    bank_ref: bytes


# --- client ---------------------------------------------------------------------------------------------------
class ClearhouseChain:
    """Thin client of one deployed Clearhouse for one member key: one method per contract function.

    Writes estimate gas first (so a revert is decoded before anything is sent), sign locally with a local nonce,
    and wait for the receipt polling every 5 ms. Every revert raises ContractReverted(error_name=..., error_args=...).
    """

    def __init__(self, w3: Web3, deployment: Deployment, private_key: bytes, *, gas_margin: float = 1.25,
                 receipt_timeout_s: float = 60.0) -> None:
        self.w3 = w3
        self.deployment = deployment
        self.address = deployment.address
        self.contract = w3.eth.contract(address=deployment.address, abi=deployment.abi)
        self.domain = deployment.domain
        # private_key: the 32 key bytes, or a Signer from offchain.trust.keys (a PKCS#11 token key)
        self._account = Account.from_key(private_key) if isinstance(private_key, (bytes, bytearray, str)) \
            else private_key
        self.sender = self._account.address
        self._gas_margin = gas_margin
        self._timeout_s = receipt_timeout_s
        self._nonce: int | None = None
        self._fees: dict[str, int] | None = None
        self._fees_at = 0.0
        self._lock = threading.Lock()

    # sending ---------------------------------------------------------------------------------------------------
    def send(self, function: str, *args: Any, gas: int | None = None) -> TxReceipt:
        """Build, sign and send `function(*args)` from this member; returns the receipt of a successful tx."""
        data = self.contract.encode_abi(function, args=list(args))
        tx: dict[str, Any] = {"from": self.sender, "to": self.address, "data": data, "value": 0}
        if gas is None:
            gas = self._estimate(tx, function)
        with self._lock:
            if self._nonce is None:
                self._nonce = self.w3.eth.get_transaction_count(self.sender, "pending")
            tx.update(gas=gas, nonce=self._nonce, chainId=self.deployment.chain_id, **self._fee_fields())
            signed = self._account.sign_transaction(tx)
            try:
                tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
            except Exception as exc:
                self._nonce = None  # resync from the node on the next send
                raise ChainError(f"{function}: sending failed: {exc}", function=function) from exc
            self._nonce += 1
        receipt = self.w3.eth.wait_for_transaction_receipt(
            tx_hash, timeout=self._timeout_s, poll_latency=RECEIPT_POLL_S
        )
        if receipt["status"] != 1:
            raise self._replay_failure(tx, receipt, function)
        return receipt

    def send_via_outbox(self, function: str, *args: Any, record: Callable[[str, int, bytes], None],
                        gas: int | None = None) -> str:
        """Sign `function(*args)` with the next nonce, call `record(tx_hash, nonce, raw_tx)` (an outbox write)
        BEFORE broadcasting, then broadcast; returns the tx hash without waiting. If `record` raises, nothing is
        sent and the nonce is not consumed. Shares the nonce (and lock) with `send`."""
        data = self.contract.encode_abi(function, args=list(args))
        tx: dict[str, Any] = {"from": self.sender, "to": self.address, "data": data, "value": 0}
        if gas is None:
            gas = self._estimate(tx, function)
        with self._lock:
            if self._nonce is None:
                self._nonce = self.w3.eth.get_transaction_count(self.sender, "pending")
            tx.update(gas=gas, nonce=self._nonce, chainId=self.deployment.chain_id, **self._fee_fields())
            signed = self._account.sign_transaction(tx)
            tx_hash = "0x" + bytes(signed.hash).hex()
            record(tx_hash, self._nonce, bytes(signed.raw_transaction))
            try:
                self.w3.eth.send_raw_transaction(signed.raw_transaction)
            except Exception as exc:
                self._nonce = None  # resync from the node on the next send
                raise ChainError(f"{function}: sending failed: {exc}", function=function, tx_hash=tx_hash) from exc
            self._nonce += 1
        return tx_hash

    def call(self, function: str, *args: Any) -> Any:
        """eth_call `function(*args)`; reverts become ContractReverted."""
        try:
            return getattr(self.contract.functions, function)(*args).call({"from": self.sender})
        except Exception as exc:
            raise self._as_revert(exc, function) from exc

    def _estimate(self, tx: dict[str, Any], function: str) -> int:
        try:
            estimate = self.w3.eth.estimate_gas(tx)  # type: ignore[arg-type]
        except Exception as exc:
            raise self._as_revert(exc, function) from exc
        return int(estimate * self._gas_margin) + 10_000

    def _fee_fields(self) -> dict[str, int]:
        """EIP-1559 fees from a base fee cached for FEE_CACHE_S (3x headroom), or the node's legacy gas price.

        Never derive the price from eth_gasPrice times a factor: anvil's suggestion follows recent tx prices,
        so that feeds back and doubles every block.
        """
        now = time.monotonic()
        if self._fees is None or now - self._fees_at > FEE_CACHE_S:
            base_fee = self.w3.eth.get_block("latest").get("baseFeePerGas")
            if base_fee is None:
                self._fees = {"gasPrice": int(self.w3.eth.gas_price)}
            else:
                self._fees = {"maxFeePerGas": 3 * int(base_fee) + PRIORITY_FEE_WEI,
                              "maxPriorityFeePerGas": PRIORITY_FEE_WEI}
            self._fees_at = now
        return self._fees

    def _as_revert(self, exc: Exception, function: str) -> ChainError:
        data = _revert_data(exc)
        if data is None and "revert" not in str(exc).lower():
            return ChainUnreachable(f"{function}: node error: {exc}", function=function)
        return decode_revert(self.deployment.abi, data, function)

    def revert_reason(self, receipt: TxReceipt, function: str) -> ChainError:
        """The decoded error of a mined transaction that reverted (`receipt["status"] == 0`), to raise.

        For transactions this client did not wait for itself (`send_via_outbox`, a resumed raw transaction):
        fetches the transaction and replays its call at the parent block. Returns ContractReverted with
        `error_name`/`args` of the custom error, ContractReverted with `error_name=None` when the replay passes
        (out of gas, or the state changed earlier in the block), or ChainUnreachable when the node fails.
        Usage: `raise chain.revert_reason(receipt, "renew")`. A successful receipt is a caller bug: ValueError.
        """
        if receipt["status"] == 1:
            raise ValueError(f"{function}: transaction {receipt['transactionHash'].hex()} succeeded; no revert")
        tx = self.w3.eth.get_transaction(receipt["transactionHash"])
        call = {"from": tx["from"], "to": tx["to"], "data": tx["input"], "gas": tx["gas"]}
        return self._replay_failure(call, receipt, function)

    def _replay_failure(self, tx: dict[str, Any], receipt: TxReceipt, function: str) -> ChainError:
        call = {k: tx[k] for k in ("from", "to", "data", "gas")}
        try:
            self.w3.eth.call(call, receipt["blockNumber"] - 1)  # type: ignore[arg-type]
        except Exception as exc:
            return self._as_revert(exc, function)
        return ContractReverted(
            f"{function} failed in block {receipt['blockNumber']} (out of gas or state changed)",
            error_name=None, error_args={}, function=function, tx_hash=receipt["transactionHash"].hex(),
        )

    # writes ----------------------------------------------------------------------------------------------------
    def register_member(self, account: str, role: int, member_id: bytes, cert_fingerprint: bytes,
                        valid_from: int, valid_until: int, *, user_id_hash: bytes = bytes(32)) -> TxReceipt:
        """`user_id_hash` is required (non-zero) for a device and zero for every other role (InvalidUserIdHash)."""
        return self.send("registerMember", to_checksum_address(account), int(role), member_id, cert_fingerprint,
                         user_id_hash, valid_from, valid_until)

    def revoke_member(self, account: str) -> TxReceipt:
        return self.send("revokeMember", to_checksum_address(account))

    def record_deposit(self, deposit_id: bytes, user_id_hash: bytes, amount: int, bank_ref: bytes) -> TxReceipt:
        return self.send("recordDeposit", deposit_id, user_id_hash, amount, bank_ref)

    def issue(self, serial: bytes, device: str, user_id_hash: bytes, cap: int, expires_at: int) -> TxReceipt:
        return self.send("issue", serial, to_checksum_address(device), user_id_hash, cap, expires_at)

    def renew(self, old_serial: bytes, statement: Any, device_signature: bytes, new_serial: bytes,
              new_money: int, expires_at: int) -> TxReceipt:
        return self.send("renew", old_serial, encode_balance_statement(statement), device_signature, new_serial,
                         new_money, expires_at)

    def register_policy(self, content_id: bytes, version: int, price: int, payees: Sequence[tuple[str, int]],
                        policy_hash: bytes) -> TxReceipt:
        encoded = [(to_checksum_address(a), int(bps)) for a, bps in payees]
        return self.send("registerPolicy", content_id, version, price, encoded, policy_hash)

    def settle(self, items: Sequence[SettlementItem], *, gas: int | None = None) -> TxReceipt:
        return self.send("settle", [encode_settlement_item(i) for i in items], gas=gas)

    def request_transfers(self, policy_ids: Sequence[bytes]) -> tuple[TxReceipt, list[bytes]]:
        """Returns the receipt and the request ids, in the contract's order (from the TransferRequested events)."""
        receipt = self.send("requestTransfers", list(policy_ids))
        events = self.contract.events.TransferRequested().process_receipt(receipt, errors=DISCARD)
        return receipt, [bytes(e["args"]["requestId"]) for e in events]

    def confirm_transfer(self, request_id: bytes, bank_ref: bytes) -> TxReceipt:
        return self.send("confirmTransfer", request_id, bank_ref)

    # reads -----------------------------------------------------------------------------------------------------
    def member(self, account: str) -> MemberInfo:
        r = self.call("member", to_checksum_address(account))
        return MemberInfo(r[0], r[1], r[2], r[3], bytes(r[4]), bytes(r[5]), bytes(r[6]))

    def is_active(self, account: str, role: int) -> bool:
        return bool(self.call("isActive", to_checksum_address(account), int(role)))

    def issue_log(self, serial: bytes) -> IssueLogInfo:
        r = self.call("issueLog", serial)
        return IssueLogInfo(serial, r[0], bytes(r[1]), r[2], r[3], r[4], r[5], r[6], r[7])

    def policy(self, policy_id: bytes) -> PolicyInfo:
        r = self.call("policy", policy_id)
        payees = tuple((to_checksum_address(a), int(b)) for a, b in r[7])
        return PolicyInfo(policy_id, bytes(r[0]), r[1], r[2], r[3], bytes(r[4]), r[5], r[6], payees)

    def latest_version(self, content_id: bytes) -> int:
        return int(self.call("latestVersion", content_id))

    def user_funds(self, user_id_hash: bytes) -> UserFunds:
        deposited, allocated = self.call("userFunds", user_id_hash)
        return UserFunds(deposited, allocated)

    def transfer_request(self, request_id: bytes) -> TransferRequestInfo:
        r = self.call("transferRequest", request_id)
        return TransferRequestInfo(request_id, r[0], r[1], r[2], bytes(r[3]))

    def domain_separator(self) -> bytes:
        return bytes(self.call("domainSeparator"))
