"""The ABI side of the client: custom-error revert decoding and the tuple encoders of settle/renew arguments.

Pure functions of the ABI and the values; nothing here sends a transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from eth_abi import decode as abi_decode
from eth_utils import keccak, to_checksum_address

from offchain.core.errors import ContractReverted


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


def revert_data(exc: BaseException) -> bytes | None:
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


def encode_skip_range(skip: Any) -> tuple:
    """SkipRange(serial, first_seq, count, receiver, total, usage_batch, received_at) as the ABI tuple."""
    return (bytes(skip.serial), int(skip.first_seq), int(skip.count), to_checksum_address(skip.receiver),
            int(skip.total), bytes(skip.usage_batch), int(skip.received_at))


__all__ = ["decode_revert", "revert_data", "SettlementItem", "encode_usage_batch", "encode_settlement_item",
           "encode_balance_statement", "encode_skip_range"]
