"""The lineage of a serial or a device, stage by stage, as the explorer draws it:

bank deposits -> issue log -> renewals (top-up in place or new serial, with the carried balance) -> settled usage
batches -> usage logs decoded from settle calldata -> settlement transactions -> transfer requests -> bank
confirmations. Every batch and renewal carries badges from the audit's own re-verification (device and SP
signatures recovered from calldata), so a failing badge is the audit's verdict, not the explorer's.

A transfer request pays a policy's accrued amount across all serials: the lineage shows which requests covered
this line's fees, and how much of each payee's request this line's fees make up (by the contract's split rule).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from offchain.core.errors import NotFound
from offchain.operator.explorer.export import Table
from offchain.operator.explorer.sources import (
    ChainEvent,
    Check,
    IndexReader,
    SettledItem,
    payee_pairs,
    policies,
    renewal_mode,
    serial_origin,
    split_amount,
    usage_by_batch_policy,
    usage_rows,
    usage_summary,
    verify_item,
    verify_renewals,
)


@dataclass(frozen=True)
class Badge:
    """A re-verified fact shown next to a step: ok, what was checked, and the audit's detail."""

    ok: bool
    what: str
    detail: str


@dataclass(frozen=True)
class Step:
    kind: str
    title: str
    amount: int | None
    block: int
    tx_hash: str
    fields: tuple[tuple[str, Any], ...] = ()
    badges: tuple[Badge, ...] = ()
    href: str = ""
    pending: bool = False

    @property
    def ok(self) -> bool:
        return all(b.ok for b in self.badges)


@dataclass(frozen=True)
class Stage:
    key: str
    title: str
    steps: tuple[Step, ...]
    note: str = ""

    @property
    def amount(self) -> int:
        return sum(s.amount or 0 for s in self.steps)


@dataclass(frozen=True)
class Lineage:
    subject: str
    serials: tuple[str, ...]
    device: str
    users: tuple[str, ...]
    stages: tuple[Stage, ...]
    tables: dict[str, Table] = field(default_factory=dict)
    checks: tuple[Check, ...] = ()

    @property
    def failures(self) -> int:
        return sum(1 for c in self.checks if not c.ok)

    def stage(self, key: str) -> Stage:
        for stage in self.stages:
            if stage.key == key:
                return stage
        raise NotFound(f"lineage has no stage {key!r}", stage=key)


# --- which serials ----------------------------------------------------------------------------------------------
def serial_line(index: IndexReader, serial: str) -> tuple[str, ...]:
    """The serials linked to `serial` by renewals, oldest first (back to the issue log, forward to the latest)."""
    back = list(reversed(serial_origin(index, serial).lineage))
    current, seen = serial, set(back)
    for _ in range(100_000):
        onward = [e.args["newSerial"] for e in index.events("IssueLogRenewed", oldSerial=current)
                  if e.args["newSerial"] != current and e.args["newSerial"] not in seen]
        if not onward:
            break
        current = onward[0]
        seen.add(current)
        back.append(current)
    return tuple(back)


def device_serials(index: IndexReader, device: str) -> tuple[str, ...]:
    opened = [e.args["serial"] for e in index.events("IssueLogRecorded", device=device)]
    renewed = [e.args["newSerial"] for e in index.events("IssueLogRenewed", device=device)]
    return tuple(dict.fromkeys(opened + renewed))


# --- building the stages ----------------------------------------------------------------------------------------
def _badges(checks: Iterable[Check]) -> tuple[Badge, ...]:
    return tuple(Badge(c.ok, c.what, c.detail) for c in checks)


def _deposits(index: IndexReader, users: Sequence[str]) -> Stage:
    steps = [Step("deposit", f"deposit {e.args['depositId']}", int(e.args["amount"]), e.block, e.tx_hash,
                  (("user", e.args["userIdHash"]), ("bank", e.args["bank"]), ("bank ref", e.args["bankRef"])),
                  href=f"/deposit/{e.args['depositId']}")
             for user in users for e in index.events("DepositRecorded", userIdHash=user)]
    return Stage("deposits", "Bank deposits", tuple(sorted(steps, key=lambda s: s.block)),
                 "money the bank recorded for the user; issue logs may allocate at most this much")


def _issues(opened: Sequence[ChainEvent]) -> Stage:
    steps = [Step("issue", f"issue log {e.args['serial']}", int(e.args["cap"]), e.block, e.tx_hash,
                  (("device", e.args["device"]), ("expires at", e.args["expiresAt"])),
                  href=f"/serial/{e.args['serial']}") for e in opened]
    return Stage("issue", "Issue log", tuple(steps), "the cap the clearing center allowed the device to spend")


def _renewals(index: IndexReader, renewals: Sequence[ChainEvent]) -> tuple[Stage, list[Check]]:
    steps, all_checks = [], []
    for event in renewals:
        checks = verify_renewals(index, [event])  # type: ignore[arg-type]
        all_checks += checks
        a = event.args
        mode = renewal_mode(event)
        title = ("top-up in place " + a["oldSerial"]) if mode == "top_up" else \
            f"new serial {a['oldSerial']} → {a['newSerial']}"
        steps.append(Step("renewal", title, int(a["newMoney"]), event.block, event.tx_hash,
                          (("mode", mode), ("attested spent", a["attestedSpent"]),
                           ("attested next seq", a["attestedNextSeq"]), ("carried", a["carried"]),
                           ("new money", a["newMoney"]), ("new cap", a["newCap"])),
                          _badges(checks), href=f"/serial/{a['newSerial']}"))
    return Stage("renewals", "Renewals", tuple(steps),
                 "carried = cap − attested spent moves to the new log; new money comes from the deposits"
                 ), all_checks


def _batches(index: IndexReader, settled: Sequence[ChainEvent], device: str
             ) -> tuple[Stage, list[Check], dict[tuple[str, int], bool]]:
    items: dict[str, dict[tuple[str, int], SettledItem]] = {}
    steps, all_checks, verdicts = [], [], {}
    for event in settled:
        if event.tx_hash not in items:
            items[event.tx_hash] = {("0x" + i.batch.serial.hex(), i.batch.first_seq): i
                                    for i in index.settled_items(event.tx_hash)}
        a = event.args
        key = (a["serial"], int(a["firstSeq"]))
        checks = verify_item(index.ref.domain, event, items[event.tx_hash].get(key), device)
        all_checks += checks
        verdicts[key] = all(c.ok for c in checks)
        last = int(a["firstSeq"]) + int(a["count"]) - 1
        steps.append(Step("batch", f"batch {a['serial']} #{a['firstSeq']}–{last}", int(a["total"]), event.block,
                          event.tx_hash, (("logs", a["count"]), ("receiver", a["receiver"]),
                                          ("receive log", a["receiveLogDigest"])),
                          _badges(checks), href=f"/tx/{event.tx_hash}"))
    return Stage("batches", "Usage batches", tuple(steps),
                 "signed by the device, countersigned by the service provider; re-verified from calldata"
                 ), all_checks, verdicts


def _settlements(settled: Sequence[ChainEvent], head: int, depth: int) -> Stage:
    by_tx: dict[str, list[ChainEvent]] = {}
    for event in settled:
        by_tx.setdefault(event.tx_hash, []).append(event)
    steps = []
    for tx_hash, events in by_tx.items():
        confirmations = head - events[0].block + 1
        steps.append(Step("settlement", f"settle {tx_hash}", sum(int(e.args["total"]) for e in events),
                          events[0].block, tx_hash,
                          (("batches of this line", len(events)), ("confirmations", confirmations),
                           ("status", "final" if confirmations >= depth else "included")),
                          href=f"/tx/{tx_hash}", pending=confirmations < depth))
    return Stage("settlement", "Settlement", tuple(steps), f"final after {depth} confirmations")


@dataclass(frozen=True)
class _Coverage:
    """Which AccrualRequested event covered this line's fees of one policy in one settle transaction."""

    accrual: ChainEvent | None
    policy_id: str
    fees: int


def _coverage(index: IndexReader, serials: Sequence[str], settled: Sequence[ChainEvent]) -> list[_Coverage]:
    position = {e.tx_hash: (e.block, e.log_index) for e in settled}
    accruals: dict[str, list[ChainEvent]] = {}
    covered = []
    for tx_hash, _serial, _block, pid, _count, fees in usage_by_batch_policy(index, list(serials)):
        if pid not in accruals:
            accruals[pid] = index.events("AccrualRequested", policyId=pid)
        where = position.get(tx_hash, (_block, 0))
        after = [a for a in accruals[pid] if (a.block, a.log_index) > where]
        covered.append(_Coverage(after[0] if after else None, pid, fees))
    return covered


def _requests(index: IndexReader, coverage: Sequence[_Coverage]) -> tuple[Stage, Stage, int]:
    """Transfer requests paying this line's fees, their confirmations, and the fees not yet requested."""
    registered = policies(index)
    share_by_tx_payee: dict[tuple[str, str], int] = {}
    unrequested = 0
    for c in coverage:
        if c.accrual is None:
            unrequested += c.fees
            continue
        for payee, share in split_amount(c.fees, payee_pairs(registered[c.policy_id].args["payees"])).items():
            key = (c.accrual.tx_hash, payee)
            share_by_tx_payee[key] = share_by_tx_payee.get(key, 0) + share
    request_steps, confirm_steps = [], []
    for tx_hash in dict.fromkeys(t for t, _ in share_by_tx_payee):
        for request in _tx_events(index, "TransferRequested", tx_hash):
            a = request.args
            mine = share_by_tx_payee.get((tx_hash, a["payee"]))
            if mine is None:
                continue
            request_steps.append(Step("request", f"request {a['requestId']}", int(a["amount"]), request.block,
                                      request.tx_hash, (("payee", a["payee"]), ("of it from this line", mine)),
                                      href=f"/request/{a['requestId']}"))
            confirm_steps.append(_confirmation(index, a["requestId"], a["payee"], int(a["amount"])))
    return (Stage("requests", "Transfer requests", tuple(request_steps),
                  f"{unrequested} minor units of this line settled but not yet requested" if unrequested else
                  "one request per payee; a request aggregates every serial's fees of its policies"),
            Stage("confirmations", "Bank confirmations", tuple(confirm_steps), "the bank's on-chain confirmation"),
            unrequested)


def _tx_events(index: IndexReader, name: str, tx_hash: str) -> list[ChainEvent]:
    """Events named `name` of one transaction (reads the index's events table, like `usage_rows`)."""
    rows = index.db.execute("SELECT block, log_index, tx_hash, args FROM events WHERE tx_hash = ? AND name = ? "
                            "ORDER BY log_index", (tx_hash, name)).fetchall()
    return [ChainEvent(name=name, block=r[0], log_index=r[1], tx_hash=r[2], args=json.loads(r[3])) for r in rows]


def _confirmation(index: IndexReader, request_id: str, payee: str, amount: int) -> Step:
    confirmed = index.events("TransferConfirmed", requestId=request_id)
    if not confirmed:
        return Step("confirmation", f"awaiting the bank: {request_id}", None, 0, "", (("payee", payee),),
                    href=f"/request/{request_id}", pending=True)
    e = confirmed[0]
    same = int(e.args["amount"]) == amount
    return Step("confirmation", f"confirmed {request_id}", int(e.args["amount"]), e.block, e.tx_hash,
                (("payee", payee), ("bank", e.args["bank"]), ("bank ref", e.args["bankRef"])),
                (Badge(same, "confirmed == requested", f"requested {amount}, confirmed {e.args['amount']}"),),
                href=f"/request/{request_id}")


def _usage_table(index: IndexReader, serials: Sequence[str], verdicts: dict[tuple[str, int], bool],
                 limit: int | None) -> Table:
    batches = sorted(verdicts)
    rows = []
    for u in usage_rows(index, serials=list(serials), limit=limit):
        first = max((b for b in batches if b[0] == u["serial"] and b[1] <= u["seq"]), default=None)
        verified = verdicts.get(first) if first is not None else None
        rows.append((u["block"], u["tx_hash"], u["serial"], u["seq"], u["policy_id"], u["fee"], u["receiver"],
                     u["used_at"], "ok" if verified else "FAILED" if verified is False else "?"))
    total = usage_summary(index, serials=list(serials))[0]
    return Table("usage", "Usage logs (decoded from settle calldata)",
                 ("block", "tx", "serial", "seq", "policy_id", "fee", "receiver", "used_at", "batch_signatures"),
                 tuple(rows), note=f"{total[1]} logs, {total[2]} minor units", total_rows=total[1],
                 links={"tx": "/tx/", "serial": "/serial/"})


def _stage_table(stage: Stage) -> Table:
    rows = tuple((s.block, s.tx_hash, s.title, s.amount, "; ".join(f"{k}={v}" for k, v in s.fields),
                  "" if not s.badges else "ok" if s.ok else "FAILED") for s in stage.steps)
    return Table(stage.key, stage.title, ("block", "tx", "step", "amount", "details", "verified"), rows,
                 links={"tx": "/tx/"})


def build(index: IndexReader, subject: str, serials: Sequence[str], device: str, users: Sequence[str], *,
          head: int, depth: int, limit: int | None) -> Lineage:
    """The whole flow for `serials` (one renewal line, or every serial of a device)."""
    opened = [e for s in serials for e in index.events("IssueLogRecorded", serial=s)]
    renewals = {(e.block, e.log_index): e for s in serials for key in ("oldSerial", "newSerial")
                for e in index.events("IssueLogRenewed", **{key: s})}
    renewal_events = [renewals[k] for k in sorted(renewals)]
    settled = sorted((e for s in serials for e in index.events("UsageSettled", serial=s)),
                     key=lambda e: (e.block, e.log_index))
    renewal_stage, renewal_checks = _renewals(index, renewal_events)
    batch_stage, batch_checks, verdicts = _batches(index, settled, device)
    request_stage, confirm_stage, _ = _requests(index, _coverage(index, serials, settled))
    stages = (_deposits(index, users), _issues(opened), renewal_stage, batch_stage,
              _settlements(settled, head, depth), request_stage, confirm_stage)
    tables = {stage.key: _stage_table(stage) for stage in stages}
    tables["usage"] = _usage_table(index, serials, verdicts, limit)
    per_policy = usage_summary(index, serials=list(serials), group_by="policy_id")
    tables["by_policy"] = Table("by_policy", "Usage per policy", ("policy_id", "logs", "fees"),
                                tuple(per_policy), links={"policy_id": "/policy/"})
    return Lineage(subject=subject, serials=tuple(serials), device=device, users=tuple(users), stages=stages,
                   tables=tables, checks=tuple(renewal_checks + batch_checks))


def serial_lineage(index: IndexReader, serial: str, *, head: int, depth: int, limit: int | None) -> Lineage:
    line = serial_line(index, serial)
    origin = serial_origin(index, serial)
    return build(index, f"serial {serial}", line, origin.device, [origin.user_id_hash], head=head, depth=depth,
                 limit=limit)


def device_lineage(index: IndexReader, device: str, *, head: int, depth: int, limit: int | None) -> Lineage:
    serials = device_serials(index, device)
    if not serials:
        raise NotFound(f"device {device} has no issue log on this contract", device=device)
    users = tuple(dict.fromkeys(e.args["userIdHash"] for e in index.events("IssueLogRecorded", device=device)))
    return build(index, f"device {device}", serials, device, users, head=head, depth=depth, limit=limit)
