"""The audit's chain index: events and settlement calldata of one deployment, cached in a local SQLite file.

Holds the records (ChainEvent, CallRecord, SettledItem, RenewCall), the report model a trail is made of (Trail,
Section, Check) and the serial lineage. It trusts nothing off chain and does not see the CC's or the bank's
databases (that is `offchain.operator.reconcile`). Trails are in `trails`, re-verification in `verify`.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from web3 import Web3
from web3.exceptions import Web3RPCError

from offchain.core.errors import AuditError, ChainUnreachable, NotFound, PathError, SettingError
from offchain.core.types import from_hex
from offchain.core.messages import BalanceStatement, Domain, UsageBatch, to_checksum_address


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
            raise PathError(f"cannot read deployment file {path}: {exc}; run the deploy step first",
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


# --- trails: the report model ------------------------------------------------------------------------------------------------------
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


# --- serial lineage -----------------------------------------------------------------------------------------------
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


def gas_by_function(index: AuditIndex) -> dict[str, tuple[int, int]]:
    """function name -> (transactions, total gas used) over every indexed transaction."""
    totals: dict[str, tuple[int, int]] = {}
    for call in index.calls():
        count, gas = totals.get(call.function, (0, 0))
        totals[call.function] = (count + 1, gas + call.gas_used)
    return totals


# --- opening an index ------------------------------------------------------------
def open_index(*, rpc_url: str, deployment_path: Path, cache_dir: Path | None = None,
               chunk_blocks: int = DEFAULT_CHUNK_BLOCKS) -> AuditIndex:
    """Connect, check the chain id against the deployment file, and sync the local index to the head."""
    ref = ContractRef.from_file(Path(deployment_path))
    w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": 30}))
    from web3.middleware import ExtraDataToPOAMiddleware

    w3.middleware_onion.inject(ExtraDataToPOAMiddleware, layer=0)  # Clique blocks carry a longer extraData
    try:
        chain_id = w3.eth.chain_id
    except (OSError, ConnectionError) as exc:
        raise ChainUnreachable(f"no chain answers at {rpc_url}: start the node or pass --rpc", url=rpc_url,
                               reason=str(exc)) from exc
    if chain_id != ref.chain_id:
        raise SettingError(f"the node at {rpc_url} is chain {chain_id} but {deployment_path} was deployed on chain "
                           f"{ref.chain_id}: point --rpc and --deployment at the same network",
                           expected=ref.chain_id, got=chain_id)
    index = AuditIndex(w3, ref, default_cache_path(ref, cache_dir), chunk_blocks=chunk_blocks)
    index.sync()
    return index
