"""Reconciliation of the chain, the clearing center's database and the bank's ledger, minor unit by minor unit.

Every difference is listed with its cause; a difference that a running system legitimately shows for a while
(a request not yet paid, a deposit the CC was not yet notified of) is marked *in flight* and does not fail the
run, everything else does. Read-only: it never repairs anything, and it trusts the chain as the reference.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select

from offchain.core.split import accrual_shares
from offchain.operator.audit import AuditIndex, open_index, payee_pairs
from offchain.core.errors import ReconciliationFailed, SettingError
from offchain.core.messages import keccak

DEFAULT_GRACE_S = 600


@dataclass(frozen=True)
class Difference:
    """One disagreement: where, about what, why; `in_flight` marks an explained, expected transient state."""

    area: str
    key: str
    cause: str
    in_flight: bool = False
    chain: int | None = None
    cc: int | None = None
    bank: int | None = None


@dataclass(frozen=True)
class Deposit:
    user_id_hash: str
    amount: int
    bank_ref: str = ""
    created_at: int = 0


@dataclass(frozen=True)
class Transfer:
    payee: str
    amount: int
    bank_ref: str = ""
    status: str = ""
    created_at: int = 0


@dataclass(frozen=True)
class SeqRange:
    """A run of one serial's sequence numbers the chain moved past: `settled` (UsageSettled, its policies
    credited), `skipped` (RangeSkipped: charged to the cap, credited to no policy, its fees held for `receiver`)
    or `released` (the UsageSettled of a skipped range's batch that arrived later: policies credited, cap not
    charged again, held fees released)."""

    first_seq: int
    count: int
    total: int
    kind: str
    receiver: str = ""


@dataclass(frozen=True)
class ChainFacts:
    deposits: dict[str, Deposit]
    allocated: dict[str, int]  # user id hash -> new money put into caps (issue caps + renewal new money)
    funds_view: dict[str, tuple[int, int]]  # user id hash -> userFunds() (deposited, allocated)
    settled_batches: dict[tuple[str, int], int]  # (serial, firstSeq) -> total
    settled_by_policy: dict[str, int]  # from settle calldata
    policy_view: dict[str, tuple[int, int]]  # policy() -> (settled, requested)
    accruals: dict[str, int]  # AccrualRequested per policy
    request_shares: dict[str, int]  # expected payee amounts of all requests, from accruals and splits
    requests: dict[str, Transfer]
    confirmations: dict[str, Transfer]
    seq_ranges: dict[str, tuple[SeqRange, ...]] = field(default_factory=dict)  # serial -> ranges, by first seq
    issue_log_view: dict[str, tuple[int, int]] = field(default_factory=dict)  # serial -> issueLog() (spent, nextSeq)
    held_view: dict[str, int] = field(default_factory=dict)  # receiver of a skipped range -> heldFees()


@dataclass(frozen=True)
class CcFacts:
    deposits: dict[str, Deposit]
    allocated: dict[str, int]
    receive_logs: dict[tuple[str, int], tuple[int, str]]  # (serial, firstSeq) -> (total, status)
    requests: dict[str, Transfer]


@dataclass(frozen=True)
class BankFacts:
    deposits: dict[str, Deposit]
    transfers: dict[str, Transfer]
    unbalanced_entries: tuple[int, ...]
    unknown_entries: tuple[str, ...]
    balances: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Report:
    differences: tuple[Difference, ...]
    totals: dict[str, int]

    @property
    def unexplained(self) -> tuple[Difference, ...]:
        return tuple(d for d in self.differences if not d.in_flight)

    @property
    def in_flight(self) -> tuple[Difference, ...]:
        return tuple(d for d in self.differences if d.in_flight)

    @property
    def clean(self) -> bool:
        return not self.unexplained

    def to_json(self) -> dict[str, Any]:
        def one(d: Difference) -> dict[str, Any]:
            return {"area": d.area, "key": d.key, "cause": d.cause, "in_flight": d.in_flight, "chain": d.chain,
                    "cc": d.cc, "bank": d.bank}

        return {"clean": self.clean, "totals": self.totals, "unexplained": [one(d) for d in self.unexplained],
                "in_flight": [one(d) for d in self.in_flight]}


def _h(value: bytes) -> str:
    return "0x" + bytes(value).hex()


# --- reading the chain -------------------------------------------------------------------------------------------
def chain_facts(index: AuditIndex) -> ChainFacts:
    """Everything reconciliation needs from the chain: events, decoded calldata and current views."""
    deposits = {e.args["depositId"]: Deposit(e.args["userIdHash"], int(e.args["amount"]), e.args["bankRef"])
                for e in index.events("DepositRecorded")}
    allocated: dict[str, int] = {}
    for event in index.events("IssueLogRecorded"):
        _add(allocated, event.args["userIdHash"], int(event.args["cap"]))
    users_of_device = {e.args["serial"]: e.args["userIdHash"] for e in index.events("IssueLogRecorded")}
    for event in index.events("IssueLogRenewed"):
        user = users_of_device.get(event.args["oldSerial"])
        users_of_device[event.args["newSerial"]] = user
        _add(allocated, user or "unknown", int(event.args["newMoney"]))
    for event in index.events("IssueLogReleased"):  # a stolen or expired device's unsettled rest came back
        _add(allocated, event.args["userIdHash"], -int(event.args["released"]))
    contract = index.contract
    users = set(allocated) | {d.user_id_hash for d in deposits.values()}
    funds_view = {u: tuple(contract.functions.userFunds(bytes.fromhex(u[2:])).call()) for u in users
                  if u != "unknown"}
    settled_by_policy: dict[str, int] = {}
    for log in index.usage_logs():
        _add(settled_by_policy, log["policy_id"], log["fee"])
    registered = {e.args["policyId"]: e for e in index.events("PolicyRegistered")}
    policy_view = {pid: _policy_counters(contract, pid) for pid in registered}
    accruals: dict[str, int] = {}
    request_shares: dict[str, int] = {}
    for event in index.events("AccrualRequested"):  # in chain order: each share is parts(after) - parts(before)
        pid, amount = event.args["policyId"], int(event.args["amount"])
        shares = accrual_shares(accruals.get(pid, 0), amount, payee_pairs(registered[pid].args["payees"]))
        _add(accruals, pid, amount)
        for payee, share in shares.items():
            _add(request_shares, payee, share)
    seq_ranges = _seq_ranges(index)
    serials = set(users_of_device) | set(seq_ranges)
    at = index.last_block  # the views at the indexed head: settlement a running CC adds meanwhile is not counted
    issue_log_view = {serial: _issue_log_counters(contract, serial, at) for serial in serials}
    receivers = {r.receiver for ranges in seq_ranges.values() for r in ranges if r.kind == "skipped"}
    held_view = {receiver: int(contract.functions.heldFees(receiver).call(block_identifier=at))
                 for receiver in receivers}
    return ChainFacts(
        seq_ranges=seq_ranges, issue_log_view=issue_log_view, held_view=held_view,
        deposits=deposits, allocated=allocated, funds_view=funds_view,  # type: ignore[arg-type]
        settled_batches={(e.args["serial"], int(e.args["firstSeq"])): int(e.args["total"])
                         for e in index.events("UsageSettled")},
        settled_by_policy=settled_by_policy, policy_view=policy_view, accruals=accruals,
        request_shares=request_shares,
        requests={e.args["requestId"]: Transfer(e.args["payee"], int(e.args["amount"]))
                  for e in index.events("TransferRequested")},
        confirmations={e.args["requestId"]: Transfer(e.args["payee"], int(e.args["amount"]), e.args["bankRef"])
                       for e in index.events("TransferConfirmed")},
    )


def _seq_ranges(index: AuditIndex) -> dict[str, tuple[SeqRange, ...]]:
    """Per serial, every range the chain moved past, from UsageSettled, RangeSkipped and SkippedRangeReleased
    (a UsageSettled in the same transaction as a release, at its first seq, is that release)."""
    released = {(e.tx_hash, e.args["serial"], int(e.args["firstSeq"]))
                for e in index.events("SkippedRangeReleased")}
    ranges: dict[str, list[SeqRange]] = {}
    for e in index.events("UsageSettled"):
        key = (e.tx_hash, e.args["serial"], int(e.args["firstSeq"]))
        ranges.setdefault(e.args["serial"], []).append(SeqRange(
            int(e.args["firstSeq"]), int(e.args["count"]), int(e.args["total"]),
            "released" if key in released else "settled", e.args["receiver"]))
    for e in index.events("RangeSkipped"):
        ranges.setdefault(e.args["serial"], []).append(SeqRange(
            int(e.args["firstSeq"]), int(e.args["count"]), int(e.args["total"]), "skipped", e.args["receiver"]))
    return {serial: tuple(sorted(found, key=lambda r: (r.first_seq, r.kind))) for serial, found in ranges.items()}


def _issue_log_counters(contract: Any, serial: str, block: int) -> tuple[int, int]:
    view = contract.functions.issueLog(bytes.fromhex(serial[2:])).call(block_identifier=block)
    return int(view[3]), int(view[4])


def _add(totals: dict[str, int], key: str, amount: int) -> None:
    totals[key] = totals.get(key, 0) + amount


def _policy_counters(contract: Any, pid: str) -> tuple[int, int]:
    view = contract.functions.policy(bytes.fromhex(pid[2:])).call()
    return int(view[5]), int(view[6])


# --- reading the CC database and the bank ledger --------------------------------------------------------------------
def cc_facts(database_url: str) -> CcFacts:
    """The CC's balance database, receive logs and transfer requests (read-only)."""
    from offchain.clearing_center.tables import ReceiveLogRow, TransferRequestRow, User, UserBalanceEntry
    from offchain.storage import make_engine, session_scope

    engine = make_engine(database_url)
    try:
        with session_scope(engine) as session:
            hashes = {u.user_id: _h(u.user_id_hash) for u in session.scalars(select(User))}
            deposits: dict[str, Deposit] = {}
            allocated: dict[str, int] = {}
            for entry in session.scalars(select(UserBalanceEntry)):
                user = hashes.get(entry.user_id, _h(keccak(entry.user_id.encode())))
                if entry.kind == "deposit":
                    deposits[entry.idempotency_key.removeprefix("deposit:")] = Deposit(user, entry.amount,
                                                                                        created_at=entry.created_at)
                elif entry.kind == "allocation":
                    _add(allocated, user, entry.amount)
            receive_logs = {(_h(r.serial), r.first_seq): (r.total, r.status)
                            for r in session.scalars(select(ReceiveLogRow))}
            requests = {_h(r.request_id): Transfer(r.payee, r.amount, _h(r.bank_ref) if r.bank_ref else "",
                                                   r.status, r.created_at)
                        for r in session.scalars(select(TransferRequestRow))}
    finally:
        engine.dispose()
    return CcFacts(deposits=deposits, allocated=allocated, receive_logs=receive_logs, requests=requests)


def bank_facts(database_url: str) -> BankFacts:
    """The bank's journal: deposits, transfers, unbalanced entries and entries of an unknown kind (read-only)."""
    from offchain.bank.ledger import Ledger
    from offchain.storage import make_engine

    engine = make_engine(database_url)
    try:
        ledger = Ledger(engine)
        deposits: dict[str, Deposit] = {}
        transfers: dict[str, Transfer] = {}
        unknown: list[str] = []
        after = 0
        while batch := ledger.entries(after_id=after, limit=5_000):
            after = batch[-1].entry_id
            for entry in batch:
                _classify_entry(entry, deposits, transfers, unknown)
        return BankFacts(deposits=deposits, transfers=transfers, unbalanced_entries=tuple(ledger.verify_balanced()),
                         unknown_entries=tuple(unknown), balances=ledger.balances())
    finally:
        engine.dispose()


def _classify_entry(entry: Any, deposits: dict[str, Deposit], transfers: dict[str, Transfer],
                    unknown: list[str]) -> None:
    credits = [(account, amount) for account, amount in entry.postings if amount > 0]
    key = entry.key.split(":", 1)[1] if ":" in entry.key else entry.key
    key = key if key.startswith("0x") else "0x" + key
    if entry.kind == "deposit":
        user = next((a.removeprefix("user:") for a, _ in credits if a.startswith("user:")), "")
        amount = sum(amount for account, amount in credits if account.startswith("cc:"))
        deposits[key] = Deposit(_h(keccak(user.encode())), amount, _h(entry.bank_ref), entry.created_at)
    elif entry.kind == "transfer":
        payee = next((a.removeprefix("payee:") for a, _ in credits if a.startswith("payee:")), "")
        amount = sum(amount for account, amount in credits if account.startswith("payee:"))
        transfers[key] = Transfer(payee, amount, _h(entry.bank_ref), "paid", entry.created_at)
    else:
        unknown.append(f"{entry.entry_id}:{entry.kind}:{entry.key}")


# --- comparisons (pure) ---------------------------------------------------------------------------------------------
def compare_deposits(chain: ChainFacts, cc: CcFacts | None, bank: BankFacts | None, *, now: int,
                     grace_s: int) -> list[Difference]:
    """Chain DepositRecorded vs bank ledger deposits vs CC balance credits, per deposit id."""
    diffs = []
    keys = set(chain.deposits) | set(cc.deposits if cc else {}) | set(bank.deposits if bank else {})
    for key in sorted(keys):
        on_chain = chain.deposits.get(key)
        in_cc = cc.deposits.get(key) if cc else None
        in_bank = bank.deposits.get(key) if bank else None
        amounts = {"chain": on_chain.amount if on_chain else None, "cc": in_cc.amount if in_cc else None,
                   "bank": in_bank.amount if in_bank else None}

        def diff(cause: str, in_flight: bool = False) -> Difference:
            return Difference("deposits", key, cause, in_flight, **amounts)

        if on_chain is None:
            if in_bank is not None and now - in_bank.created_at <= grace_s and in_cc is None:
                diffs.append(diff(f"deposit {key} booked by the bank, not yet recorded on chain", True))
            else:
                where = " and ".join(n for n, v in (("bank ledger", in_bank), ("CC database", in_cc)) if v)
                diffs.append(diff(f"deposit {key} is in the {where} but was never recorded on chain"))
            continue
        if bank is not None and in_bank is None:
            diffs.append(diff(f"deposit {key} recorded on chain but missing in the bank ledger"))
        elif in_bank is not None and (in_bank.amount, in_bank.user_id_hash) != (on_chain.amount,
                                                                                  on_chain.user_id_hash):
            diffs.append(diff(f"deposit {key}: bank ledger amount/user differs from the chain"))
        elif in_bank is not None and in_bank.bank_ref != on_chain.bank_ref:
            diffs.append(diff(f"deposit {key}: bank ref {in_bank.bank_ref} in the ledger, {on_chain.bank_ref} "
                              "on chain"))
        if cc is not None and in_cc is None:
            diffs.append(diff(f"deposit {key} recorded on chain, CC not yet notified (bank retries)", True))
        elif in_cc is not None and (in_cc.amount, in_cc.user_id_hash) != (on_chain.amount, on_chain.user_id_hash):
            diffs.append(diff(f"deposit {key}: CC credited another amount or user than the chain recorded"))
    return diffs


def compare_caps(chain: ChainFacts, cc: CcFacts | None) -> list[Difference]:
    """Issued new money <= deposits per user on chain, the contract's own counters, and the CC's allocations."""
    diffs = []
    deposited: dict[str, int] = {}
    for deposit in chain.deposits.values():
        _add(deposited, deposit.user_id_hash, deposit.amount)
    users = set(deposited) | set(chain.allocated) | set(cc.allocated if cc else {})
    for user in sorted(users):
        issued, paid_in = chain.allocated.get(user, 0), deposited.get(user, 0)
        if issued > paid_in:
            diffs.append(Difference("caps", user, f"user {user}: {issued} new money issued into caps but only "
                                    f"{paid_in} deposited", chain=issued, bank=paid_in))
        view = chain.funds_view.get(user)
        if view is not None and view != (paid_in, issued):
            diffs.append(Difference("caps", user, f"user {user}: userFunds() says deposited/allocated {view}, "
                                    f"events sum to {(paid_in, issued)}", chain=issued))
        if cc is None:
            continue
        in_cc = cc.allocated.get(user, 0)
        if in_cc > issued:
            diffs.append(Difference("caps", user, f"user {user}: CC allocated {in_cc} but only {issued} was "
                                    "anchored on chain", chain=issued, cc=in_cc))
        elif in_cc < issued:
            diffs.append(Difference("caps", user, f"user {user}: {issued - in_cc} anchored on chain, CC has not "
                                    "recorded the issue yet (it completes on recovery)", True, chain=issued,
                                    cc=in_cc))
    return diffs


def compare_settlement(chain: ChainFacts, cc: CcFacts | None) -> list[Difference]:
    """Settled batches vs CC receive logs; calldata fees vs policy settled counters vs accruals."""
    diffs = []
    for pid in sorted(set(chain.policy_view) | set(chain.settled_by_policy)):
        settled, requested = chain.policy_view.get(pid, (0, 0))
        fees = chain.settled_by_policy.get(pid, 0)
        if fees != settled:
            diffs.append(Difference("settlement", pid, f"policy {pid}: settle calldata carries {fees}, the "
                                    f"policy's settled counter says {settled}", chain=settled))
        if chain.accruals.get(pid, 0) != requested:
            diffs.append(Difference("settlement", pid, f"policy {pid}: AccrualRequested events sum to "
                                    f"{chain.accruals.get(pid, 0)}, requested counter {requested}", chain=requested))
        if settled > requested:
            diffs.append(Difference("settlement", pid, f"policy {pid}: {settled - requested} settled, not yet "
                                    "requested for transfer", True, chain=settled - requested))
    if cc is None:
        return diffs
    # a skipped range's batch settled later from the device's own copy: the CC never held its SP's receive log
    released = {(serial, r.first_seq) for serial, ranges in chain.seq_ranges.items() for r in ranges
                if r.kind == "released"}
    for key in sorted(set(chain.settled_batches) | set(cc.receive_logs)):
        total = chain.settled_batches.get(key)
        row = cc.receive_logs.get(key)
        label = f"batch {key[0]}#{key[1]}"
        if total is not None and row is None and key in released:
            continue
        if total is not None and row is None:
            diffs.append(Difference("settlement", label, f"{label} settled on chain but the CC has no receive log",
                                    chain=total))
        elif total is None and row is not None and row[1] == "settled":
            diffs.append(Difference("settlement", label, f"{label} marked settled by the CC, not settled on chain",
                                    cc=row[0]))
        elif total is None and row is not None and row[1] != "rejected":
            diffs.append(Difference("settlement", label, f"{label} received ({row[1]}), not yet settled", True,
                                    cc=row[0]))
        elif row is not None and total is not None and row[0] != total:
            diffs.append(Difference("settlement", label, f"{label}: CC total differs from the settled total",
                                    chain=total, cc=row[0]))
    return diffs


def compare_sequences(chain: ChainFacts) -> list[Difference]:
    """Per serial, the settled and skipped ranges tile [0, nextSeq) exactly and their totals are the issue log's
    spent; a release matches a skipped range. A hole is a missing settlement, an overlap a double payment."""
    diffs = []
    for serial in sorted(set(chain.seq_ranges) | set(chain.issue_log_view)):
        ranges = chain.seq_ranges.get(serial, ())
        skipped = {(r.first_seq, r.count, r.total, r.receiver) for r in ranges if r.kind == "skipped"}
        cursor, spent = 0, 0
        for r in ranges:
            if r.kind == "released":
                if (r.first_seq, r.count, r.total, r.receiver) not in skipped:
                    diffs.append(Difference("sequences", f"{serial}#{r.first_seq}", f"serial {serial}: a release "
                                            f"at seq {r.first_seq} matches no skipped range", chain=r.total))
                continue
            if r.first_seq > cursor:
                diffs.append(Difference("sequences", f"{serial}#{cursor}", f"serial {serial}: seqs {cursor}.."
                                        f"{r.first_seq - 1} were neither settled nor skipped (missing settlement)"))
            elif r.first_seq < cursor:
                diffs.append(Difference("sequences", f"{serial}#{r.first_seq}", f"serial {serial}: seqs from "
                                        f"{r.first_seq} moved past twice (double payment)", chain=r.total))
            cursor, spent = max(cursor, r.first_seq + r.count), spent + r.total
        view = chain.issue_log_view.get(serial)
        if view is not None and view != (spent, cursor):
            diffs.append(Difference("sequences", serial, f"serial {serial}: issueLog() says spent/nextSeq {view}, "
                                    f"settled and skipped ranges sum to {(spent, cursor)}", chain=view[0]))
    return diffs


def compare_held_fees(chain: ChainFacts) -> list[Difference]:
    """Per SP, skipped minus released equals heldFees(); what is still held is reported (in flight: it waits for
    the SP's batch, charged to the user's cap, credited to no policy and paid to no one meanwhile)."""
    held: dict[str, int] = {}
    for ranges in chain.seq_ranges.values():
        for r in ranges:
            if r.kind in ("skipped", "released"):
                _add(held, r.receiver, r.total if r.kind == "skipped" else -r.total)
    diffs = []
    for receiver in sorted(set(held) | set(chain.held_view)):
        expected, view = held.get(receiver, 0), chain.held_view.get(receiver, 0)
        if expected != view:
            diffs.append(Difference("held_fees", receiver, f"SP {receiver}: skipped minus released ranges sum to "
                                    f"{expected}, heldFees() says {view}", chain=view))
        elif view:
            diffs.append(Difference("held_fees", receiver, f"SP {receiver}: {view} held for ranges it acknowledged "
                                    "and never forwarded (charged to the users' caps, credited to no policy until "
                                    "its batches settle)", True, chain=view))
    return diffs


def compare_requests(chain: ChainFacts, cc: CcFacts | None) -> list[Difference]:
    """Accruals split per payee vs TransferRequested (chain), and chain requests vs the CC's request rows."""
    diffs = []
    requested: dict[str, int] = {}
    for request in chain.requests.values():
        _add(requested, request.payee, request.amount)
    for payee in sorted(set(requested) | set(chain.request_shares)):
        share, got = chain.request_shares.get(payee, 0), requested.get(payee, 0)
        if share != got:
            diffs.append(Difference("requests", payee, f"payee {payee}: split shares of accruals {share}, "
                                    f"transfer requests {got}", chain=got))
    if cc is None:
        return diffs
    for rid in sorted(set(chain.requests) | set(cc.requests)):
        on_chain, in_cc = chain.requests.get(rid), cc.requests.get(rid)
        if on_chain is None:
            diffs.append(Difference("requests", rid, f"transfer request {rid} in the CC database but never "
                                    "requested on chain", cc=in_cc.amount if in_cc else None))
        elif in_cc is None:
            diffs.append(Difference("requests", rid, f"transfer request {rid} on chain, not yet picked up by the "
                                    "CC", True, chain=on_chain.amount))
        elif (in_cc.payee, in_cc.amount) != (on_chain.payee, on_chain.amount):
            diffs.append(Difference("requests", rid, f"transfer request {rid}: CC payee/amount differ from the "
                                    "chain", chain=on_chain.amount, cc=in_cc.amount))
    return diffs


def compare_transfers(chain: ChainFacts, bank: BankFacts | None) -> list[Difference]:
    """Requests and TransferConfirmed on chain vs transfers booked in the bank ledger, per request id."""
    diffs = []
    paid = bank.transfers if bank else {}
    for rid in sorted(set(chain.requests) | set(chain.confirmations) | set(paid)):
        request, confirmed, booked = chain.requests.get(rid), chain.confirmations.get(rid), paid.get(rid)
        amounts = {"chain": (confirmed or request).amount if (confirmed or request) else None,
                   "bank": booked.amount if booked else None}
        if request is None:
            diffs.append(Difference("transfers", rid, f"bank paid {rid} but no such transfer request exists on "
                                    "chain", **amounts))
        elif confirmed is not None and (confirmed.payee, confirmed.amount) != (request.payee, request.amount):
            diffs.append(Difference("transfers", rid, f"transfer {rid} confirmed for another payee/amount than "
                                    "requested", **amounts))
        elif bank is None:
            if confirmed is None:
                diffs.append(Difference("transfers", rid, f"transfer request {rid} not yet confirmed by the bank",
                                        True, **amounts))
        elif confirmed is not None and booked is None:
            diffs.append(Difference("transfers", rid, f"transfer request {rid} confirmed on chain but missing in "
                                    "the bank ledger", **amounts))
        elif booked is not None and (booked.payee, booked.amount) != (request.payee, request.amount):
            diffs.append(Difference("transfers", rid, f"bank paid {rid} with another payee/amount than "
                                    "requested on chain", **amounts))
        elif booked is not None and confirmed is not None and booked.bank_ref != confirmed.bank_ref:
            diffs.append(Difference("transfers", rid, f"transfer {rid}: bank ref {booked.bank_ref} in the ledger, "
                                    f"{confirmed.bank_ref} on chain", **amounts))
        elif booked is not None and confirmed is None:
            diffs.append(Difference("transfers", rid, f"bank paid {rid}, on-chain confirmation pending", True,
                                    **amounts))
        elif booked is None:
            diffs.append(Difference("transfers", rid, f"transfer request {rid} requested, not yet paid by the bank",
                                    True, **amounts))
    return diffs


def compare_books(bank: BankFacts | None) -> list[Difference]:
    """The bank's own books: every entry balances, and only deposits and transfers exist."""
    if bank is None:
        return []
    diffs = [Difference("books", f"entry {entry_id}", f"journal entry {entry_id} does not balance (its postings do "
                        "not sum to zero)") for entry_id in bank.unbalanced_entries]
    diffs += [Difference("books", entry, f"journal entry {entry} is neither a deposit nor a transfer")
              for entry in bank.unknown_entries]
    transfers_in: dict[str, int] = {}
    for transfer in bank.transfers.values():
        _add(transfers_in, "payee:" + transfer.payee, transfer.amount)
    for account, balance in sorted(bank.balances.items()):
        if account.startswith("payee:") and balance != transfers_in.get(account, 0):
            diffs.append(Difference("books", account, f"{account} holds {balance} but received "
                                    f"{transfers_in.get(account, 0)} in transfers", bank=balance))
    return diffs


def reconcile(chain: ChainFacts, cc: CcFacts | None = None, bank: BankFacts | None = None, *,
              now: int | None = None, grace_s: int = DEFAULT_GRACE_S) -> Report:
    """Every difference between the three views; `Report.clean` is False if any is unexplained."""
    now = int(time.time()) if now is None else now
    diffs = (compare_deposits(chain, cc, bank, now=now, grace_s=grace_s) + compare_caps(chain, cc)
             + compare_settlement(chain, cc) + compare_sequences(chain) + compare_held_fees(chain)
             + compare_requests(chain, cc) + compare_transfers(chain, bank) + compare_books(bank))
    ranges = [r for found in chain.seq_ranges.values() for r in found]
    totals = {
        "deposited": sum(d.amount for d in chain.deposits.values()),
        "issued_new_money": sum(chain.allocated.values()),
        "settled": sum(chain.settled_batches.values()),
        "requested": sum(r.amount for r in chain.requests.values()),
        "confirmed": sum(c.amount for c in chain.confirmations.values()),
        "bank_paid": sum(t.amount for t in bank.transfers.values()) if bank else 0,
        "skipped": sum(r.total for r in ranges if r.kind == "skipped"),
        "released": sum(r.total for r in ranges if r.kind == "released"),
        "held_fees": sum(chain.held_view.values()),
    }
    return Report(differences=tuple(diffs), totals=totals)


# --- rendering and the CLI entry point ------------------------------------------------------------------------------
CSV_SECTIONS = ("differences", "totals")
DIFFERENCE_COLUMNS = ("status", "area", "key", "cause", "chain", "cc", "bank")


def render_csv(report: Report, stream: Any, section: str = "differences") -> None:
    """One table with a stable header (pandas/spreadsheet-ready): `differences` (every difference, status
    unexplained or in_flight) or `totals` (one row)."""
    import csv

    writer = csv.writer(stream)
    if section == "totals":
        writer.writerow(list(report.totals))
        writer.writerow(list(report.totals.values()))
        return
    if section != "differences":
        raise SettingError(f"unknown section {section!r}; use one of {CSV_SECTIONS}", field="section", got=section)
    writer.writerow(DIFFERENCE_COLUMNS)
    for d in report.differences:
        writer.writerow(["in_flight" if d.in_flight else "unexplained", d.area, d.key, d.cause,
                         *("" if v is None else v for v in (d.chain, d.cc, d.bank))])


def render(report: Report, output: str = "table", stream: Any = None, *, section: str = "differences") -> None:
    import sys

    from rich.console import Console
    from rich.table import Table

    stream = stream if stream is not None else sys.stdout
    if output == "json":
        stream.write(json.dumps(report.to_json(), indent=2) + "\n")
        return
    if output == "csv":
        render_csv(report, stream, section)
        return
    if output != "table":
        raise SettingError(f"unknown output format {output!r}; use table, json or csv", output=output)
    console = Console(file=stream)  # the terminal's width (COLUMNS or the tty; 80 when piped)
    totals = Table(title="Totals (minor units)", title_justify="left")
    for name in report.totals:
        totals.add_column(name, justify="right")
    totals.add_row(*(str(v) for v in report.totals.values()))
    console.print(totals)
    for title, rows, colour in (("Unexplained differences", report.unexplained, "red"),
                                ("In flight (explained)", report.in_flight, "yellow")):
        if not rows:
            continue
        table = Table(title=title, title_justify="left", title_style=colour)
        for column in ("area", "cause", "chain", "cc", "bank"):
            table.add_column(column, overflow="fold")
        for d in rows:
            table.add_row(d.area, d.cause, *("" if v is None else str(v) for v in (d.chain, d.cc, d.bank)))
        console.print(table)
    verdict = "[green]reconciled: no unexplained difference" if report.clean else \
        f"[bold red]{len(report.unexplained)} unexplained difference(s)"
    console.print(verdict)


def _database_url(url: str | None, config: Path | None, settings_cls: str) -> str | None:
    if url:
        return url
    if config is None:
        return None
    from offchain.core import settings
    return settings.load_settings(getattr(settings, settings_cls), Path(config)).database_url


def main_reconcile(*, rpc_url: str, deployment_path: Path, cc_db_url: str | None = None,
                   bank_db_url: str | None = None, cc_config: Path | None = None, bank_config: Path | None = None,
                   output: str = "table", cache_dir: Path | None = None, grace_s: int = DEFAULT_GRACE_S,
                   stream: Any = None, section: str = "differences") -> int:
    """`clearhouse reconcile`: 0 when everything reconciles (in-flight items allowed), 1 otherwise.

    The CC and bank databases come from explicit SQLAlchemy URLs or from the services' settings files; either
    may be omitted, and the chain is then reconciled against what is given (and with itself).
    """
    cc_url = _database_url(cc_db_url, cc_config, "ClearingCenterSettings")
    bank_url = _database_url(bank_db_url, bank_config, "BankSettings")
    with open_index(rpc_url=rpc_url, deployment_path=deployment_path, cache_dir=cache_dir) as index:
        chain = chain_facts(index)
    report = reconcile(chain, cc_facts(cc_url) if cc_url else None, bank_facts(bank_url) if bank_url else None,
                       grace_s=grace_s)
    render(report, output, stream, section=section)
    return 0 if report.clean else 1


__all__ = ["Difference", "Report", "SeqRange", "ChainFacts", "CcFacts", "BankFacts", "chain_facts", "cc_facts", "bank_facts",
           "compare_sequences", "compare_held_fees", "reconcile", "render", "main_reconcile", "ReconciliationFailed"]
