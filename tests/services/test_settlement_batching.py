"""Settlement batching by gas: the worker closes a `settle` transaction before the item whose estimated gas would
take it over the budget, so a big run of receive logs spreads over several transactions, each settled once.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from test_clearing_center import PRICE, CcWorld, make_world

from offchain.clearing_center.settlement import (
    GAS_PER_SETTLE_TX,
    SettlementWorker,
    estimated_item_gas,
    select_contiguous,
)

SERIAL = b"\x01" * 32


@pytest.fixture()
def world(chain_env: Any, tmp_path: Path) -> CcWorld:
    return make_world(chain_env, tmp_path)


def fake_row(first_seq: int, count: int, policies: int = 1, serial: bytes = SERIAL) -> Any:
    """The columns `select_contiguous` reads of a ReceiveLogRow."""
    return SimpleNamespace(id=serial + first_seq.to_bytes(8, "big"), serial=serial, first_seq=first_seq, count=count,
                           usage_batch_json={"policyIds": ["0x" + bytes([i]).hex() * 32 for i in range(policies)]})


def test_item_gas_grows_with_logs_and_distinct_policies() -> None:
    assert estimated_item_gas(512, 1) > estimated_item_gas(16, 1)
    assert estimated_item_gas(16, 4) > estimated_item_gas(16, 1)


def test_selection_closes_transaction_at_gas_budget() -> None:
    rows = [fake_row(seq, 100) for seq in range(0, 1000, 100)]
    budget = GAS_PER_SETTLE_TX + 3 * estimated_item_gas(100, 1) + 1
    selection = select_contiguous(rows, {SERIAL: 0}, max_items=64, gas_budget=budget)
    assert [r.first_seq for r in selection.to_send] == [0, 100, 200]


def test_selection_sends_item_over_budget_alone() -> None:
    rows = [fake_row(0, 5_000), fake_row(5_000, 1)]
    selection = select_contiguous(rows, {SERIAL: 0}, max_items=64, gas_budget=GAS_PER_SETTLE_TX + 1)
    assert [r.first_seq for r in selection.to_send] == [0]


def test_selection_without_budget_closes_at_item_count() -> None:
    rows = [fake_row(seq, 100) for seq in range(0, 1000, 100)]
    assert len(select_contiguous(rows, {SERIAL: 0}, max_items=4).to_send) == 4


def test_small_gas_budget_splits_run_and_settles_each_log_once(world: CcWorld) -> None:
    batches, logs_per_batch = 5, 2
    world.deposit("alice", 10_000)
    log, _ = world.issue("r1", amount=5_000)
    items = [world.receive_item(*world.batch(log.serial, logs_per_batch * i, logs_per_batch)) for i in range(batches)]
    accepted = world.receive(*items)["accepted"]
    assert len(accepted) == batches
    budget = GAS_PER_SETTLE_TX + 2 * estimated_item_gas(logs_per_batch, 1)  # two items per transaction
    chain = world.env.client("clearing_center")
    worker = SettlementWorker(world.store, chain, max_items=64, gas_budget=budget)

    assert worker.tick().settled == batches
    assert worker.tick().settled == 0  # nothing left, nothing sent twice

    events = chain.contract.events.UsageSettled().get_logs(from_block=world.env.deployment.deploy_block)
    assert sorted("0x" + bytes(e["args"]["receiveLogDigest"]).hex() for e in events) == sorted(accepted)
    per_tx: dict[bytes, int] = {}
    for event in events:
        per_tx[bytes(event["transactionHash"])] = per_tx.get(bytes(event["transactionHash"]), 0) + 1
    assert sorted(per_tx.values()) == [1, 2, 2]
    for tx_hash in per_tx:  # the model is an upper bound: no transaction used more than the budget
        assert world.env.w3.eth.get_transaction_receipt(tx_hash)["gasUsed"] <= budget
    on_chain = chain.issue_log(log.serial)
    assert (on_chain.next_seq, on_chain.spent) == (batches * logs_per_batch, batches * logs_per_batch * PRICE)
    assert world.store.settlement_counts() == {"settled": batches}


def test_selection_full_when_a_limit_leaves_a_contiguous_log() -> None:
    rows = [fake_row(seq, 100) for seq in range(0, 300, 100)]
    assert select_contiguous(rows, {SERIAL: 0}, max_items=2).full
    budget = GAS_PER_SETTLE_TX + 2 * estimated_item_gas(100, 1) + 1
    assert select_contiguous(rows, {SERIAL: 0}, max_items=64, gas_budget=budget).full
    assert not select_contiguous(rows, {SERIAL: 0}, max_items=64).full  # every contiguous log is in it
    gap = [fake_row(0, 100), fake_row(200, 100)]  # the second waits for seqs 100..199: no limit held it back
    assert not select_contiguous(gap, {SERIAL: 0}, max_items=64).full


class ArrivingWorker(SettlementWorker):
    """Admits `arrivals` (one per transaction sent) while the tick runs, as the CC's intake does concurrently."""

    def __init__(self, world: CcWorld, arrivals: list[Any], **kwargs: Any) -> None:
        super().__init__(world.store, world.env.client("clearing_center"), **kwargs)
        self.world, self.arrivals, self.sent = world, arrivals, 0

    def _send(self, items: list[Any], report: Any, gas: int | None = None) -> None:
        super()._send(items, report, gas)
        self.sent += 1
        if self.arrivals:
            assert len(self.world.receive(self.arrivals.pop(0))["accepted"]) == 1


def test_receive_logs_arriving_during_tick_share_next_tick_transaction(world: CcWorld) -> None:
    world.deposit("alice", 10_000)
    log, _ = world.issue("r1", amount=5_000)
    first, *later = [world.receive_item(*world.batch(log.serial, 2 * i, 2)) for i in range(4)]
    assert len(world.receive(first)["accepted"]) == 1
    worker = ArrivingWorker(world, list(later), max_items=64)

    assert worker.tick().settled == 1  # its transaction took every contiguous log: the tick ends
    assert (worker.sent, world.store.settlement_counts()) == (1, {"settled": 1, "accepted": 1})
    worker.arrivals = []
    answer = world.receive(*later[1:])
    assert len(answer["accepted"]) == 2, answer
    assert worker.tick().settled == 3  # the two that arrived since and the one before: one transaction
    assert worker.sent == 2 and world.env.client("clearing_center").issue_log(log.serial).next_seq == 8


def test_tick_continues_while_a_limit_leaves_logs_behind(world: CcWorld) -> None:
    world.deposit("alice", 10_000)
    log, _ = world.issue("r1", amount=5_000)
    items = [world.receive_item(*world.batch(log.serial, 2 * i, 2)) for i in range(3)]
    assert len(world.receive(*items)["accepted"]) == 3
    worker = ArrivingWorker(world, [], max_items=1)
    assert worker.tick().settled == 3 and worker.sent == 3  # each transaction was full: the tick went on
