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
