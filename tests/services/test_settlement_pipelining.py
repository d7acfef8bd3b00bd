"""A settlement round bigger than one transaction's calldata goes as several `settle` transactions with
consecutive nonces, all in the pool before the first is mined, so one block carries them (on Clique a transaction
sent after a block lands waits two periods). The round is pre-checked as a whole; an offender in a later
transaction is parked and the rest settle. Runs the real worker against anvil with manual mining."""

from __future__ import annotations

from typing import Any

import pytest
from test_clearing_center import CcWorld, SimulatedCrash, manual_mining
from test_settlement_recovery_paths import (
    accept,
    bob_request_at,
    serial_rank,
    settled_digests,
    statuses,
    world,
)

from offchain.chain import ClearhouseChain
from offchain.clearing_center import settlement
from offchain.clearing_center.settlement import SettlementWorker
from offchain.core.messages import IssueLog

__all__ = ["world"]  # the fixture, imported for pytest


class MiningWorker(SettlementWorker):
    """Mines one block each time it waits for a receipt (anvil with automine off): transactions broadcast one
    at a time, each after the previous receipt, land in different blocks; pipelined ones share the first."""

    def _wait_receipt(self, tx_hash: str) -> Any:
        self.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
        return super()._wait_receipt(tx_hash)


@pytest.fixture()
def two_items_per_tx(world: CcWorld, monkeypatch: pytest.MonkeyPatch) -> IssueLog:
    """Calldata room for exactly two 2-log items per `settle` transaction; returns alice's issue log, whose
    first receive log (seqs 0..1) is accepted."""
    alice, _ = world.issue("probe", amount=1_000)
    probe = accept(world, alice, 0, 2)
    [row] = [r for r in world.store.accepted_receive_logs() if r.id == probe]
    encoded = world.env.client("clearing_center").contract.encode_abi(
        "settle", args=[[settlement.settlement_item(row)]])
    item_bytes = (len(encoded) - 2) // 2 - 4 - 64
    monkeypatch.setattr(settlement, "MAX_SETTLE_CALLDATA_BYTES", 4 + 64 + 2 * item_bytes + 1)
    return alice


def settle_blocks(world: CcWorld) -> dict[bytes, int]:
    """Settle transaction hash -> its block number."""
    events = world.env.client("clearing_center").contract.events.UsageSettled().get_logs(
        from_block=world.env.deployment.deploy_block)
    return {bytes(e["transactionHash"]): int(e["blockNumber"]) for e in events}


def test_round_over_one_transactions_calldata_goes_as_consecutive_txs_in_one_block(
        world: CcWorld, two_items_per_tx: IssueLog) -> None:
    alice = two_items_per_tx
    serial = alice.serial
    [probe] = world.store.accepted_receive_logs()
    log_ids = [probe.id] + [accept(world, alice, 2 * i, 2) for i in range(1, 5)]
    worker = MiningWorker(world.store, world.env.client("clearing_center"), max_items=64)

    with manual_mining(world.env.w3):
        report = worker.tick()

    assert report.settled == 5
    blocks = settle_blocks(world)
    assert len(blocks) == 3, blocks  # 2 + 2 + 1 items: the calldata bound cut the round in three
    assert len(set(blocks.values())) == 1, blocks  # all three in the first block mined
    assert sorted(settled_digests(world)) == sorted(log_ids)  # each receive log settled once
    assert world.env.client("clearing_center").issue_log(serial).next_seq == 10
    assert statuses(world) == dict.fromkeys(log_ids, "settled")
    assert worker.tick().settled == 0  # nothing left, nothing sent twice


def test_offender_in_a_later_transaction_is_parked_and_the_rest_settle(world: CcWorld,
                                                                        two_items_per_tx: IssueLog) -> None:
    [probe] = world.store.accepted_receive_logs()
    alice_serial = two_items_per_tx.serial
    assert serial_rank(world, "device", "probe") == alice_serial
    alice_ids = [probe.id] + [accept(world, two_items_per_tx, 2 * i, 2) for i in (1, 2)]
    bob, _ = world.issue(bob_request_at(world, [alice_serial], 1), user_id="bob", amount=1_000, device="device2")
    offender = accept(world, bob, 0, 2, device="device2")
    order = [row.id for row in world.store.accepted_receive_logs()]
    assert order == [*alice_ids, offender]  # chunks [a0, a1], [a2, bob]: the offender is in the second
    world.env.client("authority").revoke_member(world.peers["device2"].eth_address)

    report = MiningWorker(world.store, world.env.client("clearing_center"), max_items=64).tick()

    assert list(report.rejected) == ["0x" + offender.hex()]
    assert report.rejected["0x" + offender.hex()].startswith("NotActiveMember(")
    assert report.settled == 3 and sorted(settled_digests(world)) == sorted(alice_ids)
    assert statuses(world) == {**dict.fromkeys(alice_ids, "settled"), offender: "rejected"}
    assert world.env.client("clearing_center").issue_log(alice_serial).next_seq == 6


class DiesBeforeReceipts(SettlementWorker):
    """Broadcasts the whole round, then dies before reading any receipt (the outbox rows stay `sent`)."""

    def _wait_receipt(self, tx_hash: str) -> Any:
        raise SimulatedCrash()


def test_first_transaction_of_a_round_forgotten_is_sent_again_so_the_later_one_is_not_stuck(
        world: CcWorld, two_items_per_tx: IssueLog) -> None:
    """The node forgets the round's first transaction but keeps the second (its nonce now waits on a gap).
    Re-queuing the first one's logs would leave the second in the pool for ever and every later tick waiting on
    it: recovery sends the first one's signed bytes again, and both land once."""
    [probe] = world.store.accepted_receive_logs()
    log_ids = [probe.id] + [accept(world, two_items_per_tx, 2 * i, 2) for i in (1, 2)]
    chain = world.env.client("clearing_center")
    w3 = world.env.w3
    with manual_mining(w3):
        with pytest.raises(SimulatedCrash):
            DiesBeforeReceipts(world.store, chain, max_items=64).tick()
        first, second = world.store.unfinished_settlements()
        assert first.nonce is not None and second.nonce == first.nonce + 1
        for row in (first, second):  # anvil drops a transaction's dependents with it: the second comes back
            w3.provider.make_request("anvil_dropTransaction", [row.tx_hash])  # type: ignore[arg-type]
        w3.eth.send_raw_transaction(second.raw_tx)
        pool = w3.provider.make_request("txpool_content", [])["result"]  # type: ignore[arg-type]
        held = [tx["hash"] for kind in ("pending", "queued") for txs in pool[kind].values() for tx in txs.values()]
        assert held == [second.tx_hash], pool  # the second waits on the first's nonce

        restarted = ClearhouseChain(w3, world.env.deployment, world.env.actors["clearing_center"].key)  # no memory
        recovering = SettlementWorker(world.store, restarted, max_items=64)
        assert recovering.recover() == {first.id: "in_mempool", second.id: "in_mempool"}
    report = recovering.tick()  # mined on leaving manual mining: both confirmed from their receipts
    assert report.recovered == {first.id: "confirmed", second.id: "confirmed"}
    assert sorted(settled_digests(world)) == sorted(log_ids)  # each receive log settled once
    assert chain.issue_log(two_items_per_tx.serial).next_seq == 6
    assert statuses(world) == dict.fromkeys(log_ids, "settled")
