"""A revoked or withholding SP must not block a serial forever (issue 9, item 5), through the real CC agent and
settlement worker against anvil.

One device uses content from two SPs and interleaves their sequence numbers: seqs 0-1 go to SP1 (`provider`),
seq 2 to SP2. SP1 is revoked after forwarding (its receive log predates `revokedAt`: it settles), or SP1 keeps a
batch it acknowledged (the device's SkipRange lets the CC skip it after the window; SP2's batch settles, SP1's
fees are held). A second device's usage settles throughout (the honest user is unaffected).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from test_clearing_center import PRICE, CcWorld, make_world

from offchain.clearing_center.api import ReceiveItem
from offchain.clearing_center.settlement import SettlementWorker
from offchain.clearing_center.skips import WITHHOLD_WINDOW_S, SkipRequest, submit_skip
from offchain.core.errors import ContractReverted, IdentityMismatch
from offchain.core.messages import ReceiveLog, SkipRange, UsageBatch, UsageLog, sign
from offchain.core.types import Role
from offchain.trust.certs import Envelope


@pytest.fixture()
def world(chain_env: Any, tmp_path: Path) -> CcWorld:
    made = make_world(chain_env, tmp_path)
    sp2 = chain_env.actors["attacker"]  # an unregistered key, registered here as a second, honest SP
    made.creds["provider2"] = made.ca.issue_member("provider2", Role.SERVICE_PROVIDER, sp2.address)
    made.peers["provider2"] = made.verifier().verify(made.creds["provider2"].cert_pem)
    chain_env.client("authority").register_member(sp2.address, 2, b"\x02" * 32, b"\x03" * 32, 0, 2**40 - 1)
    return made


def _key(world: CcWorld, sp: str) -> bytes:
    return world.env.actors["attacker" if sp == "provider2" else sp].key


def _batch(world: CcWorld, serial: bytes, first_seq: int, count: int, sp: str,
           device: str = "device") -> tuple[UsageBatch, bytes]:
    now = int(time.time())
    logs = [UsageLog(serial=serial, seq=first_seq + i, policy_id=world.policy_id, fee=PRICE,
                     receiver=world.peers[sp].eth_address, used_at=now) for i in range(count)]
    batch = UsageBatch.from_logs(logs)
    return batch, sign(batch, world.domain, world.env.actors[device].key)


def _ack(world: CcWorld, batch: UsageBatch, sp: str, device: str = "device") -> Envelope:
    """What the SP signs and answers on upload: its ReceiveLog of the batch."""
    receive_log = ReceiveLog(usage_batch=batch.struct_hash(), payer=world.peers[device].eth_address,
                             received_at=int(world.env.timestamp()))
    return Envelope.seal(receive_log, world.domain, _key(world, sp), world.creds[sp].cert_pem)


def _forward(world: CcWorld, batch: UsageBatch, device_sig: bytes, ack: Envelope, sp: str,
             device: str = "device") -> dict[str, Any]:
    item = ReceiveItem(receive_log=ack.to_json(), usage_batch=batch.to_json(), device_signature="0x" + device_sig.hex(),
                device_certificate=world.creds[device].cert_pem.decode())
    return world.cc.receive_logs([item], world.peers[sp])


def _setup(world: CcWorld) -> tuple[bytes, bytes, SettlementWorker]:
    world.deposit("alice", 1_000)
    world.deposit("bob", 1_000, tag="d2")
    alice, _ = world.issue("r-alice", amount=1_000)
    bob, _ = world.issue("r-bob", user_id="bob", device="device2", amount=1_000)
    return alice.serial, bob.serial, SettlementWorker(world.store, world.env.client("clearing_center"))


def _travel(world: CcWorld, seconds: int) -> None:
    world.env.w3.provider.make_request("evm_increaseTime", [seconds])
    world.env.w3.provider.make_request("evm_mine", [])


def test_revoked_sp_batches_from_before_revocation_settle_and_sp2_later_batch_too(world: CcWorld) -> None:
    serial, bob_serial, worker = _setup(world)
    cc_chain = world.env.client("clearing_center")
    first, first_sig = _batch(world, serial, 0, 2, "provider")
    assert _forward(world, first, first_sig, _ack(world, first, "provider"), "provider")["rejected"] == []
    # SP1 is revoked (a block at least a second later) before the CC settles what it forwarded
    _travel(world, 1)
    world.env.client("authority").revoke_member(world.peers["provider"].eth_address)
    assert cc_chain.revoked_at(world.peers["provider"].eth_address) > 0
    later, later_sig = _batch(world, serial, 2, 1, "provider2")
    assert _forward(world, later, later_sig, _ack(world, later, "provider2"), "provider2")["rejected"] == []
    honest, honest_sig = _batch(world, bob_serial, 0, 1, "provider2", device="device2")
    _forward(world, honest, honest_sig, _ack(world, honest, "provider2", "device2"), "provider2", "device2")
    report = worker.tick()
    assert report.rejected == {}  # before revokedAt was recorded: NotActiveMember, then SequenceGap forever
    assert report.settled == 3
    assert cc_chain.issue_log(serial).next_seq == 3 and cc_chain.issue_log(serial).spent == 3 * PRICE
    assert cc_chain.issue_log(bob_serial).next_seq == 1


def test_withheld_batch_skipped_after_window_then_sp2_batch_settles_fees_held(world: CcWorld) -> None:
    serial, bob_serial, worker = _setup(world)
    cc_chain = world.env.client("clearing_center")
    withheld, withheld_sig = _batch(world, serial, 0, 2, "provider")
    sp1_ack = _ack(world, withheld, "provider")  # SP1 acknowledged and never forwards
    later, later_sig = _batch(world, serial, 2, 1, "provider2")
    _forward(world, later, later_sig, _ack(world, later, "provider2"), "provider2")
    honest, honest_sig = _batch(world, bob_serial, 0, 1, "provider2", device="device2")
    _forward(world, honest, honest_sig, _ack(world, honest, "provider2", "device2"), "provider2", "device2")
    worker.tick()
    assert cc_chain.issue_log(serial).next_seq == 0  # SP2's batch waits on the gap SP1 left
    assert cc_chain.issue_log(bob_serial).next_seq == 1  # the other device is unaffected

    receipt = sp1_ack.decode()
    skip = SkipRange(serial=serial, first_seq=0, count=2, receiver=withheld.receiver, total=2 * PRICE,
                     usage_batch=withheld.struct_hash(), received_at=receipt.received_at)
    request = SkipRequest(skip_range=Envelope.seal(skip, world.domain, world.env.actors["device"].key,
                                                   world.creds["device"].cert_pem).to_json(),
                          receive_log=sp1_ack.to_json())
    with pytest.raises(ContractReverted) as early:
        submit_skip(request, cc_chain, world.verifier(), world.peers["device"])
    assert early.value.error_name == "WithholdWindowOpen"
    # another device cannot skip this serial's range
    with pytest.raises(IdentityMismatch):
        submit_skip(request, cc_chain, world.verifier(), world.peers["device2"])
    _travel(world, WITHHOLD_WINDOW_S)
    answer = submit_skip(request, cc_chain, world.verifier(), world.peers["device"])
    assert answer["status"] == "skipped" and answer["next_seq"] == 2
    again = submit_skip(request, cc_chain, world.verifier(), world.peers["device"])  # idempotent: the same answer
    assert (again["status"], again["tx_hash"]) == ("skipped", answer["tx_hash"])
    report = worker.tick()
    assert report.rejected == {} and report.settled == 1
    log = cc_chain.issue_log(serial)
    assert (log.next_seq, log.spent) == (3, 3 * PRICE)
    assert cc_chain.held_fees(withheld.receiver) == 2 * PRICE
    assert cc_chain.held_fees(world.peers["provider2"].eth_address) == 0
    # SP1 forwards late after all: the CC's intake refuses a batch below nextSeq (the release of held fees is
    # on chain only so far: tests/contracts/test_revoked_and_withholding_sp.py), and nothing moves
    answer = _forward(world, withheld, withheld_sig, sp1_ack, "provider")
    assert answer["accepted"] == [] and answer["rejected"][0]["error"] == "sequence_error"
    assert cc_chain.held_fees(withheld.receiver) == 2 * PRICE
    assert cc_chain.policy(world.policy_id).settled == 2 * PRICE  # SP2's 1 + bob's 1; SP1's 2 are held
