"""One item never stops settlement (issue 9, item 1): a batch that no block can carry, or that the node refuses,
is parked with its reason, and every other device's usage settles in the same tick; only a node that does not
answer at all stops a round. Runs the real CC agent and settlement worker against anvil."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from test_clearing_center import PRICE, CcWorld, make_world

from offchain.clearing_center.agent import ClearingCenter
from offchain.clearing_center.settlement import SettlementWorker, select_contiguous
from offchain.core import messages
from offchain.core.errors import ChainUnreachable
from offchain.core.gas import GAS_PER_SETTLE_TX, estimated_item_gas, max_batch_logs
from offchain.core.messages import UsageBatch, UsageLog

OVERSIZED = 40_000  # usage logs over two policies: within the 65,535 entries of a batch, over a 30M-gas block


@pytest.fixture()
def world(chain_env: Any, tmp_path: Path) -> CcWorld:
    return make_world(chain_env, tmp_path)


def second_policy(world: CcWorld) -> bytes:
    content_id = messages.keccak(b"content:second-song")
    world.env.client("content_provider").register_policy(
        content_id, 1, PRICE, [(world.env.actors["content_provider"].address, 10_000)], bytes(32))
    return messages.policy_id(content_id, 1)


def two_policy_batch(world: CcWorld, serial: bytes, count: int, other: bytes) -> tuple[UsageBatch, bytes]:
    now = int(time.time())
    logs = [UsageLog(serial=serial, seq=i, policy_id=(world.policy_id, other)[i % 2], fee=PRICE,
                     receiver=world.peers["provider"].eth_address, used_at=now) for i in range(count)]
    batch = UsageBatch.from_logs(logs)
    return batch, messages.sign(batch, world.domain, world.env.actors["device"].key)


def settled_digests(world: CcWorld) -> set[str]:
    chain = world.env.client("clearing_center")
    events = chain.contract.events.UsageSettled().get_logs(from_block=world.env.deployment.deploy_block)
    return {"0x" + bytes(e["args"]["receiveLogDigest"]).hex() for e in events}


def oversized_and_honest(world: CcWorld) -> tuple[Any, Any, bytes, bytes]:
    """(attacker's item of OVERSIZED logs on `device`, bob's two-log item on `device2`, their serials)."""
    world.deposit("alice", OVERSIZED * PRICE)
    world.deposit("bob", 1_000, tag="d2")
    attacker_log, _ = world.issue("r-attacker", amount=OVERSIZED * PRICE)
    honest_log, _ = world.issue("r-honest", user_id="bob", device="device2", amount=1_000)
    oversized = world.receive_item(*two_policy_batch(world, attacker_log.serial, OVERSIZED, second_policy(world)))
    honest = world.receive_item(*world.batch(honest_log.serial, 0, 2, device="device2"), device="device2")
    return oversized, honest, attacker_log.serial, honest_log.serial


def test_cc_refuses_batch_one_settle_cannot_carry_other_device_accepted(world: CcWorld) -> None:
    oversized, honest, _, _ = oversized_and_honest(world)
    answer = world.receive(oversized, honest)
    [refused] = answer["rejected"]
    assert (refused["index"], refused["error"]) == (0, "batch_too_large")
    assert refused["fields"]["count"] == OVERSIZED and refused["fields"]["maximum"] == max_batch_logs(2)
    assert len(answer["accepted"]) == 1  # bob's item in the same request is accepted


def test_batch_no_block_can_carry_parked_other_device_settles_same_tick(world: CcWorld) -> None:
    oversized, honest, attacker_serial, honest_serial = oversized_and_honest(world)
    chain = world.env.client("clearing_center")
    lenient = ClearingCenter(world.store, chain, world.verifier(), world.env.actors["clearing_center"].key,
                             world.creds["clearing_center"].cert_pem, issue_expiry_s=3600,
                             settle_gas_budget=40_000_000)  # accepted before the bound (or misconfigured)
    accepted = lenient.receive_logs([oversized, honest], world.peers["provider"])["accepted"]
    assert len(accepted) == 2
    worker = SettlementWorker(world.store, world.env.client("clearing_center"), max_items=64)

    report = worker.tick()

    assert report.settled == 1
    [(parked_id, reason)] = report.rejected.items()
    assert parked_id == accepted[0] and reason.startswith("CallRefused(")
    assert settled_digests(world) == {accepted[1]}  # the other device's usage settled in the same tick
    on_chain = chain.issue_log(honest_serial)
    assert (on_chain.next_seq, on_chain.spent) == (2, 2 * PRICE)
    assert chain.issue_log(attacker_serial).next_seq == 0
    assert worker.tick().settled == 0 and not worker.tick().rejected  # parked for good: no retry loop


def test_unreachable_node_stops_round_nothing_parked(world: CcWorld, tmp_path: Path) -> None:
    from web3 import Web3

    from offchain.chain import ClearhouseChain

    world.deposit("alice", 1_000)
    log, _ = world.issue("r1", amount=1_000)
    accepted = world.receive(world.receive_item(*world.batch(log.serial, 0, 2)))["accepted"]
    dead = Web3(Web3.HTTPProvider("http://127.0.0.1:9", request_kwargs={"timeout": 2}))  # nothing listens on 9
    offline = ClearhouseChain(dead, world.env.deployment, world.env.actors["clearing_center"].key)
    with pytest.raises(ChainUnreachable):
        SettlementWorker(world.store, offline, max_items=64).tick()
    assert world.store.settlement_counts() == {"accepted": 1}  # nothing parked for the node's fault
    assert SettlementWorker(world.store, world.env.client("clearing_center"), max_items=64).tick().settled == 1
    assert settled_digests(world) == set(accepted)


def _row(serial: bytes, first_seq: int, count: int) -> Any:
    from types import SimpleNamespace

    return SimpleNamespace(id=serial + first_seq.to_bytes(8, "big"), serial=serial, first_seq=first_seq,
                           count=count, usage_batch_json={"policyIds": ["0x" + "11" * 32]})


def test_selection_over_budget_item_of_one_serial_does_not_hold_back_other_serials() -> None:
    first, second = b"\x00" * 32, b"\xff" * 32  # the attacker picks a serial that sorts first
    rows = [_row(first, 0, 10), _row(first, 10, 10_000), _row(first, 10_010, 1), _row(second, 0, 10)]
    budget = GAS_PER_SETTLE_TX + 2 * estimated_item_gas(10, 1)
    selection = select_contiguous(rows, {first: 0, second: 0}, max_items=64, gas_budget=budget)
    assert [(r.serial, r.first_seq) for r in selection.to_send] == [(first, 0), (second, 0)]
