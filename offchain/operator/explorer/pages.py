"""One function per explorer page: it reads the audit index (and the node) and returns a `Page`, the template's
context plus the page's lists as `Table`s, so that every list on every page exports the same way.

Pages never write: the only side effect is the audit index syncing to the chain head (`Sources.refresh`).
`limit` caps long lists for the HTML view; exports pass `limit=None` and get every row.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from web3 import Web3

from offchain.core.errors import NotFound
from offchain.operator import reconcile as reconciliation
from offchain.operator.explorer import charts, lineage, nodes, txview
from offchain.operator.explorer.export import Table
from offchain.operator.explorer.sources import (
    ChainEvent,
    Sources,
    content_trail,
    hex32,
    payee_pairs,
    payee_trail,
    policies,
    settled_blocks,
    split_amount,
    usage_summary,
)

ROLE_NAMES = {0: "none", 1: "clearing center", 2: "service provider", 3: "content provider", 4: "bank", 5: "device"}


@dataclass(frozen=True)
class Page:
    template: str
    title: str
    context: dict[str, Any]
    tables: dict[str, Table] = field(default_factory=dict)


def _event_table(key: str, title: str, events: list[ChainEvent], *names: str,
                 links: dict[str, str] | None = None) -> Table:
    rows = tuple((e.block, e.tx_hash, *(e.args[n] for n in names)) for e in events)
    return Table(key, title, ("block", "tx", *names), rows, links={"tx": "/tx/", **(links or {})})


def _section_table(key: str, trail: Any, title: str, links: dict[str, str] | None = None,
                   limit: int | None = None) -> Table:
    section = trail.section(title)
    rows = section.rows if limit is None else section.rows[:limit]
    return Table(key, section.title, section.columns, tuple(rows), note=section.note,
                 total_rows=len(section.rows) if limit is not None else None, links={"tx": "/tx/", **(links or {})})


# --- overview ---------------------------------------------------------------------------------------------------
def _reconciliation(src: Sources) -> tuple[dict[str, int], dict[str, Any]]:
    facts = reconciliation.chain_facts(src.index)  # type: ignore[arg-type]
    cc = reconciliation.cc_facts(src.config.cc_db_url) if src.config.cc_db_url else None
    bank = reconciliation.bank_facts(src.config.bank_db_url) if src.config.bank_db_url else None
    head_time = int(src.w3.eth.get_block(src.index.last_block)["timestamp"])
    report = reconciliation.reconcile(facts, cc, bank, now=head_time)
    scope = " + ".join(["chain", *(["CC database"] if cc else []), *(["bank ledger"] if bank else [])])
    status = {"clean": report.clean, "scope": scope, "unexplained": [d.cause for d in report.unexplained],
              "in_flight": [d.cause for d in report.in_flight], "bank_known": bank is not None}
    return report.totals, status


def overview(src: Sources, limit: int | None) -> Page:
    head = src.index.last_block
    block = src.w3.eth.get_block(head)
    totals, status = src.per_head("reconciliation", lambda: _reconciliation(src))  # RPC views: once per head
    first = max(src.ref.deploy_block, 0)
    volume = charts.block_ranges(settled_blocks(src.index), first, head)
    requested, confirmed = _per_payee(src)
    payees = sorted(set(requested) | set(confirmed))
    settles = src.index.events("UsageSettled")
    members = src.index.events("MemberRegistered")
    tables = {
        "volume": Table("volume", "Settled volume per block range", ("from_block", "to_block", "settled"),
                        tuple(volume)),
        "payouts": Table("payouts", "Payouts per payee", ("payee", "requested", "confirmed", "outstanding"),
                         tuple((p, requested.get(p, 0), confirmed.get(p, 0),
                                requested.get(p, 0) - confirmed.get(p, 0)) for p in payees),
                         links={"payee": "/payee/"}),
        "batches": _event_table("batches", "Latest settled batches", settles[::-1][:limit] if limit else settles,
                                "serial", "device", "firstSeq", "count", "total",
                                links={"serial": "/serial/", "device": "/device/"}),
        "members": _event_table("members", "Members registered", members, "account", "role", "memberId",
                                links={"account": "/member/"}),
    }
    context = {
        "totals": totals, "status": status, "head": head, "head_hash": "0x" + bytes(block["hash"]).hex(),
        "head_time": int(block["timestamp"]), "chain_id": src.ref.chain_id, "contract": src.ref.address,
        "counts": {"usage logs": usage_summary(src.index)[0][1], "settled batches": len(settles),
                   "policies": len(policies(src.index)), "members": len(members),
                   "transfer requests": len(src.index.events("TransferRequested"))},
        "volume_chart": charts.bars("Settled volume per block range", ("settled",),
                                    [charts.Group(f"{a}–{b}", (v,), f"/block/{b}") for a, b, v in volume]),
        "payout_chart": charts.bars("Payouts per payee", ("requested", "confirmed"),
                                    [charts.Group(p[:10] + "…", (requested.get(p, 0), confirmed.get(p, 0)),
                                                  f"/payee/{p}") for p in payees]),
        "network": nodes.network_status(src.config.network_file),
        "depth": src.config.confirmations,
    }
    return Page("overview.html", "Overview", context, tables)


def _per_payee(src: Sources) -> tuple[dict[str, int], dict[str, int]]:
    requested: dict[str, int] = {}
    confirmed: dict[str, int] = {}
    for name, into in (("TransferRequested", requested), ("TransferConfirmed", confirmed)):
        for event in src.index.events(name):
            into[event.args["payee"]] = into.get(event.args["payee"], 0) + int(event.args["amount"])
    return requested, confirmed


# --- lineage ------------------------------------------------------------------------------------------------------
def serial_page(src: Sources, serial: str, limit: int | None) -> Page:
    flow = lineage.serial_lineage(src.index, hex32(serial), head=src.index.last_block,
                                  depth=src.config.confirmations, limit=limit)
    return Page("lineage.html", f"Serial {hex32(serial)}", {"lineage": flow, "focus": hex32(serial)}, flow.tables)


def device_page(src: Sources, device: str, limit: int | None) -> Page:
    address = Web3.to_checksum_address(device)
    flow = lineage.device_lineage(src.index, address, head=src.index.last_block, depth=src.config.confirmations,
                                  limit=limit)
    return Page("lineage.html", f"Device {address}", {"lineage": flow, "focus": ""}, flow.tables)


# --- transactions and blocks --------------------------------------------------------------------------------------
def _indexed_block(src: Sources, tx_hash: str) -> int | None:
    row = src.index.db.execute("SELECT block FROM events WHERE tx_hash = ? LIMIT 1", (tx_hash,)).fetchone()
    return int(row[0]) if row else None


def tx_page(src: Sources, tx_hash: str, limit: int | None) -> Page:
    tx_hash = hex32(tx_hash)
    decoder = txview.Decoder(src.w3, src.ref)
    view = txview.tx_view(src.w3, decoder, tx_hash, head=src.w3.eth.block_number, depth=src.config.confirmations,
                          indexed_block=_indexed_block(src, tx_hash))
    tables = {"events": Table("events", "Events", ("log_index", "event", "arguments"),
                              tuple(txview.event_rows(view.events)))}
    usage = [u for u in usage_rows_of_tx(src, tx_hash, limit)]
    if usage:
        tables["usage"] = Table("usage", "Usage logs in this transaction",
                                ("serial", "seq", "policy_id", "fee", "receiver", "used_at"), tuple(usage),
                                links={"serial": "/serial/", "policy_id": "/policy/"})
    return Page("tx.html", f"Transaction {tx_hash}", {"tx": view}, tables)


def usage_rows_of_tx(src: Sources, tx_hash: str, limit: int | None) -> list[tuple[Any, ...]]:
    sql = "SELECT serial, seq, policy_id, fee, receiver, used_at FROM usage_logs WHERE tx_hash = ? ORDER BY serial, seq"
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    return [tuple(r) for r in src.index.db.execute(sql, (tx_hash,))]


def block_page(src: Sources, block_id: str, limit: int | None) -> Page:
    ident: int | str = int(block_id) if block_id.isdigit() else hex32(block_id)
    view = txview.block_view(src.w3, txview.Decoder(src.w3, src.ref), ident, head=src.w3.eth.block_number,
                             depth=src.config.confirmations)
    rows = tuple((t["tx_hash"], t["from"], t["to"], t["function"], "ok" if t["ok"] else "reverted", t["gas_used"],
                  t["events"]) for t in view.transactions)
    table = Table("transactions", "Transactions", ("tx", "from", "to", "function", "result", "gas_used", "events"),
                  rows, links={"tx": "/tx/"})
    return Page("block.html", f"Block {view.number}", {"block": view}, {"transactions": table})


# --- payee, content, member, deposit, request ---------------------------------------------------------------------
def payee_page(src: Sources, payee: str, limit: int | None) -> Page:
    address = Web3.to_checksum_address(payee)
    trail = payee_trail(src.index, address)  # type: ignore[arg-type]
    mine = {pid: ev for pid, ev in policies(src.index).items() if address in dict(payee_pairs(ev.args["payees"]))}
    requested = src.index.events("TransferRequested", payee=address)
    confirmed = src.index.events("TransferConfirmed", payee=address)
    if not mine and not requested:
        raise NotFound(f"{address} is not a payee of any policy or transfer request", payee=address)
    owed = _owed(src, address, mine)
    totals = trail.section("Totals").rows[0]
    context = {
        "payee": address, "owed": owed, "accrued_share": totals[0], "requested": totals[1], "confirmed": totals[2],
        "outstanding": totals[3], "checks": trail.checks,
        "chart": charts.steps("Requested and confirmed over blocks", ("requested", "confirmed"),
                              [charts.cumulative([(e.block, int(e.args["amount"])) for e in requested]),
                               charts.cumulative([(e.block, int(e.args["amount"])) for e in confirmed])]),
    }
    tables = {
        "policies": _section_table("policies", trail, "Policies naming this payee", {"policy_id": "/policy/"}),
        "accruals": _section_table("accruals", trail, "Accruals requested (payee's split share)",
                                   {"policy_id": "/policy/"}),
        "requests": _section_table("requests", trail, "Transfer requests", {"requestId": "/request/"}),
        "confirmations": _section_table("confirmations", trail, "Bank confirmations", {"requestId": "/request/"}),
    }
    return Page("payee.html", f"Payee {address}", context, tables)


def _owed(src: Sources, payee: str, mine: dict[str, ChainEvent]) -> int:
    """The payee's split share of what is settled but not yet requested (what the next request would pay)."""
    settled = {pid: fees for pid, _count, fees in usage_summary(src.index, policy_ids=list(mine),
                                                                  group_by="policy_id")}
    owed = 0
    for pid, event in mine.items():
        requested = sum(int(a.args["amount"]) for a in src.index.events("AccrualRequested", policyId=pid))
        owed += split_amount(settled.get(pid, 0) - requested, payee_pairs(event.args["payees"])).get(payee, 0)
    return owed


def content_page(src: Sources, content_id: str, limit: int | None) -> Page:
    trail = content_trail(src.index, content_id)  # type: ignore[arg-type]
    versions = src.index.events("PolicyRegistered", contentId=hex32(content_id))
    splits = [(e.args["version"], e.args["policyId"], e.args["price"], payee_pairs(e.args["payees"]))
              for e in versions]
    per_version = trail.section("Per version")
    context = {"content_id": hex32(content_id), "splits": splits, "checks": (),
               "chart": charts.bars("Settled fees per version", ("settled", "requested"),
                                    [charts.Group(f"v{r[0]}", (r[3], r[4]), f"/policy/{r[1]}")
                                     for r in per_version.rows])}
    tables = {
        "versions": _section_table("versions", trail, "Policy versions", {"provider": "/member/"}),
        "per_version": _section_table("per_version", trail, "Per version", {"policy_id": "/policy/"}),
        "uses": _section_table("uses", trail, "Uses", {"serial": "/serial/"}, limit=limit),
    }
    return Page("content.html", f"Content {hex32(content_id)}", context, tables)


def policy_page(src: Sources, policy_id: str, limit: int | None) -> Page:
    found = src.index.events("PolicyRegistered", policyId=hex32(policy_id))
    if not found:
        raise NotFound(f"no policy {hex32(policy_id)} on this contract", policy_id=hex32(policy_id))
    page = content_page(src, found[0].args["contentId"], limit)
    return Page(page.template, page.title, {**page.context, "focus_policy": hex32(policy_id)}, page.tables)


def member_page(src: Sources, account: str, limit: int | None) -> Page:
    address = Web3.to_checksum_address(account)
    registered = src.index.events("MemberRegistered", account=address)
    if not registered:
        raise NotFound(f"{address} was never registered as a member", account=address)
    record = src.index.contract.functions.member(address).call()  # newer contracts append the device's user
    role, revoked, valid_from, valid_until, member_id, fingerprint = record[:6]
    device_user = "0x" + bytes(record[6]).hex() if len(record) > 6 and any(record[6]) else ""
    head_time = int(src.w3.eth.get_block(src.index.last_block)["timestamp"])
    context = {
        "account": address, "role": ROLE_NAMES.get(int(role), str(role)), "role_id": int(role), "revoked": revoked,
        "valid_from": valid_from, "valid_until": valid_until, "member_id": "0x" + bytes(member_id).hex(),
        "fingerprint": "0x" + bytes(fingerprint).hex(), "head_time": head_time, "device_user": device_user,
        "valid_now": (not revoked) and valid_from <= head_time <= valid_until,
        "is_device": bool(src.index.events("IssueLogRecorded", device=address)),
        "is_payee": bool(src.index.events("TransferRequested", payee=address)) or any(
            address in dict(payee_pairs(e.args["payees"])) for e in policies(src.index).values()),
    }
    revocations = src.index.events("MemberRevocationRecorded", account=address)
    tables = {
        "registrations": _event_table("registrations", "Registrations", registered, "role", "memberId",
                                      "certFingerprint", "validFrom", "validUntil"),
        "revocations": _event_table("revocations", "Revocations", revocations, "role"),
    }
    return Page("member.html", f"Member {address}", context, tables)


def deposit_page(src: Sources, deposit_id: str, limit: int | None) -> Page:
    found = src.index.events("DepositRecorded", depositId=hex32(deposit_id))
    if not found:
        raise NotFound(f"no deposit {hex32(deposit_id)} on this contract", deposit_id=hex32(deposit_id))
    user = found[0].args["userIdHash"]
    issued = src.index.events("IssueLogRecorded", userIdHash=user)
    tables = {
        "deposit": _event_table("deposit", "Deposit", found, "depositId", "userIdHash", "bank", "amount", "bankRef"),
        "user_deposits": _event_table("user_deposits", "All deposits of this user",
                                      src.index.events("DepositRecorded", userIdHash=user), "depositId", "amount",
                                      links={"depositId": "/deposit/"}),
        "issue_logs": _event_table("issue_logs", "Issue logs of this user", issued, "serial", "device", "cap",
                                   links={"serial": "/serial/", "device": "/device/"}),
    }
    return Page("simple.html", f"Deposit {hex32(deposit_id)}", {"lead": f"user {user}"}, tables)


def request_page(src: Sources, request_id: str, limit: int | None) -> Page:
    rid = hex32(request_id)
    found = src.index.events("TransferRequested", requestId=rid)
    if not found:
        raise NotFound(f"no transfer request {rid} on this contract", request_id=rid)
    confirmed = src.index.events("TransferConfirmed", requestId=rid)
    accruals = [e for e in src.index.events("AccrualRequested") if e.tx_hash == found[0].tx_hash]
    status = "confirmed by the bank" if confirmed else "awaiting the bank's confirmation"
    tables = {
        "request": _event_table("request", "Transfer request", found, "requestId", "payee", "amount",
                                links={"payee": "/payee/"}),
        "confirmation": _event_table("confirmation", "Bank confirmation", confirmed, "bank", "amount", "bankRef",
                                     links={"bank": "/member/"}),
        "accruals": _event_table("accruals", "Accruals requested in the same transaction", accruals, "policyId",
                                 "amount", links={"policyId": "/policy/"}),
    }
    return Page("simple.html", f"Transfer request {rid}", {"lead": status}, tables)


# --- search -------------------------------------------------------------------------------------------------------
_HEX64 = re.compile(r"^(0x)?[0-9a-fA-F]{64}$")
_HEX40 = re.compile(r"^(0x)?[0-9a-fA-F]{40}$")


def _first(src: Sources, checks: list[tuple[str, str, str]]) -> str | None:
    for event, arg, url in checks:
        if src.index.events(event, **{arg: value_of(url)}):
            return url
    return None


def value_of(url: str) -> str:
    return url.rsplit("/", 1)[-1]


def route(src: Sources, query: str) -> str:
    """The URL a search query leads to; NotFound (with what was tried) when nothing matches."""
    q = query.strip()
    if q.isdigit():
        return f"/block/{int(q)}"
    if _HEX40.match(q):
        address = Web3.to_checksum_address(q if q.startswith("0x") else "0x" + q)
        found = _first(src, [("IssueLogRecorded", "device", f"/device/{address}"),
                             ("MemberRegistered", "account", f"/member/{address}"),
                             ("TransferRequested", "payee", f"/payee/{address}")])
        if found is None and any(address in dict(payee_pairs(e.args["payees"])) for e in policies(src.index).values()):
            found = f"/payee/{address}"
        if found:
            return found
        raise NotFound(f"address {address} is not a member, device or payee of this contract", query=q)
    if _HEX64.match(q):
        return _route_hash(src, hex32(q))
    raise NotFound(f"{q!r} is neither a block number, a 32-byte id or hash, nor an address", query=q)


def _route_hash(src: Sources, value: str) -> str:
    found = _first(src, [("IssueLogRecorded", "serial", f"/serial/{value}"),
                         ("IssueLogRenewed", "newSerial", f"/serial/{value}"),
                         ("PolicyRegistered", "contentId", f"/content/{value}"),
                         ("PolicyRegistered", "policyId", f"/policy/{value}"),
                         ("DepositRecorded", "depositId", f"/deposit/{value}"),
                         ("TransferRequested", "requestId", f"/request/{value}")])
    if found:
        return found
    if src.index.db.execute("SELECT 1 FROM events WHERE tx_hash = ? LIMIT 1", (value,)).fetchone():
        return f"/tx/{value}"
    try:
        src.w3.eth.get_transaction(value)
        return f"/tx/{value}"
    except Exception:  # noqa: BLE001 - any "not found" shape of any node: try the next kind
        pass
    try:
        if src.w3.eth.get_block(value) is not None:
            return f"/block/{value}"
    except Exception:  # noqa: BLE001 - same
        pass
    raise NotFound(f"{value} is no serial, content, policy, deposit, transfer request, transaction or block here",
                   query=value)


PageBuilder = Callable[[Sources, str, "int | None"], Page]
PAGES: dict[str, PageBuilder] = {
    "serial": serial_page, "device": device_page, "tx": tx_page, "block": block_page, "payee": payee_page,
    "content": content_page, "policy": policy_page, "member": member_page, "deposit": deposit_page,
    "request": request_page,
}
