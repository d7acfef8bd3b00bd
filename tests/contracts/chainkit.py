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

from offchain.chain import ClearhouseChain, SettlementItem
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
