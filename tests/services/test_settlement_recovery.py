"""SIGKILL recovery of the settlement worker: the worker runs as `python -m offchain.clearing_center.settlement --once` in a
subprocess, dies by SIGKILL at a crash point (CLEARHOUSE_CRASH_AT), and a restart must settle every receive log
exactly once, lose none, and leave the CC database equal to the chain.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from test_clearing_center import PRICE, CcWorld, make_world

from offchain.clearing_center.tables import SettlementOutbox
from offchain.storage import session_scope
from offchain.clearing_center.settlement import CRASH_ENV, SettlementWorker

ROOT = Path(__file__).resolve().parents[2]
BATCHES = 5  # receive logs of 2 usage logs each; max 2 items per transaction -> 3 transactions
MAX_ITEMS = 2


@pytest.fixture()
def world(chain_env: Any, tmp_path: Path) -> CcWorld:
    return make_world(chain_env, tmp_path)


def accept_usage(world: CcWorld) -> tuple[bytes, list[str]]:
    world.deposit("alice", 10_000)
    log, _ = world.issue("r1", amount=5_000)
    items = [world.receive_item(*world.batch(log.serial, 2 * i, 2)) for i in range(BATCHES)]
    accepted = world.receive(*items)["accepted"]
    assert len(accepted) == BATCHES
    return log.serial, accepted


def run_worker(world: CcWorld, crash_at: str | None) -> subprocess.CompletedProcess[bytes]:
    deployment_path = world.env.deployment.write(world.tmp / "deployment.json")
    config = world.tmp / "cc.json"
    config.write_text(json.dumps({
        "member_id": "clearing_center", "eth_private_key": "0x" + world.env.actors["clearing_center"].key.hex(),
        "rpc_url": str(world.env.w3.provider.endpoint_uri), "deployment_path": str(deployment_path),
        "database_url": f"sqlite:///{world.tmp}/cc.db", "settle_batch_max_items": MAX_ITEMS}))
    env = {k: v for k, v in os.environ.items() if k != CRASH_ENV}
    if crash_at is not None:
        env[CRASH_ENV] = crash_at
    return subprocess.run([sys.executable, "-m", "offchain.clearing_center.settlement", "--config", str(config), "--once"],
                          cwd=ROOT, env=env, capture_output=True, timeout=120)


def outbox_rows(world: CcWorld) -> list[SettlementOutbox]:
    with session_scope(world.store.engine) as session:
        return list(session.scalars(select(SettlementOutbox).order_by(SettlementOutbox.id)))


def assert_chain_equals_database(world: CcWorld, serial: bytes, accepted: list[str]) -> None:
    """Every receive log settled exactly once on chain, and the CC database says exactly that."""
    chain = world.env.client("clearing_center")
    events = chain.contract.events.UsageSettled().get_logs(from_block=world.env.deployment.deploy_block)
    digests = ["0x" + bytes(e["args"]["receiveLogDigest"]).hex() for e in events]
    assert sorted(digests) == sorted(accepted)  # nothing lost, nothing settled twice
    on_chain = chain.issue_log(serial)
    assert (on_chain.next_seq, on_chain.spent) == (2 * BATCHES, 2 * BATCHES * PRICE)
    assert world.store.settlement_counts() == {"settled": BATCHES}
    confirmed = {row.tx_hash for row in outbox_rows(world) if row.status == "confirmed"}
    assert confirmed == {"0x" + bytes(e["transactionHash"]).hex() for e in events}


def test_sigkill_after_broadcast_recovers_from_receipt(world: CcWorld) -> None:
    serial, accepted = accept_usage(world)
    crashed = run_worker(world, "after_broadcast")
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr.decode()[-2000:]
    [row] = outbox_rows(world)
    assert row.status == "pending" and row.tx_hash and row.raw_tx  # written before the broadcast, then killed
    assert world.env.w3.eth.get_transaction_receipt(row.tx_hash)["status"] == 1  # ...but the chain has it

    restarted = run_worker(world, None)
    assert restarted.returncode == 0, restarted.stderr.decode()[-2000:]
    assert outbox_rows(world)[0].status == "confirmed"  # recovered from the receipt, not re-sent
    assert_chain_equals_database(world, serial, accepted)


def test_sigkill_before_broadcast_requeues_from_chain_state(world: CcWorld) -> None:
    serial, accepted = accept_usage(world)
    crashed = run_worker(world, "before_broadcast")
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr.decode()[-2000:]
    [row] = outbox_rows(world)
    assert row.status == "pending" and world.env.client("clearing_center").issue_log(serial).next_seq == 0

    restarted = run_worker(world, None)
    assert restarted.returncode == 0, restarted.stderr.decode()[-2000:]
    first = outbox_rows(world)[0]
    assert first.status == "failed" and "unknown to the chain" in (first.error or "")
    assert_chain_equals_database(world, serial, accepted)


def test_unknown_transaction_whose_logs_settled_is_marked_settled_not_resent(world: CcWorld) -> None:
    """The outbox row's transaction is unknown, but the chain's nextSeq shows its logs settled: mark, never resend."""
    serial, accepted = accept_usage(world)
    worker = SettlementWorker(world.store, world.env.client("clearing_center"), max_items=MAX_ITEMS)
    assert worker.tick().settled == BATCHES
    with session_scope(world.store.engine) as session:  # an interrupted twin: same logs, hash the node never saw
        twin = session.scalars(select(SettlementOutbox)).first()
        twin.status, twin.tx_hash = "sent", "0x" + "ab" * 32
    with session_scope(world.store.engine) as session:
        from offchain.clearing_center.tables import ReceiveLogRow

        for row in session.scalars(select(ReceiveLogRow).where(ReceiveLogRow.settlement_id == twin.id)):
            row.status = "submitted"
    outcome = worker.recover()
    assert outcome == {twin.id: f"unknown: {MAX_ITEMS} settled on chain, 0 re-queued"}
    assert worker.tick().settled == 0
    chain = world.env.client("clearing_center")
    events = chain.contract.events.UsageSettled().get_logs(from_block=world.env.deployment.deploy_block)
    assert sorted("0x" + bytes(e["args"]["receiveLogDigest"]).hex() for e in events) == sorted(accepted)
    assert world.store.settlement_counts() == {"settled": BATCHES}
