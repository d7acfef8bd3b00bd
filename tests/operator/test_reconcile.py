"""Reconciliation of chain, CC database and bank ledger: a clean mirror reconciles; planted errors are caught."""

from __future__ import annotations

import io
import json
from typing import Any as ChainWorld  # the `world` fixture of tests/operator/conftest.py

import pytest
from sqlalchemy import text

from offchain.operator.audit import index as audit
from offchain.operator import reconcile
from offchain.bank import store as bank_store
from offchain.bank.ledger import Ledger
from offchain.clearing_center import tables as cc_tables
from offchain.clearing_center.records import add_user, append_balance_entry, record_transfer_request
from offchain.clearing_center.tables import ReceiveLogRow
from offchain.storage import make_engine, session_scope
from offchain.core.messages import keccak

NOW = 1_700_100_000


@pytest.fixture()
def index(world: ChainWorld, tmp_path):
    with audit.open_index(rpc_url=world.w3.provider.endpoint_uri, deployment_path=world.deployment_path,
                          cache_dir=tmp_path) as idx:
        yield idx


def _mirror_bank(index: audit.AuditIndex, url: str, *, pay_unconfirmed: bool = False) -> Ledger:
    """A bank ledger that booked exactly what the chain shows (deposits and confirmed transfers)."""
    engine = make_engine(url)
    bank_store.create_schema(engine)
    deposits = index.events("DepositRecorded")
    confirmed = {e.args["requestId"]: e for e in index.events("TransferConfirmed")}
    refs = iter([bytes.fromhex(e.args["bankRef"][2:]) for e in deposits]
                + [bytes.fromhex(e.args["bankRef"][2:]) for e in confirmed.values()] + [b"\x01" * 32] * 5)
    ledger = Ledger(engine, new_bank_ref=lambda: next(refs), clock=lambda: NOW)
    users = {keccak(name.encode()).hex(): name for name in ("alice", "bob")}
    for event in deposits:
        ledger.deposit(bytes.fromhex(event.args["depositId"][2:]), users[event.args["userIdHash"][2:]],
                       int(event.args["amount"]))
    requests = index.events("TransferRequested")
    for event in requests:
        if event.args["requestId"] in confirmed or pay_unconfirmed:
            ledger.execute_transfer(bytes.fromhex(event.args["requestId"][2:]), event.args["payee"],
                                    int(event.args["amount"]))
    return ledger


def _mirror_cc(index: audit.AuditIndex, url: str) -> None:
    """A CC database that credited every deposit, allocated every cap and recorded every batch and request."""
    engine = make_engine(url)
    cc_tables.create_schema(engine)
    users = {keccak(name.encode()).hex(): name for name in ("alice", "bob")}
    with session_scope(engine) as session:
        for name in users.values():
            add_user(session, name, keccak(name.encode()), name, NOW)
        for e in index.events("DepositRecorded"):
            append_balance_entry(session, f"deposit:{e.args['depositId']}", users[e.args["userIdHash"][2:]],
                                 "deposit", int(e.args["amount"]), NOW, reference=e.tx_hash)
        user_of = {e.args["serial"]: users[e.args["userIdHash"][2:]] for e in index.events("IssueLogRecorded")}
        for e in index.events("IssueLogRecorded"):
            append_balance_entry(session, f"issue:{e.args['serial']}", user_of[e.args["serial"]], "allocation",
                                 int(e.args["cap"]), NOW, serial=bytes.fromhex(e.args["serial"][2:]))
        for e in index.events("IssueLogRenewed"):
            user_of[e.args["newSerial"]] = user_of[e.args["oldSerial"]]
            append_balance_entry(session, f"renew:{e.tx_hash}", user_of[e.args["oldSerial"]], "allocation",
                                 int(e.args["newMoney"]), NOW, serial=bytes.fromhex(e.args["newSerial"][2:]))
        for n, e in enumerate(index.events("UsageSettled")):
            session.add(_receive_log_row(n, e))
        for e in index.events("TransferRequested"):
            record_transfer_request(session, bytes.fromhex(e.args["requestId"][2:]), e.args["payee"],
                                    int(e.args["amount"]), NOW, tx_hash=e.tx_hash)
    engine.dispose()


def _receive_log_row(n: int, event: audit.ChainEvent) -> ReceiveLogRow:
    return ReceiveLogRow(id=keccak(bytes([n])), sp_address=event.args["receiver"], payer=event.args["device"],
                         serial=bytes.fromhex(event.args["serial"][2:]), first_seq=int(event.args["firstSeq"]),
                         count=int(event.args["count"]), total=int(event.args["total"]), usage_batch_json={},
                         device_sig=b"\x00" * 65, receiver_sig=b"\x00" * 65, received_at=NOW, status="settled",
                         payload_hash=bytes(32))


@pytest.fixture()
def dbs(index, tmp_path):
    cc_url, bank_url = f"sqlite:///{tmp_path}/cc.db", f"sqlite:///{tmp_path}/bank.db"
    _mirror_cc(index, cc_url)
    ledger = _mirror_bank(index, bank_url)
    return cc_url, bank_url, ledger


def _report(index, cc_url: str | None, bank_url: str | None) -> reconcile.Report:
    chain = reconcile.chain_facts(index)
    return reconcile.reconcile(chain, reconcile.cc_facts(cc_url) if cc_url else None,
                               reconcile.bank_facts(bank_url) if bank_url else None, now=NOW)


def test_chain_alone_reconciles_with_unconfirmed_request_in_flight(world: ChainWorld, index) -> None:
    report = _report(index, None, None)
    assert report.clean
    unconfirmed = "0x" + world.notes["unconfirmed_request"].hex()
    assert [d.key for d in report.in_flight if d.area == "transfers"] == [unconfirmed]
    assert report.totals["settled"] == report.totals["requested"] == 950


def test_clean_world_reconciles_across_chain_cc_and_bank(world: ChainWorld, index, dbs) -> None:
    cc_url, bank_url, _ = dbs
    report = _report(index, cc_url, bank_url)
    assert report.clean, report.unexplained
    assert {d.area for d in report.in_flight} == {"transfers"}
    assert report.totals["bank_paid"] == report.totals["confirmed"] > 0


def test_paid_but_unconfirmed_transfer_is_in_flight(world: ChainWorld, index, tmp_path) -> None:
    bank_url = f"sqlite:///{tmp_path}/bank2.db"
    _mirror_bank(index, bank_url, pay_unconfirmed=True)
    report = _report(index, None, bank_url)
    assert report.clean
    assert any("confirmation pending" in d.cause for d in report.in_flight)


def test_extra_bank_transfer_without_request_is_unexplained(index, dbs) -> None:
    cc_url, bank_url, ledger = dbs
    ledger.execute_transfer(b"\x42" * 32, "0x" + "ab" * 20, 7)
    report = _report(index, cc_url, bank_url)
    causes = [d.cause for d in report.unexplained]
    assert any("no such transfer request exists on chain" in c for c in causes)


def test_extra_ledger_posting_unbalances_an_entry(index, dbs) -> None:
    cc_url, bank_url, _ = dbs
    engine = make_engine(bank_url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO postings (entry_id, account_id, amount) "
                          "SELECT entry_id, account_id, 1 FROM postings WHERE amount > 0 LIMIT 1"))
    engine.dispose()
    report = _report(index, cc_url, bank_url)
    assert not report.clean
    assert any(d.area == "books" and "does not balance" in d.cause for d in report.unexplained)


def test_altered_cc_deposit_credit_is_unexplained(index, dbs) -> None:
    cc_url, bank_url, _ = dbs
    engine = make_engine(cc_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE user_balance_entries SET amount = amount + 1 WHERE kind = 'deposit' "
                          "AND id = (SELECT min(id) FROM user_balance_entries WHERE kind = 'deposit')"))
    engine.dispose()
    report = _report(index, cc_url, bank_url)
    [diff] = report.unexplained
    assert diff.area == "deposits" and "CC credited another amount" in diff.cause and diff.cc == diff.chain + 1


def test_confirmed_transfer_missing_in_bank_ledger_is_unexplained(index, tmp_path) -> None:
    bank_url = f"sqlite:///{tmp_path}/empty-bank.db"
    bank_store.create_schema(make_engine(bank_url))
    report = _report(index, None, bank_url)
    causes = [d.cause for d in report.unexplained]
    assert any("confirmed on chain but missing in the bank ledger" in c for c in causes)
    assert any("recorded on chain but missing in the bank ledger" in c for c in causes)


def test_main_reconcile_exit_codes_and_json(world: ChainWorld, dbs, tmp_path) -> None:
    cc_url, bank_url, ledger = dbs
    kwargs = dict(rpc_url=world.w3.provider.endpoint_uri, deployment_path=world.deployment_path, cc_db_url=cc_url,
                  bank_db_url=bank_url, cache_dir=tmp_path, output="json")
    out = io.StringIO()
    assert reconcile.main_reconcile(**kwargs, stream=out) == 0
    assert json.loads(out.getvalue())["clean"] is True
    ledger.execute_transfer(b"\x43" * 32, "0x" + "cd" * 20, 3)
    out = io.StringIO()
    assert reconcile.main_reconcile(**{**kwargs, "output": "table"}, stream=out) == 1
    assert "unexplained difference" in out.getvalue()
