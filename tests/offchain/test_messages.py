"""Typed logs: golden vectors, JSON round trips, field validation and usage-batch packing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from eth_abi import encode as abi_encode
from eth_utils import keccak as eth_keccak

from offchain.core.errors import ClearhouseError, InvalidAmount, MalformedMessage, SequenceError
from offchain.core.messages import (
    MESSAGE_TYPES,
    BalanceStatement,
    Domain,
    IssueLog,
    ReceiveLog,
    Role,
    TransferReceipt,
    TransferRequest,
    UsageBatch,
    UsageLog,
    message_from_json,
    policy_id,
    recover,
    sign,
)

VECTOR_DIR = Path(__file__).resolve().parents[1] / "vectors"
VECTORS = [v for path in sorted(VECTOR_DIR.glob("*.json")) for v in json.loads(path.read_text())]
RECEIVER = "0x5878D3C46f19D3222C1Aa5083127E026501b07C3"
SERIAL = b"\x11" * 32
DOMAIN = Domain(chain_id=31337, verifying_contract="0x5FbDB2315678afecb367f032d93F642f64180aa3")


def usage_log(**overrides: Any) -> UsageLog:
    fields: dict[str, Any] = {"serial": SERIAL, "seq": 0, "policy_id": b"\x22" * 32, "fee": 100,
                              "receiver": RECEIVER, "used_at": 1_750_000_000}
    return UsageLog(**{**fields, **overrides})


def vector_id(vector: dict[str, Any]) -> str:
    return f"{vector['type']}-{vector['message'].get('serial', vector['message'].get('requestId', ''))[:10]}"


def test_vectors_cover_every_type() -> None:
    assert {v["type"] for v in VECTORS} == set(MESSAGE_TYPES)


@pytest.mark.parametrize("vector", VECTORS, ids=vector_id)
def test_fast_path_reproduces_vector(vector: dict[str, Any]) -> None:
    cls = MESSAGE_TYPES[vector["type"]]
    message = cls.from_json(vector["message"])
    domain = Domain.from_json(vector["domain"])
    assert cls.TYPE_STRING == vector["type_string"]
    assert "0x" + message.struct_hash().hex() == vector["struct_hash"]
    assert "0x" + message.digest(domain).hex() == vector["digest"]
    assert recover(message, domain, bytes.fromhex(vector["signature"][2:])) == vector["signer"]
    assert "0x" + sign(message, domain, bytes.fromhex(vector["private_key"][2:])).hex() == vector["signature"]


@pytest.mark.parametrize("vector", VECTORS, ids=vector_id)
def test_json_round_trip_matches_vector_exactly(vector: dict[str, Any]) -> None:
    message = message_from_json(vector["type"], vector["message"])
    assert message.to_json() == vector["message"]
    assert type(message).from_json(json.loads(json.dumps(message.to_json()))) == message


def test_type_hash_is_keccak_of_type_string() -> None:
    for cls in MESSAGE_TYPES.values():
        assert cls.type_hash() == eth_keccak(text=cls.TYPE_STRING)


def test_domain_separator_matches_eip712_encoding() -> None:
    expected = eth_keccak(abi_encode(
        ["bytes32", "bytes32", "bytes32", "uint256", "address"],
        [eth_keccak(text="EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"),
         eth_keccak(text="Clearhouse"), eth_keccak(text="1"), 31337, DOMAIN.verifying_contract],
    ))
    assert DOMAIN.separator() == expected


def test_domain_checksums_lowercase_contract() -> None:
    assert Domain(1, DOMAIN.verifying_contract.lower()) == Domain(1, DOMAIN.verifying_contract)


def test_role_values_match_design() -> None:
    assert [(r.name, int(r)) for r in Role] == [("NONE", 0), ("CLEARING_CENTER", 1), ("SERVICE_PROVIDER", 2),
                                                 ("CONTENT_PROVIDER", 3), ("BANK", 4), ("DEVICE", 5)]


def test_policy_id_is_abi_encoded_keccak() -> None:
    content_id = b"\x07" * 32
    assert policy_id(content_id, 3) == eth_keccak(abi_encode(["bytes32", "uint32"], [content_id, 3]))
    with pytest.raises(MalformedMessage):
        policy_id(content_id, 1 << 32)


def test_ids_follow_design() -> None:
    issue = IssueLog(serial=SERIAL, device=RECEIVER, user_id_hash=b"\x01" * 32, cap=10, expires_at=5,
                     previous_serial=bytes(32), carried=0)
    request = TransferRequest(request_id=b"\x09" * 32, payee=RECEIVER, amount=7)
    log = usage_log()
    assert issue.id(DOMAIN) == SERIAL
    assert request.id(DOMAIN) == b"\x09" * 32
    assert log.id(DOMAIN) == log.digest(DOMAIN)


@pytest.mark.parametrize("amount", [-1, 1 << 96, (1 << 96) + 5])
def test_amount_out_of_uint96_rejected_with_invalid_amount(amount: int) -> None:
    with pytest.raises(InvalidAmount) as info:
        TransferRequest(request_id=b"\x09" * 32, payee=RECEIVER, amount=amount)
    assert info.value.field == "amount" and info.value.value == amount


@pytest.mark.parametrize("cls, field, data", [
    (UsageLog, "fee", {"fee": -5}),
    (BalanceStatement, "spent", {"spent": 1 << 96}),
    (TransferReceipt, "amount", {"amount": -1}),
])
def test_from_json_rejects_bad_money_with_invalid_amount(cls: type, field: str, data: dict[str, Any]) -> None:
    vector = next(v for v in VECTORS if v["type"] == cls.__name__)
    with pytest.raises(InvalidAmount) as info:
        cls.from_json({**vector["message"], **data})
    assert info.value.field == field


@pytest.mark.parametrize("patch", [
    {"seq": 1 << 64}, {"seq": -1}, {"usedAt": 1 << 32}, {"seq": "1"}, {"seq": True}, {"fee": 1.0},
    {"serial": "0x1234"}, {"serial": "1234" * 16}, {"serial": "0x" + "zz" * 32}, {"policyId": None},
    {"receiver": "0x5878d3c46f19d3222c1aa5083127e026501b07C3"}, {"receiver": "0x1234"},
])
def test_from_json_rejects_malformed_fields(patch: dict[str, Any]) -> None:
    vector = next(v for v in VECTORS if v["type"] == "UsageLog")
    with pytest.raises(ClearhouseError) as info:
        UsageLog.from_json({**vector["message"], **patch})
    assert isinstance(info.value, (MalformedMessage, InvalidAmount))
    assert info.value.field == next(iter(patch))


def test_from_json_rejects_missing_and_unknown_keys() -> None:
    message = usage_log().to_json()
    with pytest.raises(MalformedMessage):
        UsageLog.from_json({k: v for k, v in message.items() if k != "fee"})
    with pytest.raises(MalformedMessage):
        UsageLog.from_json({**message, "extra": 1})
    with pytest.raises(MalformedMessage):
        message_from_json("NoSuchLog", message)


def test_receive_log_rejects_short_bytes32() -> None:
    with pytest.raises(MalformedMessage) as info:
        ReceiveLog(usage_batch=b"\x01" * 31, payer=RECEIVER, received_at=1)
    assert info.value.field == "usageBatch"


def test_address_normalized_to_checksum() -> None:
    assert usage_log(receiver=RECEIVER.lower()).receiver == RECEIVER


def test_batch_pack_unpack_round_trip() -> None:
    policies = [b"\x21" * 32, b"\x22" * 32, b"\x23" * 32]
    logs = [usage_log(seq=10 + i, policy_id=policies[i * 7 % 3], fee=100 + i, used_at=1_750_000_000 + i)
            for i in range(12)]
    batch = UsageBatch.from_logs(logs)
    assert batch.policy_ids == (policies[0], policies[1], policies[2])
    assert batch.count == 12 and batch.total == sum(log.fee for log in logs)
    assert batch.logs() == logs
    assert batch.entries[:16] == bytes([0]) + (100).to_bytes(11, "big") + (1_750_000_000).to_bytes(4, "big")
    assert UsageBatch.from_json(batch.to_json()) == batch


def test_batch_policy_order_is_first_appearance() -> None:
    logs = [usage_log(seq=i, policy_id=bytes([p]) * 32) for i, p in enumerate([5, 3, 5, 9, 3])]
    assert UsageBatch.from_logs(logs).policy_ids == (b"\x05" * 32, b"\x03" * 32, b"\x09" * 32)


def test_batch_rejects_gap_other_serial_and_uint88_overflow() -> None:
    with pytest.raises(SequenceError) as gap:
        UsageBatch.from_logs([usage_log(seq=0), usage_log(seq=2)])
    assert (gap.value.expected, gap.value.got) == (1, 2)
    with pytest.raises(MalformedMessage):
        UsageBatch.from_logs([usage_log(seq=0), usage_log(seq=1, serial=b"\x12" * 32)])
    with pytest.raises(MalformedMessage):
        UsageBatch.from_logs([usage_log(seq=0), usage_log(seq=1, receiver=DOMAIN.verifying_contract)])
    with pytest.raises(InvalidAmount):
        UsageBatch.from_logs([usage_log(fee=1 << 88)])
    with pytest.raises(MalformedMessage):
        UsageBatch.from_logs([])


def test_batch_rejects_malformed_entries() -> None:
    good = UsageBatch.from_logs([usage_log()])
    for entries, policy_ids in [(good.entries[:15], good.policy_ids), (b"", good.policy_ids),
                                (b"\x01" + good.entries[1:], good.policy_ids), (good.entries, ())]:
        with pytest.raises(MalformedMessage):
            UsageBatch(serial=SERIAL, first_seq=0, receiver=RECEIVER, policy_ids=policy_ids, entries=entries)
    with pytest.raises(MalformedMessage):
        UsageBatch(serial=SERIAL, first_seq=(1 << 64) - 1, receiver=RECEIVER, policy_ids=good.policy_ids,
                   entries=good.entries * 2)


def test_messages_are_frozen() -> None:
    log = usage_log()
    with pytest.raises(AttributeError):
        log.fee = 1  # type: ignore[misc]


@pytest.mark.parametrize("data", [
    {"chainId": 1}, {"name": "Other", "version": "1", "chainId": 1, "verifyingContract": RECEIVER},
    {"name": "Clearhouse", "version": "2", "chainId": 1, "verifyingContract": RECEIVER},
    {"chainId": 0, "verifyingContract": RECEIVER}, {"chainId": "1", "verifyingContract": RECEIVER},
])
def test_domain_from_json_rejects_foreign_or_malformed(data: dict[str, Any]) -> None:
    with pytest.raises(MalformedMessage):
        Domain.from_json(data)


@given(first_seq=st.integers(0, 1 << 40), rows=st.lists(
    st.tuples(st.integers(0, 6), st.integers(0, (1 << 88) - 1), st.integers(0, (1 << 32) - 1)),
    min_size=1, max_size=40))
@settings(max_examples=80, deadline=None)
def test_batch_pack_unpack_round_trip_property(first_seq: int, rows: list[tuple[int, int, int]]) -> None:
    logs = [usage_log(seq=first_seq + i, policy_id=bytes([p]) * 32, fee=fee, used_at=used_at)
            for i, (p, fee, used_at) in enumerate(rows)]
    batch = UsageBatch.from_logs(logs)
    assert batch.logs() == logs and batch.count == len(logs) and batch.total == sum(fee for _, fee, _ in rows)
    assert len(batch.entries) == 16 * len(logs) and len(set(batch.policy_ids)) == len(batch.policy_ids)
