"""Settlement: the success path and every rejection path of docs/design.md "Settlement", on anvil (paris)."""

from __future__ import annotations

import pytest
from eth_utils import keccak
from web3.logs import DISCARD

from chainkit import SECP256K1_N, World, expect_revert, sign_digest, typed_digest

SERIAL = keccak(text="serial-1")


@pytest.fixture()
def world(chain_env) -> World:
    return World(chain_env)


@pytest.fixture()
def pid(world: World) -> bytes:
    return world.policy(price=100)


@pytest.fixture()
def issued(world: World, pid: bytes) -> bytes:
    return world.issue(SERIAL, cap=1_000)


def test_settle_success_updates_log_policy_and_emits(world: World, pid: bytes, issued: bytes) -> None:
    receipt = world.settle(world.use(SERIAL, pid, 3))
    log = world.c("clearing_center").issue_log(SERIAL)
    assert (log.spent, log.next_seq, log.cap) == (300, 3, 1_000)
    assert world.c("clearing_center").policy(pid).settled == 300
    events = world.c("clearing_center").contract.events.UsageSettled().process_receipt(receipt, errors=DISCARD)
    assert events[0]["args"]["count"] == 3 and events[0]["args"]["total"] == 300
    world.settle(world.use(SERIAL, pid, 2))
    assert world.c("clearing_center").issue_log(SERIAL).next_seq == 5


def test_settle_two_items_in_one_call(world: World, pid: bytes, issued: bytes) -> None:
    first = world.use(SERIAL, pid, 2)
    second = world.item(world.batch(SERIAL, [pid], [(0, 100, world.now)], first_seq=2))
    world.settle(first, second)
    assert world.c("clearing_center").issue_log(SERIAL).next_seq == 3


def test_settle_rejects_non_clearing_center(world: World, pid: bytes, issued: bytes) -> None:
    args = expect_revert("NotActiveMember", world.settle, world.use(SERIAL, pid, 1), sender="attacker")
    assert args["expectedRole"] == 1


@pytest.mark.parametrize("entries", [b"", b"\x00" * 15, b"\x00" * 17])
def test_settle_rejects_malformed_entries(world: World, pid: bytes, issued: bytes, entries: bytes) -> None:
    from chainkit import Batch

    batch = Batch(SERIAL, 0, world.addr("provider"), (pid,), entries)
    assert expect_revert("MalformedEntries", world.settle, world.item(batch))["length"] == len(entries)


def test_settle_rejects_unknown_serial(world: World, pid: bytes) -> None:
    expect_revert("UnknownSerial", world.settle, world.use(keccak(text="nope"), pid, 1))


def test_settle_rejects_unknown_policy(world: World, issued: bytes) -> None:
    bogus = keccak(text="no-policy")
    assert expect_revert("UnknownPolicy", world.settle, world.use(SERIAL, bogus, 1))["policyId"] == bogus


def test_settle_rejects_policy_index_out_of_range(world: World, pid: bytes, issued: bytes) -> None:
    item = world.item(world.batch(SERIAL, [pid], [(1, 100, world.now)]))
    assert expect_revert("PolicyIndexOutOfRange", world.settle, item) == {"index": 1, "count": 1}


def test_settle_rejects_fee_mismatch(world: World, pid: bytes, issued: bytes) -> None:
    item = world.item(world.batch(SERIAL, [pid], [(0, 99, world.now)]))
    assert expect_revert("FeeMismatch", world.settle, item) == {"policyId": pid, "expected": 100, "got": 99}


def test_settle_rejects_usage_after_expiry(world: World, pid: bytes) -> None:
    world.issue(SERIAL, cap=1_000, expires_in=100)
    item = world.item(world.batch(SERIAL, [pid], [(0, 100, world.now + 101)]))
    assert expect_revert("UsageAfterExpiry", world.settle, item)["usedAt"] == world.now + 101


def test_settle_rejects_forged_device_signature(world: World, pid: bytes, issued: bytes) -> None:
    forged = world.item(world.batch(SERIAL, [pid], [(0, 100, world.now)]), device="attacker")
    args = expect_revert("SignerMismatch", world.settle, forged)
    assert args == {"expected": world.addr("device"), "got": world.addr("attacker")}


def test_settle_rejects_high_s_signature(world: World, pid: bytes, issued: bytes) -> None:
    good = world.use(SERIAL, pid, 1)
    sig = good.device_signature
    s = int.from_bytes(sig[32:64], "big")
    malleated = sig[:32] + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - sig[64]])
    item = world.item(good.batch, device_signature=malleated)
    expect_revert("InvalidSignatureS", world.settle, item)


@pytest.mark.parametrize("length", [0, 64, 66])
def test_settle_rejects_wrong_length_signature(world: World, pid: bytes, issued: bytes, length: int) -> None:
    good = world.use(SERIAL, pid, 1)
    sig = (good.device_signature * 2)[:length]
    item = world.item(good.batch, device_signature=sig)
    assert expect_revert("InvalidSignatureLength", world.settle, item)["length"] == length


def test_settle_rejects_bad_v(world: World, pid: bytes, issued: bytes) -> None:
    good = world.use(SERIAL, pid, 1)
    item = world.item(good.batch, device_signature=good.device_signature[:64] + b"\x01")
    assert expect_revert("InvalidSignatureV", world.settle, item)["v"] == 1


def test_settle_rejects_zero_address_signature(world: World, pid: bytes, issued: bytes) -> None:
    good = world.use(SERIAL, pid, 1)
    item = world.item(good.batch, device_signature=b"\x00" * 32 + b"\x00" * 31 + b"\x01" + b"\x1b")
    expect_revert("InvalidSignature", world.settle, item)


@pytest.mark.parametrize("which", ["chain_id", "contract"])
def test_settle_rejects_signature_under_wrong_domain(world: World, pid: bytes, issued: bytes, which: str) -> None:
    from chainkit import domain_separator

    dep = world.env.deployment
    separator = (domain_separator(dep.chain_id + 1, dep.address) if which == "chain_id"
                 else domain_separator(dep.chain_id, world.addr("attacker")))
    batch = world.batch(SERIAL, [pid], [(0, 100, world.now)])
    sig = sign_digest(typed_digest(separator, batch.struct_hash()), world.key("device"))
    args = expect_revert("SignerMismatch", world.settle, world.item(batch, device_signature=sig))
    assert args["expected"] == world.addr("device") and args["got"] != world.addr("device")


def test_settle_rejects_revoked_device(world: World, pid: bytes, issued: bytes) -> None:
    world.c("authority").revoke_member(world.addr("device"))
    assert expect_revert("NotActiveMember", world.settle, world.use(SERIAL, pid, 1))["expectedRole"] == 5


def test_settle_rejects_forged_receiver_signature(world: World, pid: bytes, issued: bytes) -> None:
    item = world.item(world.batch(SERIAL, [pid], [(0, 100, world.now)]), receiver="attacker")
    args = expect_revert("ReceiverMismatch", world.settle, item)
    assert args == {"expected": world.addr("provider"), "got": world.addr("attacker")}


def test_settle_rejects_receiver_with_wrong_role(world: World, pid: bytes, issued: bytes) -> None:
    batch = world.batch(SERIAL, [pid], [(0, 100, world.now)], receiver="bank")
    args = expect_revert("NotActiveMember", world.settle, world.item(batch, receiver="bank"))
    assert args == {"account": world.addr("bank"), "expectedRole": 2}


def test_settle_rejects_replayed_batch(world: World, pid: bytes, issued: bytes) -> None:
    item = world.use(SERIAL, pid, 2)
    world.settle(item)
    assert expect_revert("BatchReplayed", world.settle, item) == {"serial": SERIAL, "firstSeq": 0, "nextSeq": 2}


def test_settle_rejects_sequence_gap(world: World, pid: bytes, issued: bytes) -> None:
    item = world.item(world.batch(SERIAL, [pid], [(0, 100, world.now)], first_seq=5))
    assert expect_revert("SequenceGap", world.settle, item) == {"serial": SERIAL, "expected": 0, "got": 5}


def test_settle_rejects_over_cap(world: World, pid: bytes) -> None:
    world.issue(SERIAL, cap=250)
    assert expect_revert("CapExceeded", world.settle, world.use(SERIAL, pid, 3)) == {
        "serial": SERIAL, "cap": 250, "wanted": 300}


def test_settle_failure_in_second_item_reverts_the_whole_call(world: World, pid: bytes, issued: bytes) -> None:
    good = world.use(SERIAL, pid, 1)
    gap = world.item(world.batch(SERIAL, [pid], [(0, 100, world.now)], first_seq=7))
    expect_revert("SequenceGap", world.settle, good, gap)
    assert world.c("clearing_center").issue_log(SERIAL).next_seq == 0


@pytest.mark.parametrize("count", [2, 3, 4])
@pytest.mark.parametrize("bad", ["index", "fee", "late"])
def test_settle_rejects_bad_entry_at_any_position_of_a_word(world: World, pid: bytes, count: int, bad: str) -> None:
    """The one-policy fast path checks two entries per calldata word: every position must still be caught."""
    world.issue(SERIAL, cap=10_000, expires_in=100)
    expires_at = world.now + 100
    for position in range(count):
        entries = [(0, 100, expires_at)] * count  # usedAt == expiresAt is still valid
        entries[position] = {"index": (1, 100, expires_at), "fee": (0, 99, expires_at),
                             "late": (0, 100, expires_at + 1)}[bad]
        item = world.item(world.batch(SERIAL, [pid], entries))
        name = {"index": "PolicyIndexOutOfRange", "fee": "FeeMismatch", "late": "UsageAfterExpiry"}[bad]
        expect_revert(name, world.settle, item)
    world.settle(world.item(world.batch(SERIAL, [pid], [(0, 100, expires_at)] * count)))
