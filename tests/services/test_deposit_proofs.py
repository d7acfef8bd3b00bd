"""A deposit notice is credited only when its transaction proves it: the CC refuses a notice whose transaction is
unknown, failed, sent elsewhere, or carries no matching DepositRecorded event, and one that disagrees with the
event on any field.

Each test calls `ClearingCenter.credit_deposit` (what `POST /v1/deposits/notify` runs after mTLS) as the bank's
verified peer, against real transactions on anvil. A real deposit is credited first (the positive control), and
the refused notice leaves the user's balance as it was.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from test_clearing_center import CcWorld, make_world

from offchain.clearing_center.bodies import DepositNotice
from offchain.core import messages
from offchain.core.errors import DepositNotProven
from offchain.core.types import to_hex, user_id_hash


@pytest.fixture()
def world(chain_env: Any, tmp_path: Path) -> CcWorld:
    made = make_world(chain_env, tmp_path)
    made.deposit("alice", 1_000, tag="control")  # the control: a proven notice is credited
    assert made.store.balance("alice").deposited == 1_000
    return made


def notice_for(deposit_id: bytes, tx_hash: str, *, user_id: str = "alice", amount: int = 500,
               bank_ref: bytes = b"\x0b" * 32) -> DepositNotice:
    return DepositNotice(deposit_id=to_hex(deposit_id), user_id=user_id, amount=amount, bank_ref=to_hex(bank_ref),
                         tx_hash=tx_hash)


def recorded(world: CcWorld, deposit_id: bytes, *, user_id: str = "alice", amount: int = 500,
             bank_ref: bytes = b"\x0b" * 32) -> str:
    """The bank records a deposit on chain; returns its transaction hash."""
    receipt = world.env.client("bank").record_deposit(deposit_id, user_id_hash(user_id), amount, bank_ref)
    return to_hex(bytes(receipt["transactionHash"]))


def refused(world: CcWorld, notice: DepositNotice, peer: str = "bank") -> DepositNotProven:
    with pytest.raises(DepositNotProven) as info:
        world.cc.credit_deposit(notice, world.peers[peer])
    assert info.value.code == "deposit_not_proven" and info.value.http_status == 422
    assert world.store.balance("alice").deposited == 1_000  # nothing more credited
    assert world.store.balance("bob").deposited == 0
    return info.value


def test_deposit_refused_when_transaction_not_found(world: CcWorld) -> None:
    deposit_id, unknown_tx = messages.keccak(b"dep:ghost"), "0x" + "ab" * 32
    error = refused(world, notice_for(deposit_id, unknown_tx))
    assert error.fields == {"deposit_id": deposit_id, "tx_hash": unknown_tx, "reason": "unknown transaction"}


def test_deposit_refused_when_transaction_reverted(world: CcWorld) -> None:
    """A recordDeposit that was mined but reverted (a duplicate id, sent with fixed gas so nothing pre-checks it)."""
    deposit_id = messages.keccak(b"dep:dup")
    world.cc.credit_deposit(notice_for(deposit_id, recorded(world, deposit_id)), world.peers["bank"])  # once
    sent: dict[str, str] = {}
    world.env.client("bank").send_via_outbox(
        "recordDeposit", deposit_id, user_id_hash("alice"), 500, b"\x0b" * 32,
        record=lambda tx_hash, _nonce, _raw: sent.update(tx_hash=tx_hash), gas=300_000)
    receipt = world.env.w3.eth.wait_for_transaction_receipt(sent["tx_hash"], timeout=30, poll_latency=0.01)
    assert receipt["status"] == 0 and receipt["to"] == world.env.deployment.address
    with pytest.raises(DepositNotProven) as info:
        world.cc.credit_deposit(notice_for(messages.keccak(b"dep:other"), sent["tx_hash"]), world.peers["bank"])
    assert info.value.fields == {"deposit_id": messages.keccak(b"dep:other"), "tx_hash": sent["tx_hash"],
                                 "reason": "failed or foreign transaction"}
    assert world.store.balance("alice").deposited == 1_500  # the control and the one real deposit, nothing more


def test_deposit_refused_when_transaction_did_not_call_the_contract(world: CcWorld) -> None:
    """A successful transaction to another address (here a plain transfer of ether) proves nothing."""
    w3, payer = world.env.w3, world.env.actors["attacker"]
    tx = {"to": world.env.actors["payee2"].address, "value": 1, "gas": 21_000, "chainId": w3.eth.chain_id,
          "nonce": w3.eth.get_transaction_count(payer.address, "pending"), "gasPrice": 2 * w3.eth.gas_price}
    tx_hash = to_hex(bytes(w3.eth.send_raw_transaction(Account.sign_transaction(tx, payer.key).raw_transaction)))
    assert w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30, poll_latency=0.01)["status"] == 1
    deposit_id = messages.keccak(b"dep:foreign")
    error = refused(world, notice_for(deposit_id, tx_hash))
    assert error.fields == {"deposit_id": deposit_id, "tx_hash": tx_hash, "reason": "failed or foreign transaction"}


def test_deposit_refused_when_transaction_records_another_deposit_id(world: CcWorld) -> None:
    tx_hash = recorded(world, messages.keccak(b"dep:real"))
    claimed = messages.keccak(b"dep:claimed")
    error = refused(world, notice_for(claimed, tx_hash))
    assert error.fields == {"deposit_id": claimed, "tx_hash": tx_hash, "reason": "no matching event"}


def test_deposit_refused_when_contract_transaction_has_no_deposit_event(world: CcWorld) -> None:
    """A successful Clearhouse transaction with events of another kind (a policy registration)."""
    content_id = messages.keccak(b"content:other")
    receipt = world.env.client("content_provider").register_policy(
        content_id, 1, 10, [(world.env.actors["content_provider"].address, 10_000)], bytes(32))
    assert receipt["status"] == 1 and receipt["logs"]
    tx_hash, deposit_id = to_hex(bytes(receipt["transactionHash"])), messages.keccak(b"dep:none")
    error = refused(world, notice_for(deposit_id, tx_hash))
    assert error.fields == {"deposit_id": deposit_id, "tx_hash": tx_hash, "reason": "no matching event"}


@pytest.mark.parametrize(("field", "tamper", "peer"), [
    ("userIdHash", {"user_id": "bob"}, "bank"),
    ("amount", {"amount": 5_000}, "bank"),
    ("bankRef", {"bank_ref": b"\x0c" * 32}, "bank"),
    ("bank", {}, "provider"),  # the event is real, but another member notifies it
])
def test_deposit_refused_when_notice_disagrees_with_the_event(world: CcWorld, field: str, tamper: dict[str, Any],
                                                              peer: str) -> None:
    deposit_id = messages.keccak(b"dep:tampered")
    tx_hash = recorded(world, deposit_id)
    true_values = {"userIdHash": user_id_hash("alice"), "amount": 500, "bankRef": b"\x0b" * 32,
                   "bank": world.peers["bank"].eth_address}
    claimed = {"userIdHash": user_id_hash(tamper.get("user_id", "alice")), "amount": tamper.get("amount", 500),
               "bankRef": tamper.get("bank_ref", b"\x0b" * 32), "bank": world.peers[peer].eth_address}
    error = refused(world, notice_for(deposit_id, tx_hash, **tamper), peer=peer)
    assert error.fields == {"deposit_id": deposit_id, "tx_hash": tx_hash, "reason": f"{field} mismatch",
                            "expected": claimed[field], "got": true_values[field]}
    world.cc.credit_deposit(notice_for(deposit_id, tx_hash), world.peers["bank"])  # the true notice still credits
    assert world.store.balance("alice").deposited == 1_500
