"""Exactly once under faults: the causes a seeded fault run (`clearhouse sim`) found, each reproduced
deterministically (crash states built directly, anvil with automine off, nonces taken from the chain).

Built on the CC test world of test_clearing_center.py (same chain, CA and actors).
"""

from __future__ import annotations

import pytest
from test_clearing_center import PRICE, USERS, CcWorld, SimulatedCrash, crash_before_receipt, make_world, manual_mining

from offchain.chain import SettlementItem
from offchain.clearing_center.agent import RenewBody
from offchain.clearing_center.settlement import SettlementWorker
from offchain.clearing_center.store import CcStore
from offchain.core.errors import NotFound
from offchain.core.messages import Role, UsageBatch, keccak
from offchain.core.types import user_id_hash
from offchain.trust.certs import Envelope


ALICE = USERS["device"]  # the user the CA names in the `device` certificate (and the chain binds it to)


@pytest.fixture()
def world(chain_env, tmp_path) -> CcWorld:  # noqa: ANN001 - fixtures of tests/conftest.py
    made = make_world(chain_env, tmp_path)
    yield made
    made.store.engine.dispose()


def settle_behind_the_stores_back(world: CcWorld, receive_log_id: str) -> None:
    """The state a CC killed right after broadcasting leaves: outbox row pending, log submitted, tx mined."""
    store: CcStore = world.store
    row = store.receive_log(bytes.fromhex(receive_log_id[2:]))
    assert row is not None and row.status == "accepted"
    batch = UsageBatch.from_json(row.usage_batch_json)
    chain = world.env.client("clearing_center")
    receipt = chain.settle([SettlementItem(batch, row.device_sig, row.received_at, row.receiver_sig)])
    store.create_settlement([row.id], tx_hash="0x" + bytes(receipt["transactionHash"]).hex(), nonce=0, raw_tx=b"")
    assert store.receive_log(row.id).status == "submitted"


# --- 1. in-flight amount counted twice after a new-serial renewal ----------------------------------------------------
def test_usage_within_frozen_cap_accepted_while_earlier_settlement_mined_but_unrecorded(world: CcWorld) -> None:
    world.deposit(ALICE, 1_000)
    log, _ = world.issue("r1", user_id=ALICE, amount=500)
    first = world.receive_item(*world.batch(log.serial, 0, 2))
    [first_id] = world.receive(first)["accepted"]
    settle_behind_the_stores_back(world, first_id)  # spent 50 on chain, the CC still holds the log as submitted
    body = RenewBody(request_id="n1", statement=world.statement(log.serial, 4, 4 * PRICE), amount=100)
    answer = world.cc.renew(body, world.peers["device"])
    assert answer["mode"] == "new_serial"
    chain = world.env.client("clearing_center")
    assert chain.issue_log(log.serial).cap == 4 * PRICE  # frozen at the attested spent: 50 settled + 50 in flight
    second = world.receive_item(*world.batch(log.serial, 2, 2))
    assert len(world.receive(second)["accepted"]) == 1  # 50 settled + 50 new = the frozen cap: accepted
    report = SettlementWorker(world.store, chain).tick()
    assert report.rejected == {}
    old = chain.issue_log(log.serial)
    assert (old.spent, old.next_seq) == (4 * PRICE, 4)
    assert world.store.settlement_counts() == {"settled": 2}
    renewed, _ = Envelope.from_json(answer["issue_log"]).open(world.verifier(), world.domain, Role.CLEARING_CENTER)
    assert renewed.cap == 100 + 500 - 4 * PRICE


# --- 3. the result of an attested renewal can be fetched by its serial -----------------------------------------------
def test_renewal_result_fetched_by_the_attested_serial(world: CcWorld) -> None:
    world.deposit(ALICE, 1_000)
    log, _ = world.issue("r1", user_id=ALICE, amount=500)
    with pytest.raises(NotFound):  # positive control: nothing renewed yet
        world.cc.renewal_result(log.serial, world.peers["device"])
    body = RenewBody(request_id="n1", statement=world.statement(log.serial, 2, 2 * PRICE), amount=100)
    answer = world.cc.renew(body, world.peers["device"])  # applied; suppose the answer was lost
    assert world.cc.renewal_result(log.serial, world.peers["device"]) == answer
    with pytest.raises(NotFound):  # another device never reads this device's renewals
        world.cc.renewal_result(log.serial, world.peers["device2"])


def crash_before_signing(*_args: object, **_kwargs: object) -> str:
    raise SimulatedCrash()


# --- 4. plans left open by a crash are resolved from the chain ---------------------------------------------------------
def test_plan_never_signed_is_dropped_and_releases_its_reservation(world: CcWorld,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    world.deposit(ALICE, 1_000)
    with monkeypatch.context() as patch:  # killed between planning and signing: nothing reached the chain
        patch.setattr(world.cc.chain, "send_via_outbox", crash_before_signing)
        with pytest.raises(SimulatedCrash):
            world.issue("r1", user_id=ALICE, amount=400)
    assert world.store.reserved(ALICE) == 400
    assert world.cc.resolve_open_plans() == {"r1": "dropped: no transaction was signed"}
    assert world.store.reserved(ALICE) == 0 and world.store.issue_request(world.peers["device"].eth_address,
                                                                            "r1") is None
    funds = world.env.client("clearing_center").user_funds(user_id_hash(ALICE))
    assert world.store.balance(ALICE).available == funds.deposited - funds.allocated == 1_000


def test_plan_mined_before_the_crash_is_completed(world: CcWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    world.deposit(ALICE, 1_000)
    with monkeypatch.context() as patch:  # broadcast and mined, killed before recording the receipt
        patch.setattr(world.cc, "_wait_receipt", crash_before_receipt)
        with pytest.raises(SimulatedCrash):
            world.issue("r1", user_id=ALICE, amount=400)
    plan = world.store.issue_request(world.peers["device"].eth_address, "r1")
    assert plan is not None and plan.status == "planned"
    assert world.cc.resolve_open_plans() == {"r1": "completed"}
    funds = world.env.client("clearing_center").user_funds(user_id_hash(ALICE))
    assert world.store.balance(ALICE).available == funds.deposited - funds.allocated == 600
    assert world.store.reserved(ALICE) == 0
    retried, _answer = world.issue("r1", user_id=ALICE, amount=400)  # the device's identical retry: the original result
    assert retried.serial == plan.serial and retried.cap == 400
    assert world.cc.resolve_open_plans() == {}


def test_plan_forgotten_by_the_node_is_rebroadcast_then_completed(world: CcWorld,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    world.deposit(ALICE, 1_000)
    w3 = world.env.w3
    with manual_mining(w3):
        with monkeypatch.context() as patch:
            patch.setattr(world.cc, "_wait_receipt", crash_before_receipt)
            with pytest.raises(SimulatedCrash):
                world.issue("r1", user_id=ALICE, amount=400)
        plan = world.store.issue_request(world.peers["device"].eth_address, "r1")
        assert world.cc.resolve_open_plans() == {"r1": "pending"}  # in the mempool: left alone
        w3.provider.make_request("anvil_dropTransaction", [plan.tx_hash])  # a node restart loses its mempool
        assert world.cc.resolve_open_plans() == {"r1": "rebroadcast"}
    assert world.cc.resolve_open_plans() == {"r1": "completed"}
    assert world.env.client("clearing_center").issue_log(plan.serial).cap == 400


# --- 5. a nonce gap after the node forgot a transaction ----------------------------------------------------------------
def test_send_after_the_node_forgot_an_earlier_transaction_fills_the_gap(world: CcWorld) -> None:
    from offchain.chain import ClearhouseChain

    env = world.env
    bank = ClearhouseChain(env.w3, env.deployment, env.actors["bank"].key, receipt_timeout_s=5.0)
    recorded: dict[str, bytes] = {}
    with manual_mining(env.w3):
        first = bank.send_via_outbox("recordDeposit", keccak(b"gap-1"), user_id_hash(ALICE), 100, keccak(b"r1"),
                                     record=lambda tx_hash, nonce, raw: recorded.update(raw=raw))
        env.w3.provider.make_request("anvil_dropTransaction", [first])  # the node restarted: its mempool is gone
    receipt = bank.record_deposit(keccak(b"gap-2"), user_id_hash(ALICE), 200, keccak(b"r2"))  # nonce + 1
    assert receipt["status"] == 1
    assert env.w3.eth.get_transaction_receipt(first)["status"] == 1  # re-broadcast from the client's outbox
    funds = env.client("clearing_center").user_funds(user_id_hash(ALICE))
    assert funds.deposited == 300
