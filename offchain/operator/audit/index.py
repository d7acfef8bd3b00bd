"""Audit trails from the chain alone: events and settlement calldata, indexed into a local SQLite cache.

Answers "everything about one serial / payee / content / device" and re-verifies every signature of the trail
(device over each UsageBatch, SP over each ReceiveLog, device over each renewal's BalanceStatement) from the data
alone. It trusts nothing off chain; it does not see the CC's or bank's databases (that is `offchain.operator.reconcile`).
"""

from __future__ import annotations

import csv
import io
import json
import re
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from web3 import Web3
from web3.exceptions import Web3RPCError

from offchain.core.errors import AuditError, ChainUnreachable, ClearhouseError, ConfigError, NotFound, SignatureError
from offchain.core.types import from_hex, hex32
from offchain.core.messages import (
    BalanceStatement,
    Domain,
    ReceiveLog,
    UsageBatch,
    recover,
    to_checksum_address,
)

DEFAULT_CHUNK_BLOCKS = 2_000
TX_BATCH_SIZE = 100
SCHEMA_VERSION = "1"
CALLDATA_FUNCTIONS = frozenset({"settle", "renew"})


# --- deployment -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ContractRef:
    """What the audit needs of a deployment file: chain id, address, ABI and the block to index from."""

    chain_id: int
    address: str
    abi: tuple[dict[str, Any], ...]
    deploy_block: int

    @classmethod
    def from_file(cls, path: Path) -> ContractRef:
        try:
            data = json.loads(Path(path).read_text())
            contract = data["contracts"]["Clearhouse"]
            return cls(chain_id=int(data["chain_id"]), address=to_checksum_address(contract["address"]),
                       abi=tuple(contract["abi"]), deploy_block=int(data.get("deploy_block", 0)))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"cannot read deployment file {path}: {exc}; run the deploy step first",
                              path=str(path)) from exc

    @property
    def domain(self) -> Domain:
        return Domain(chain_id=self.chain_id, verifying_contract=self.address)


# --- records ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ChainEvent:
    """One decoded contract event; `args` holds plain values (0x-hex for bytes, checksummed addresses)."""

    name: str
    block: int
    log_index: int
    tx_hash: str
    args: Mapping[str, Any]


@dataclass(frozen=True)
class CallRecord:
    """A transaction that emitted at least one contract event: sender, gas, and calldata for settle/renew."""

    tx_hash: str
    block: int
    sender: str
    function: str
    gas_used: int
    input: bytes


@dataclass(frozen=True)
class SettledItem:
    """One SettlementItem of a `settle` transaction, decoded from calldata."""

    tx_hash: str
    block: int
    item_index: int
    batch: UsageBatch
    device_signature: bytes
    received_at: int
    receiver_signature: bytes


@dataclass(frozen=True)
class RenewCall:
    """The arguments of one `renew` transaction, decoded from calldata."""

    tx_hash: str
    block: int
    old_serial: bytes
    statement: BalanceStatement
    device_signature: bytes
    new_serial: bytes
    new_money: int
    expires_at: int


@dataclass(frozen=True)
class SyncStats:
    from_block: int
    to_block: int
    new_events: int
    new_transactions: int
    reset: bool


def plain(value: Any) -> Any:
    """JSON-ready form of a decoded ABI value (bytes -> 0x-hex, tuples -> lists, mappings -> dicts)."""
    if isinstance(value, (bytes, bytearray)):
        return "0x" + bytes(value).hex()
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


# --- the index ---------------------------------------------------------------------------------------------------
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
  block INTEGER NOT NULL, log_index INTEGER NOT NULL, tx_hash TEXT NOT NULL, name TEXT NOT NULL,
  topic1 TEXT, topic2 TEXT, topic3 TEXT, args TEXT NOT NULL, PRIMARY KEY (block, log_index));
CREATE INDEX IF NOT EXISTS events_t1 ON events (name, topic1);
CREATE INDEX IF NOT EXISTS events_t2 ON events (name, topic2);
CREATE INDEX IF NOT EXISTS events_t3 ON events (name, topic3);
CREATE INDEX IF NOT EXISTS events_tx ON events (tx_hash);
CREATE TABLE IF NOT EXISTS calls (
  tx_hash TEXT PRIMARY KEY, block INTEGER NOT NULL, sender TEXT NOT NULL, function TEXT NOT NULL,
  gas_used INTEGER NOT NULL, input BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS usage_logs (
  serial TEXT NOT NULL, seq INTEGER NOT NULL, policy_id TEXT NOT NULL, fee INTEGER NOT NULL,
  receiver TEXT NOT NULL, used_at INTEGER NOT NULL, tx_hash TEXT NOT NULL, block INTEGER NOT NULL,
  PRIMARY KEY (serial, seq));
CREATE INDEX IF NOT EXISTS usage_policy ON usage_logs (policy_id);
"""


def default_cache_path(ref: ContractRef, cache_dir: Path | None = None) -> Path:
    base = cache_dir if cache_dir is not None else Path.home() / ".cache" / "clearhouse"
    return base / f"audit-{ref.chain_id}-{ref.address.lower()}.sqlite"


class AuditIndex:
    """Events and calldata of one deployed contract, cached in SQLite; `sync()` fetches only new blocks.

    The cache remembers the hash of the deploy block and of the last indexed block: a restarted dev chain or a
    reorg below the indexed head is detected and the cache is rebuilt rather than trusted.
    """

    def __init__(self, w3: Web3, ref: ContractRef, cache_path: Path, *,
                 chunk_blocks: int = DEFAULT_CHUNK_BLOCKS) -> None:
        self.w3 = w3
        self.ref = ref
        self.contract = w3.eth.contract(address=ref.address, abi=list(ref.abi))
        self.chunk_blocks = chunk_blocks
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        self.cache_path = cache_path
        self.db = sqlite3.connect(str(cache_path))
        self.db.executescript(_SCHEMA)
        self._events_by_topic = _event_table(w3, ref.abi)
        self._indexed_args = {abi["name"]: [i["name"] for i in abi["inputs"] if i.get("indexed")]
                              for abi in ref.abi if abi.get("type") == "event"}

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> AuditIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- meta --
    def _meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _set_meta(self, **values: str) -> None:
        self.db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", list(values.items()))

    @property
    def last_block(self) -> int:
        value = self._meta("last_block")
        return int(value) if value is not None else self.ref.deploy_block - 1

    def _block_hash(self, number: int) -> str:
        return "0x" + bytes(self.w3.eth.get_block(number)["hash"]).hex()

    def _cache_is_valid(self) -> bool:
        if self._meta("schema") != SCHEMA_VERSION or self._meta("address") != self.ref.address:
            return False
        if self._meta("deploy_block_hash") != self._block_hash(max(self.ref.deploy_block, 0)):
            return False
        last = self._meta("last_block")
        return last is None or self._meta("last_block_hash") == self._block_hash(int(last))

    def _reset(self) -> None:
        for table in ("meta", "events", "calls", "usage_logs"):
            self.db.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed table names
        self._set_meta(schema=SCHEMA_VERSION, address=self.ref.address,
                       deploy_block_hash=self._block_hash(max(self.ref.deploy_block, 0)))
        self.db.commit()

    # -- sync --
    def sync(self, to_block: int | None = None) -> SyncStats:
        """Fetch events of blocks after the last indexed one (chunked), their transactions and calldata."""
        try:
            head = self.w3.eth.block_number if to_block is None else to_block
            if head < max(self.ref.deploy_block, 0):
                raise AuditError(f"chain head {head} is below the deploy block {self.ref.deploy_block}: wrong "
                                 "chain or deployment file", head=head, deploy_block=self.ref.deploy_block)
            reset = not self._cache_is_valid()
            if reset:
                self._reset()
            start = self.last_block + 1
            new_events, new_txs = 0, 0
            for low, high in _chunks(start, head, self.chunk_blocks):
                events = self._fetch_events(low, high)
                new_txs += self._store_calls(events)
                self._store_events(events)
                new_events += len(events)
                self._set_meta(last_block=str(high), last_block_hash=self._block_hash(high))
                self.db.commit()
        except (OSError, ConnectionError) as exc:
            raise ChainUnreachable(f"cannot read the chain at {self._rpc_name()}: {exc}; is the node running?",
                                   reason=str(exc)) from exc
        return SyncStats(from_block=start, to_block=head, new_events=new_events, new_transactions=new_txs,
                         reset=reset)

    def _rpc_name(self) -> str:
        return str(getattr(self.w3.provider, "endpoint_uri", self.w3.provider))

    def _fetch_events(self, low: int, high: int) -> list[ChainEvent]:
        try:
            raw_logs = self.w3.eth.get_logs({"address": self.ref.address, "fromBlock": low, "toBlock": high})
        except (ValueError, Web3RPCError):  # providers cap results per query: split the range and retry
            if high <= low:
                raise
            middle = (low + high) // 2
            return self._fetch_events(low, middle) + self._fetch_events(middle + 1, high)
        decoded = []
        for log in raw_logs:
            topics = log["topics"]
            event = self._events_by_topic.get(bytes(topics[0])) if topics else None
            if event is None:
                continue  # an event of another ABI version: not ours to interpret
            args = plain(dict(event.process_log(log)["args"]))
            decoded.append(ChainEvent(name=event.event_name, block=log["blockNumber"], log_index=log["logIndex"],
                                      tx_hash="0x" + bytes(log["transactionHash"]).hex(), args=args))
        return decoded

    def _store_events(self, events: Sequence[ChainEvent]) -> None:
        rows = []
        for ev in events:
            keys = [str(ev.args[name]).lower() for name in self._indexed_args.get(ev.name, [])]
            keys += [None] * (3 - len(keys))
            rows.append((ev.block, ev.log_index, ev.tx_hash, ev.name, *keys[:3], json.dumps(ev.args)))
        self.db.executemany("INSERT OR REPLACE INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)

    def _store_calls(self, events: Sequence[ChainEvent]) -> int:
        hashes = list(dict.fromkeys(ev.tx_hash for ev in events))
        for start in range(0, len(hashes), TX_BATCH_SIZE):
            part = hashes[start:start + TX_BATCH_SIZE]
            txs, receipts = _fetch_transactions(self.w3, part)
            for tx, receipt in zip(txs, receipts):
                self._store_call(tx, receipt)
        return len(hashes)

    def _store_call(self, tx: Mapping[str, Any], receipt: Mapping[str, Any]) -> None:
        raw_input = from_hex(tx["input"]) if isinstance(tx["input"], str) else bytes(tx["input"])
        function, params = self._decode_input(raw_input, tx.get("to"))
        tx_hash = "0x" + bytes(tx["hash"]).hex()
        kept_input = raw_input if function in CALLDATA_FUNCTIONS else b""
        self.db.execute("INSERT OR REPLACE INTO calls VALUES (?, ?, ?, ?, ?, ?)",
                        (tx_hash, tx["blockNumber"], tx["from"], function, receipt["gasUsed"], kept_input))
        if function == "settle":
            for item in _settled_items(tx_hash, tx["blockNumber"], params):
                self._store_usage(item)

    def _store_usage(self, item: SettledItem) -> None:
        rows = [("0x" + log.serial.hex(), log.seq, "0x" + log.policy_id.hex(), log.fee, log.receiver, log.used_at,
                 item.tx_hash, item.block) for log in item.batch.logs()]
        self.db.executemany("INSERT OR REPLACE INTO usage_logs VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)

    def _decode_input(self, raw_input: bytes, to: str | None) -> tuple[str, dict[str, Any]]:
        if to is None or to_checksum_address(to) != self.ref.address or len(raw_input) < 4:
            return "(indirect)", {}  # e.g. through a multisig: events are still indexed, calldata is not ours
        try:
            function, params = self.contract.decode_function_input(raw_input)
        except ValueError:
            return "(unknown)", {}
        return function.fn_name, params

    # -- queries --
    def events(self, name: str, **where: str | bytes) -> list[ChainEvent]:
        """Events named `name`, filtered by indexed arguments (e.g. serial=..., payee=...), in chain order."""
        sql, params = "SELECT name, block, log_index, tx_hash, args FROM events WHERE name = ?", [name]
        indexed = self._indexed_args.get(name, [])
        for arg, value in where.items():
            if arg not in indexed:
                raise AuditError(f"{name}.{arg} is not an indexed argument (indexed: {indexed})", event=name,
                                 argument=arg)
            sql += f" AND topic{indexed.index(arg) + 1} = ?"
            params.append(("0x" + value.hex()) if isinstance(value, bytes) else value.lower())
        rows = self.db.execute(sql + " ORDER BY block, log_index", params).fetchall()
        return [ChainEvent(name=r[0], block=r[1], log_index=r[2], tx_hash=r[3], args=json.loads(r[4])) for r in rows]

    def call(self, tx_hash: str) -> CallRecord:
        row = self.db.execute("SELECT tx_hash, block, sender, function, gas_used, input FROM calls WHERE tx_hash = ?",
                              (tx_hash,)).fetchone()
        if row is None:
            raise NotFound(f"transaction {tx_hash} is not in the audit index", tx_hash=tx_hash)
        return CallRecord(tx_hash=row[0], block=row[1], sender=row[2], function=row[3], gas_used=row[4],
                          input=bytes(row[5]))

    def calls(self) -> list[CallRecord]:
        rows = self.db.execute("SELECT tx_hash, block, sender, function, gas_used, input FROM calls "
                               "ORDER BY block").fetchall()
        return [CallRecord(tx_hash=r[0], block=r[1], sender=r[2], function=r[3], gas_used=r[4], input=bytes(r[5]))
                for r in rows]

    def settled_items(self, tx_hash: str) -> list[SettledItem]:
        record = self.call(tx_hash)
        if record.function != "settle":
            return []
        _, params = self.contract.decode_function_input(record.input)
        return _settled_items(record.tx_hash, record.block, params)

    def renew_call(self, tx_hash: str) -> RenewCall | None:
        record = self.call(tx_hash)
        if record.function != "renew":
            return None
        _, p = self.contract.decode_function_input(record.input)
        s = p["statement"]
        statement = BalanceStatement(serial=bytes(s["serial"]), next_seq=s["nextSeq"], spent=s["spent"],
                                     attested_at=s["attestedAt"])
        return RenewCall(tx_hash=record.tx_hash, block=record.block, old_serial=bytes(p["oldSerial"]),
                         statement=statement, device_signature=bytes(p["deviceSignature"]),
                         new_serial=bytes(p["newSerial"]), new_money=p["newMoney"], expires_at=p["expiresAt"])

    def usage_logs(self, *, serial: str | None = None, policy_id: str | None = None) -> list[dict[str, Any]]:
        sql = "SELECT serial, seq, policy_id, fee, receiver, used_at, tx_hash, block FROM usage_logs"
        where, params = [], []
        for column, value in (("serial", serial), ("policy_id", policy_id)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value.lower())
        if where:
            sql += " WHERE " + " AND ".join(where)
        keys = ("serial", "seq", "policy_id", "fee", "receiver", "used_at", "tx_hash", "block")
        return [dict(zip(keys, row)) for row in self.db.execute(sql + " ORDER BY block, serial, seq", params)]


def _event_table(w3: Web3, abi: Sequence[Mapping[str, Any]]) -> dict[bytes, Any]:
    from eth_utils import event_abi_to_log_topic

    contract = w3.eth.contract(abi=list(abi))
    return {bytes(event_abi_to_log_topic(dict(entry))): getattr(contract.events, entry["name"])()
            for entry in abi if entry.get("type") == "event"}


def _chunks(start: int, end: int, size: int) -> Iterator[tuple[int, int]]:
    for low in range(start, end + 1, size):
        yield low, min(low + size - 1, end)


def _fetch_transactions(w3: Web3, hashes: Sequence[str]) -> tuple[list[Any], list[Any]]:
    """Transactions and receipts of `hashes` in one JSON-RPC batch (falls back to single calls)."""
    try:
        with w3.batch_requests() as batch:
            for tx_hash in hashes:
                batch.add(w3.eth.get_transaction(tx_hash))
                batch.add(w3.eth.get_transaction_receipt(tx_hash))
            results = batch.execute()
        return list(results[0::2]), list(results[1::2])
    except (NotImplementedError, ValueError, TypeError):
        return ([w3.eth.get_transaction(h) for h in hashes], [w3.eth.get_transaction_receipt(h) for h in hashes])


def _settled_items(tx_hash: str, block: int, params: Mapping[str, Any]) -> list[SettledItem]:
    items = []
    for index, item in enumerate(params.get("items", [])):
        b = item["batch"]
        batch = UsageBatch(serial=bytes(b["serial"]), first_seq=b["firstSeq"], receiver=b["receiver"],
                           policy_ids=tuple(bytes(p) for p in b["policyIds"]), entries=bytes(b["entries"]))
        items.append(SettledItem(tx_hash=tx_hash, block=block, item_index=index, batch=batch,
                                 device_signature=bytes(item["deviceSignature"]), received_at=item["receivedAt"],
                                 receiver_signature=bytes(item["receiverSignature"])))
    return items


# --- trails ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Section:
    """One table of a trail: a title, column names and rows of plain values."""

    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]
    note: str = ""


@dataclass(frozen=True)
class Check:
    """One re-verified fact of a trail (a signature, a digest, an event matching its calldata)."""

    subject: str
    what: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class Trail:
    title: str
    sections: tuple[Section, ...]
    checks: tuple[Check, ...] = ()

    @property
    def failures(self) -> int:
        return sum(1 for check in self.checks if not check.ok)

    def section(self, title: str) -> Section:
        for section in self.sections:
            if section.title == title:
                return section
        raise NotFound(f"trail {self.title!r} has no section {title!r}", title=title)

    def to_json(self) -> dict[str, Any]:
        sections = [{"title": s.title, "note": s.note, "rows": [dict(zip(s.columns, row)) for row in s.rows]}
                    for s in self.sections]
        checks = [{"subject": c.subject, "what": c.what, "ok": c.ok, "detail": c.detail} for c in self.checks]
        return {"title": self.title, "sections": sections, "checks": checks, "failures": self.failures}


@dataclass(frozen=True)
class SerialOrigin:
    """Who a serial belongs to: the root IssueLogRecorded's device and user, and the chain of renewals to it."""

    device: str
    user_id_hash: str
    lineage: tuple[str, ...]


def serial_origin(index: AuditIndex, serial: str) -> SerialOrigin:
    """Follow renewals back from `serial` to the issue log that opened its line (device and user)."""
    lineage, current = [serial], serial
    for _ in range(100_000):
        recorded = index.events("IssueLogRecorded", serial=current)
        if recorded:
            args = recorded[0].args
            return SerialOrigin(device=args["device"], user_id_hash=args["userIdHash"], lineage=tuple(lineage))
        renewed = [e for e in index.events("IssueLogRenewed", newSerial=current) if e.args["oldSerial"] != current]
        if not renewed:
            break
        current = renewed[0].args["oldSerial"]
        lineage.append(current)
    raise NotFound(f"serial {serial} was never issued on this contract", serial=serial)


def _row(event: ChainEvent, *names: str) -> tuple[Any, ...]:
    return (event.block, event.tx_hash, *(event.args[name] for name in names))


def _section(title: str, events: Iterable[ChainEvent], *names: str, note: str = "") -> Section:
    return Section(title=title, columns=("block", "tx", *names), rows=tuple(_row(e, *names) for e in events),
                   note=note)


_USAGE_COLUMNS = ("block", "tx", "serial", "seq", "policy_id", "fee", "receiver", "used_at")
_BATCH_FIELDS = ("serial", "device", "receiver", "firstSeq", "count", "total", "receiveLogDigest")
_RENEW_FIELDS = ("oldSerial", "newSerial", "device", "attestedSpent", "attestedNextSeq", "carried", "newMoney",
                 "newCap", "expiresAt")


def _usage_section(logs: Sequence[Mapping[str, Any]], title: str = "Usage logs (decoded from settle calldata)"
                   ) -> Section:
    rows = tuple((u["block"], u["tx_hash"], u["serial"], u["seq"], u["policy_id"], u["fee"], u["receiver"],
                  u["used_at"]) for u in logs)
    return Section(title=title, columns=_USAGE_COLUMNS, rows=rows, note=f"{len(rows)} logs, "
                   f"{sum(u['fee'] for u in logs)} minor units")


def serial_trail(index: AuditIndex, serial: str | bytes, *, verify: bool = True) -> Trail:
    """Everything about one serial: its user's deposits, issue log, renewals, settled batches, usage logs."""
    serial_hex = hex32(serial)
    origin = serial_origin(index, serial_hex)
    opened = index.events("IssueLogRecorded", serial=serial_hex)
    renewed_into = index.events("IssueLogRenewed", newSerial=serial_hex)
    renewed_from = [e for e in index.events("IssueLogRenewed", oldSerial=serial_hex)
                    if e.args["newSerial"] != serial_hex]
    settled = index.events("UsageSettled", serial=serial_hex)
    sections = (
        Section("Origin", ("serial", "device", "user_id_hash", "lineage"),
                ((serial_hex, origin.device, origin.user_id_hash, " <- ".join(origin.lineage)),)),
        _section("Deposits of the user", index.events("DepositRecorded", userIdHash=origin.user_id_hash),
                 "depositId", "bank", "amount", "bankRef"),
        _section("Issue log recorded", opened, "serial", "device", "userIdHash", "cap", "expiresAt"),
        _section("Renewals into this serial (top-up when old == new)", renewed_into, *_RENEW_FIELDS),
        _section("Renewals closing this serial", renewed_from, *_RENEW_FIELDS),
        _section("Settled batches", settled, *_BATCH_FIELDS),
        _usage_section(index.usage_logs(serial=serial_hex)),
    )
    checks = verify_batches(index, settled, origin.device) if verify else ()
    if verify:
        checks += verify_renewals(index, renewed_into + renewed_from)
    return Trail(title=f"serial {serial_hex}", sections=sections, checks=tuple(checks))


def device_trail(index: AuditIndex, device: str, *, verify: bool = True) -> Trail:
    """Everything one device did: its issue logs and renewals, settled batches and usage logs."""
    device = to_checksum_address(device)
    opened = index.events("IssueLogRecorded", device=device)
    renewals = index.events("IssueLogRenewed", device=device)
    settled = index.events("UsageSettled", device=device)
    serials = list(dict.fromkeys([e.args["serial"] for e in opened] + [e.args["newSerial"] for e in renewals]))
    logs = [log for serial in serials for log in index.usage_logs(serial=serial)]
    users = list(dict.fromkeys(e.args["userIdHash"] for e in opened))
    deposits = [e for user in users for e in index.events("DepositRecorded", userIdHash=user)]
    sections = (
        _section("Deposits of its users", deposits, "depositId", "userIdHash", "bank", "amount", "bankRef"),
        _section("Issue logs recorded", opened, "serial", "userIdHash", "cap", "expiresAt"),
        Section("Renewals", ("block", "tx", "mode", *_RENEW_FIELDS),
                tuple((e.block, e.tx_hash, renewal_mode(e), *(e.args[n] for n in _RENEW_FIELDS)) for e in renewals)),
        _section("Settled batches", settled, *_BATCH_FIELDS),
        _usage_section(sorted(logs, key=lambda u: (u["block"], u["serial"], u["seq"]))),
    )
    checks = tuple(verify_batches(index, settled, device) + verify_renewals(index, renewals)) if verify else ()
    return Trail(title=f"device {device}", sections=sections, checks=checks)


def renewal_mode(event: ChainEvent) -> str:
    """"top_up" (claim 13: same serial, all settled) or "new_serial" (claim 14, or a voluntary new serial)."""
    return "top_up" if event.args["oldSerial"] == event.args["newSerial"] else "new_serial"


def payee_pairs(payees: Sequence[Any]) -> list[tuple[str, int]]:
    """(account, bps) pairs of a PolicyRegistered payees argument (dicts or lists, as decoded)."""
    return [(p["account"], int(p["bps"])) if isinstance(p, Mapping) else (p[0], int(p[1])) for p in payees]


def split_amount(amount: int, payees: Sequence[tuple[str, int]]) -> dict[str, int]:
    """The contract's rounding rule: floor(amount * bps / 10000) each, the remainder to payees[0]."""
    parts = [amount * bps // 10_000 for _, bps in payees]
    parts[0] += amount - sum(parts)
    shares: dict[str, int] = {}
    for (account, _), part in zip(payees, parts):
        shares[account] = shares.get(account, 0) + part
    return shares


def policies(index: AuditIndex) -> dict[str, ChainEvent]:
    """Every registered policy version, by policy id."""
    return {e.args["policyId"]: e for e in index.events("PolicyRegistered")}


def payee_trail(index: AuditIndex, payee: str) -> Trail:
    """Everything paid to one payee: its policy shares, accruals per policy, transfer requests, confirmations."""
    payee = to_checksum_address(payee)
    mine = {pid: ev for pid, ev in policies(index).items() if payee in dict(payee_pairs(ev.args["payees"]))}
    shares_by_tx: dict[str, int] = {}
    accrual_rows = []
    for pid, policy in mine.items():
        pairs = payee_pairs(policy.args["payees"])
        for accrual in index.events("AccrualRequested", policyId=pid):
            share = split_amount(int(accrual.args["amount"]), pairs).get(payee, 0)
            shares_by_tx[accrual.tx_hash] = shares_by_tx.get(accrual.tx_hash, 0) + share
            accrual_rows.append((accrual.block, accrual.tx_hash, pid, accrual.args["amount"], share))
    requests = index.events("TransferRequested", payee=payee)
    confirmations = index.events("TransferConfirmed", payee=payee)
    policy_rows = tuple((ev.block, ev.tx_hash, pid, ev.args["contentId"], ev.args["version"], ev.args["price"],
                         dict(payee_pairs(ev.args["payees"]))[payee],
                         payee_pairs(ev.args["payees"])[0][0] == payee) for pid, ev in mine.items())
    totals = (sum(r[4] for r in accrual_rows), sum(int(e.args["amount"]) for e in requests),
              sum(int(e.args["amount"]) for e in confirmations))
    sections = (
        Section("Policies naming this payee", ("block", "tx", "policy_id", "content_id", "version", "price", "bps",
                                               "remainder_payee"), policy_rows),
        Section("Accruals requested (payee's split share)", ("block", "tx", "policy_id", "amount", "share"),
                tuple(accrual_rows)),
        _section("Transfer requests", requests, "requestId", "amount"),
        _section("Bank confirmations", confirmations, "requestId", "bank", "amount", "bankRef"),
        Section("Totals", ("accrued_share", "requested", "confirmed", "outstanding"),
                ((totals[0], totals[1], totals[2], totals[1] - totals[2]),)),
    )
    return Trail(title=f"payee {payee}", sections=sections,
                 checks=tuple(_payee_checks(shares_by_tx, requests, confirmations)))


def _payee_checks(shares_by_tx: Mapping[str, int], requests: Sequence[ChainEvent],
                  confirmations: Sequence[ChainEvent]) -> list[Check]:
    checks = []
    requested_by_tx: dict[str, int] = {}
    for request in requests:
        requested_by_tx[request.tx_hash] = requested_by_tx.get(request.tx_hash, 0) + int(request.args["amount"])
    for tx_hash in sorted(set(shares_by_tx) | set(requested_by_tx)):
        share, requested = shares_by_tx.get(tx_hash, 0), requested_by_tx.get(tx_hash, 0)
        checks.append(Check(subject=f"requestTransfers {tx_hash}", what="split shares == transfer request",
                            ok=share == requested, detail=f"shares {share}, requested {requested}"))
    amounts = {r.args["requestId"]: int(r.args["amount"]) for r in requests}
    for confirmation in confirmations:
        expected = amounts.get(confirmation.args["requestId"])
        checks.append(Check(subject=f"request {confirmation.args['requestId']}", what="confirmed == requested",
                            ok=expected == int(confirmation.args["amount"]),
                            detail=f"requested {expected}, confirmed {confirmation.args['amount']}"))
    return checks


def content_trail(index: AuditIndex, content_id: str | bytes) -> Trail:
    """Everything about one content: its policy versions and splits, every use, accruals per version."""
    content_hex = hex32(content_id)
    versions = index.events("PolicyRegistered", contentId=content_hex)
    if not versions:
        raise NotFound(f"content {content_hex} has no registered policy", content_id=content_hex)
    uses = [log for ev in versions for log in index.usage_logs(policy_id=ev.args["policyId"])]
    summary = []
    for ev in versions:
        pid = ev.args["policyId"]
        fees = sum(u["fee"] for u in uses if u["policy_id"] == pid)
        requested = sum(int(a.args["amount"]) for a in index.events("AccrualRequested", policyId=pid))
        summary.append((ev.args["version"], pid, sum(1 for u in uses if u["policy_id"] == pid), fees, requested,
                        fees - requested))
    version_rows = tuple((ev.block, ev.tx_hash, ev.args["version"], ev.args["policyId"], ev.args["provider"],
                          ev.args["price"], " ".join(f"{a}:{b}" for a, b in payee_pairs(ev.args["payees"])),
                          ev.args["policyHash"]) for ev in versions)
    sections = (
        Section("Policy versions", ("block", "tx", "version", "policy_id", "provider", "price", "payees(bps)",
                                    "policy_hash"), version_rows),
        _usage_section(sorted(uses, key=lambda u: (u["block"], u["serial"], u["seq"])), "Uses"),
        Section("Per version", ("version", "policy_id", "uses", "settled_fees", "requested", "accrued"),
                tuple(summary)),
    )
    return Trail(title=f"content {content_hex}", sections=sections)


# --- re-verification ---------------------------------------------------------------------------------------------
def _recover_or_none(message: Any, domain: Domain, signature: bytes) -> tuple[str | None, str]:
    try:
        return recover(message, domain, signature), ""
    except SignatureError as exc:
        return None, exc.message


def verify_item(domain: Domain, event: ChainEvent, item: SettledItem | None, expected_device: str) -> list[Check]:
    """Re-verify one settled batch from its calldata: event fields, device signature, receive log digest and
    the receiver's signature."""
    args = event.args
    subject = f"batch {args['serial']}#{args['firstSeq']}"
    if item is None:
        return [Check(subject, "calldata found", False, f"no SettlementItem for it in {event.tx_hash}")]
    batch = item.batch
    same = (batch.count, batch.total) == (int(args["count"]), int(args["total"]))
    checks = [Check(subject, "event matches calldata", same,
                    f"calldata count {batch.count} total {batch.total}; event {args['count']} / {args['total']}")]
    device, error = _recover_or_none(batch, domain, item.device_signature)
    checks.append(Check(subject, "device signed the UsageBatch", device == expected_device == args["device"],
                        error or f"recovered {device}, issue log device {expected_device}"))
    receive_log = ReceiveLog(usage_batch=batch.struct_hash(), payer=expected_device, received_at=item.received_at)
    digest = "0x" + receive_log.digest(domain).hex()
    checks.append(Check(subject, "ReceiveLog digest == event", digest == args["receiveLogDigest"],
                        f"recomputed {digest}"))
    receiver, error = _recover_or_none(receive_log, domain, item.receiver_signature)
    checks.append(Check(subject, "receiver signed the ReceiveLog", receiver == batch.receiver == args["receiver"],
                        error or f"recovered {receiver}, batch receiver {batch.receiver}"))
    return checks


def verify_batches(index: AuditIndex, settled: Sequence[ChainEvent], expected_device: str | None = None
                   ) -> list[Check]:
    """Re-verify every UsageSettled event against its transaction's calldata (device from the issue log)."""
    checks: list[Check] = []
    devices: dict[str, str] = {}
    items_by_tx: dict[str, dict[tuple[str, int], SettledItem]] = {}
    for event in settled:
        if event.tx_hash not in items_by_tx:
            items_by_tx[event.tx_hash] = {("0x" + i.batch.serial.hex(), i.batch.first_seq): i
                                          for i in index.settled_items(event.tx_hash)}
        serial = event.args["serial"]
        if serial not in devices:
            devices[serial] = expected_device or serial_origin(index, serial).device
        item = items_by_tx[event.tx_hash].get((serial, int(event.args["firstSeq"])))
        checks += verify_item(index.ref.domain, event, item, devices[serial])
    return checks


def verify_renewals(index: AuditIndex, renewals: Sequence[ChainEvent]) -> list[Check]:
    """Re-verify every renewal: the device signed the BalanceStatement whose digest the event records."""
    checks = []
    for event in renewals:
        args = event.args
        subject = f"renewal {args['oldSerial']} -> {args['newSerial']}"
        call = index.renew_call(event.tx_hash)
        if call is None:
            checks.append(Check(subject, "calldata found", False, f"{event.tx_hash} is not a direct renew call"))
            continue
        digest = "0x" + call.statement.digest(index.ref.domain).hex()
        checks.append(Check(subject, "statement digest == event", digest == args["statementDigest"],
                            f"recomputed {digest}"))
        signer, error = _recover_or_none(call.statement, index.ref.domain, call.device_signature)
        checks.append(Check(subject, "device signed the BalanceStatement", signer == args["device"],
                            error or f"recovered {signer}, event device {args['device']}"))
        attested = (call.statement.spent, call.statement.next_seq)
        checks.append(Check(subject, "statement matches event", attested == (int(args["attestedSpent"]),
                                                                               int(args["attestedNextSeq"])),
                            f"statement spent/nextSeq {attested}"))
    return checks


def verify_trail(index: AuditIndex) -> Trail:
    """Re-verify every settled batch and every renewal on the contract."""
    settled = index.events("UsageSettled")
    renewals = index.events("IssueLogRenewed")
    checks = verify_batches(index, settled) + verify_renewals(index, renewals)
    summary = Section("Verified", ("settled_batches", "usage_logs", "renewals", "checks", "failures"),
                      ((len(settled), sum(int(e.args["count"]) for e in settled), len(renewals), len(checks),
                        sum(1 for c in checks if not c.ok)),))
    return Trail(title="all signatures", sections=(summary,), checks=tuple(checks))


def gas_by_function(index: AuditIndex) -> dict[str, tuple[int, int]]:
    """function name -> (transactions, total gas used) over every indexed transaction."""
    totals: dict[str, tuple[int, int]] = {}
    for call in index.calls():
        count, gas = totals.get(call.function, (0, 0))
        totals[call.function] = (count + 1, gas + call.gas_used)
    return totals


# --- rendering ---------------------------------------------------------------------------------------------------
OUTPUT_FORMATS = ("table", "json", "csv")


_BYTES32_RE = re.compile(r"0x([0-9a-fA-F]{8})[0-9a-fA-F]{50}([0-9a-fA-F]{6})(?![0-9a-fA-F])")


def _short(value: Any) -> str:
    """Tables abbreviate bytes32 hex (0x12345678…abcdef); JSON and CSV keep every digit."""
    return _BYTES32_RE.sub(r"0x\1…\2", str(value))


def render_table(trail: Trail, console: Any) -> None:
    from rich.table import Table

    console.rule(f"[bold]{trail.title}")
    for section in trail.sections:
        table = Table(title=section.title, caption=section.note or None, title_justify="left")
        for column in section.columns:
            table.add_column(column, overflow="fold")
        for row in section.rows:
            table.add_row(*(_short(v) for v in row))
        console.print(table)
    if trail.checks:
        table = Table(title="Signature and consistency checks", title_justify="left")
        for column in ("subject", "check", "result", "detail"):
            table.add_column(column, overflow="fold")
        for check in trail.checks:
            result = "[green]ok" if check.ok else "[bold red]FAILED"
            table.add_row(_short(check.subject), check.what, result, check.detail)
        console.print(table)
        colour = "green" if trail.failures == 0 else "red"
        console.print(f"[{colour}]{len(trail.checks) - trail.failures}/{len(trail.checks)} checks passed")


def render_csv(trail: Trail, stream: io.TextIOBase | Any) -> None:
    """One CSV: each section starts with a header row (`section`, its columns), then its rows."""
    writer = csv.writer(stream)
    for section in trail.sections:
        writer.writerow(["section", *section.columns])
        writer.writerows([section.title, *row] for row in section.rows)
    if trail.checks:
        writer.writerow(["section", "subject", "check", "ok", "detail"])
        writer.writerows(["checks", c.subject, c.what, c.ok, c.detail] for c in trail.checks)


def render(trail: Trail, output: str = "table", stream: Any = None) -> None:
    import sys

    from rich.console import Console

    if output not in OUTPUT_FORMATS:
        raise ConfigError(f"unknown output format {output!r}; use one of {OUTPUT_FORMATS}", output=output)
    stream = stream if stream is not None else sys.stdout
    if output == "json":
        stream.write(json.dumps(trail.to_json(), indent=2) + "\n")
    elif output == "csv":
        render_csv(trail, stream)
    else:
        render_table(trail, Console(file=stream, width=200))


# --- CLI entry points (click lives in offchain.cli) ------------------------------------------------------------
def open_index(*, rpc_url: str, deployment_path: Path, cache_dir: Path | None = None,
               chunk_blocks: int = DEFAULT_CHUNK_BLOCKS) -> AuditIndex:
    """Connect, check the chain id against the deployment file, and sync the local index to the head."""
    ref = ContractRef.from_file(Path(deployment_path))
    w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": 30}))
    try:
        chain_id = w3.eth.chain_id
    except (OSError, ConnectionError) as exc:
        raise ChainUnreachable(f"no chain answers at {rpc_url}: start the node or pass --rpc", url=rpc_url,
                               reason=str(exc)) from exc
    if chain_id != ref.chain_id:
        raise ConfigError(f"the node at {rpc_url} is chain {chain_id} but {deployment_path} was deployed on chain "
                          f"{ref.chain_id}: point --rpc and --deployment at the same network",
                          expected=ref.chain_id, got=chain_id)
    index = AuditIndex(w3, ref, default_cache_path(ref, cache_dir), chunk_blocks=chunk_blocks)
    index.sync()
    return index


def _run(trail_of: Any, output: str, stream: Any, **index_kwargs: Any) -> int:
    with open_index(**index_kwargs) as index:
        trail = trail_of(index)
    render(trail, output, stream)
    return 0 if trail.failures == 0 else 1


def main_serial(*, rpc_url: str, deployment_path: Path, serial: str, output: str = "table", verify: bool = True,
                cache_dir: Path | None = None, stream: Any = None) -> int:
    """`clearhouse audit serial SERIAL`: exit code 0, or 1 if a re-verified signature or digest failed."""
    return _run(lambda index: serial_trail(index, serial, verify=verify), output, stream, rpc_url=rpc_url,
                deployment_path=deployment_path, cache_dir=cache_dir)


def main_device(*, rpc_url: str, deployment_path: Path, device: str, output: str = "table", verify: bool = True,
                cache_dir: Path | None = None, stream: Any = None) -> int:
    """`clearhouse audit device ADDRESS`."""
    return _run(lambda index: device_trail(index, device, verify=verify), output, stream, rpc_url=rpc_url,
                deployment_path=deployment_path, cache_dir=cache_dir)


def main_payee(*, rpc_url: str, deployment_path: Path, payee: str, output: str = "table",
               cache_dir: Path | None = None, stream: Any = None) -> int:
    """`clearhouse audit payee ADDRESS`."""
    return _run(lambda index: payee_trail(index, payee), output, stream, rpc_url=rpc_url,
                deployment_path=deployment_path, cache_dir=cache_dir)


def main_content(*, rpc_url: str, deployment_path: Path, content_id: str, output: str = "table",
                 cache_dir: Path | None = None, stream: Any = None) -> int:
    """`clearhouse audit content CONTENT_ID`."""
    return _run(lambda index: content_trail(index, content_id), output, stream, rpc_url=rpc_url,
                deployment_path=deployment_path, cache_dir=cache_dir)


def main_verify(*, rpc_url: str, deployment_path: Path, output: str = "table", cache_dir: Path | None = None,
                stream: Any = None) -> int:
    """`clearhouse audit verify`: re-verify every signature on the contract; exit 1 on any failure."""
    return _run(verify_trail, output, stream, rpc_url=rpc_url, deployment_path=deployment_path,
                cache_dir=cache_dir)
