"""Generate the EIP-712 golden vectors tests/vectors/<Type>.json with eth-account's generic path only.

Deliberately independent of offchain.core.messages: the type strings are copied from docs/design.md and every hash
and signature comes from eth_account (encode_typed_data, Account.sign_message). Python's fast path
(tests/offchain) and Solidity (tests/contracts/test_vectors.py) must both reproduce these files.
Run: `python tests/vectors/generate.py` (deterministic: keys and values derive from fixed labels).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.messages import _hash_eip191_message, encode_typed_data
from eth_utils import keccak, to_checksum_address

TYPE_STRINGS = {
    "IssueLog": "IssueLog(bytes32 serial,address device,bytes32 userIdHash,uint96 cap,uint40 expiresAt,"
    "bytes32 previousSerial,uint96 carried)",
    "BalanceStatement": "BalanceStatement(bytes32 serial,uint64 nextSeq,uint96 spent,uint40 attestedAt)",
    "UsageLog": "UsageLog(bytes32 serial,uint64 seq,bytes32 policyId,uint96 fee,address receiver,uint32 usedAt)",
    "UsageBatch": "UsageBatch(bytes32 serial,uint64 firstSeq,address receiver,bytes32[] policyIds,bytes entries)",
    "ReceiveLog": "ReceiveLog(bytes32 usageBatch,address payer,uint64 receivedAt)",
    "SkipRange": "SkipRange(bytes32 serial,uint64 firstSeq,uint32 count,address receiver,uint96 total,"
    "bytes32 usageBatch,uint64 receivedAt)",
    "TransferRequest": "TransferRequest(bytes32 requestId,address payee,uint96 amount)",
    "TransferReceipt": "TransferReceipt(bytes32 requestId,bytes32 bankRef,uint96 amount,uint64 confirmedAt)",
}
DOMAINS = [
    {"name": "Clearhouse", "version": "1", "chainId": 31337,
     "verifyingContract": "0x5FbDB2315678afecb367f032d93F642f64180aa3"},
    {"name": "Clearhouse", "version": "1", "chainId": 1,
     "verifyingContract": "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512"},
]
U96 = (1 << 96) - 1
OUT_DIR = Path(__file__).resolve().parent


def b32(label: str) -> str:
    return "0x" + keccak(text=label).hex()


def addr(label: str) -> str:
    return to_checksum_address(keccak(text=label)[12:])


def key(label: str) -> str:
    return "0x" + keccak(text="clearhouse-vector-key:" + label).hex()


def members(type_name: str) -> list[dict[str, str]]:
    body = re.fullmatch(r"\w+\((.*)\)", TYPE_STRINGS[type_name]).group(1)  # type: ignore[union-attr]
    return [{"name": m.split(" ")[1], "type": m.split(" ")[0]} for m in body.split(",")]


def entry(index: int, fee: int, used_at: int) -> bytes:
    return bytes((index,)) + fee.to_bytes(11, "big") + used_at.to_bytes(4, "big")


def hex_entries(*items: tuple[int, int, int]) -> str:
    return "0x" + b"".join(entry(*item) for item in items).hex()


def messages() -> dict[str, list[dict[str, Any]]]:
    """A few messages per type: typical values, zeros and maxima of each range."""
    return {
        "IssueLog": [
            {"serial": b32("serial-1"), "device": addr("device-1"), "userIdHash": b32("user-1"), "cap": 50_000,
             "expiresAt": 1_900_000_000, "previousSerial": "0x" + "00" * 32, "carried": 0},
            {"serial": b32("serial-2"), "device": addr("device-2"), "userIdHash": b32("user-2"), "cap": U96,
             "expiresAt": (1 << 40) - 1, "previousSerial": b32("serial-1"), "carried": U96 - 1},
        ],
        "BalanceStatement": [
            {"serial": b32("serial-1"), "nextSeq": 17, "spent": 1_700, "attestedAt": 1_800_000_000},
            {"serial": b32("serial-3"), "nextSeq": (1 << 64) - 1, "spent": U96, "attestedAt": 0},
        ],
        "UsageLog": [
            {"serial": b32("serial-1"), "seq": 0, "policyId": b32("policy-1"), "fee": 100,
             "receiver": addr("sp-1"), "usedAt": 1_750_000_000},
            {"serial": b32("serial-1"), "seq": 1, "policyId": b32("policy-2"), "fee": (1 << 88) - 1,
             "receiver": addr("sp-1"), "usedAt": (1 << 32) - 1},
            {"serial": b32("serial-4"), "seq": (1 << 64) - 1, "policyId": b32("policy-3"), "fee": U96,
             "receiver": addr("sp-2"), "usedAt": 0},
        ],
        "UsageBatch": [
            {"serial": b32("serial-1"), "firstSeq": 0, "receiver": addr("sp-1"), "policyIds": [b32("policy-1")],
             "entries": hex_entries((0, 100, 1_750_000_000))},
            {"serial": b32("serial-1"), "firstSeq": 5, "receiver": addr("sp-1"),
             "policyIds": [b32("policy-1"), b32("policy-2"), b32("policy-3")],
             "entries": hex_entries((1, 250, 1_750_000_010), (0, 100, 1_750_000_011), (2, (1 << 88) - 1, 2**32 - 1),
                                    (1, 250, 1_750_000_013))},
        ],
        "ReceiveLog": [
            {"usageBatch": b32("batch-1"), "payer": addr("device-1"), "receivedAt": 1_750_000_100},
            {"usageBatch": b32("batch-2"), "payer": addr("device-2"), "receivedAt": (1 << 64) - 1},
        ],
        "SkipRange": [
            {"serial": b32("serial-1"), "firstSeq": 3, "count": 2, "receiver": addr("sp-1"), "total": 200,
             "usageBatch": b32("batch-1"), "receivedAt": 1_750_000_100},
            {"serial": b32("serial-5"), "firstSeq": (1 << 64) - 1, "count": (1 << 32) - 1, "receiver": addr("sp-2"),
             "total": U96, "usageBatch": b32("batch-2"), "receivedAt": (1 << 64) - 1},
        ],
        "TransferRequest": [
            {"requestId": b32("request-1"), "payee": addr("cp-1"), "amount": 12_345},
            {"requestId": b32("request-2"), "payee": addr("cp-2"), "amount": U96},
        ],
        "TransferReceipt": [
            {"requestId": b32("request-1"), "bankRef": b32("bank-ref-1"), "amount": 12_345,
             "confirmedAt": 1_760_000_000},
            {"requestId": b32("request-2"), "bankRef": b32("bank-ref-2"), "amount": 0, "confirmedAt": 0},
        ],
    }


def as_typed_values(type_name: str, message: dict[str, Any]) -> dict[str, Any]:
    """Hex strings to bytes for bytes/bytes32 members (eth-account hashes python bytes unambiguously)."""
    out: dict[str, Any] = {}
    for member in members(type_name):
        value = message[member["name"]]
        if member["type"] in ("bytes32", "bytes"):
            value = bytes.fromhex(value[2:])
        elif member["type"] == "bytes32[]":
            value = [bytes.fromhex(item[2:]) for item in value]
        out[member["name"]] = value
    return out


def vector(type_name: str, message: dict[str, Any], domain: dict[str, Any], private_key: str) -> dict[str, Any]:
    full = {
        "types": {
            "EIP712Domain": [{"name": "name", "type": "string"}, {"name": "version", "type": "string"},
                             {"name": "chainId", "type": "uint256"}, {"name": "verifyingContract", "type": "address"}],
            type_name: members(type_name),
        },
        "primaryType": type_name,
        "domain": domain,
        "message": as_typed_values(type_name, message),
    }
    signable = encode_typed_data(full_message=full)
    signed = Account.sign_message(signable, private_key=private_key)
    return {
        "type": type_name, "type_string": TYPE_STRINGS[type_name], "domain": domain, "message": message,
        "struct_hash": "0x" + signable.body.hex(), "digest": "0x" + _hash_eip191_message(signable).hex(),
        "private_key": private_key, "signature": "0x" + bytes(signed.signature).hex(),
        "signer": Account.from_key(private_key).address,
    }


def main() -> None:
    for type_name, items in messages().items():
        vectors = [vector(type_name, m, DOMAINS[i % len(DOMAINS)], key(f"{type_name}-{i}"))
                   for i, m in enumerate(items)]
        path = OUT_DIR / f"{type_name}.json"
        path.write_text(json.dumps(vectors, indent=2) + "\n")
        print(f"wrote {len(vectors)} vectors to {path}")


if __name__ == "__main__":
    main()
