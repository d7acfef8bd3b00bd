"""Money that must not strand, drift or wrap (issue 10): releasing a stolen or expired device's issue log, the
cadence-independent revenue split, and narrowing casts that revert with AmountOverflow instead of wrapping."""

from __future__ import annotations

import itertools

import pytest
from eth_account import Account
from eth_utils import keccak
from hypothesis import event, given, settings
from hypothesis import strategies as st

from chainkit import World, expect_revert
from offchain.core.split import cumulative_parts

PHONE = keccak(text="serial-phone")
NEW_PHONE = keccak(text="serial-new-phone")
GRACE_S = 3 * 86400
U96 = 2**96 - 1
_EXAMPLES = itertools.count(1)


@pytest.fixture()
def world(chain_env) -> World:
    return World(chain_env)


@pytest.fixture()
def user(world: World) -> bytes:
    """The user the chain records for `device` (tests/conftest.py DEVICE_userS)."""
    return world.c("bank").member(world.addr("device")).user_id_hash


def _new_device(world: World, user: bytes) -> str:
    """A second phone of `user`, registered by the authority (an address only: the CC sends the transactions)."""
    address = Account.from_key(keccak(text="new-phone-key")).address
    world.c("authority").register_member(address, 5, keccak(text="new-phone"), keccak(text="cert"), 0, 2**40 - 1,
                                         user_id_hash=user)
    return address


def _travel(world: World, seconds: int) -> None:
    w3 = world.env.w3
    w3.provider.make_request("evm_increaseTime", [seconds])
    w3.provider.make_request("evm_mine", [])


def _release(world: World, serial: bytes, sender: str = "authority") -> int:
    receipt = world.c(sender).send("releaseIssueLog", serial)
    logs = world.c(sender).contract.events.IssueLogReleased().process_receipt(receipt)
    assert len(logs) == 1 and logs[0]["args"]["serial"] == serial
    return int(logs[0]["args"]["released"])


# -- 1. a stolen phone does not strand the user's money ---------------------------------------------------------
def test_release_revoked_phone_returns_unspent_to_new_phone(world: World, user: bytes) -> None:
    pid = world.policy(price=100)
    world.issue(PHONE, cap=10_000)
    world.settle(world.use(PHONE, pid, 10))  # 1,000 spent, 9,000 left on the stolen phone
    world.c("authority").revoke_member(world.addr("device"))
    new_phone = _new_device(world, user)
    cc = world.c("clearing_center")
    # the failure without a release: the 9,000 is allocated to a log nobody can use or renew
    args = expect_revert("InsufficientDeposits", cc.issue, NEW_PHONE, new_phone, user, 9_000, world.now + 86400)
    assert args == {"userIdHash": user, "available": 0, "wanted": 9_000}
    assert _release(world, PHONE) == 9_000
    log = cc.issue_log(PHONE)
    assert (log.cap, log.spent, log.next_seq, log.seq_limit, log.closed) == (1_000, 1_000, 10, 10, True)
    funds = cc.user_funds(user)
    assert (funds.deposited, funds.allocated) == (10_000, 1_000)
    expect_revert("InsufficientDeposits", cc.issue, NEW_PHONE, new_phone, user, 9_001, world.now + 86400)
    cc.issue(NEW_PHONE, new_phone, user, 9_000, world.now + 86400)  # the new phone gets the released money
    assert cc.user_funds(user).allocated == 10_000
    # the thief's later logs are refused; the log cannot renew or be released twice
    expect_revert("NotActiveMember", world.settle, world.use(PHONE, pid, 1))
    expect_revert("IssueLogClosed", world.c("clearing_center").renew, PHONE, *world.statement(PHONE, 11, 1_100),
                  PHONE, 0, world.now + 86400)
    assert expect_revert("IssueLogClosed", _release, world, PHONE) == {"serial": PHONE}


def test_release_active_device_waits_for_expiry_plus_grace(world: World) -> None:
    pid = world.policy(price=100)
    world.issue(PHONE, cap=1_000, expires_in=86400)
    expires_at = world.c("bank").issue_log(PHONE).expires_at
    world.settle(world.use(PHONE, pid, 2))
    in_transit = world.use(PHONE, pid, 3)  # signed before the expiry, not uploaded yet
    args = expect_revert("ReleaseTooEarly", _release, world, PHONE)
    assert args == {"serial": PHONE, "releasableAt": expires_at + GRACE_S}
    _travel(world, 86400 + GRACE_S - 600)
    world.settle(in_transit)  # logs in transit still settle during the grace period
    expect_revert("ReleaseTooEarly", _release, world, PHONE)
    _travel(world, 1200)
    assert _release(world, PHONE, sender="clearing_center") == 500
    late = world.item(world.batch(PHONE, [pid], [(0, 100, expires_at)]))
    args = expect_revert("SequenceBeyondClosedLog", world.settle, late)
    assert args == {"serial": PHONE, "seqLimit": 5, "wanted": 6}


def test_release_device_past_validity_waits_for_grace(world: World, user: bytes) -> None:
    phone = Account.from_key(keccak(text="short-lived")).address
    now = world.now
    world.c("authority").register_member(phone, 5, keccak(text="p"), keccak(text="c"), 0, now + 100,
                                         user_id_hash=user)
    world.fund(user, 700)
    world.c("clearing_center").issue(PHONE, phone, user, 700, now + 30 * 86400)
    assert expect_revert("ReleaseTooEarly", _release, world, PHONE)["releasableAt"] == now + 100 + GRACE_S
    _travel(world, 100 + GRACE_S + 10)
    assert _release(world, PHONE) == 700


def test_release_refuses_strangers_and_unknown_serials(world: World) -> None:
    world.issue(PHONE, cap=100)
    world.c("authority").revoke_member(world.addr("device"))
    assert expect_revert("NotReleaser", _release, world, PHONE, sender="attacker") == {
        "caller": world.addr("attacker")}
    expect_revert("NotReleaser", _release, world, PHONE, sender="bank")
    assert expect_revert("UnknownSerial", _release, world, NEW_PHONE) == {"serial": NEW_PHONE}
    assert _release(world, PHONE) == 100  # positive control


def test_release_log_closed_by_renewal_returns_attested_but_unsettled_rest(world: World, user: bytes) -> None:
    pid = world.policy(price=100)
    world.issue(PHONE, cap=1_000)
    world.settle(world.use(PHONE, pid, 1))
    st_, sig = world.statement(PHONE, next_seq=3, spent=300)
    world.c("clearing_center").renew(PHONE, st_, sig, NEW_PHONE, 0, world.now + 86400)  # closed at 300 / seq 3
    world.c("authority").revoke_member(world.addr("device"))
    assert _release(world, PHONE) == 200  # attested 300, only 100 ever settled
    assert _release(world, NEW_PHONE) == 700
    assert world.c("bank").user_funds(user).allocated == 100


# -- 2. the split does not depend on the request cadence --------------------------------------------------------
def _payouts(world: World, pid: bytes, serial: bytes, schedule: list[int], price: int) -> dict[str, int]:
    """Settle `schedule[k]` uses then request, for each k; returns the total requested per payee."""
    totals: dict[str, int] = {}
    cc, bank = world.c("clearing_center"), world.c("bank")
    for uses in schedule:
        world.settle(world.item(world.batch(serial, [pid], [(0, price, world.now)] * uses)))
        _, ids = cc.request_transfers([pid])
        for request_id in ids:
            r = bank.transfer_request(request_id)
            totals[r.payee] = totals.get(r.payee, 0) + r.amount
    return totals


def test_split_three_payees_is_cadence_independent(world: World) -> None:
    names = ("content_provider", "payee2", "provider")
    payees = [(world.addr(n), b) for n, b in zip(names, (2000, 4000, 4000))]
    one, many = world.policy(price=1, payees=payees), world.policy(price=1, payees=payees)
    world.issue(PHONE, cap=10)
    world.issue(NEW_PHONE, cap=10)
    at_once = _payouts(world, one, PHONE, [3], price=1)
    stepwise = _payouts(world, many, NEW_PHONE, [2, 1], price=1)
    # the old rule (floor each, remainder to payees[0] per request) paid (3, 0, 0) stepwise and (1, 1, 1) at once
    assert at_once == stepwise == {world.addr(n): 1 for n in names}


def test_split_one_basis_point_payee_gets_its_share_with_any_cadence(world: World) -> None:
    payees = [(world.addr("content_provider"), 9_999), (world.addr("payee2"), 1)]
    one, many = world.policy(price=5_000, payees=payees), world.policy(price=5_000, payees=payees)
    world.issue(PHONE, cap=100_000)
    world.issue(NEW_PHONE, cap=100_000)
    at_once = _payouts(world, one, PHONE, [20], price=5_000)
    stepwise = _payouts(world, many, NEW_PHONE, [1] * 20, price=5_000)
    assert at_once == stepwise == {world.addr("content_provider"): 99_990, world.addr("payee2"): 10}


@settings(max_examples=6)
@given(data=st.data())
def test_split_chain_matches_one_request_result_for_random_schedules(chain_env, data) -> None:
    # the examples share one chain: each takes fresh content ids and a fresh serial
    nonce = next(_EXAMPLES)
    world = World(chain_env, content_counter=1_000 * nonce)
    serial = keccak(text=f"schedule-{nonce}")
    if True:
        count = data.draw(st.integers(2, 4), label="payees")
        cuts = sorted(data.draw(st.sets(st.integers(1, 9_999), min_size=count - 1, max_size=count - 1)))
        bps = [b - a for a, b in zip([0, *cuts], [*cuts, 10_000])]
        names = ("content_provider", "payee2", "provider", "bank")[:count]
        payees = [(world.addr(n), b) for n, b in zip(names, bps)]
        price = data.draw(st.integers(1, 997), label="price")
        schedule = data.draw(st.lists(st.integers(1, 5), min_size=1, max_size=5), label="schedule")
        event(f"requests={len(schedule)}")
        pid = world.policy(price=price, payees=payees)
        world.issue(serial, cap=price * sum(schedule))
        got = _payouts(world, pid, serial, schedule, price)
        expected = cumulative_parts(price * sum(schedule), bps)
        assert got == {a: e for (a, _), e in zip(payees, expected) if e}


# -- 3. narrowing casts revert with AmountOverflow ----------------------------------------------------------------
def test_renew_top_up_over_uint96_reverts(world: World, user: bytes) -> None:
    world.issue(PHONE, cap=U96)
    world.fund(user, 1)
    st_, sig = world.statement(PHONE, next_seq=0, spent=0)
    cc = world.c("clearing_center")
    args = expect_revert("AmountOverflow", cc.renew, PHONE, st_, sig, PHONE, 1, world.now + 86400)
    assert args == {"value": 2**96, "max": U96}
    cc.renew(PHONE, st_, sig, PHONE, 0, world.now + 86400)  # the boundary itself is fine
    assert cc.issue_log(PHONE).cap == U96


def test_renew_new_serial_over_uint96_reverts(world: World, user: bytes) -> None:
    world.issue(PHONE, cap=U96)
    world.fund(user, 2)
    st_, sig = world.statement(PHONE, next_seq=1, spent=1)  # unsettled: a new serial, carried 2**96 - 2
    cc = world.c("clearing_center")
    args = expect_revert("AmountOverflow", cc.renew, PHONE, st_, sig, NEW_PHONE, 2, world.now + 86400)
    assert args == {"value": 2**96, "max": U96}
    cc.renew(PHONE, st_, sig, NEW_PHONE, 1, world.now + 86400)
    assert cc.issue_log(NEW_PHONE).cap == U96


def test_renew_attested_seq_beyond_seq_limit_range_reverts(world: World) -> None:
    world.issue(PHONE, cap=100)
    st_, sig = world.statement(PHONE, next_seq=2**48 - 1, spent=0)  # would close the log at OPEN: still open
    args = expect_revert("AmountOverflow", world.c("clearing_center").renew, PHONE, st_, sig, NEW_PHONE, 0,
                         world.now + 86400)
    assert args == {"value": 2**48 - 1, "max": 2**48 - 2}


def _settle_big(world: World, serial: bytes, pid: bytes, price: int, uses: int) -> None:
    world.settle(world.item(world.batch(serial, [pid], [(0, price, world.now)] * uses)))


def test_request_transfers_over_uint96_reverts(world: World) -> None:
    top = 2**88 - 1  # the largest fee; 256 uses of it settle 2**96 - 256
    payees = [(world.addr("content_provider"), 10_000)]
    big, small = world.policy(price=top, payees=payees), world.policy(price=256, payees=payees)
    world.issue(PHONE, cap=U96)
    world.issue(NEW_PHONE, cap=1_000)
    _settle_big(world, PHONE, big, top, 256)
    _settle_big(world, NEW_PHONE, small, 256, 1)
    cc = world.c("clearing_center")
    args = expect_revert("AmountOverflow", cc.request_transfers, [big, small])  # one payee, 2**96 in total
    assert args == {"value": 2**96, "max": U96}
    _, ids = cc.request_transfers([big])  # positive control: each alone fits
    assert world.c("bank").transfer_request(ids[0]).amount == 2**96 - 256


def test_request_transfers_at_uint96_boundary_succeeds(world: World) -> None:
    top = 2**88 - 1
    payees = [(world.addr("content_provider"), 10_000)]
    big, small = world.policy(price=top, payees=payees), world.policy(price=255, payees=payees)
    world.issue(PHONE, cap=U96)
    _settle_big(world, PHONE, big, top, 256)
    _settle_big(world, PHONE, small, 255, 1)
    _, ids = world.c("clearing_center").request_transfers([big, small])
    assert world.c("bank").transfer_request(ids[0]).amount == U96
