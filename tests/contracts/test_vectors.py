"""Golden EIP-712 vectors (tests/vectors/*.json) checked against Solidity through contracts/test/LogHashesProbe.sol.

Every vector's struct hash and digest must equal the probe's; when a vector carries a signature, the probe's
Signatures.recover must return its signer. Without vector files, vectors are generated with eth-account instead.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from eth_account.messages import encode_typed_data
from eth_utils import keccak, to_checksum_address

from offchain.chain import deploy_artifact

VECTOR_DIR = Path(__file__).resolve().parents[1] / "vectors"
TYPE_FIELDS = {
    "IssueLog": ["serial", "device", "userIdHash", "cap", "expiresAt", "previousSerial", "carried"],
    "BalanceStatement": ["serial", "nextSeq", "spent", "attestedAt"],
    "UsageLog": ["serial", "seq", "policyId", "fee", "receiver", "usedAt"],
    "UsageBatch": ["serial", "firstSeq", "receiver", "policyIds", "entries"],
    "ReceiveLog": ["usageBatch", "payer", "receivedAt"],
    "SkipRange": ["serial", "firstSeq", "count", "receiver", "total", "usageBatch", "receivedAt"],
    "TransferRequest": ["requestId", "payee", "amount"],
    "TransferReceipt": ["requestId", "bankRef", "amount", "confirmedAt"],
}
PROBE_FUNCTION = {"IssueLog": "issueLog", "BalanceStatement": "balanceStatement", "UsageLog": "usageLog",
                  "UsageBatch": "usageBatch", "ReceiveLog": "receiveLog", "SkipRange": "skipRange", "TransferRequest": "transferRequest",
                  "TransferReceipt": "transferReceipt"}


def _load_vectors() -> list[dict]:
    vectors: list[dict] = []
    for path in sorted(VECTOR_DIR.glob("*.json")):
        data = json.loads(path.read_text())
        vectors.extend(data if isinstance(data, list) else [data])
    return vectors or _generated_vectors()


def _generated_vectors() -> list[dict]:
    domain = {"name": "Clearhouse", "version": "1", "chainId": 31337,
              "verifyingContract": "0x5FbDB2315678afecb367f032d93F642f64180aa3"}
    message = {"serial": "0x" + keccak(text="s").hex(), "seq": 7, "policyId": "0x" + keccak(text="p").hex(),
               "fee": 100, "receiver": to_checksum_address("0x" + "11" * 20), "usedAt": 1_700_000_000}
    types = {"UsageLog": [{"name": "serial", "type": "bytes32"}, {"name": "seq", "type": "uint64"},
                          {"name": "policyId", "type": "bytes32"}, {"name": "fee", "type": "uint96"},
                          {"name": "receiver", "type": "address"}, {"name": "usedAt", "type": "uint32"}]}
    signable = encode_typed_data(domain_data=domain, message_types=types, message_data=message)
    digest = keccak(b"\x19\x01" + signable.header + signable.body)
    return [{"type": "UsageLog", "domain": domain, "message": message, "struct_hash": "0x" + signable.body.hex(),
             "digest": "0x" + digest.hex()}]


def _arg(value):
    if isinstance(value, list):
        return [_arg(v) for v in value]
    if isinstance(value, str) and value.startswith("0x") and len(value) != 42:
        return bytes.fromhex(value[2:])
    return value


@pytest.fixture(scope="module")
def probe(w3, compiled, actors):
    address, _ = deploy_artifact(w3, actors["deployer"].key, compiled["LogHashesProbe"], [])
    return w3.eth.contract(address=address, abi=compiled["LogHashesProbe"]["abi"])


VECTORS = _load_vectors()


@pytest.mark.parametrize("vector", VECTORS, ids=[f"{v['type']}-{i}" for i, v in enumerate(VECTORS)])
def test_vector_matches_solidity(probe, vector: dict) -> None:
    domain = vector["domain"]
    assert (domain["name"], domain["version"]) == ("Clearhouse", "1")
    separator = probe.functions.domainSeparator(domain["chainId"], domain["verifyingContract"]).call()
    args = [_arg(vector["message"][name]) for name in TYPE_FIELDS[vector["type"]]]
    struct_hash, digest = getattr(probe.functions, PROBE_FUNCTION[vector["type"]])(separator, *args).call()
    assert "0x" + struct_hash.hex() == vector["struct_hash"].lower()
    assert "0x" + digest.hex() == vector["digest"].lower()
    if "signature" in vector and "signer" in vector:
        signer = probe.functions.recover(digest, bytes.fromhex(vector["signature"][2:])).call()
        assert signer == to_checksum_address(vector["signer"])


def test_vector_files_cover_every_type() -> None:
    assert list(VECTOR_DIR.glob("*.json")), "tests/vectors/*.json are the golden vectors (tests/vectors/generate.py)"
    assert {v["type"] for v in VECTORS} == set(TYPE_FIELDS)
