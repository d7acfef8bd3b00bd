"""Audit trails: everything the chain says about one serial, device, payee or content id, as tables.

Built from an `AuditIndex` only; the signatures of each trail are re-verified by `verify` unless asked not to.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from offchain.core.errors import NotFound
from offchain.core.types import hex32
from offchain.core.messages import to_checksum_address
from offchain.operator.audit.index import AuditIndex, ChainEvent, Check, Section, Trail, serial_origin
from offchain.operator.audit.verify import verify_batches, verify_renewals


# --- trails -------------------------------------------------------------------------------------------------------
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
    """"top_up" (top-up in place: same serial, all settled) or "new_serial" (new serial while unsettled, or a
    voluntary new serial)."""
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
