"""The clearing center's repository functions (offchain/clearing_center/records.py) on SQLite and PostgreSQL:
idempotent upserts, status flows, the user balance database and the Money column; plus storage's payload hash
and engine settings."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from offchain import storage
from offchain.clearing_center import records as cc
from offchain.clearing_center.records import IssueLogRecord, ReceiveLogRecord
from offchain.clearing_center.tables import Device, ReceiveLogRow, SettlementOutbox, TransferRequestRow
from offchain.storage import session_scope
from offchain.core.errors import DuplicateMessage, InvalidAmount, InvalidTransition, NotFound

DEVICE = "0x00000000000000000000000000000000000000D1"
SP = "0x00000000000000000000000000000000000000A1"
SERIAL = b"\x11" * 32


def receive_log(log_id: bytes = b"\x01" * 32, *, total: int = 30, first_seq: int = 0) -> ReceiveLogRecord:
    return ReceiveLogRecord(
        id=log_id, sp_address=SP, payer=DEVICE, serial=SERIAL, first_seq=first_seq, count=3, total=total,
        usage_batch_json={"serial": "0x" + SERIAL.hex(), "firstSeq": first_seq, "policyIds": ["0x" + "11" * 32]}, device_sig=b"\x0d" * 65,
        receiver_sig=b"\x0e" * 65, received_at=1_700_000_000,
    )


def accepted(session: Session) -> list[ReceiveLogRow]:
    """Accepted receive logs in the CC's settlement order (an independent read, not the store's own query)."""
    query = select(ReceiveLogRow).where(ReceiveLogRow.status == "accepted")
    return list(session.scalars(query.order_by(ReceiveLogRow.serial, ReceiveLogRow.first_seq)))


def test_receive_log_upsert_identical_replay_returns_existing(engine: Engine) -> None:
    with session_scope(engine) as session:
        row, created = cc.upsert_receive_log_idempotent(session, receive_log())
        assert created and row.status == "accepted"
    with session_scope(engine) as session:
        again, created = cc.upsert_receive_log_idempotent(session, receive_log())
        assert not created and again.id == row.id and again.total == 30


def test_receive_log_upsert_same_id_different_payload_raises(engine: Engine) -> None:
    with session_scope(engine) as session:
        cc.upsert_receive_log_idempotent(session, receive_log())
    with pytest.raises(DuplicateMessage) as info, session_scope(engine) as session:
        cc.upsert_receive_log_idempotent(session, receive_log(total=31))
    assert info.value.kind == "receive_log" and info.value.stored_hash != info.value.got_hash
    with session_scope(engine) as session:
        assert session.get(ReceiveLogRow, b"\x01" * 32).total == 30


def test_settlement_confirmed_settles_its_receive_logs(engine: Engine) -> None:
    ids = [bytes([i]) * 32 for i in (1, 2)]
    with session_scope(engine) as session:
        for i, log_id in enumerate(ids):
            cc.upsert_receive_log_idempotent(session, receive_log(log_id, first_seq=3 * i))
        pending = accepted(session)
        assert [r.id for r in pending] == ids
        outbox = cc.create_settlement(session, ids, now=1)
    with session_scope(engine) as session:
        assert accepted(session) == []
        cc.update_settlement(session, outbox.id, "sent", 2, tx_hash="0x" + "ab" * 32, nonce=7, raw_tx=b"\x02")
        cc.update_settlement(session, outbox.id, "confirmed", 3)
    with session_scope(engine) as session:
        assert {session.get(ReceiveLogRow, i).status for i in ids} == {"settled"}
        with pytest.raises(InvalidTransition) as info:
            cc.update_settlement(session, outbox.id, "pending", 4)
        assert (info.value.current, info.value.wanted) == ("confirmed", "pending")


def test_settlement_failed_returns_receive_logs_for_retry(engine: Engine) -> None:
    with session_scope(engine) as session:
        cc.upsert_receive_log_idempotent(session, receive_log())
        outbox = cc.create_settlement(session, [b"\x01" * 32], now=1)
        cc.update_settlement(session, outbox.id, "failed", 2, error="CapExceeded")
    with session_scope(engine) as session:
        [row] = accepted(session)
        assert row.settlement_id is None
        assert session.get(SettlementOutbox, outbox.id).error == "CapExceeded"
        cc.reject_receive_log(session, row.id, "CapExceeded alone")
        assert accepted(session) == []


def test_transfer_request_flow_and_conflicting_replay(engine: Engine) -> None:
    request_id = b"\x07" * 32
    with session_scope(engine) as session:
        assert cc.record_transfer_request(session, request_id, SP, 500, 1)[1]
        assert not cc.record_transfer_request(session, request_id, SP, 500, 2)[1]
        with pytest.raises(DuplicateMessage):
            cc.record_transfer_request(session, request_id, SP, 501, 2)
        cc.advance_transfer_request(session, request_id, "sent_to_bank", 3)
        cc.advance_transfer_request(session, request_id, "confirmed", 4, bank_ref=b"\x09" * 32)
        with pytest.raises(DuplicateMessage):
            cc.advance_transfer_request(session, request_id, "confirmed", 5, bank_ref=b"\x0a" * 32)
        assert session.get(TransferRequestRow, request_id).status == "confirmed"
        with pytest.raises(NotFound):
            cc.advance_transfer_request(session, b"\x00" * 32, "confirmed", 5, bank_ref=b"\x0a" * 32)


def test_user_balance_entries_sum_and_are_idempotent(engine: Engine) -> None:
    with session_scope(engine) as session:
        cc.add_user(session, "alice", b"\xaa" * 32, "Alice", 1)
        cc.add_device(session, DEVICE, "device-1", "alice", 1)
        cc.append_balance_entry(session, "deposit:1", "alice", "deposit", 1_000, 1)
        cc.append_balance_entry(session, "deposit:1", "alice", "deposit", 1_000, 2)  # replay: no effect
        cc.append_balance_entry(session, "issue:1", "alice", "allocation", 300, 3, serial=SERIAL)
        cc.append_balance_entry(session, "carry:1", "alice", "carry", 50, 4, serial=SERIAL)
        with pytest.raises(DuplicateMessage):
            cc.append_balance_entry(session, "deposit:1", "alice", "deposit", 999, 5)
        with pytest.raises(InvalidAmount):
            cc.append_balance_entry(session, "deposit:2", "alice", "deposit", 0, 5)
        funds = cc.user_funds(session, "alice")
        assert (funds.deposited, funds.allocated, funds.carried, funds.available) == (1_000, 300, 50, 700)
        assert session.get(Device, DEVICE).user_id == "alice"
        with pytest.raises(DuplicateMessage):
            cc.add_device(session, DEVICE, "device-1", "bob", 6)


def test_issue_log_revisions_and_closing(engine: Engine) -> None:
    def record(revision: int, cap: int) -> IssueLogRecord:
        return IssueLogRecord(SERIAL, revision, DEVICE, b"\xaa" * 32, cap, 2_000_000_000, None, 0, cap,
                              b"\x01" * 65, {"cap": cap})

    with session_scope(engine) as session:
        cc.add_user(session, "alice", b"\xaa" * 32, "Alice", 1)
        cc.add_device(session, DEVICE, "device-1", "alice", 1)
        assert cc.record_issue_log(session, record(0, 100), 1)[1]
        assert not cc.record_issue_log(session, record(0, 100), 2)[1]
        with pytest.raises(DuplicateMessage):
            cc.record_issue_log(session, record(0, 101), 2)
        cc.record_issue_log(session, record(1, 250), 3)  # top-up in place of the same serial
        cc.mark_issue_log_anchored(session, SERIAL, 1, "0x" + "cd" * 32)
        latest = cc.latest_issue_log(session, SERIAL)
        assert (latest.revision, latest.cap, latest.anchored_tx) == (1, 250, "0x" + "cd" * 32)
        cc.close_issue_log(session, SERIAL)
    with session_scope(engine) as session:
        assert cc.latest_issue_log(session, SERIAL).status == "closed"


def test_money_rejects_floats_and_negatives_before_sql(engine: Engine) -> None:
    with pytest.raises(InvalidAmount) as info, session_scope(engine) as session:
        cc.record_transfer_request(session, b"\x05" * 32, SP, 1.5, 1)  # type: ignore[arg-type]
    assert info.value.field == "amount"
    with pytest.raises(InvalidAmount), session_scope(engine) as session:
        cc.upsert_receive_log_idempotent(session, receive_log(total=-1))


def test_payload_hash_is_canonical() -> None:
    assert storage.payload_hash({"a": 1, "b": b"\x01"}) == storage.payload_hash({"b": b"\x01", "a": 1})
    assert storage.payload_hash({"a": 1}) != storage.payload_hash({"a": 2})


def test_make_engine_sqlite_uses_wal_and_foreign_keys(tmp_path) -> None:
    engine = storage.make_engine(f"sqlite:///{tmp_path / 'sub' / 'x.db'}")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    engine.dispose()
