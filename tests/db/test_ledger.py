"""The bank ledger on SQLite and PostgreSQL: balances, exactly-once transfers, overdraft refusal, balanced books
(Hypothesis), and concurrent double execution posting once."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine

from offchain.bank.store import JournalEntry, Posting
from offchain.storage import make_engine, session_scope
from offchain.core.errors import DuplicateMessage, InsufficientFunds, InvalidAmount, UnknownAccount
from offchain.bank.ledger import CASH_ACCOUNT, CC_MANAGEMENT_ACCOUNT, Ledger, payee_account, user_account

PAYEE = "0x00000000000000000000000000000000000000C1"
OTHER_PAYEE = "0x00000000000000000000000000000000000000C2"


def rid(n: int) -> bytes:
    return n.to_bytes(32, "big")


@pytest.fixture
def bank(engine: Engine) -> Ledger:
    return Ledger(engine, clock=lambda: 1_700_000_000)


def test_deposit_credits_cc_management_through_user_account(bank: Ledger) -> None:
    bank.deposit(rid(1), "alice", 1_000)
    bank.deposit(rid(2), "bob", 250)

    balances = bank.balances()
    assert balances[CC_MANAGEMENT_ACCOUNT] == 1_250
    assert balances[CASH_ACCOUNT] == -1_250
    assert balances[user_account("alice")] == 0  # the user paid everything into the CC management account
    legs = bank.entries(kind="deposit")[0].postings
    assert legs == (
        (CASH_ACCOUNT, -1_000), ("user:alice", 1_000), ("user:alice", -1_000), (CC_MANAGEMENT_ACCOUNT, 1_000)
    )


def test_deposit_replay_same_payload_posts_once(bank: Ledger) -> None:
    first = bank.deposit(rid(1), "alice", 500)
    again = bank.deposit(rid(1), "alice", 500)

    assert first.created and not again.created
    assert again.bank_ref == first.bank_ref and again.entry_id == first.entry_id
    assert bank.balance(CC_MANAGEMENT_ACCOUNT) == 500


def test_deposit_same_id_different_amount_rejected(bank: Ledger) -> None:
    first = bank.deposit(rid(1), "alice", 500)
    with pytest.raises(DuplicateMessage) as info:
        bank.deposit(rid(1), "alice", 501)
    assert info.value.bank_ref == first.bank_ref
    assert info.value.key == "deposit:" + rid(1).hex()
    assert bank.balance(CC_MANAGEMENT_ACCOUNT) == 500


def test_transfer_moves_money_exactly_once(bank: Ledger) -> None:
    bank.deposit(rid(1), "alice", 1_000)

    first = bank.execute_transfer(rid(7), PAYEE, 600)
    replay = bank.execute_transfer(rid(7), PAYEE, 600)

    assert first.created and not replay.created
    assert replay.bank_ref == first.bank_ref and len(first.bank_ref) == 32
    assert bank.balance(payee_account(PAYEE)) == 600
    assert bank.balance(CC_MANAGEMENT_ACCOUNT) == 400
    assert len(bank.entries(kind="transfer")) == 1
    found = bank.find_transfer(rid(7))
    assert found is not None and found.bank_ref == first.bank_ref
    assert found.postings == ((CC_MANAGEMENT_ACCOUNT, -600), (payee_account(PAYEE), 600))


@pytest.mark.parametrize(
    "payee, amount, request_hash",
    [(OTHER_PAYEE, 600, None), (PAYEE, 599, None), (PAYEE, 600, b"\x01" * 32)],
    ids=["other_payee", "other_amount", "other_request_hash"],
)
def test_transfer_same_id_different_payload_rejected(
    bank: Ledger, payee: str, amount: int, request_hash: bytes | None
) -> None:
    bank.deposit(rid(1), "alice", 1_000)
    original = bank.execute_transfer(rid(7), PAYEE, 600)

    with pytest.raises(DuplicateMessage) as info:
        bank.execute_transfer(rid(7), payee, amount, request_hash)

    assert info.value.bank_ref == original.bank_ref
    assert info.value.stored_hash != info.value.got_hash
    assert bank.balance(CC_MANAGEMENT_ACCOUNT) == 400


def test_transfer_overdrawing_cc_management_rejected(bank: Ledger) -> None:
    bank.deposit(rid(1), "alice", 100)
    with pytest.raises(InsufficientFunds) as info:
        bank.execute_transfer(rid(7), PAYEE, 101)

    assert (info.value.account, info.value.balance, info.value.wanted) == (CC_MANAGEMENT_ACCOUNT, 100, 101)
    assert bank.find_transfer(rid(7)) is None
    assert bank.balance(CC_MANAGEMENT_ACCOUNT) == 100
    # the refused id stays free: once funded, the same request executes
    bank.deposit(rid(2), "alice", 1)
    assert bank.execute_transfer(rid(7), PAYEE, 101).created


@pytest.mark.parametrize("amount", [0, -5, 2**96, 1.5, True])
def test_non_positive_or_non_int_amount_rejected(bank: Ledger, amount: Any) -> None:
    with pytest.raises(InvalidAmount):
        bank.deposit(rid(1), "alice", amount)
    with pytest.raises(InvalidAmount):
        bank.execute_transfer(rid(2), PAYEE, amount)


def test_balance_of_unknown_account_raises(bank: Ledger) -> None:
    with pytest.raises(UnknownAccount):
        bank.balance("payee:0xnobody")
    with pytest.raises(UnknownAccount):
        bank.open_account("mystery:1")


def test_verify_balanced_flags_a_tampered_posting(bank: Ledger, engine: Engine) -> None:
    posted = bank.deposit(rid(1), "alice", 100)
    assert bank.verify_balanced() == [] and bank.trial_balance().balanced

    with session_scope(engine) as session:  # an out-of-band write, as an attacker with DB access would do
        session.add(Posting(entry_id=posted.entry_id, account_id=CC_MANAGEMENT_ACCOUNT, amount=5))

    assert bank.verify_balanced() == [posted.entry_id]
    assert not bank.trial_balance().balanced


def test_large_amounts_stay_exact(bank: Ledger, db_url: str) -> None:
    big = 2**62 + 1 if db_url.startswith("sqlite") else 2**96 - 1  # SQLite stores int64, PostgreSQL NUMERIC(38,0)
    bank.deposit(rid(1), "whale", big)
    bank.execute_transfer(rid(2), PAYEE, big - 1)
    assert bank.balance(CC_MANAGEMENT_ACCOUNT) == 1
    assert bank.balance(payee_account(PAYEE)) == big - 1


# --- Hypothesis: the books balance after any sequence of operations ---------------------------------------------
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("deposit"), st.integers(0, 5), st.integers(1, 10**6)),
        st.tuples(st.just("transfer"), st.integers(0, 5), st.integers(1, 2 * 10**6)),
        st.tuples(st.just("replay"), st.integers(0, 5), st.integers(1, 10**6)),
    ),
    max_size=12,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_trial_balance_always_zero(bank: Ledger, ops: list[tuple[str, int, int]]) -> None:
    run = uuid.uuid4().hex[:8]  # examples share the database: fresh ids, and compare deltas
    start = bank.balances()
    expected_cc = start.get(CC_MANAGEMENT_ACCOUNT, 0)
    done: list[tuple[bytes, str, int]] = []
    for i, (op, who, amount) in enumerate(ops):
        if op == "deposit":
            bank.deposit(f"{run}-{i}", f"u{who}", amount)
            expected_cc += amount
        elif op == "transfer":
            request = uuid.uuid4().bytes * 2
            try:
                bank.execute_transfer(request, f"0x{who:040x}", amount)
            except InsufficientFunds:
                assert amount > expected_cc
                continue
            expected_cc -= amount
            done.append((request, f"0x{who:040x}", amount))
        elif done:
            request, payee, paid = done[who % len(done)]
            assert not bank.execute_transfer(request, payee, paid).created
    balances = bank.balances()
    assert balances.get(CC_MANAGEMENT_ACCOUNT, 0) == expected_cc
    assert sum(balances.values()) == 0
    assert bank.trial_balance().balanced and bank.verify_balanced() == []
    assert all(b >= 0 for a, b in balances.items() if a != CASH_ACCOUNT)


# --- concurrency: separate engines (as separate processes would have) racing -----------------------------------
def _race(db_url: str, calls: list[Callable[[Ledger], Any]]) -> list[Any]:
    """Run each call on its own engine and thread, released together by a barrier; returns results/exceptions."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def worker(i: int) -> None:
        engine = make_engine(db_url)
        ledger = Ledger(engine)
        try:
            barrier.wait()
            results[i] = calls[i](ledger)
        except Exception as exc:  # collected and asserted on by the test
            results[i] = exc
        finally:
            engine.dispose()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return results


def test_concurrent_double_execution_posts_once(bank: Ledger, db_url: str, engine: Engine) -> None:
    bank.deposit(rid(1), "alice", 1_000)

    results = _race(db_url, [lambda ledger: ledger.execute_transfer(rid(9), PAYEE, 700)] * 4)

    assert all(not isinstance(r, Exception) for r in results), results
    assert sum(r.created for r in results) == 1
    assert len({r.bank_ref for r in results}) == 1
    assert bank.balance(CC_MANAGEMENT_ACCOUNT) == 300
    with session_scope(engine) as session:
        assert session.query(JournalEntry).filter_by(kind="transfer").count() == 1


def test_concurrent_different_transfers_never_overdraw(bank: Ledger, db_url: str) -> None:
    bank.deposit(rid(1), "alice", 1_000)

    results = _race(db_url, [lambda ledger, n=n: ledger.execute_transfer(rid(100 + n), PAYEE, 600) for n in range(3)])

    assert sum(isinstance(r, InsufficientFunds) for r in results) == 2, results
    assert bank.balance(CC_MANAGEMENT_ACCOUNT) == 400
    assert bank.trial_balance().balanced


def test_concurrent_same_deposit_posts_once(bank: Ledger, db_url: str) -> None:
    results = _race(db_url, [lambda ledger: ledger.deposit(rid(5), "carol", 42)] * 3)

    assert all(not isinstance(r, Exception) for r in results), results
    assert sum(r.created for r in results) == 1
    assert bank.balance(CC_MANAGEMENT_ACCOUNT) == 42
