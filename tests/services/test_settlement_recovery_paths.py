"""The settlement worker's recovery and selection paths that only a crash or a hostile batch reaches: an outbox
transaction that reverted in its block, one still in the mempool, a row with no signed transaction, a receive
log that another transaction partly settled (overlap), and the bisection when the offender is not the last item.

The real CC agent accepts real signed receive logs on anvil; the worker is the real `SettlementWorker`. A worker
killed after broadcasting is reproduced by doing what `_send` does up to the broadcast (`create_settlement` in the
outbox `record` callback of `send_via_outbox`) and never waiting for the receipt.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from test_clearing_center import CcWorld, make_world, manual_mining

from offchain.chain.codec import SettlementItem
from offchain.clearing_center.agent import derive_serial
from offchain.clearing_center.settlement import SettlementWorker, settlement_item
from offchain.clearing_center.tables import ReceiveLogRow, SettlementOutbox
from offchain.core import messages
from offchain.core.messages import IssueLog, ReceiveLog
from offchain.core.types import from_hex
from offchain.storage import session_scope


@pytest.fixture()
def world(chain_env: Any, tmp_path: Path) -> CcWorld:
    made = make_world(chain_env, tmp_path)
    made.deposit("alice", 10_000)
    made.deposit("bob", 10_000, tag="d2")
    return made


def accept(world: CcWorld, log: IssueLog, first_seq: int, count: int, device: str = "device") -> bytes:
    answer = world.receive(world.receive_item(*world.batch(log.serial, first_seq, count, device=device),
                                              device=device))
    [accepted] = answer["accepted"]
    return from_hex(accepted, "id")


def worker(world: CcWorld, **options: Any) -> SettlementWorker:
    return SettlementWorker(world.store, world.env.client("clearing_center"), **options)


def broadcast_and_die(world: CcWorld, log_ids: list[bytes], *, gas: int | None = None) -> tuple[int, str]:
    """A worker's send up to the broadcast: outbox row written with the signed tx, then broadcast; the worker
    dies before the receipt. Returns (outbox id, tx hash)."""
    rows = {row.id: row for row in world.store.accepted_receive_logs()}
    outbox: dict[str, int] = {}

    def record(tx_hash: str, nonce: int, raw_tx: bytes) -> None:
        outbox["id"] = world.store.create_settlement(log_ids, tx_hash=tx_hash, nonce=nonce, raw_tx=raw_tx)

    tx_hash = world.env.client("clearing_center").send_via_outbox(
        "settle", [settlement_item(rows[i]) for i in log_ids], record=record, gas=gas)
    return outbox["id"], tx_hash


def outbox_row(world: CcWorld, outbox_id: int) -> SettlementOutbox:
    with session_scope(world.store.engine) as session:
        row = session.get(SettlementOutbox, outbox_id)
        assert row is not None
        return row


def statuses(world: CcWorld) -> dict[bytes, str]:
    with session_scope(world.store.engine) as session:
        return {row.id: row.status for row in session.scalars(select(ReceiveLogRow))}


def settled_digests(world: CcWorld) -> list[bytes]:
    events = world.env.client("clearing_center").contract.events.UsageSettled().get_logs(
        from_block=world.env.deployment.deploy_block)
    return [bytes(e["args"]["receiveLogDigest"]) for e in events]


# --- recovery -----------------------------------------------------------------------------------------------------
def test_recovery_of_a_transaction_reverted_in_its_block_requeues_then_parks_the_offender(world: CcWorld) -> None:
    """Pre-checked fine, then bob's device was revoked before the block: the mined settle reverted. Recovery reads
    the receipt (no guess), puts the logs back, and the next round's pre-check parks the offender."""
    alice, _ = world.issue("a", amount=1_000)
    bob, _ = world.issue("b", user_id="bob", amount=1_000, device="device2")
    good, bad = accept(world, alice, 0, 2), accept(world, bob, 0, 2, device="device2")
    world.env.client("authority").revoke_member(world.peers["device2"].eth_address)
    outbox_id, tx_hash = broadcast_and_die(world, [bad], gas=2_000_000)  # fixed gas: nothing pre-checks it
    receipt = world.env.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30, poll_latency=0.01)
    assert receipt["status"] == 0
    assert statuses(world)[bad] == "submitted"

    recovering = worker(world)
    assert recovering.recover() == {outbox_id: "reverted"}
    row = outbox_row(world, outbox_id)
    assert (row.status, row.error) == ("failed", f"reverted in block {receipt['blockNumber']}")
    assert statuses(world) == {good: "accepted", bad: "accepted"}  # back in the queue, not settled, not lost

    report = recovering.tick()
    assert report.settled == 1 and list(report.rejected) == ["0x" + bad.hex()]
    assert report.rejected["0x" + bad.hex()].startswith("NotActiveMember(")
    assert statuses(world) == {good: "settled", bad: "rejected"}
    assert settled_digests(world) == [good]


def test_recovery_leaves_a_transaction_still_in_the_mempool_and_builds_nothing_on_it(world: CcWorld) -> None:
    alice, _ = world.issue("a", amount=1_000)
    bob, _ = world.issue("b", user_id="bob", amount=1_000, device="device2")
    first = accept(world, alice, 0, 2)
    with manual_mining(world.env.w3):
        outbox_id, tx_hash = broadcast_and_die(world, [first])
        later = accept(world, bob, 0, 2, device="device2")  # arrives while the first settle is pending
        recovering = worker(world, receipt_timeout_s=5.0)  # a plant that sends anyway fails fast, never mined
        report = recovering.tick()
        assert report.recovered == {outbox_id: "in_mempool"} and report.settled == 0
        assert report.tx_hash is None  # nothing sent: never build on a transaction whose fate is open
        assert outbox_row(world, outbox_id).status == "pending"  # untouched until the chain decides
        assert statuses(world) == {first: "submitted", later: "accepted"}
        pending = world.env.w3.provider.make_request("txpool_content", [])["result"]["pending"]
        assert [tx["hash"] for txs in pending.values() for tx in txs.values()] == [tx_hash]
    report = recovering.tick()  # mined now: confirmed from its receipt, then the later log goes
    assert report.recovered == {outbox_id: "confirmed"} and report.settled == 1
    assert statuses(world) == {first: "settled", later: "settled"}
    assert sorted(settled_digests(world)) == sorted([first, later])  # each once


def test_recovery_of_a_row_with_no_signed_transaction_requeues_its_logs(world: CcWorld) -> None:
    """An outbox row that never got a transaction (the schema allows it: a row opened before signing) cannot
    have reached the chain: its logs go back to `accepted`, judged by the chain's nextSeq, and settle once."""
    alice, _ = world.issue("a", amount=1_000)
    log_id = accept(world, alice, 0, 2)
    outbox_id = world.store.create_settlement([log_id], tx_hash=None, nonce=None, raw_tx=None)  # type: ignore[arg-type]
    recovering = worker(world)
    assert recovering.recover() == {outbox_id: "unknown: 0 settled on chain, 1 re-queued"}
    row = outbox_row(world, outbox_id)
    assert row.status == "failed" and (row.error or "").startswith("no transaction was signed")
    assert statuses(world) == {log_id: "accepted"}
    assert recovering.tick().settled == 1
    assert settled_digests(world) == [log_id] and statuses(world) == {log_id: "settled"}


# --- selection ----------------------------------------------------------------------------------------------------
def settle_directly(world: CcWorld, log: IssueLog, first_seq: int, count: int) -> bytes:
    """Another transaction of the CC key (another CC process, a tool) settles a batch this CC never held."""
    batch, device_sig = world.batch(log.serial, first_seq, count)
    received_at = int(time.time()) - 7
    receive_log = ReceiveLog(usage_batch=batch.struct_hash(), payer=world.peers["device"].eth_address,
                             received_at=received_at)
    receiver_sig = messages.sign(receive_log, world.domain, world.env.actors["provider"].key)
    world.env.client("clearing_center").settle([SettlementItem(batch, device_sig, received_at, receiver_sig)])
    return receive_log.id(world.domain)


def test_receive_log_partly_settled_by_another_transaction_is_rejected_as_overlap(world: CcWorld) -> None:
    alice, _ = world.issue("a", amount=1_000)
    bob, _ = world.issue("b", user_id="bob", amount=1_000, device="device2")
    overlapping = accept(world, alice, 0, 4)
    control = accept(world, bob, 0, 2, device="device2")
    foreign = settle_directly(world, alice, 0, 2)  # the chain's cursor is now 2: inside the held 0..3
    assert world.env.client("clearing_center").issue_log(alice.serial).next_seq == 2

    report = worker(world).tick()

    assert report.rejected == {"0x" + overlapping.hex(): "BatchReplayed(partially settled by another batch)"}
    assert report.settled == 1 and statuses(world) == {overlapping: "rejected", control: "settled"}
    assert settled_digests(world) == [foreign, control]
    assert world.env.client("clearing_center").issue_log(alice.serial).next_seq == 2  # nothing applied twice


def serial_rank(world: CcWorld, device: str, request_id: str) -> bytes:
    return derive_serial(world.peers[device].eth_address, "issue", request_id)


def bob_request_at(world: CcWorld, alice_serials: list[bytes], position: int) -> str:
    """A request id whose serial sorts at `position` among alice's sorted serials (settlement order)."""
    for i in range(10_000):
        candidate = f"b{i}"
        serial = serial_rank(world, "device2", candidate)
        if sum(s < serial for s in alice_serials) == position:
            return candidate
    raise AssertionError("no request id found")  # pragma: no cover - 10,000 tries at 1/4 odds


@pytest.mark.parametrize("position", [1, 2])
def test_bisection_parks_an_offender_that_is_not_last_and_settles_the_rest(world: CcWorld, position: int) -> None:
    """Four items in one round, bob's (revoked) at index 1 or 2: the bisection must name exactly that item, and
    the others (before and after it) settle in the same tick, in one transaction."""
    alice_ids = ["a0", "a1", "a2"]
    alice_serials = sorted(serial_rank(world, "device", r) for r in alice_ids)
    logs = [world.issue(r, amount=1_000)[0] for r in alice_ids]
    bob, _ = world.issue(bob_request_at(world, alice_serials, position), user_id="bob", amount=1_000,
                         device="device2")
    honest = [accept(world, log, 0, 2) for log in logs]
    offender = accept(world, bob, 0, 2, device="device2")
    order = [row.id for row in world.store.accepted_receive_logs()]
    assert order.index(offender) == position and len(order) == 4  # not last, not first
    world.env.client("authority").revoke_member(world.peers["device2"].eth_address)

    report = worker(world, max_items=64).tick()

    assert list(report.rejected) == ["0x" + offender.hex()]
    assert report.rejected["0x" + offender.hex()].startswith("NotActiveMember(")
    assert report.settled == 3 and sorted(settled_digests(world)) == sorted(honest)
    assert statuses(world) == {**{i: "settled" for i in honest}, offender: "rejected"}
    txs = {bytes(e["transactionHash"]) for e in world.env.client("clearing_center").contract.events
           .UsageSettled().get_logs(from_block=world.env.deployment.deploy_block)}
    assert len(txs) == 1  # the three honest items went together once the offender was parked
