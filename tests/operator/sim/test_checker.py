"""The simulator's checker catches planted violations (and passes a consistent world: the positive control).

The chain is a test double of `RawChain` (a real contract refuses a double settlement, so one can only be
planted); the databases and the wallet are real SQLite files with the tables the checker reads.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_utils import keccak

from offchain.operator.sim.checker import Checker, RawChain, World

DEVICE = Account.create()
PAYEE = "0x" + "22" * 20
SERIAL = keccak(b"serial-1")
OTHER_SERIAL = keccak(b"serial-2")
USER = keccak(b"alice")
REQUEST = keccak(b"request-1")
POLICY = keccak(b"policy-1")


def entries(*fees: int) -> bytes:
    return b"".join(bytes((0,)) + fee.to_bytes(11, "big") + (1).to_bytes(4, "big") for fee in fees)


class FakeChain(RawChain):
    """Events and views of a small consortium: one serial, two logs of 50 settled in one batch, one payout."""

    def __init__(self) -> None:  # no RPC, no deployment file
        self.chain_id, self.address = 31337, "0x" + "11" * 20
        self.events_list: list[dict[str, Any]] = [
            {"event": "DepositRecorded", "depositId": keccak(b"dep-1"), "userIdHash": USER, "amount": 1000},
            {"event": "IssueLogRecorded", "serial": SERIAL, "device": DEVICE.address, "userIdHash": USER,
             "cap": 400},
            {"event": "PolicyRegistered", "policyId": POLICY},
            {"event": "UsageSettled", "serial": SERIAL, "firstSeq": 0, "count": 2, "total": 100, "tx": "0xaa"},
            {"event": "TransferRequested", "requestId": REQUEST, "payee": PAYEE, "amount": 100},
            {"event": "TransferConfirmed", "requestId": REQUEST, "payee": PAYEE, "amount": 100},
        ]
        self.txs = {"0xaa": [((SERIAL, 0, PAYEE, [POLICY], entries(50, 50)), b"sig", 0, b"rsig")]}
        self.issue_logs = {SERIAL: (DEVICE.address, USER, 400, 100, 2, 2**48 - 1, 0, False),
                           OTHER_SERIAL: (DEVICE.address, USER, 200, 0, 0, 2**48 - 1, 0, False)}
        self.funds = {USER: (1000, 400)}

    def logs(self) -> list[dict[str, Any]]:
        return self.events_list

    def call(self, name: str, *args: Any) -> tuple[Any, ...]:
        if name == "issueLog":
            return self.issue_logs[args[0]]
        if name == "userFunds":
            return self.funds[args[0]]
        if name == "policy":
            settled = sum(e["total"] for e in self.events_list if e["event"] == "UsageSettled")
            requested = sum(e["amount"] for e in self.events_list if e["event"] == "TransferRequested")
            return (b"", 1, PAYEE, 50, b"", settled, requested, [])
        raise KeyError(name)

    def settle_items(self, tx_hash: str) -> list[tuple[Any, ...]]:
        return self.txs[tx_hash]

    def usage_batch_signer(self, batch: tuple[Any, ...], signature: bytes) -> str:
        return DEVICE.address if signature == b"sig" else "0x" + "99" * 20


def sql(path: Path, *statements: str) -> None:
    connection = sqlite3.connect(path)
    for statement in statements:
        connection.execute(statement)
    connection.commit()
    connection.close()


@pytest.fixture
def world(tmp_path: Path) -> World:
    cc, sp, bank, wallet = (tmp_path / n for n in ("cc.db", "sp.db", "bank.db", "wallet.db"))
    dep = keccak(b"dep-1").hex()
    sql(cc, "CREATE TABLE user_balance_entries (idempotency_key TEXT, kind TEXT)",
        f"INSERT INTO user_balance_entries VALUES ('deposit:0x{dep}', 'deposit')",
        "CREATE TABLE cc_issue_requests (status TEXT)", "CREATE TABLE settlement_outbox (status TEXT)",
        "CREATE TABLE receive_logs (status TEXT)", "CREATE TABLE transfer_requests (status TEXT)",
        "INSERT INTO receive_logs VALUES ('settled')", "INSERT INTO transfer_requests VALUES ('confirmed')")
    sql(sp, "CREATE TABLE sp_batches (serial BLOB, first_seq INTEGER, count INTEGER, status TEXT)",
        "INSERT INTO sp_batches VALUES (?, 0, 2, 'acked')".replace("?", "X'" + SERIAL.hex() + "'"))
    sql(bank, "CREATE TABLE journal_entries (id INTEGER, idempotency_key TEXT, kind TEXT)",
        "CREATE TABLE postings (entry_id INTEGER, account_id TEXT, amount INTEGER)",
        f"INSERT INTO journal_entries VALUES (1, 'deposit:{dep}', 'deposit')",
        "INSERT INTO postings VALUES (1, 'external:cash', -1000)", "INSERT INTO postings VALUES (1, 'cc:management', 1000)",
        f"INSERT INTO journal_entries VALUES (2, 'transfer:0x{REQUEST.hex()}', 'transfer')",
        "INSERT INTO postings VALUES (2, 'cc:management', -100)", f"INSERT INTO postings VALUES (2, 'payee:{PAYEE}', 100)")
    log = json.dumps({"fee": 50})
    sql(wallet, "CREATE TABLE issue_logs (serial BLOB, state TEXT, attested_at INTEGER)",
        "CREATE TABLE usage_logs (serial BLOB, seq INTEGER, log_json TEXT, uploaded INTEGER)",
        f"INSERT INTO issue_logs VALUES (X'{SERIAL.hex()}', 'current', NULL)",
        f"INSERT INTO usage_logs VALUES (X'{SERIAL.hex()}', 0, '{log}', 1)",
        f"INSERT INTO usage_logs VALUES (X'{SERIAL.hex()}', 1, '{log}', 1)")
    return World(rpc_url="", deployment_path=tmp_path / "none.json", cc_db=cc, sp_db=sp, bank_db=bank,
                 wallets={"alice-phone": (DEVICE.address, wallet)}, deposits={"dep-1": ("alice", 1000)},
                 reconcile=(0, "ok"))


def invariants(world: World, chain: FakeChain) -> set[str]:
    return {v.invariant for v in Checker(world, chain).run()}


def test_consistent_world_has_no_violation(world: World) -> None:
    assert Checker(world, FakeChain()).run() == []


def test_double_settlement_is_caught(world: World) -> None:
    chain = FakeChain()
    chain.events_list.append({"event": "UsageSettled", "serial": SERIAL, "firstSeq": 1, "count": 1, "total": 50,
                              "tx": "0xbb"})
    chain.txs["0xbb"] = [((SERIAL, 1, PAYEE, [POLICY], entries(50)), b"sig", 0, b"rsig")]
    found = invariants(world, chain)
    assert "settled_at_most_once" in found
    assert "serial_totals_agree" in found  # the event totals (150) no longer match the wallet (100)


def test_stranded_allocation_is_caught(world: World) -> None:
    chain = FakeChain()
    chain.events_list.append({"event": "IssueLogRecorded", "serial": OTHER_SERIAL, "device": DEVICE.address,
                              "userIdHash": USER, "cap": 200})
    chain.funds[USER] = (1000, 600)
    violations = Checker(world, chain).run()
    stranded = [v for v in violations if v.invariant == "no_stranded_allocation"]
    assert len(stranded) == 1 and "0x" + OTHER_SERIAL.hex() in stranded[0].detail


def test_unpaid_transfer_is_caught(world: World) -> None:
    sql(world.bank_db, "DELETE FROM postings WHERE entry_id = 2", "DELETE FROM journal_entries WHERE id = 2")
    chain = FakeChain()
    chain.events_list = [e for e in chain.events_list if e["event"] != "TransferConfirmed"]
    found = invariants(world, chain)
    assert {"bank_paid_once", "transfers_confirmed_once"} <= found


def test_forged_settlement_and_frozen_device_and_dup_mismatch_are_caught(world: World) -> None:
    chain = FakeChain()
    chain.txs["0xaa"] = [((SERIAL, 0, PAYEE, [POLICY], entries(50, 50)), b"forged", 0, b"rsig")]
    sql(world.wallets["alice-phone"][1], "UPDATE issue_logs SET attested_at = 5")
    world.dup_mismatches.append({"request": "POST /v1/issue-logs HTTP/1.1", "first": "200", "second": "409"})
    assert {"settled_logs_signed_by_device", "no_device_frozen", "duplicates_identical"} <= invariants(world, chain)


def test_a_named_refusal_is_not_compared_and_anything_else_is(world: World) -> None:
    """Seed 52: a duplicated upload while anvil restarted was refused twice with chain_unreachable, once
    'connection aborted' and once 'connection refused'. Seed 22: a duplicated receive-log post was refused with
    storage_full (the CC's disk full), the duplicate then accepted. A refusal did nothing: not a mismatch."""
    def dup(first: str, second: str, first_error: str | None, second_error: str | None) -> dict:
        return {"request": "POST /v1/usage HTTP/1.1", "first": f"HTTP/1.1 {first}", "second": f"HTTP/1.1 {second}",
                "first_body": "aborted", "second_body": "refused", "first_error": first_error,
                "second_error": second_error}

    world.dup_mismatches.append(dup("502 Bad Gateway", "502 Bad Gateway", "chain_unreachable", "chain_unreachable"))
    world.dup_mismatches.append(dup("507 Insufficient Storage", "200 OK", "storage_full", None))
    world.dup_mismatches.append(dup("200 OK", "503 Service Unavailable", None, "service_unavailable"))
    assert "duplicates_identical" not in invariants(world, FakeChain())  # the positive control
    for other in (dup("200 OK", "409 Conflict", None, "duplicate_message"),
                  dup("500 Internal Server Error", "500 Internal Server Error", "internal_error", "internal_error"),
                  dup("500 Internal Server Error", "200 OK", "internal_error", None),
                  dup("503 Service Unavailable", "200 OK", None, None)):
        world.dup_mismatches[:] = [other]
        assert "duplicates_identical" in invariants(world, FakeChain()), other


def test_an_item_refused_for_now_in_a_batch_answer_is_not_compared(world: World) -> None:
    """Seed 242: a duplicated receive-log post of two items, accepted both; the duplicate reached the CC while
    anvil restarted: the first item accepted again, the second rejected chain_unreachable (the SP forwards it
    again). Items refused for good, or accepted in one answer and missing from the other, still differ."""
    def dup(first: dict, second: dict) -> dict:
        return {"request": "POST /v1/receive-logs HTTP/1.1", "first": "HTTP/1.1 200 OK",
                "second": "HTTP/1.1 200 OK", "first_json": first, "second_json": second}

    both = {"accepted": ["0xa", "0xb"], "rejected": []}
    refused = {"accepted": ["0xa"], "rejected": [{"index": 1, "error": "chain_unreachable", "message": "reset"}]}
    world.dup_mismatches.append(dup(both, refused))
    world.dup_mismatches.append(dup(refused, both))
    assert "duplicates_identical" not in invariants(world, FakeChain())  # the positive control
    for first, second in (
            (both, {"accepted": ["0xa"], "rejected": [{"index": 1, "error": "sequence_error"}]}),  # for good
            (both, {"accepted": ["0xa", "0xc"], "rejected": []}),  # another result
            (both, {"accepted": ["0xa"], "rejected": []}),  # an item lost
            (both, {"accepted": ["0xa"], "rejected": [{"index": 1, "error": "internal_error"}]}),  # opaque
            ({"accepted": [], "rejected": [{"index": 0, "error": "fee_mismatch"}]},
             {"accepted": [], "rejected": [{"index": 0, "error": "not_found"}]})):
        world.dup_mismatches[:] = [dup(first, second)]
        assert "duplicates_identical" in invariants(world, FakeChain()), (first, second)


def test_open_plan_and_unsettled_ack_are_caught(world: World) -> None:
    sql(world.cc_db, "INSERT INTO cc_issue_requests VALUES ('planned')")
    sql(world.sp_db, f"INSERT INTO sp_batches VALUES (X'{SERIAL.hex()}', 2, 1, 'rejected')")
    found = invariants(world, FakeChain())
    assert {"nothing_left_open", "acknowledged_logs_settled"} <= found


def test_opaque_error_while_a_disk_is_full_is_caught(world: World) -> None:
    named = [("fault", "open disk fill", "cc"),
             ("bob-tablet->cc", "answer 507", "POST /v1/issue-logs -> storage_full"),
             ("sp->cc", "answer 503", "POST /v1/receive-logs -> service_unavailable"),
             ("fault", "close disk fill", "cc"),
             ("bank->cc", "answer 500", "POST /v1/deposits/notify -> internal_error")]  # after the window: not counted
    world.proxy_events.extend(named)
    assert Checker(world, FakeChain()).run() == []  # the positive control: named errors, or outside the window
    world.proxy_events.insert(3, ("alice-phone->cc", "answer 500", "POST /v1/issue-logs -> internal_error"))
    violations = [v for v in Checker(world, FakeChain()).run() if v.invariant == "storage_full_named"]
    assert len(violations) == 1
    assert "alice-phone->cc answered 500 internal_error while cc's disk" in violations[0].detail
