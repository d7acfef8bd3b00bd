"""A revoked or withholding SP must not block a serial forever (issue 9, item 5), on the contract.

A device that uses content from two SPs interleaves their sequence numbers. SP1 (`provider`) is revoked, or
withholds a batch it acknowledged; SP2's later batches of the same serial must still settle:
- a receive log SP1 countersigned before `revokedAt` settles (its receivedAt is checked against revokedAt);
- a range SP1 acknowledged and withheld can be skipped after WITHHOLD_WINDOW with a device-signed SkipRange and
  SP1's receive-log signature; its fees are held for SP1 and released (credited to the policy) if SP1's batch
  settles later.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from eth_abi import encode
from eth_account import Account
from eth_utils import keccak

from chainkit import Batch, World, expect_revert, receive_log_hash, sign_digest, typed_digest
from offchain.chain import SettlementItem

SKIP_RANGE_TYPE = ("SkipRange(bytes32 serial,uint64 firstSeq,uint32 count,address receiver,uint96 total,"
                   "bytes32 usageBatch,uint64 receivedAt)")
WITHHOLD_WINDOW_S = 7 * 86_400
SP2_KEY = keccak(text="clearhouse-test-actor:provider2")
SP2 = Account.from_key(SP2_KEY).address
SERIAL = keccak(text="two-sp-serial")
FOREVER = 2**40 - 1


@dataclass(frozen=True)
class Skip:
    """Test-local SkipRange (independent of offchain.core.messages), with the chain client's field names."""

    serial: bytes
    first_seq: int
    count: int
    receiver: str
    total: int
    usage_batch: bytes
    received_at: int

    def struct_hash(self) -> bytes:
        return keccak(encode(["bytes32", "bytes32", "uint64", "uint32", "address", "uint96", "bytes32", "uint64"],
                             [keccak(text=SKIP_RANGE_TYPE), self.serial, self.first_seq, self.count, self.receiver,
                              self.total, self.usage_batch, self.received_at]))


@pytest.fixture()
def world(chain_env) -> World:
    w = World(chain_env)
    w.c("authority").register_member(SP2, 2, keccak(text="provider2"), keccak(text="cert"), 0, FOREVER)
    return w


def _item(world: World, batch: Batch, key: bytes, received_at: int) -> SettlementItem:
    """`batch` signed by `device` and countersigned (ReceiveLog at `received_at`) by the SP holding `key`."""
    batch_hash = batch.struct_hash()
    dev_sig = sign_digest(typed_digest(world.separator, batch_hash), world.key("device"))
    rcv_sig = sign_digest(typed_digest(world.separator, receive_log_hash(batch_hash, world.addr("device"),
                                                                         received_at)), key)
    return SettlementItem(batch, dev_sig, received_at, rcv_sig)


def _interleaved(world: World, pid: bytes, t: int) -> tuple[SettlementItem, SettlementItem, SettlementItem]:
    """seqs 0-1 via SP1, 2 via SP2, 3-4 via SP1 (all received at `t`)."""
    sp1 = world.key("provider")
    a = _item(world, Batch(SERIAL, 0, world.addr("provider"), (pid,), _entries(2, world.now)), sp1, t)
    b = _item(world, Batch(SERIAL, 2, SP2, (pid,), _entries(1, world.now)), SP2_KEY, t)
    c = _item(world, Batch(SERIAL, 3, world.addr("provider"), (pid,), _entries(2, world.now)), sp1, t)
    return a, b, c


def _entries(count: int, used_at: int) -> bytes:
    return b"".join(bytes(1) + (100).to_bytes(11, "big") + used_at.to_bytes(4, "big") for _ in range(count))


def _skip_of(world: World, item: SettlementItem, *, total: int | None = None) -> Skip:
    count = len(item.batch.entries) // 16
    return Skip(item.batch.serial, item.batch.first_seq, count, item.batch.receiver,
                100 * count if total is None else total, item.batch.struct_hash(), item.received_at)


def _device_sig(world: World, skip: Skip, device: str = "device") -> bytes:
    return sign_digest(typed_digest(world.separator, skip.struct_hash()), world.key(device))


def _travel(world: World, seconds: int) -> None:
    world.env.w3.provider.make_request("evm_increaseTime", [seconds])
    world.env.w3.provider.make_request("evm_mine", [])


# -- revoked SP ---------------------------------------------------------------------------------------------------
def test_revoked_sp_batch_countersigned_before_revocation_settles_and_later_sp2_batch_too(world: World) -> None:
    pid = world.policy(price=100)
    world.issue(SERIAL, cap=10_000)
    cc = world.c("clearing_center")
    sp1_batch, _, _ = _interleaved(world, pid, world.now)
    cc.settle([sp1_batch])  # positive control: SP1 active
    late = _item(world, Batch(SERIAL, 2, world.addr("provider"), (pid,), _entries(1, world.now)),
                 world.key("provider"), world.now)
    world.c("authority").revoke_member(world.addr("provider"))
    revoked_at = cc.revoked_at(world.addr("provider"))
    assert revoked_at >= world.now
    # countersigned after the revocation: refused; the same SP's receive log of before: accepted
    after = _item(world, late.batch, world.key("provider"), revoked_at)
    assert expect_revert("NotActiveMember", cc.settle, [after]) == {"account": world.addr("provider"),
                                                                    "expectedRole": 2}
    cc.settle([_item(world, late.batch, world.key("provider"), revoked_at - 1)])
    assert cc.issue_log(SERIAL).next_seq == 3
    # SP2's later batch of the same serial settles (the serial is not blocked by SP1's revocation)
    sp2_next = _item(world, Batch(SERIAL, 3, SP2, (pid,), _entries(1, world.now)), SP2_KEY, world.now + 5)
    cc.settle([sp2_next])
    log = cc.issue_log(SERIAL)
    assert (log.next_seq, log.spent) == (4, 400)
    assert cc.policy(pid).settled == 400


def test_revoked_sp_receive_log_outside_its_validity_refused(world: World) -> None:
    """receivedAt before the SP's validFrom is not a time it was a member, revoked or not."""
    pid = world.policy(price=100)
    world.issue(SERIAL, cap=10_000)
    cc, sp3_key = world.c("clearing_center"), keccak(text="sp3")
    sp3 = Account.from_key(sp3_key).address
    world.c("authority").register_member(sp3, 2, keccak(text="sp3"), keccak(text="cert"), world.now, FOREVER)
    world.c("authority").revoke_member(sp3)
    item = _item(world, Batch(SERIAL, 0, sp3, (pid,), _entries(1, world.now)), sp3_key, world.now - 100)
    assert expect_revert("NotActiveMember", cc.settle, [item]) == {"account": sp3, "expectedRole": 2}


# -- withholding SP -----------------------------------------------------------------------------------------------
def test_withheld_range_skipped_after_window_then_sp2_settles_and_late_forward_releases(world: World) -> None:
    pid = world.policy(price=100)
    world.issue(SERIAL, cap=10_000)
    cc = world.c("clearing_center")
    sp1_batch, sp2_batch, _ = _interleaved(world, pid, world.now)
    # SP1 acknowledged seqs 0-1 and never forwards them: SP2's seq 2 waits on the gap
    assert expect_revert("SequenceGap", cc.settle, [sp2_batch]) == {"serial": SERIAL, "expected": 0, "got": 2}
    skip = _skip_of(world, sp1_batch)
    device_sig = _device_sig(world, skip)
    due = expect_revert("WithholdWindowOpen", cc.skip_range, skip, device_sig, sp1_batch.receiver_signature)
    assert due == {"serial": SERIAL, "firstSeq": 0, "due": skip.received_at + WITHHOLD_WINDOW_S}
    _travel(world, WITHHOLD_WINDOW_S)
    receipt = cc.skip_range(skip, device_sig, sp1_batch.receiver_signature)
    (event,) = cc.contract.events.RangeSkipped().process_receipt(receipt)
    assert dict(event["args"]) == {"serial": SERIAL, "device": world.addr("device"),
                                   "receiver": world.addr("provider"), "firstSeq": 0, "count": 2, "total": 200,
                                   "usageBatch": skip.usage_batch}
    cc.settle([sp2_batch])  # the honest SP's later batch settles
    log = cc.issue_log(SERIAL)
    assert (log.next_seq, log.spent) == (3, 300)  # the user paid for what it used, the skipped range included
    assert cc.held_fees(world.addr("provider")) == 200 and cc.policy(pid).settled == 100
    assert cc.held_fees(SP2) == 0
    # the same skip again, or the skipped range skipped twice: replay
    assert expect_revert("BatchReplayed", cc.skip_range, skip, device_sig,
                         sp1_batch.receiver_signature)["firstSeq"] == 0
    # SP1 forwards after all: the batch settles as a release (policy credited, held fees back to zero)
    receipt = cc.settle([sp1_batch])
    (released,) = cc.contract.events.SkippedRangeReleased().process_receipt(receipt)
    assert released["args"]["total"] == 200 and released["args"]["receiver"] == world.addr("provider")
    assert cc.held_fees(world.addr("provider")) == 0 and cc.policy(pid).settled == 300
    assert (cc.issue_log(SERIAL).next_seq, cc.issue_log(SERIAL).spent) == (3, 300)  # not charged twice
    assert expect_revert("BatchReplayed", cc.settle, [sp1_batch]) == {"serial": SERIAL, "firstSeq": 0,
                                                                      "nextSeq": 3}


def test_skip_range_refused_for_forged_or_mismatched_proofs(world: World) -> None:
    pid = world.policy(price=100)
    world.issue(SERIAL, cap=10_000)
    cc = world.c("clearing_center")
    sp1_batch, _, _ = _interleaved(world, pid, world.now)
    skip = _skip_of(world, sp1_batch)
    _travel(world, WITHHOLD_WINDOW_S)
    # signed by another key than the serial's device
    assert expect_revert("SignerMismatch", cc.skip_range, skip, _device_sig(world, skip, "device2"),
                         sp1_batch.receiver_signature)["expected"] == world.addr("device")
    # the device claims SP2 withheld a batch SP1 acknowledged: SP2 never signed that receive log
    other = Skip(skip.serial, 0, 2, SP2, 200, skip.usage_batch, skip.received_at)
    assert expect_revert("ReceiverMismatch", cc.skip_range, other, _device_sig(world, other),
                         sp1_batch.receiver_signature)["expected"] == SP2
    # another account than the CC
    assert expect_revert("NotActiveMember", world.c("attacker").skip_range, skip, _device_sig(world, skip),
                         sp1_batch.receiver_signature)["expectedRole"] == 1
    # more than the cap
    big = Skip(skip.serial, 0, 2, skip.receiver, 10_001, skip.usage_batch, skip.received_at)
    assert expect_revert("CapExceeded", cc.skip_range, big, _device_sig(world, big),
                         sp1_batch.receiver_signature)["wanted"] == 10_001
    # positive control: the genuine skip goes through
    cc.skip_range(skip, _device_sig(world, skip), sp1_batch.receiver_signature)
    assert cc.issue_log(SERIAL).next_seq == 2


def test_skipped_range_with_understated_total_never_releases(world: World) -> None:
    """The device under-declaring what a skipped range was worth cannot then be paid out by the real batch."""
    pid = world.policy(price=100)
    world.issue(SERIAL, cap=10_000)
    cc = world.c("clearing_center")
    sp1_batch, _, _ = _interleaved(world, pid, world.now)
    skip = _skip_of(world, sp1_batch, total=100)
    _travel(world, WITHHOLD_WINDOW_S)
    cc.skip_range(skip, _device_sig(world, skip), sp1_batch.receiver_signature)
    assert expect_revert("BatchReplayed", cc.settle, [sp1_batch])["nextSeq"] == 2
    assert cc.held_fees(world.addr("provider")) == 100
