"""The simulator's independent checker: reads the chain, every database and every wallet itself, then judges.

It shares no code path with the agents: chain logs come from raw `eth_getLogs` decoded with the ABI (eth_abi),
views from raw `eth_call`, signatures are recovered with eth-account's generic EIP-712 encoder, databases are
read with plain `sqlite3` SQL and the wallets' files likewise. It only reads; it assumes the system is quiescent.
"""

from __future__ import annotations

import json
import sqlite3
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eth_abi import decode as abi_decode
from eth_abi import encode as abi_encode
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils import keccak, to_checksum_address

ENTRY_SIZE = 16
INVARIANTS = (
    "settled_at_most_once", "settled_logs_signed_by_device", "acknowledged_logs_settled", "serial_totals_agree",
    "caps_within_deposits", "no_stranded_allocation", "transfers_confirmed_once", "bank_paid_once",
    "books_balance", "deposits_recorded_once", "nothing_left_open", "no_device_frozen", "duplicates_identical",
    "storage_full_named", "reconcile_clean",
)


@dataclass(frozen=True)
class Violation:
    invariant: str
    detail: str

    def __str__(self) -> str:
        return f"{self.invariant}: {self.detail}"


Source = Path | str  # a SQLite file, or a PostgreSQL URL (postgresql[+psycopg2]://...)


@dataclass
class World:
    """Where everything of one consortium lives, and what the workload asked for (the checker's oracle)."""

    rpc_url: str
    deployment_path: Path
    cc_db: Source  # the services' databases: SQLite files, or PostgreSQL URLs (`clearhouse sim --db postgres`)
    sp_db: Source
    bank_db: Source
    wallets: dict[str, tuple[str, Path]]  # device member id -> (eth address, wallet.db)
    deposits: dict[str, tuple[str, int]] = field(default_factory=dict)  # deposit id string -> (user, amount)
    dup_mismatches: list[dict[str, Any]] = field(default_factory=list)
    # the fault proxy's events in order: (link, "answer <5xx>", "<request> -> <error code>") and the disk fills'
    # windows as ("fault", "open disk fill" | "close disk fill", service)
    proxy_events: list[tuple[str, str, str]] = field(default_factory=list)
    reconcile: tuple[int, str] | None = None  # (exit code, output) of `clearhouse reconcile`


# --- raw chain access ----------------------------------------------------------------------------------------------
class RawChain:
    """JSON-RPC over urllib and ABI decoding with eth_abi: no web3 contract objects, no agent code."""

    def __init__(self, rpc_url: str, deployment_path: Path) -> None:
        data = json.loads(Path(deployment_path).read_text())
        self.url = rpc_url
        self.chain_id = int(data["chain_id"])
        self.deploy_block = int(data["deploy_block"])
        self.address = to_checksum_address(data["contracts"]["Clearhouse"]["address"])
        self.abi = data["contracts"]["Clearhouse"]["abi"]
        self.events = {self._signature(e): e for e in self.abi if e.get("type") == "event"}
        self.functions = {e["name"]: e for e in self.abi if e.get("type") == "function"}
        self.block = "latest"  # every read at this block (`pin`): logs and views of one and the same state

    def pin(self) -> int:
        """Read every later log and view at the current head, not at whatever `latest` is by then: a block mined
        between reading the logs and the views would otherwise show the views' state without the logs' events."""
        head = int(self.rpc("eth_blockNumber", []), 16)
        self.block = hex(head)
        return head

    def rpc(self, method: str, params: list[Any]) -> Any:
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()
        request = urllib.request.Request(self.url, data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
        if "error" in answer:
            raise RuntimeError(f"{method}: {answer['error']}")
        return answer["result"]

    @staticmethod
    def _type(param: dict[str, Any]) -> str:
        if param["type"].startswith("tuple"):
            return "(" + ",".join(RawChain._type(c) for c in param["components"]) + ")" + param["type"][5:]
        return str(param["type"])

    def _signature(self, item: dict[str, Any]) -> bytes:
        return keccak(text=f"{item['name']}({','.join(self._type(i) for i in item['inputs'])})")

    def logs(self) -> list[dict[str, Any]]:
        """Every event of the contract since its deployment, decoded: {"event", "tx", "block", **args}."""
        raw = self.rpc("eth_getLogs", [{"address": self.address, "fromBlock": hex(self.deploy_block),
                                        "toBlock": self.block}])
        decoded = []
        for entry in raw:
            topics = [bytes.fromhex(t[2:]) for t in entry["topics"]]
            event = self.events.get(topics[0])
            if event is None:
                continue
            indexed = [i for i in event["inputs"] if i["indexed"]]
            plain = [i for i in event["inputs"] if not i["indexed"]]
            args: dict[str, Any] = {}
            for param, topic in zip(indexed, topics[1:]):
                args[param["name"]] = abi_decode([self._type(param)], topic)[0]
            values = abi_decode([self._type(p) for p in plain], bytes.fromhex(entry["data"][2:]))
            args.update({p["name"]: v for p, v in zip(plain, values)})
            decoded.append({"event": event["name"], "tx": entry["transactionHash"],
                            "block": int(entry["blockNumber"], 16), **args})
        return decoded

    def call(self, name: str, *args: Any) -> tuple[Any, ...]:
        function = self.functions[name]
        types = [self._type(i) for i in function["inputs"]]
        selector = keccak(text=f"{name}({','.join(types)})")[:4]
        data = "0x" + (selector + abi_encode(types, list(args))).hex()
        result = self.rpc("eth_call", [{"to": self.address, "data": data}, self.block])
        return tuple(abi_decode([self._type(o) for o in function["outputs"]], bytes.fromhex(result[2:])))

    def settle_items(self, tx_hash: str) -> list[tuple[Any, ...]]:
        tx = self.rpc("eth_getTransactionByHash", [tx_hash])
        function = self.functions["settle"]
        types = [self._type(i) for i in function["inputs"]]
        return list(abi_decode(types, bytes.fromhex(tx["input"][10:]))[0])

    def usage_batch_signer(self, batch: tuple[Any, ...], signature: bytes) -> str:
        serial, first_seq, receiver, policy_ids, entries = batch
        typed = {
            "types": {"EIP712Domain": [{"name": "name", "type": "string"}, {"name": "version", "type": "string"},
                                       {"name": "chainId", "type": "uint256"},
                                       {"name": "verifyingContract", "type": "address"}],
                      "UsageBatch": [{"name": "serial", "type": "bytes32"}, {"name": "firstSeq", "type": "uint64"},
                                     {"name": "receiver", "type": "address"},
                                     {"name": "policyIds", "type": "bytes32[]"}, {"name": "entries", "type": "bytes"}]},
            "primaryType": "UsageBatch",
            "domain": {"name": "Clearhouse", "version": "1", "chainId": self.chain_id,
                       "verifyingContract": self.address},
            "message": {"serial": serial, "firstSeq": first_seq, "receiver": receiver, "policyIds": list(policy_ids),
                        "entries": entries},
        }
        return str(Account.recover_message(encode_typed_data(full_message=typed), signature=signature))


def entry_fees(entries: bytes) -> list[int]:
    return [int.from_bytes(entries[i + 1:i + 12], "big") for i in range(0, len(entries), ENTRY_SIZE)]


REFUSAL_STATUSES = ("502", "503", "504", "507")  # the service could not do the work (chain, peer or disk out)


# per-item refusals in a batch answer ({"accepted": [ids], "rejected": [{"index", "error", ...}]}): not done now
ITEM_REFUSALS = frozenset({"chain_unreachable", "chain_error", "service_unavailable", "storage_full",
                           "transport_error", "tls_handshake_failed", "crl_unavailable", "remote_error"})


def _items_refused(mismatch: dict[str, Any]) -> bool:
    """Two batch answers that differ only in items one of them refused for now: the same final rejections,
    the same number of items, and what one accepted beyond the other is what the other refused for now."""
    first, second = mismatch.get("first_json"), mismatch.get("second_json")
    sides = []
    for body in (first, second):
        if not isinstance(body, dict) or not isinstance(body.get("accepted"), list) \
                or not isinstance(body.get("rejected"), list):
            return False
        rejected = [r for r in body["rejected"] if isinstance(r, dict)]
        refusals = [r for r in rejected if r.get("error") in ITEM_REFUSALS]
        final = sorted((r.get("index"), r.get("error")) for r in rejected if r.get("error") not in ITEM_REFUSALS)
        sides.append((set(body["accepted"]), len(refusals), final))
    (a1, n1, f1), (a2, n2, f2) = sides
    if f1 != f2 or len(a1) + n1 != len(a2) + n2:
        return False
    big, small = ((a1, n1), (a2, n2)) if len(a1) >= len(a2) else ((a2, n2), (a1, n1))
    return small[0] <= big[0] and len(big[0] - small[0]) == small[1] - big[1]


def _refused(mismatch: dict[str, Any]) -> bool:
    """One of the two answers is a named refusal: the service could not do the work then (502/503/504/507 with
    a Clearhouse error code), so that request was not done and the other answer is the one that stands."""
    for side in ("first", "second"):
        line = str(mismatch.get(side, "")).split()
        if len(line) >= 2 and line[1] in REFUSAL_STATUSES and mismatch.get(f"{side}_error"):
            return True
    return False


# --- raw database access -------------------------------------------------------------------------------------------
def is_postgres(source: Source) -> bool:
    return str(source).startswith(("postgresql://", "postgresql+psycopg2://", "postgres://"))


def rows(path: Source, sql: str, params: Iterable[Any] = ()) -> list[Any]:
    """Read-only plain SQL on a SQLite file (sqlite3) or a PostgreSQL database (psycopg2, the driver only; the
    SQL has no parameters' placeholders, so it is the same text on both); a missing database or table reads as
    no rows (a service that never wrote). Rows are read by column name."""
    if is_postgres(path):
        return _pg_rows(str(path), sql, tuple(params))
    if not Path(path).exists():
        return []
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    connection.row_factory = sqlite3.Row
    try:
        return list(connection.execute(sql, tuple(params)))
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return []
        raise
    finally:
        connection.close()


def _pg_rows(url: str, sql: str, params: tuple[Any, ...]) -> list[Any]:
    import psycopg2
    import psycopg2.errors
    import psycopg2.extras

    dsn = "postgresql://" + url.split("://", 1)[1]
    try:
        connection = psycopg2.connect(dsn, connect_timeout=30)
    except psycopg2.OperationalError as exc:
        if "does not exist" in str(exc):
            return []
        raise
    try:
        connection.set_session(readonly=True, autocommit=True)
        with connection.cursor(cursor_factory=psycopg2.extras.DictCursor) as cursor:
            try:
                cursor.execute(sql, params or None)
            except psycopg2.errors.UndefinedTable:
                return []
            return list(cursor.fetchall())
    finally:
        connection.close()


def count(source: Source, sql: str) -> int:
    """`SELECT COUNT(*) ...` on either backend; a missing database or table counts 0."""
    found = rows(source, sql)
    return int(found[0][0]) if found else 0


def as_bytes(value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    text = str(value)
    return bytes.fromhex(text[2:] if text.startswith("0x") else text)


def hexs(value: Any) -> str:
    return "0x" + as_bytes(value).hex()


# --- the checks ----------------------------------------------------------------------------------------------------
class Checker:
    """Collects facts once, then each `check_*` adds the violations of one invariant."""

    def __init__(self, world: World, chain: RawChain | None = None) -> None:
        self.world = world
        if chain is None:
            chain = RawChain(world.rpc_url, world.deployment_path)
            chain.pin()  # every event and view the checker compares is of one block
        self.chain = chain
        self.events = self.chain.logs()
        self.violations: list[Violation] = []

    def of(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == name]

    def fail(self, invariant: str, detail: str) -> None:
        self.violations.append(Violation(invariant, detail))

    def run(self) -> list[Violation]:
        for invariant in INVARIANTS:
            getattr(self, f"check_{invariant}")()
        return self.violations

    # serials and settlement ---------------------------------------------------------------------------------
    def serial_devices(self) -> dict[bytes, str]:
        owners = {bytes(e["serial"]): to_checksum_address(e["device"]) for e in self.of("IssueLogRecorded")}
        for e in self.of("IssueLogRenewed"):
            owners[bytes(e["newSerial"])] = to_checksum_address(e["device"])
        return owners

    def settled_ranges(self) -> dict[bytes, list[tuple[int, int, int]]]:
        ranges: dict[bytes, list[tuple[int, int, int]]] = defaultdict(list)
        for e in self.of("UsageSettled"):
            ranges[bytes(e["serial"])].append((int(e["firstSeq"]), int(e["count"]), int(e["total"])))
        return ranges

    def check_settled_at_most_once(self) -> None:
        for serial, spans in self.settled_ranges().items():
            seen = Counter(seq for first, count, _ in spans for seq in range(first, first + count))
            twice = sorted(seq for seq, n in seen.items() if n > 1)
            if twice:
                self.fail("settled_at_most_once", f"serial {hexs(serial)} seqs {twice[:10]} settled more than once")

    def check_settled_logs_signed_by_device(self) -> None:
        owners = self.serial_devices()
        for tx in sorted({e["tx"] for e in self.of("UsageSettled")}):
            for batch, device_sig, _received_at, _receiver_sig in self.chain.settle_items(tx):
                serial = bytes(batch[0])
                signer = self.chain.usage_batch_signer(batch, bytes(device_sig))
                if owners.get(serial) != signer:
                    self.fail("settled_logs_signed_by_device",
                              f"tx {tx} batch of serial {hexs(serial)} signed by {signer}, device {owners.get(serial)}")

    def _settled_seqs(self) -> dict[bytes, set[int]]:
        return {serial: {s for first, count, _ in spans for s in range(first, first + count)}
                for serial, spans in self.settled_ranges().items()}

    def check_acknowledged_logs_settled(self) -> None:
        settled = self._settled_seqs()
        for row in rows(self.world.sp_db, "SELECT serial, first_seq, count, status FROM sp_batches"):
            serial, first, count = as_bytes(row["serial"]), int(row["first_seq"]), int(row["count"])
            missing = [s for s in range(first, first + count) if s not in settled.get(serial, set())]
            if missing or row["status"] == "rejected":
                self.fail("acknowledged_logs_settled", f"SP batch {hexs(serial)}[{first}..{first + count - 1}] "
                          f"status {row['status']}: seqs {missing[:10]} not settled on chain")
        for member_id, (_address, wallet) in self.world.wallets.items():
            for row in rows(wallet, "SELECT serial, seq FROM usage_logs WHERE uploaded = 1"):
                if int(row["seq"]) not in settled.get(as_bytes(row["serial"]), set()):
                    self.fail("acknowledged_logs_settled", f"{member_id}: uploaded log {hexs(row['serial'])}"
                              f"#{row['seq']} never settled")

    def check_serial_totals_agree(self) -> None:
        calldata: dict[bytes, int] = defaultdict(int)
        for tx in sorted({e["tx"] for e in self.of("UsageSettled")}):
            for batch, *_ in self.chain.settle_items(tx):
                calldata[bytes(batch[0])] += sum(entry_fees(bytes(batch[4])))
        ranges = self.settled_ranges()
        wallet_logs: dict[bytes, list[int]] = defaultdict(list)
        for _member, (_address, wallet) in self.world.wallets.items():
            for row in rows(wallet, "SELECT serial, seq, log_json FROM usage_logs ORDER BY seq"):
                wallet_logs[as_bytes(row["serial"])].append(int(json.loads(row["log_json"])["fee"]))
        for serial in sorted(set(self.serial_devices())):
            _device, _user, _cap, spent, next_seq, *_ = self.chain.call("issueLog", serial)
            events_total = sum(t for _, _, t in ranges.get(serial, []))
            events_next = sum(c for _, c, _ in ranges.get(serial, []))
            wallet = wallet_logs.get(serial, [])
            facts = {"chain spent": spent, "event totals": events_total, "calldata": calldata.get(serial, 0),
                     "wallet spent": sum(wallet)}
            seqs = {"chain nextSeq": next_seq, "settled logs": events_next, "wallet logs": len(wallet)}
            if len(set(facts.values())) > 1 or len(set(seqs.values())) > 1:
                self.fail("serial_totals_agree", f"serial {hexs(serial)}: {facts} {seqs}")

    # money ------------------------------------------------------------------------------------------------------
    def check_caps_within_deposits(self) -> None:
        deposited: dict[bytes, int] = defaultdict(int)
        for e in self.of("DepositRecorded"):
            deposited[bytes(e["userIdHash"])] += int(e["amount"])
        allocated: dict[bytes, int] = defaultdict(int)
        users = {bytes(e["serial"]): bytes(e["userIdHash"]) for e in self.of("IssueLogRecorded")}
        for e in self.of("IssueLogRecorded"):
            allocated[bytes(e["userIdHash"])] += int(e["cap"])
        for e in self.of("IssueLogRenewed"):
            user = users.get(bytes(e["oldSerial"]))
            users[bytes(e["newSerial"])] = user or b""
            allocated[user or b""] += int(e["newMoney"])
        for e in self.of("IssueLogReleased"):  # an expired or closed log handing its unspent cap back
            allocated[bytes(e["userIdHash"])] -= int(e["released"])
        for user in sorted(set(deposited) | set(allocated)):
            chain_deposited, chain_allocated = self.chain.call("userFunds", user)
            if not (allocated[user] <= deposited[user] and chain_allocated == allocated[user]
                    and chain_deposited == deposited[user]):
                self.fail("caps_within_deposits", f"user {hexs(user)}: events deposited {deposited[user]} "
                          f"allocated {allocated[user]}; chain {chain_deposited}/{chain_allocated}")

    def check_no_stranded_allocation(self) -> None:
        held: dict[str, set[bytes]] = defaultdict(set)
        for _member, (address, wallet) in self.world.wallets.items():
            held[to_checksum_address(address)] |= {as_bytes(r["serial"]) for r in rows(wallet, "SELECT serial "
                                                                                     "FROM issue_logs")}
        for serial, device in self.serial_devices().items():
            if serial not in held.get(device, set()):
                _d, _u, cap, spent, *_ = self.chain.call("issueLog", serial)
                self.fail("no_stranded_allocation", f"serial {hexs(serial)} of device {device} (cap {cap}, spent "
                          f"{spent}) is on chain but in no wallet")

    def check_transfers_confirmed_once(self) -> None:
        confirmed = defaultdict(list)
        for e in self.of("TransferConfirmed"):
            confirmed[bytes(e["requestId"])].append(e)
        for e in self.of("TransferRequested"):
            rid = bytes(e["requestId"])
            got = confirmed.get(rid, [])
            if len(got) != 1 or to_checksum_address(got[0]["payee"]) != to_checksum_address(e["payee"]) \
                    or int(got[0]["amount"]) != int(e["amount"]):
                self.fail("transfers_confirmed_once", f"request {hexs(rid)} for {e['amount']} to {e['payee']}: "
                          f"{len(got)} confirmations {[(c['payee'], c['amount']) for c in got]}")

    def check_bank_paid_once(self) -> None:
        paid: dict[str, list[int]] = defaultdict(list)
        for row in rows(self.world.bank_db, "SELECT e.idempotency_key AS k, p.account_id AS a, p.amount AS m "
                        "FROM journal_entries e JOIN postings p ON p.entry_id = e.id WHERE e.kind = 'transfer'"):
            if str(row["a"]).startswith("payee:"):
                paid[str(row["k"]).lower()].append(int(row["m"]))
        requested = {f"transfer:{hexs(e['requestId'])}": int(e["amount"]) for e in self.of("TransferRequested")}
        for key, amount in requested.items():
            if paid.get(key) != [amount]:
                self.fail("bank_paid_once", f"{key}: requested {amount}, bank paid {paid.get(key, [])}")
        for key in sorted(set(paid) - set(requested)):
            self.fail("bank_paid_once", f"{key}: paid {paid[key]} without a request on chain")

    def check_books_balance(self) -> None:
        for row in rows(self.world.bank_db, "SELECT entry_id, SUM(amount) AS s FROM postings GROUP BY entry_id "
                        "HAVING SUM(amount) <> 0"):
            self.fail("books_balance", f"bank journal entry {row['entry_id']} sums to {row['s']}")
        settled = sum(int(e["total"]) for e in self.of("UsageSettled"))
        requested = sum(int(e["amount"]) for e in self.of("TransferRequested"))
        if settled != requested:
            self.fail("books_balance", f"settled {settled} on chain but {requested} requested for transfer")

    def check_deposits_recorded_once(self) -> None:
        on_chain = Counter(bytes(e["depositId"]) for e in self.of("DepositRecorded"))
        ledger = Counter(str(r["idempotency_key"]) for r in rows(self.world.bank_db, "SELECT idempotency_key FROM "
                                                                 "journal_entries WHERE kind = 'deposit'"))
        cc = Counter(str(r["idempotency_key"]) for r in rows(self.world.cc_db, "SELECT idempotency_key FROM "
                                                             "user_balance_entries WHERE kind = 'deposit'"))
        for deposit_id, (_user, amount) in self.world.deposits.items():
            key = keccak(deposit_id.encode())
            counts = (on_chain[key], ledger[f"deposit:{key.hex()}"], cc[f"deposit:0x{key.hex()}"])
            if counts != (1, 1, 1):
                self.fail("deposits_recorded_once", f"deposit {deposit_id} ({amount}): chain/ledger/CC {counts}")
        if sum(on_chain.values()) != len(self.world.deposits):
            self.fail("deposits_recorded_once", f"{sum(on_chain.values())} deposits on chain, "
                      f"{len(self.world.deposits)} made")

    # leftovers --------------------------------------------------------------------------------------------------
    OPEN = (("cc_db", "cc_issue_requests", "status = 'planned'"),
            ("cc_db", "settlement_outbox", "status IN ('pending', 'sent')"),
            ("cc_db", "receive_logs", "status IN ('accepted', 'submitted', 'rejected')"),
            ("cc_db", "transfer_requests", "status IN ('requested', 'sent_to_bank')"),  # void: reorged out, never due
            ("sp_db", "sp_batches", "status <> 'acked'"))

    def check_nothing_left_open(self) -> None:
        for db, table, where in self.OPEN:
            found = rows(getattr(self.world, db), f"SELECT COUNT(*) AS n FROM {table} WHERE {where}")  # noqa: S608
            if found and int(found[0]["n"]):
                self.fail("nothing_left_open", f"{db}.{table}: {found[0]['n']} rows with {where}")
        for pid in {bytes(e["policyId"]) for e in self.of("PolicyRegistered")}:
            policy = self.chain.call("policy", pid)
            settled, requested = int(policy[5]), int(policy[6])
            if settled != requested:
                self.fail("nothing_left_open", f"policy {hexs(pid)}: {settled - requested} accrued, not requested")

    def check_no_device_frozen(self) -> None:
        for member_id, (_address, wallet) in self.world.wallets.items():
            frozen = rows(wallet, "SELECT serial FROM issue_logs WHERE state = 'current' AND attested_at IS NOT NULL")
            if frozen:
                self.fail("no_device_frozen", f"{member_id}: current log {hexs(frozen[0]['serial'])} attested, "
                          "no renewal installed (renewal pending)")

    def check_duplicates_identical(self) -> None:
        """Both answers byte for byte (but Date/Server), unless one of them is a named refusal (`_refused`): a
        duplicate answered `storage_full` while the first was accepted, or `chain_unreachable` twice with another
        cause of the outage in the message, did nothing twice. Anything else that differs (200 then 409, two
        different results, an opaque 500) is a violation; that nothing was done twice is the other invariants'."""
        for mismatch in self.world.dup_mismatches:
            if _refused(mismatch) or _items_refused(mismatch):
                continue
            self.fail("duplicates_identical", json.dumps(mismatch)[:600])

    def check_storage_full_named(self) -> None:
        """While a service's disk is full it answers a named error (storage_full, or another named one), never
        an opaque internal_error or a body that is no Clearhouse error."""
        full: set[str] = set()
        for link, what, detail in self.world.proxy_events:
            if link == "fault":
                if what == "open disk fill":
                    full.add(detail)
                elif what == "close disk fill":
                    full.discard(detail)
                continue
            server = link.rsplit("->", 1)[-1]
            code = detail.rsplit(" -> ", 1)[-1] if " -> " in detail else ""
            if what.startswith("answer ") and server in full and code in ("", "internal_error"):
                self.fail("storage_full_named", f"{link} answered {what.removeprefix('answer ')} "
                          f"{code or '(no Clearhouse error)'} while {server}'s disk was full: {detail[:200]}")

    def check_reconcile_clean(self) -> None:
        if self.world.reconcile is not None and self.world.reconcile[0] != 0:
            self.fail("reconcile_clean", f"clearhouse reconcile exited {self.world.reconcile[0]}: "
                      f"{self.world.reconcile[1][-400:]}")


def check(world: World) -> list[Violation]:
    return Checker(world).run()


__all__ = ["World", "Violation", "Checker", "RawChain", "check", "INVARIANTS", "rows", "count", "is_postgres",
           "Source"]
