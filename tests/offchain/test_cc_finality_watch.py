"""The CC's finality watch without a chain: a scripted tracker says what the chain says, a recording web3 takes
what the watch re-broadcasts; the store is the real CC store on SQLite.

Included until the depth, then final (and no longer checked); a reorg that drops a transaction re-broadcasts the
very bytes stored for it, once per reorg, never new ones; bytes that can no longer be mined leave the row
`dropped` and hand a settlement back to the worker's recovery; a transaction mined again elsewhere is followed
to its new block.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from offchain import storage
from offchain.chain.finality import FinalityPolicy, Inclusion, TxState, Verdict
from offchain.clearing_center.finality import FinalityWatch
from offchain.clearing_center.store import CcStore

TX = "0x" + "ab" * 32
RAW = b"\x02signed-bytes-of-the-settlement"


class ScriptedTracker:
    """Answers `check` from a script of verdicts (the last one repeats) and records what it was asked."""

    def __init__(self, verdicts: list[Verdict]) -> None:
        self.verdicts = verdicts
        self.asked: list[tuple[str, Inclusion | None]] = []
        self.policy = FinalityPolicy.clique(4)

    def check(self, tx_hash: str, recorded: Inclusion | None = None) -> Verdict:
        self.asked.append((tx_hash, recorded))
        return self.verdicts.pop(0) if len(self.verdicts) > 1 else self.verdicts[0]


class RecordingEth:
    def __init__(self, refuse: str | None = None) -> None:
        self.sent: list[bytes] = []
        self.refuse = refuse

    def send_raw_transaction(self, raw: bytes) -> bytes:
        if self.refuse:
            raise ValueError({"code": -32000, "message": self.refuse})
        self.sent.append(bytes(raw))
        return bytes.fromhex(TX[2:])

    def get_transaction(self, tx_hash: str) -> Any:
        from web3.exceptions import TransactionNotFound

        raise TransactionNotFound(tx_hash)


class RecordingWeb3:
    def __init__(self, refuse: str | None = None) -> None:
        self.eth = RecordingEth(refuse)
        self.provider = self

    def make_request(self, method: str, params: list[Any]) -> dict[str, Any]:
        return {"result": None}


def at(number: int, block_hash: str) -> Inclusion:
    return Inclusion(TX, number, block_hash)


@pytest.fixture()
def store(tmp_path: Path) -> Iterator[CcStore]:
    cc = CcStore(storage.make_engine(f"sqlite:///{tmp_path / 'cc.db'}"), lambda: 1_000)
    cc.create_schema()
    yield cc


def settlement(store: CcStore) -> int:
    outbox_id = store.create_settlement([], tx_hash=TX, nonce=7, raw_tx=RAW)
    store.update_settlement(outbox_id, "sent")
    store.update_settlement(outbox_id, "confirmed")
    return outbox_id


def test_included_until_the_depth_then_final_and_no_longer_checked(store: CcStore) -> None:
    settlement(store)
    tracker = ScriptedTracker([Verdict(TxState.INCLUDED, TX, at(10, "0x10"), depth=2),
                               Verdict(TxState.FINAL, TX, at(10, "0x10"), depth=6)])
    watch = FinalityWatch(store, RecordingWeb3(), tracker)  # type: ignore[arg-type]
    assert watch.tick() == {"included": 1}
    row = store.chain_tx(TX)
    assert row is not None and (row.state, row.block_number, row.block_hash, row.raw_tx) == ("included", 10, "0x10",
                                                                                          RAW)
    assert watch.is_final(TX) is True  # checked again now: the next verdict is final
    assert store.chain_tx(TX).state == "final"  # type: ignore[union-attr]
    asked = len(tracker.asked)
    assert watch.tick() == {} and len(tracker.asked) == asked  # final rows are not watched any more
    assert tracker.asked[-1] == (TX, at(10, "0x10"))  # checked against the recorded inclusion


def test_reorg_rebroadcasts_the_same_signed_bytes_once_then_follows_the_new_block(store: CcStore) -> None:
    settlement(store)
    w3 = RecordingWeb3()
    tracker = ScriptedTracker([Verdict(TxState.INCLUDED, TX, at(10, "0x10"), depth=1),
                               Verdict(TxState.REORGED, TX, at(10, "0x10")),
                               Verdict(TxState.INCLUDED, TX, at(12, "0x12"), depth=1)])
    watch = FinalityWatch(store, w3, tracker)  # type: ignore[arg-type]
    watch.tick()
    assert watch.tick() == {"pending": 1}
    assert w3.eth.sent == [RAW]  # the outbox's bytes, nothing newly signed
    row = store.chain_tx(TX)
    assert row is not None and (row.state, row.block_number, row.reorgs) == ("pending", None, 1)
    assert watch.tick() == {"included": 1}
    row = store.chain_tx(TX)
    assert row is not None and (row.state, row.block_number, row.block_hash) == ("included", 12, "0x12")
    assert w3.eth.sent == [RAW]  # once


def test_mined_again_elsewhere_is_followed_without_a_rebroadcast(store: CcStore) -> None:
    settlement(store)
    w3 = RecordingWeb3()
    tracker = ScriptedTracker([Verdict(TxState.INCLUDED, TX, at(10, "0x10"), depth=1),
                               Verdict(TxState.REORGED, TX, at(10, "0x10"), now_in=at(11, "0x11"))])
    watch = FinalityWatch(store, w3, tracker)  # type: ignore[arg-type]
    watch.tick()
    assert watch.tick() == {"included": 1}
    row = store.chain_tx(TX)
    assert row is not None and (row.block_number, row.block_hash, row.reorgs) == (11, "0x11", 1)
    assert w3.eth.sent == []


def test_bytes_that_can_no_longer_be_mined_hand_the_settlement_back_to_recovery(store: CcStore) -> None:
    outbox_id = settlement(store)
    tracker = ScriptedTracker([Verdict(TxState.INCLUDED, TX, at(10, "0x10"), depth=1),
                               Verdict(TxState.REORGED, TX, at(10, "0x10"))])
    watch = FinalityWatch(store, RecordingWeb3(refuse="nonce too low"), tracker)  # type: ignore[arg-type]
    watch.tick()
    assert store.unfinished_settlements() == []
    assert watch.tick() == {"dropped": 1}
    assert store.chain_tx(TX).state == "dropped"  # type: ignore[union-attr]
    assert [row.id for row in store.unfinished_settlements()] == [outbox_id]  # the worker re-derives it


def _issue_plan(store: CcStore, tx_hash: str) -> tuple[Any, Any]:
    from offchain.clearing_center.records import IssueLogRecord
    from offchain.clearing_center.tables import IssueRequestRow
    from offchain.core.types import user_id_hash

    device, serial = "0x" + "11" * 20, bytes([7]) * 32
    store.bind_device(device, "alice-phone", "alice")
    plan = store.plan_issue_request(IssueRequestRow(
        device=device, request_id="r-1", kind="issue", payload_hash=bytes(32), user_id="alice", serial=serial,
        previous_serial=None, new_money=0, carried=0, cap=0, old_cap=0, expires_at=2_000, mode="issue",
        status="planned", created_at=1_000))
    store.record_issue_tx(device, "r-1", tx_hash, 3, b"\x02issue-bytes")
    record = IssueLogRecord(serial=serial, revision=0, device=device, user_id_hash=user_id_hash("alice"), cap=0,
                            expires_at=2_000, previous_serial=None, carried=0, new_money=0, cc_signature=b"s",
                            issue_log_json={})
    return store.issue_request(device, "r-1") or plan, record


def test_each_transaction_is_followed_from_the_write_that_names_it(store: CcStore) -> None:
    """A confirmed settlement, a completed issue request and a mirrored transfer request are in cc_chain_txs the
    moment their row is written, before any tick: the tick then never needs the history."""
    settlement(store)
    issue_tx, transfer_tx = "0x" + "12" * 32, "0x" + "34" * 32
    plan, record = _issue_plan(store, issue_tx)
    store.complete_issue_request(plan, record, issue_tx, {"ok": True})
    store.mirror_transfer_requests([(bytes([5]) * 32, "0x" + "22" * 20, 40, transfer_tx),
                                    (bytes([6]) * 32, "0x" + "33" * 20, 60, transfer_tx)])
    rows = {tx: store.chain_tx(tx) for tx in (TX, issue_tx, transfer_tx)}
    assert {tx: (r.kind, r.ref, r.state, r.raw_tx) for tx, r in rows.items() if r is not None} == {
        TX: ("settlement", "1", "pending", RAW),
        issue_tx: ("issue", f"{'0x' + '11' * 20}:r-1", "pending", b"\x02issue-bytes"),
        transfer_tx: ("transfer_request", transfer_tx, "pending", None)}
    assert store.untracked_transactions() == []  # nothing left for the catch-up scan


def test_a_tick_scans_the_history_only_at_the_start_and_every_full_scan(store: CcStore,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A row written without tracking (an older version's) is caught by the first tick's scan or the periodic
    one; the ticks between read only what is not final."""
    from offchain.clearing_center import finality
    from offchain.clearing_center.tables import SettlementOutbox
    from offchain.storage.session import session_scope

    monkeypatch.setattr(finality, "FULL_SCAN_EVERY", 4)
    scans: list[int] = []
    scan = store.untracked_transactions
    monkeypatch.setattr(store, "untracked_transactions", lambda: scans.append(1) or scan())
    old_tx, later_tx = "0x" + "cd" * 32, "0x" + "ef" * 32

    def untracked_row(tx_hash: str) -> None:
        with session_scope(store.engine) as session:
            session.add(SettlementOutbox(status="confirmed", tx_hash=tx_hash, nonce=8, raw_tx=b"old", created_at=0,
                                         updated_at=0))

    untracked_row(old_tx)
    watch = FinalityWatch(store, RecordingWeb3(), ScriptedTracker([Verdict(TxState.PENDING, TX)]))  # type: ignore[arg-type]
    watch.tick()
    assert len(scans) == 1 and store.chain_tx(old_tx) is not None  # caught up at start
    untracked_row(later_tx)
    for _ in range(3):
        watch.tick()
    assert len(scans) == 1 and store.chain_tx(later_tx) is None  # ticks 1-3 read only the unfinal rows
    watch.tick()
    assert len(scans) == 2 and store.chain_tx(later_tx) is not None  # the periodic scan
