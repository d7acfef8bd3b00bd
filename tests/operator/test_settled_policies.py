"""The CC's settled-policy set (issue 9 item 7): kept as receive logs settle, never rebuilt from their JSON, and what
the transfer round reads; the pipeline benchmark's history generator writes rows the CC reads as it reads its own.

The oracle for the set is the old full scan (every settled receive log's `policyIds`), computed here independently
of `cc_settled_policies`.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import Engine, select, text

from offchain.clearing_center.records import ReceiveLogRecord
from offchain.clearing_center.store import CcStore
from offchain.clearing_center.tables import ReceiveLogRow
from offchain.clearing_center.transfers import TransferWorker
from offchain.core.messages import UsageBatch, UsageLog, keccak
from offchain.operator.bench.history import fill_settled_history
from offchain.storage import make_engine, migrate
from offchain.storage.session import session_scope

CC = migrate.ROLES["clearing_center"]
P1, P2, P3, P4 = (keccak(bytes([i]) * 32) for i in (1, 2, 3, 4))
RECEIVER = "0x" + "aa" * 20
PAYER = "0x" + "bb" * 20


@pytest.fixture
def engine(tmp_path: Any) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'cc.db'}")
    yield engine
    engine.dispose()


def scanned_policies(engine: Engine) -> set[bytes]:
    """The oracle: policy ids of every settled receive log, read from the stored usage batches."""
    with session_scope(engine) as session:
        batches = session.scalars(select(ReceiveLogRow.usage_batch_json).where(ReceiveLogRow.status == "settled"))
        return {bytes.fromhex(pid[2:]) for batch in batches for pid in batch["policyIds"]}


def receive_record(serial_byte: int, first_seq: int, policies: list[bytes]) -> ReceiveLogRecord:
    serial = bytes([serial_byte]) * 32
    logs = [UsageLog(serial=serial, seq=first_seq + i, policy_id=pid, fee=10, receiver=RECEIVER, used_at=1_000)
            for i, pid in enumerate(policies)]
    batch = UsageBatch.from_logs(logs)
    return ReceiveLogRecord(id=keccak(serial + bytes([first_seq])), sp_address=RECEIVER, payer=PAYER, serial=serial,
                            first_seq=first_seq, count=batch.count, total=batch.total,
                            usage_batch_json=batch.to_json(), device_sig=b"\x01" * 65, receiver_sig=b"\x02" * 65,
                            received_at=1_000)


def settle(store: CcStore, *records: ReceiveLogRecord) -> None:
    for record in records:
        store.store_receive_log(record)
    outbox = store.create_settlement([r.id for r in records], tx_hash="0x" + records[0].id.hex(), nonce=0,
                                     raw_tx=b"tx")
    store.update_settlement(outbox, "sent")
    store.update_settlement(outbox, "confirmed")


class AccruedChain:
    """Chain double of the transfer round: every policy has `accrued` fees; counts the view calls."""

    def __init__(self, accrued: dict[bytes, int]) -> None:
        self.accrued = accrued
        self.calls: list[bytes] = []
        self.deployment = SimpleNamespace(deploy_block=1)
        self.w3 = None

    def policy(self, policy_id: bytes) -> Any:
        self.calls.append(policy_id)
        return SimpleNamespace(accrued=self.accrued[policy_id])


def test_settled_policies_stay_correct_as_logs_settle_then_a_transfer_round_sees_the_new_policy(
        engine: Engine) -> None:
    store = CcStore(engine, clock=lambda: 2_000)
    store.create_schema()
    settle(store, receive_record(1, 0, [P1, P1]))
    assert store.settled_policy_ids() == [P1] and scanned_policies(engine) == {P1}
    store.store_receive_log(receive_record(1, 2, [P3]))  # accepted, not settled: not a candidate yet
    assert store.settled_policy_ids() == [P1]
    settle(store, receive_record(2, 0, [P2, P1]))
    assert set(store.settled_policy_ids()) == scanned_policies(engine) == {P1, P2}
    store.mark_settled_without_outbox([receive_record(1, 2, [P3]).id])  # the chain was already past it
    assert set(store.settled_policy_ids()) == scanned_policies(engine) == {P1, P2, P3}
    record = receive_record(3, 0, [P4])
    store.store_receive_log(record)
    outbox = store.create_settlement([record.id], tx_hash="0xfeed", nonce=1, raw_tx=b"tx")
    store.resolve_unknown_settlement(outbox, {record.id}, "never mined")  # recovery: the chain shows it settled
    assert set(store.settled_policy_ids()) == scanned_policies(engine) == {P1, P2, P3, P4}
    assert len(store.settled_policy_ids()) == 4  # one row per policy

    chain = AccruedChain({P1: 0, P2: 30, P3: 0, P4: 10})
    worker = TransferWorker(store, chain, verifier=None, private_key=b"", cert_pem=b"",  # type: ignore[arg-type]
                            interval_s=0.0, threshold_minor=0, clock=lambda: 5_000.0, finality=object())  # type: ignore[arg-type]
    assert sorted(worker.due_policies()) == sorted([P2, P4])
    assert sorted(chain.calls) == sorted([P1, P2, P3, P4])


def test_failed_settlement_adds_no_policy(engine: Engine) -> None:
    store = CcStore(engine, clock=lambda: 2_000)
    store.create_schema()
    record = receive_record(1, 0, [P1])
    store.store_receive_log(record)
    outbox = store.create_settlement([record.id], tx_hash="0xbad", nonce=0, raw_tx=b"tx")
    store.update_settlement(outbox, "failed", error="reverted")
    assert store.settled_policy_ids() == [] and scanned_policies(engine) == set()


def test_history_generator_writes_what_the_cc_reads(engine: Engine) -> None:
    history = fill_settled_history(engine, 100, policies=[P1, P2, P3], batch_logs=8, serials=3, now=100_000)
    assert (history.logs, history.receive_logs) == (100, 5 + 5 + 4)  # 34 + 34 + 32 logs in batches of 8
    store = CcStore(engine, clock=lambda: 100_000)
    assert migrate.current(engine, CC) == migrate.head(CC)  # a database the CC service starts on as it is
    migrate.ensure_current(engine, CC)
    assert store.settlement_counts() == {"settled": 14}
    assert set(store.settled_policy_ids()) == scanned_policies(engine) == {P1, P2, P3}
    with session_scope(engine) as session:
        rows = list(session.scalars(select(ReceiveLogRow)))
    batches = [UsageBatch.from_json(row.usage_batch_json) for row in rows]
    assert sum(b.count for b in batches) == 100 == sum(row.count for row in rows)
    assert all(b.count == row.count and b.total == row.total == 10 * row.count and b.first_seq == row.first_seq
               and b.serial == row.serial for b, row in zip(batches, rows))
    assert store.accepted_receive_logs() == []  # nothing for the settlement worker to send


def test_migration_fills_the_set_from_logs_settled_before_it(engine: Engine) -> None:
    migrate.upgrade(engine, CC, "cc_0003")
    record = receive_record(1, 0, [P2, P1])
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO receive_logs (id, sp_address, payer, serial, first_seq, count, total, "
                          "usage_batch_json, device_sig, receiver_sig, received_at, status, payload_hash) VALUES "
                          "(:id, :sp, :payer, :serial, 0, 2, 20, :json, :sig, :sig, 1000, 'settled', :id)"),
                     {"id": record.id, "sp": RECEIVER, "payer": PAYER, "serial": record.serial,
                      "json": __import__("json").dumps(record.usage_batch_json), "sig": b"\x01" * 65})
    migrate.upgrade(engine, CC)
    assert set(CcStore(engine, clock=lambda: 0).settled_policy_ids()) == {P1, P2}


def test_transfer_round_reads_no_policy_before_the_interval_without_threshold(engine: Engine) -> None:
    store = CcStore(engine, clock=lambda: 2_000)
    store.create_schema()
    settle(store, receive_record(1, 0, [P1]))
    chain = AccruedChain({P1: 10})
    worker = TransferWorker(store, chain, verifier=None, private_key=b"", cert_pem=b"",  # type: ignore[arg-type]
                            interval_s=60.0, threshold_minor=0, clock=lambda: 5_000.0, finality=object())  # type: ignore[arg-type]
    assert worker.due_policies() == [] and chain.calls == []
    worker.threshold_minor = 5  # positive control: a threshold makes every round look
    assert worker.due_policies() == [P1] and chain.calls == [P1]


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_transfer_round_views_only_policies_settled_since_its_last_look_and_those_accruing(
        engine: Engine) -> None:
    from offchain.clearing_center.transfers import SETTLED_RECHECK_S

    later = 10 * SETTLED_RECHECK_S
    clock = Clock(2_000)
    store = CcStore(engine, clock=clock)
    store.create_schema()
    settle(store, receive_record(1, 0, [P1]), receive_record(2, 0, [P2]), receive_record(3, 0, [P3]))
    chain = AccruedChain({P1: 0, P2: 5, P3: 0, P4: 40})
    worker = TransferWorker(store, chain, verifier=None, private_key=b"", cert_pem=b"",  # type: ignore[arg-type]
                            interval_s=1e9, threshold_minor=10, clock=clock, finality=object())  # type: ignore[arg-type]
    clock.now += later
    assert worker.due_policies() == [] and sorted(chain.calls) == sorted([P1, P2, P3])  # first look: every one

    clock.now += later
    chain.calls.clear()
    settle(store, receive_record(4, 0, [P4]))
    assert worker.due_policies() == [P4]  # at the threshold
    assert sorted(chain.calls) == sorted([P2, P4])  # P2 accruing below the threshold; P1, P3 settled nothing since

    clock.now += later
    chain.calls.clear()
    chain.accrued.update({P1: 20, P2: 12})  # receive logs of P1 (seen empty before) and P2 settled since
    settle(store, receive_record(1, 1, [P1]), receive_record(2, 1, [P2]))
    assert sorted(worker.due_policies()) == sorted([P1, P2, P4]) and sorted(chain.calls) == sorted([P1, P2, P4])

    clock.now += later
    chain.calls.clear()
    chain.accrued.update({P1: 0, P2: 0, P4: 0})  # requested by another round meanwhile
    assert worker.due_policies() == [] and sorted(chain.calls) == sorted([P1, P2, P4])
    chain.calls.clear()
    assert worker.due_policies() == [] and chain.calls == []  # nothing accruing, nothing settled since: no view
