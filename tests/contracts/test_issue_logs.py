"""Issue logs and renewal on anvil: issue, top-up in place, close-and-carry, and every rejection in design.md."""

from __future__ import annotations

import pytest
from eth_utils import keccak

from chainkit import World, expect_revert

OLD = keccak(text="serial-old")
NEW = keccak(text="serial-new")
USER = keccak(text="alice")


@pytest.fixture()
def world(chain_env) -> World:
    return World(chain_env)


@pytest.fixture()
def pid(world: World) -> bytes:
    return world.policy(price=100)


def renew(world: World, statement, sig, new_serial: bytes, new_money: int, expires_in: int = 20 * 86400):
    return world.c("clearing_center").renew(OLD, statement, sig, new_serial, new_money, world.now + expires_in)


def test_issue_allocates_deposits(world: World) -> None:
    world.issue(OLD, cap=500, user=USER)
    funds = world.c("bank").user_funds(USER)
    assert (funds.deposited, funds.allocated) == (500, 500)
    log = world.c("bank").issue_log(OLD)
    assert log.device == world.addr("device") and log.cap == 500 and not log.closed


def test_issue_rejects_insufficient_deposits(world: World) -> None:
    world.fund(USER, 100)
    args = expect_revert("InsufficientDeposits", world.issue, OLD, 101, user=USER, fund=False)
    assert args == {"userIdHash": USER, "available": 100, "wanted": 101}


def test_issue_rejects_duplicate_serial(world: World) -> None:
    world.issue(OLD, cap=100)
    expect_revert("DuplicateSerial", world.issue, OLD, 100, fund=False)


def test_issue_rejects_non_device_and_past_expiry(world: World) -> None:
    world.fund(USER, 100)
    assert expect_revert("NotActiveMember", world.issue, OLD, 100, user=USER, device="attacker",
                         fund=False)["expectedRole"] == 5
    expect_revert("ExpiryInPast", world.issue, OLD, 100, user=USER, fund=False, expires_in=-10)


def test_issue_rejects_wrong_role_caller(world: World) -> None:
    world.fund(USER, 100)
    args = expect_revert("NotActiveMember", world.c("bank").issue, OLD, world.addr("device"), USER, 100,
                         world.now + 1000)
    assert args["expectedRole"] == 1


def test_renew_settled_top_up_in_place(world: World, pid: bytes) -> None:
    world.issue(OLD, cap=500, user=USER)
    world.settle(world.use(OLD, pid, 2))
    world.fund(USER, 300)
    st, sig = world.statement(OLD, next_seq=2, spent=200)
    renew(world, st, sig, OLD, 300)
    log = world.c("bank").issue_log(OLD)
    assert (log.cap, log.spent, log.next_seq, log.closed) == (800, 200, 2, False)
    world.settle(world.use(OLD, pid, 6))  # 800 - 200 = 600 spendable
    assert world.c("bank").user_funds(USER).allocated == 800


def test_renew_unsettled_requires_new_serial(world: World, pid: bytes) -> None:
    world.issue(OLD, cap=500, user=USER)
    world.settle(world.use(OLD, pid, 1))
    st, sig = world.statement(OLD, next_seq=3, spent=300)
    args = expect_revert("SerialReuseWhileUnsettled", renew, world, st, sig, OLD, 0)
    assert args == {"serial": OLD, "settledSeq": 1, "attestedSeq": 3}


def test_renew_unsettled_closes_old_log_which_settles_up_to_frozen_total(world: World, pid: bytes) -> None:
    world.issue(OLD, cap=500, user=USER)
    world.settle(world.use(OLD, pid, 1))
    st, sig = world.statement(OLD, next_seq=3, spent=300)
    renew(world, st, sig, NEW, 0)
    old = world.c("bank").issue_log(OLD)
    new = world.c("bank").issue_log(NEW)
    assert (old.cap, old.seq_limit, old.closed) == (300, 3, True)
    assert (new.cap, new.device, new.closed) == (200, world.addr("device"), False)
    world.settle(world.use(OLD, pid, 2))  # the two attested but unsettled logs still settle
    assert world.c("bank").issue_log(OLD).spent == 300
    args = expect_revert("SequenceBeyondClosedLog", world.settle, world.use(OLD, pid, 1))
    assert args == {"serial": OLD, "seqLimit": 3, "wanted": 4}
    expect_revert("IssueLogClosed", renew, world, *world.statement(OLD, 3, 300), NEW, 0)


def test_renew_rejects_insufficient_deposits(world: World) -> None:
    world.issue(OLD, cap=500, user=USER)
    st, sig = world.statement(OLD, next_seq=0, spent=0)
    args = expect_revert("InsufficientDeposits", renew, world, st, sig, NEW, 1)
    assert args == {"userIdHash": USER, "available": 0, "wanted": 1}


def test_renew_rejects_bad_statements(world: World, pid: bytes) -> None:
    world.issue(OLD, cap=500, user=USER)
    world.settle(world.use(OLD, pid, 2))
    expect_revert("AttestationBelowSettled", renew, world, *world.statement(OLD, 2, 100), NEW, 0)
    expect_revert("AttestedSeqBelowSettled", renew, world, *world.statement(OLD, 1, 200), NEW, 0)
    expect_revert("AttestationOverCap", renew, world, *world.statement(OLD, 9, 600), NEW, 0)
    expect_revert("StatementMismatch", renew, world, *world.statement(NEW, 2, 200), NEW, 0)
    st, _ = world.statement(OLD, 2, 200)
    _, forged = world.statement(OLD, 2, 200, device="attacker")
    expect_revert("SignerMismatch", renew, world, st, forged, NEW, 0)
    expect_revert("ExpiryInPast", renew, world, *world.statement(OLD, 2, 200), NEW, 0, expires_in=-5)


def test_renew_rejects_duplicate_new_serial_and_unknown_serial(world: World) -> None:
    world.issue(OLD, cap=500, user=USER)
    world.issue(NEW, cap=100, user=USER)
    expect_revert("DuplicateSerial", renew, world, *world.statement(OLD, 0, 0), NEW, 0)
    st, sig = world.statement(keccak(text="ghost"), 0, 0)
    expect_revert("UnknownSerial", world.c("clearing_center").renew, keccak(text="ghost"), st, sig, NEW, 0,
                  world.now + 100)
