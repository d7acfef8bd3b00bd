"""Test-local EIP-712 hashing and signing (eth-account/eth-abi only) and a `World` that builds contract state.

Deliberately independent of offchain.core.messages so the contract tests check Solidity against an independent
implementation. `unsafe_sign_hash` signs raw digests: test keys only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
from eth_abi import decode, encode
from eth_account import Account
from eth_utils import keccak

from web3 import Web3

from offchain.chain import ClearhouseChain, Deployment, SettlementItem
from offchain.core.errors import ContractReverted

USAGE_BATCH_TYPE = "UsageBatch(bytes32 serial,uint64 firstSeq,address receiver,bytes32[] policyIds,bytes entries)"
RECEIVE_LOG_TYPE = "ReceiveLog(bytes32 usageBatch,address payer,uint64 receivedAt)"
BALANCE_STATEMENT_TYPE = "BalanceStatement(bytes32 serial,uint64 nextSeq,uint96 spent,uint40 attestedAt)"
DOMAIN_TYPE = "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def domain_separator(chain_id: int, contract: str) -> bytes:
    return keccak(encode(["bytes32", "bytes32", "bytes32", "uint256", "address"],
                         [keccak(text=DOMAIN_TYPE), keccak(text="Clearhouse"), keccak(text="1"), chain_id, contract]))


def typed_digest(separator: bytes, struct_hash: bytes) -> bytes:
    return keccak(b"\x19\x01" + separator + struct_hash)


def sign_digest(digest: bytes, key: bytes) -> bytes:
    signed = Account.unsafe_sign_hash(digest, key)
    return signed.r.to_bytes(32, "big") + signed.s.to_bytes(32, "big") + bytes([signed.v])


def pack_entries(entries: Sequence[tuple[int, int, int]]) -> bytes:
    """(policyIndex, fee, usedAt) triples as 16-byte big-endian entries."""
    return b"".join(i.to_bytes(1, "big") + fee.to_bytes(11, "big") + t.to_bytes(4, "big") for i, fee, t in entries)


@dataclass(frozen=True)
class Batch:
    serial: bytes
    first_seq: int
    receiver: str
    policy_ids: tuple[bytes, ...]
    entries: bytes

    def struct_hash(self) -> bytes:
        return keccak(encode(
            ["bytes32", "bytes32", "uint64", "address", "bytes32", "bytes32"],
            [keccak(text=USAGE_BATCH_TYPE), self.serial, self.first_seq, self.receiver,
             keccak(b"".join(self.policy_ids)), keccak(self.entries)],
        ))


def receive_log_hash(batch_hash: bytes, payer: str, received_at: int) -> bytes:
    return keccak(encode(["bytes32", "bytes32", "address", "uint64"],
                         [keccak(text=RECEIVE_LOG_TYPE), batch_hash, payer, received_at]))


@dataclass(frozen=True)
class Statement:
    serial: bytes
    next_seq: int
    spent: int
    attested_at: int

    def struct_hash(self) -> bytes:
        return keccak(encode(["bytes32", "bytes32", "uint64", "uint96", "uint40"],
                             [keccak(text=BALANCE_STATEMENT_TYPE), self.serial, self.next_seq, self.spent,
                              self.attested_at]))


def expect_revert(error_name: str, call, *args, **kwargs) -> dict:
    """Run `call` and assert it reverts with the named custom error; returns the decoded error args."""
    with pytest.raises(ContractReverted) as info:
        call(*args, **kwargs)
    assert info.value.error_name == error_name, info.value.message
    return info.value.error_args


@dataclass(frozen=True)
class Actor:
    name: str
    key: bytes
    address: str


@dataclass
class Env:
    """What World needs outside the contract tests (there tests/conftest.py's ChainEnv plays this part): a
    deployment, actors by name and a client per actor."""

    w3: Web3
    deployment: Deployment
    actors: dict[str, Actor]
    _clients: dict[str, ClearhouseChain] = field(default_factory=dict)

    def client(self, name: str) -> ClearhouseChain:
        if name not in self._clients:
            self._clients[name] = ClearhouseChain(self.w3, self.deployment, self.actors[name].key)
        return self._clients[name]

    def timestamp(self) -> int:
        return int(self.w3.eth.get_block("latest")["timestamp"])


@dataclass
class World:
    """Builds Clearhouse state through the real clients of a `ChainEnv` (tests/conftest.py)."""

    env: object
    separator: bytes = b""
    now: int = 0
    content_counter: int = 0
    seq: dict[bytes, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        dep = self.env.deployment
        self.separator = domain_separator(dep.chain_id, dep.address)
        self.now = self.env.timestamp()

    def c(self, name: str) -> ClearhouseChain:
        return self.env.client(name)

    def addr(self, name: str) -> str:
        return self.env.actors[name].address

    def key(self, name: str) -> bytes:
        return self.env.actors[name].key

    def policy(self, price: int = 100, payees: Sequence[tuple[str, int]] | None = None) -> bytes:
        self.content_counter += 1
        content_id = keccak(text=f"content-{self.content_counter}")
        payees = payees or [(self.addr("content_provider"), 7000), (self.addr("payee2"), 3000)]
        self.c("content_provider").register_policy(content_id, 1, price, payees, keccak(text="policy"))
        return keccak(encode(["bytes32", "uint32"], [content_id, 1]))

    def fund(self, user: bytes, amount: int, deposit_id: bytes | None = None) -> None:
        deposit_id = deposit_id or keccak(user + amount.to_bytes(32, "big") + self.now.to_bytes(8, "big")
                                          + len(self.seq).to_bytes(4, "big") + self.content_counter.to_bytes(4, "big"))
        self.c("bank").record_deposit(deposit_id, user, amount, keccak(text="bank-ref"))

    def issue(self, serial: bytes, cap: int, user: bytes | None = None, device: str = "device",
              fund: bool = True, expires_in: int = 10 * 86400) -> bytes:
        """`user` defaults to the user the chain records for `device` (tests/conftest.py DEVICE_USERS)."""
        user = self.c("bank").member(self.addr(device)).user_id_hash if user is None else user
        if fund:
            self.fund(user, cap, deposit_id=keccak(serial + b"deposit"))
        self.c("clearing_center").issue(serial, self.addr(device), user, cap, self.now + expires_in)
        self.seq[serial] = 0
        return serial

    def batch(self, serial: bytes, policy_ids: Sequence[bytes], entries: Sequence[tuple[int, int, int]],
              first_seq: int | None = None, receiver: str = "provider") -> Batch:
        first = self.seq.get(serial, 0) if first_seq is None else first_seq
        return Batch(serial, first, self.addr(receiver), tuple(policy_ids), pack_entries(entries))

    def item(self, batch: Batch, device: str = "device", receiver: str = "provider", *,
             device_signature: bytes | None = None, receiver_signature: bytes | None = None,
             received_at: int | None = None) -> SettlementItem:
        received_at = self.now if received_at is None else received_at
        batch_hash = batch.struct_hash()
        dev_sig = device_signature if device_signature is not None else sign_digest(
            typed_digest(self.separator, batch_hash), self.key(device))
        rcv_sig = receiver_signature if receiver_signature is not None else sign_digest(
            typed_digest(self.separator, receive_log_hash(batch_hash, self.addr(device), received_at)),
            self.key(receiver))
        return SettlementItem(batch, dev_sig, received_at, rcv_sig)

    def settle(self, *items: SettlementItem, sender: str = "clearing_center"):
        receipt = self.c(sender).settle(list(items))
        for it in items:
            self.seq[it.batch.serial] = it.batch.first_seq + len(it.batch.entries) // 16
        return receipt

    def use(self, serial: bytes, policy_id: bytes, count: int, price: int = 100) -> SettlementItem:
        """A correctly signed item of `count` uses of one policy, continuing the serial's sequence."""
        return self.item(self.batch(serial, [policy_id], [(0, price, self.now)] * count))

    def statement(self, serial: bytes, next_seq: int, spent: int, device: str = "device") -> tuple[Statement, bytes]:
        st = Statement(serial, next_seq, spent, self.now)
        return st, sign_digest(typed_digest(self.separator, st.struct_hash()), self.key(device))



def _abi_type(item: dict) -> str:
    if item["type"].startswith("tuple"):
        return "(" + ",".join(_abi_type(c) for c in item["components"]) + ")" + item["type"][len("tuple"):]
    return item["type"]


@dataclass
class ViewReader:
    """Many view calls in one raw JSON-RPC batch (one HTTP round trip, eth-abi coding, no web3 middleware).

    The stateful test compares the whole chain with its model after every step; web3's own calls (or even its
    `batch_requests`) would dominate the run time of a deep run. Views that revert raise RuntimeError.
    """

    url: str
    address: str
    abi: list
    _functions: dict = field(default_factory=dict, repr=False)
    _session: object = field(default=None, repr=False)

    def __post_init__(self) -> None:
        import requests

        self._session = requests.Session()
        self._session.trust_env = False  # no proxy lookup per call: the node is on loopback
        for item in self.abi:
            if item.get("type") == "function":
                inputs = [_abi_type(i) for i in item["inputs"]]
                outputs = [_abi_type(o) for o in item["outputs"]]
                selector = keccak(text=f"{item['name']}({','.join(inputs)})")[:4]
                self._functions[item["name"]] = (selector, inputs, outputs)

    def read(self, calls: Sequence[tuple[str, tuple]]) -> list[tuple]:
        """`[(function, args), ...]` -> decoded output tuples, in order."""
        if not calls:
            return []
        requests_ = []
        for n, (function, args) in enumerate(calls):
            selector, inputs, _ = self._functions[function]
            data = "0x" + (selector + encode(inputs, list(args))).hex()
            requests_.append({"jsonrpc": "2.0", "id": n, "method": "eth_call",
                              "params": [{"to": self.address, "data": data}, "latest"]})
        answers = sorted(self._session.post(self.url, json=requests_, timeout=60).json(), key=lambda a: a["id"])
        results = []
        for (function, args), answer in zip(calls, answers):
            if "result" not in answer:
                raise RuntimeError(f"{function}{args} failed: {answer.get('error')}")
            results.append(decode(self._functions[function][2], bytes.fromhex(answer["result"][2:])))
        return results


# --- a fast path for the stateful test (tests/contracts/test_invariants.py) -----------------------------------
class RawRpc:
    """JSON-RPC over one keep-alive HTTP session, without web3's middleware, formatters or proxy lookup."""

    def __init__(self, url: str) -> None:
        import requests

        self.url = url
        self._session = requests.Session()
        self._session.trust_env = False  # the node is on loopback

    def __call__(self, method: str, *params: object) -> object:
        answer = self._session.post(self.url, json={"jsonrpc": "2.0", "id": 1, "method": method,
                                                    "params": list(params)}, timeout=60).json()
        if "error" in answer:
            raise RpcError(method, answer["error"])
        return answer["result"]


class RpcError(Exception):
    def __init__(self, method: str, error: dict) -> None:
        super().__init__(f"{method}: {error}")
        self.error = error


def function_coders(abi: list) -> dict[str, tuple[bytes, list[str]]]:
    """name -> (selector, input types) of every function in `abi` (Clearhouse has no overloads)."""
    coders = {}
    for item in abi:
        if item.get("type") == "function":
            inputs = [_abi_type(i) for i in item["inputs"]]
            assert item["name"] not in coders, f"overloaded {item['name']}"
            coders[item["name"]] = (keccak(text=f"{item['name']}({','.join(inputs)})")[:4], inputs)
    return coders


TRANSFER_REQUESTED = keccak(text="TransferRequested(bytes32,address,uint256)")


class FastClient(ClearhouseChain):
    """`ClearhouseChain` for anvil's automine, for the stateful test's thousands of transactions: the same call
    encoding (eth-abi on the ABI's types), the same local signing and nonce, but a fixed gas limit instead of
    eth_estimateGas (a binary search of EVM runs per transaction), and `eth_sendRawTransactionSync` (EIP-7966:
    one round trip returns the receipt of the mined transaction) instead of send + receipt polling. A
    transaction that reverts is mined with status 0; its call is then replayed at the parent block (the state it
    ran on: automine puts one transaction in each block) and raised as the same ContractReverted that
    `ClearhouseChain` raises from its estimate. Receipts are the node's raw JSON (hex strings)."""

    GAS = 8_000_000  # above anything the machine sends (a six-entry settle is ~10x less), below the block limit

    def __init__(self, w3, deployment, private_key: bytes, rpc: RawRpc, coders: dict | None = None) -> None:
        # ClearhouseChain.__init__ without its web3 contract object (built on first use: `contract` below)
        import threading

        self.w3, self.deployment, self.address, self.domain = w3, deployment, deployment.address, deployment.domain
        self._account = Account.from_key(private_key)
        self.sender = self._account.address
        self._gas_margin, self._timeout_s, self._stuck_after_s = 1.25, 60.0, None
        self._nonce, self._sent, self._fees, self._fees_at = None, {}, None, 0.0
        self._lock = threading.Lock()
        self._contract = None
        self._rpc = rpc
        self._coders = coders if coders is not None else function_coders(deployment.abi)

    @property
    def contract(self):  # noqa: ANN201 - web3 Contract, for the inherited reads
        if self._contract is None:
            self._contract = self.w3.eth.contract(address=self.address, abi=self.deployment.abi)
        return self._contract

    def transact(self, to: str | None, data: bytes, function: str, gas: int | None = None) -> dict:
        """Sign and send one transaction; the raw receipt of a successful one, else ChainError/ContractReverted."""
        from offchain.core.errors import ChainError

        gas = self.GAS if gas is None else gas
        with self._lock:
            if self._nonce is None:
                self._nonce = int(self._rpc("eth_getTransactionCount", self.sender, "pending"), 16)
            tx = {"data": data, "value": 0, "gas": gas, "nonce": self._nonce, "chainId": self.deployment.chain_id,
                  **self._fee_fields()}
            if to is not None:
                tx["to"] = to
            signed = self._account.sign_transaction(tx)
            tx_hash = "0x" + bytes(signed.hash).hex()
            try:
                receipt = self._rpc("eth_sendRawTransactionSync", "0x" + bytes(signed.raw_transaction).hex())
            except RpcError as exc:
                if "timeout" not in str(exc.error.get("message", "")).lower():
                    self._nonce = None  # refused: resync from the node on the next send
                    raise ChainError(f"{function}: sending failed: {exc}", function=function) from exc
                # accepted, but anvil gave up waiting (a few seconds on a loaded machine): wait for the receipt
                receipt = self._receipt(tx_hash, function)
            except Exception as exc:
                self._nonce = None
                raise ChainError(f"{function}: sending failed: {exc}", function=function) from exc
            self._nonce += 1
        if int(receipt["status"], 16) != 1:
            raise self._replay(to, data, gas, int(receipt["blockNumber"], 16), function)
        return receipt

    def _fee_fields(self) -> dict[str, int]:
        """ClearhouseChain's fees (3x the latest base fee, cached for 2 s) read through the raw RPC."""
        import time

        from offchain.chain.client import FEE_CACHE_S, PRIORITY_FEE_WEI

        now = time.monotonic()
        if self._fees is None or now - self._fees_at > FEE_CACHE_S:
            base_fee = int(self._rpc("eth_getBlockByNumber", "latest", False)["baseFeePerGas"], 16)
            self._fees = {"maxFeePerGas": 3 * base_fee + PRIORITY_FEE_WEI, "maxPriorityFeePerGas": PRIORITY_FEE_WEI}
            self._fees_at = now
        return self._fees

    def _receipt(self, tx_hash: str, function: str, timeout_s: float = 300.0) -> dict:
        """Poll for the receipt of a transaction the node accepted (ChainError after `timeout_s`)."""
        import time

        from offchain.core.errors import ChainError

        deadline = time.monotonic() + timeout_s
        while (receipt := self._rpc("eth_getTransactionReceipt", tx_hash)) is None:
            if time.monotonic() > deadline:
                raise ChainError(f"{function}: {tx_hash} not mined after {timeout_s} s", function=function)
            time.sleep(0.01)
        return receipt

    def send(self, function: str, *args, gas: int | None = None) -> dict:
        selector, inputs = self._coders[function]
        return self.transact(self.address, selector + encode(inputs, list(args)), function, gas)

    def _replay(self, to: str | None, data: bytes, gas: int, block: int, function: str) -> Exception:
        from offchain.chain.codec import decode_revert

        call = {"from": self.sender, "data": "0x" + data.hex(), "gas": hex(gas), **({"to": to} if to else {})}
        try:
            self._rpc("eth_call", call, hex(block - 1))
        except RpcError as exc:
            raw = exc.error.get("data")
            return decode_revert(self.deployment.abi, bytes.fromhex(raw[2:]) if isinstance(raw, str) else None,
                                 function)
        return ContractReverted(f"{function} failed in block {block} but its replay passes", error_name=None,
                                error_args={}, function=function)

    def request_transfers(self, policy_ids: Sequence[bytes]) -> tuple[dict, list[bytes]]:
        receipt = self.send("requestTransfers", list(policy_ids))
        ids = [bytes.fromhex(log["topics"][1][2:]) for log in receipt["logs"]
               if log["address"].lower() == self.address.lower() and log["topics"]
               and bytes.fromhex(log["topics"][0][2:]) == TRANSFER_REQUESTED]
        return receipt, ids


@dataclass(frozen=True)
class FastChainEnv:
    """A `ChainEnv` (tests/conftest.py) whose clients are `FastClient`s."""

    w3: object
    deployment: object
    actors: dict
    rpc: RawRpc
    coders: dict
    _clients: dict = field(default_factory=dict, repr=False)

    def client(self, name: str) -> FastClient:
        if name not in self._clients:
            self._clients[name] = FastClient(self.w3, self.deployment, self.actors[name].key, self.rpc, self.coders)
        return self._clients[name]

    def timestamp(self) -> int:
        return int(self.rpc("eth_getBlockByNumber", "latest", False)["timestamp"], 16)


class PristineChain:
    """Each call returns the chain as it was right after `template_env`'s deployment (tests/conftest.py
    fresh_chain_env: a Clearhouse deployed just now, every member registered): evm_revert to a snapshot taken then,
    and a FastChainEnv with new clients (nonces read from the node, nothing remembered to re-send). A new
    deployment per example would keep every earlier example's state on the node, and anvil's cost per block grows
    with it: in a deep run, anvil's CPU per example grew from about 0.7 s to 2 s within the first 60 examples."""

    def __init__(self, template_env) -> None:
        self.template = template_env
        self.rpc = RawRpc(str(template_env.w3.provider.endpoint_uri))
        self.coders = function_coders(template_env.deployment.abi)
        self.rpc("anvil_dropAllTransactions")
        self.block = int(self.rpc("eth_blockNumber"), 16)
        self._snapshot: str | None = self.rpc("evm_snapshot")
        self._used = False

    def __call__(self) -> FastChainEnv:
        if self._used:
            if not self.rpc("evm_revert", self._snapshot):
                raise RuntimeError(f"evm_revert({self._snapshot}) failed: snapshot lost")
            self.rpc("anvil_dropAllTransactions")
            self._snapshot = self.rpc("evm_snapshot")  # a revert consumes the snapshot
        self._used = True
        block = int(self.rpc("eth_blockNumber"), 16)
        assert block == self.block, f"the chain is at block {block}, not at the snapshot's {self.block}"
        return FastChainEnv(self.template.w3, self.template.deployment, self.template.actors, self.rpc, self.coders)
