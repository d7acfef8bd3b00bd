"""Blocks and transactions as the node has them, decoded with the deployment's ABI: calldata, events, custom
error reverts, gas, and where the transaction stands against the confirmation depth.

Status: *pending* (in the pool, no block), *included* (fewer than `depth` confirmations), *final* (at least
`depth`), *reorged* (the audit index saw it in a block that is no longer canonical, or its receipt's block hash
is not the canonical block's). Private chains without finality (Clique) only ever reach "final by depth".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from eth_utils import event_abi_to_log_topic
from web3 import Web3
from web3.exceptions import TransactionNotFound, Web3Exception

from offchain.chain import decode_revert
from offchain.core.errors import NotFound
from offchain.operator.explorer.sources import ContractRef

PENDING, INCLUDED, FINAL, REORGED = "pending", "included", "final", "reorged"


@dataclass(frozen=True)
class DecodedEvent:
    log_index: int
    name: str
    args: dict[str, Any]
    address: str
    topics: tuple[str, ...]
    data: str


@dataclass(frozen=True)
class TxView:
    tx_hash: str
    status: str
    block: int | None
    block_hash: str | None
    confirmations: int
    depth: int
    sender: str
    to: str | None
    function: str
    arguments: dict[str, Any]
    succeeded: bool | None
    revert: dict[str, Any] | None
    gas_used: int | None
    gas_limit: int
    gas_price: int | None
    nonce: int
    raw_input: str
    events: tuple[DecodedEvent, ...]


def _hex(value: Any) -> str:
    if isinstance(value, str):
        return value if value.startswith("0x") else "0x" + value
    return "0x" + bytes(value).hex()


def plain(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return "0x" + bytes(value).hex()
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


class Decoder:
    """The deployment's ABI as a function, event and error decoder."""

    def __init__(self, w3: Web3, ref: ContractRef) -> None:
        self.ref = ref
        self.contract = w3.eth.contract(address=ref.address, abi=list(ref.abi))
        self._events = {bytes(event_abi_to_log_topic(dict(e))): getattr(self.contract.events, e["name"])()
                        for e in ref.abi if e.get("type") == "event"}

    def function(self, to: str | None, raw_input: bytes) -> tuple[str, dict[str, Any]]:
        if to is None:
            return "(contract creation)", {}
        if Web3.to_checksum_address(to) != self.ref.address:
            return "(not this contract)", {}
        if len(raw_input) < 4:
            return "(plain transfer)", {}
        try:
            fn, params = self.contract.decode_function_input(raw_input)
        except ValueError:
            return "(unknown selector)", {}
        return fn.fn_name, plain(dict(params))

    def event(self, log: Mapping[str, Any]) -> DecodedEvent:
        topics = tuple(_hex(t) for t in log["topics"])
        raw = _hex(log["data"])
        event = self._events.get(bytes.fromhex(topics[0][2:])) if topics else None
        ours = Web3.to_checksum_address(log["address"]) == self.ref.address
        name, args = "(unknown event)", {}
        if event is not None and ours:
            name, args = event.event_name, plain(dict(event.process_log(log)["args"]))
        return DecodedEvent(log_index=int(log["logIndex"]), name=name, args=args,
                            address=Web3.to_checksum_address(log["address"]), topics=topics, data=raw)

    def revert(self, w3: Web3, tx: Mapping[str, Any], function: str) -> dict[str, Any]:
        """Replay a failed transaction with eth_call on its parent block's state and decode the custom error."""
        call = {"from": tx["from"], "to": tx["to"], "data": _hex(tx["input"]), "value": tx.get("value", 0),
                "gas": tx["gas"]}
        try:
            w3.eth.call(call, block_identifier=max(int(tx["blockNumber"]) - 1, 0))
        except Web3Exception as exc:
            data = _revert_bytes(exc)
            error = decode_revert(list(self.ref.abi), data, function)
            arguments = getattr(error, "error_args", None)  # older ContractReverted kept them in fields["args"]
            arguments = error.fields.get("args", {}) if arguments is None else arguments
            return {"error": getattr(error, "error_name", None) or "(unknown)", "args": plain(arguments),
                    "message": error.message,
                    "data": "0x" + (data or b"").hex(), "replayed": True}
        return {"error": "(did not revert on replay)", "args": {}, "data": "0x", "replayed": True,
                "message": "the replay on the parent block succeeded: the failure depended on an earlier "
                           "transaction of the same block"}


def _revert_bytes(exc: BaseException) -> bytes | None:
    for value in (getattr(exc, "data", None), *getattr(exc, "args", ())):
        if isinstance(value, Mapping):
            value = value.get("data")
        if isinstance(value, (bytes, bytearray)):
            return bytes(value)
        if isinstance(value, str) and value.startswith("0x"):
            try:
                return bytes.fromhex(value[2:])
            except ValueError:
                continue
    return None


def status_of(block: int | None, head: int, depth: int, canonical: bool) -> tuple[str, int]:
    """(status, confirmations) of a transaction mined in `block` (None = pending) with the chain at `head`."""
    if block is None:
        return PENDING, 0
    if not canonical:
        return REORGED, 0
    confirmations = head - block + 1
    return (FINAL if confirmations >= depth else INCLUDED), confirmations


def tx_view(w3: Web3, decoder: Decoder, tx_hash: str, *, head: int, depth: int, indexed_block: int | None) -> TxView:
    """The transaction `tx_hash`; `indexed_block` is where the audit index saw it (to tell a reorg)."""
    try:
        tx = w3.eth.get_transaction(tx_hash)
    except TransactionNotFound:
        if indexed_block is not None:
            return _vanished(tx_hash, indexed_block, depth)
        raise NotFound(f"no transaction {tx_hash} on this chain", tx_hash=tx_hash) from None
    raw_input = bytes(tx["input"]) if not isinstance(tx["input"], str) else bytes.fromhex(tx["input"][2:])
    function, arguments = decoder.function(tx.get("to"), raw_input)
    receipt, canonical, events = None, True, ()
    if tx.get("blockNumber") is not None:
        receipt = w3.eth.get_transaction_receipt(tx_hash)
        block_hash = _hex(receipt["blockHash"])
        canonical = _hex(w3.eth.get_block(int(receipt["blockNumber"]))["hash"]) == block_hash
        canonical = canonical and (indexed_block is None or indexed_block == int(receipt["blockNumber"]))
        events = tuple(decoder.event(log) for log in receipt["logs"])
    status, confirmations = status_of(tx.get("blockNumber"), head, depth, canonical)
    succeeded = None if receipt is None else receipt["status"] == 1
    revert = decoder.revert(w3, tx, function) if succeeded is False else None
    return TxView(tx_hash=_hex(tx["hash"]), status=status, block=tx.get("blockNumber"),
                  block_hash=_hex(tx["blockHash"]) if tx.get("blockHash") else None, confirmations=confirmations,
                  depth=depth, sender=tx["from"], to=tx.get("to"), function=function, arguments=arguments,
                  succeeded=succeeded, revert=revert, gas_used=None if receipt is None else int(receipt["gasUsed"]),
                  gas_limit=int(tx["gas"]), gas_price=(int(receipt["effectiveGasPrice"]) if receipt is not None
                                                        and receipt.get("effectiveGasPrice") is not None else None),
                  nonce=int(tx["nonce"]), raw_input="0x" + raw_input.hex(), events=events)


def _vanished(tx_hash: str, indexed_block: int, depth: int) -> TxView:
    return TxView(tx_hash=tx_hash, status=REORGED, block=indexed_block, block_hash=None, confirmations=0,
                  depth=depth, sender="", to=None, function="(no longer on chain)", arguments={}, succeeded=None,
                  revert=None, gas_used=None, gas_limit=0, gas_price=None, nonce=0, raw_input="0x", events=())


@dataclass(frozen=True)
class BlockView:
    number: int
    hash: str
    parent_hash: str
    timestamp: int
    miner: str
    gas_used: int
    gas_limit: int
    status: str
    confirmations: int
    transactions: tuple[dict[str, Any], ...]
    extra_data: str


def block_view(w3: Web3, decoder: Decoder, block_id: int | str, *, head: int, depth: int) -> BlockView:
    """Block by number or hash, each transaction with its decoded function, status and gas used."""
    try:
        block = w3.eth.get_block(block_id, full_transactions=True)
    except (Web3Exception, ValueError):
        raise NotFound(f"no block {block_id} on this chain", block=str(block_id)) from None
    if block is None:
        raise NotFound(f"no block {block_id} on this chain", block=str(block_id))
    rows = []
    for tx in block["transactions"]:
        receipt = w3.eth.get_transaction_receipt(tx["hash"])
        raw = bytes(tx["input"]) if not isinstance(tx["input"], str) else bytes.fromhex(tx["input"][2:])
        rows.append({"tx_hash": _hex(tx["hash"]), "from": tx["from"], "to": tx.get("to") or "",
                     "function": decoder.function(tx.get("to"), raw)[0], "ok": receipt["status"] == 1,
                     "gas_used": int(receipt["gasUsed"]), "events": len(receipt["logs"])})
    status, confirmations = status_of(int(block["number"]), head, depth, True)
    return BlockView(number=int(block["number"]), hash=_hex(block["hash"]), parent_hash=_hex(block["parentHash"]),
                     timestamp=int(block["timestamp"]), miner=block.get("miner", ""), gas_used=int(block["gasUsed"]),
                     gas_limit=int(block["gasLimit"]), status=status, confirmations=confirmations,
                     transactions=tuple(rows), extra_data=_hex(block.get("extraData", b"")))


def event_rows(events: Sequence[DecodedEvent]) -> list[tuple[Any, ...]]:
    return [(e.log_index, e.name, "; ".join(f"{k}={v}" for k, v in e.args.items())) for e in events]
