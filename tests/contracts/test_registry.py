"""Membership, deposits, content policies, transfer requests and the deployment facts (EIP-170, EIP-5267)."""

from __future__ import annotations

import pytest
from eth_abi import encode
from eth_utils import keccak

from chainkit import World, expect_revert, domain_separator
from offchain.chain import EIP170_LIMIT_BYTES

USER = keccak(text="alice")
SERIAL = keccak(text="serial-1")


@pytest.fixture()
def world(chain_env) -> World:
    return World(chain_env)


def test_deployed_code_fits_eip170(world: World, compiled) -> None:
    code = world.env.w3.eth.get_code(world.env.deployment.address)
    assert 0 < len(code) < EIP170_LIMIT_BYTES
    assert len(bytes.fromhex(compiled["Clearhouse"]["deployed_bytecode"][2:])) < EIP170_LIMIT_BYTES


def test_domain_matches_eip5267_and_local_separator(world: World) -> None:
    dep = world.env.deployment
    fields = world.c("bank").call("eip712Domain")
    assert fields[1:5] == ["Clearhouse", "1", dep.chain_id, dep.address] or \
        tuple(fields[1:5]) == ("Clearhouse", "1", dep.chain_id, dep.address)
    assert world.c("bank").domain_separator() == domain_separator(dep.chain_id, dep.address)
    assert world.c("bank").domain.separator() == world.c("bank").domain_separator()


def test_membership_register_update_revoke(world: World) -> None:
    auth, who = world.c("authority"), world.addr("attacker")
    auth.register_member(who, 2, keccak(text="m"), keccak(text="c1"), 0, 2**40 - 1)
    assert auth.is_active(who, 2) and not auth.is_active(who, 1)
    auth.register_member(who, 2, keccak(text="m"), keccak(text="c2"), 0, 2**40 - 1)
    assert auth.member(who).cert_fingerprint == keccak(text="c2")
    auth.revoke_member(who)
    assert not auth.is_active(who, 2)
    assert expect_revert("MemberRevoked", auth.register_member, who, 2, b"\0" * 32, b"\0" * 32, 0, 1) == {
        "account": who}
    expect_revert("MemberRevoked", auth.revoke_member, who)


def test_membership_rejections(world: World) -> None:
    who = world.addr("attacker")
    expect_revert("NotAuthority", world.c("attacker").register_member, who, 1, b"\0" * 32, b"\0" * 32, 0, 1)
    expect_revert("InvalidRole", world.c("authority").register_member, who, 6, b"\0" * 32, b"\0" * 32, 0, 1)
    expect_revert("InvalidRole", world.c("authority").register_member, who, 0, b"\0" * 32, b"\0" * 32, 0, 1)
    assert expect_revert("InvalidValidity", world.c("authority").register_member, who, 1, b"\0" * 32, b"\0" * 32,
                         5, 4) == {"from": 5, "until": 4}
    expect_revert("NotActiveMember", world.c("authority").revoke_member, who)


def test_member_outside_validity_is_inactive(world: World) -> None:
    who = world.addr("attacker")
    world.c("authority").register_member(who, 4, b"\0" * 32, b"\0" * 32, world.now + 10_000, world.now + 20_000)
    assert not world.c("bank").is_active(who, 4)
    expect_revert("NotActiveMember", world.c("attacker").record_deposit, keccak(text="d"), USER, 1, b"\0" * 32)


def test_deposits_duplicate_zero_and_role(world: World) -> None:
    bank = world.c("bank")
    bank.record_deposit(keccak(text="d1"), USER, 70, keccak(text="ref"))
    assert bank.user_funds(USER).deposited == 70
    expect_revert("DuplicateDeposit", bank.record_deposit, keccak(text="d1"), USER, 70, keccak(text="ref"))
    expect_revert("ZeroAmount", bank.record_deposit, keccak(text="d2"), USER, 0, keccak(text="ref"))
    expect_revert("NotActiveMember", world.c("clearing_center").record_deposit, keccak(text="d3"), USER, 1,
                  keccak(text="ref"))


def test_policy_versions_and_owner(world: World) -> None:
    cp, content = world.c("content_provider"), keccak(text="movie")
    payees = [(world.addr("content_provider"), 10_000)]
    expect_revert("VersionGap", cp.register_policy, content, 2, 100, payees, b"\0" * 32)
    cp.register_policy(content, 1, 100, payees, keccak(text="h1"))
    expect_revert("PolicyExists", cp.register_policy, content, 1, 100, payees, b"\0" * 32)
    assert expect_revert("VersionGap", cp.register_policy, content, 3, 100, payees, b"\0" * 32) == {
        "expected": 2, "got": 3}
    cp.register_policy(content, 2, 150, payees, keccak(text="h2"))
    assert cp.latest_version(content) == 2
    pol = cp.policy(keccak(encode(["bytes32", "uint32"], [content, 2])))
    assert (pol.price, pol.provider, pol.policy_hash, pol.version) == (150, world.addr("content_provider"),
                                                                       keccak(text="h2"), 2)
    world.c("authority").register_member(world.addr("attacker"), 3, b"\0" * 32, b"\0" * 32, 0, 2**40 - 1)
    expect_revert("NotContentOwner", world.c("attacker").register_policy, content, 3, 100, payees, b"\0" * 32)
    expect_revert("NotActiveMember", world.c("bank").register_policy, keccak(text="x"), 1, 100, payees, b"\0" * 32)
    expect_revert("UnknownPolicy", cp.policy, keccak(text="none"))


@pytest.mark.parametrize("payees_spec, error", [
    ([("content_provider", 5000), ("payee2", 4000)], "BadSplit"),
    ([], "TooManyPayees"),
    ([("content_provider", 1000)] + [(f"p{i}", 1000) for i in range(8)], "TooManyPayees"),
    ([("content_provider", 10_000), ("payee2", 0)], "BadPayee"),
    ([("content_provider", 5000), ("content_provider", 5000)], "BadPayee"),
    ([("zero", 10_000)], "BadPayee"),
])
def test_policy_rejects_bad_splits(world: World, payees_spec, error: str) -> None:
    def address(name: str) -> str:
        if name == "zero":
            return "0x" + "00" * 20
        return world.addr(name) if name in world.env.actors else "0x" + keccak(text=name)[:20].hex()

    payees = [(address(n), bps) for n, bps in payees_spec]
    expect_revert(error, world.c("content_provider").register_policy, keccak(text="c"), 1, 100, payees, b"\0" * 32)


@pytest.mark.parametrize("price", [0, 2**88])
def test_policy_rejects_bad_price(world: World, price: int) -> None:
    payees = [(world.addr("content_provider"), 10_000)]
    assert expect_revert("BadPrice", world.c("content_provider").register_policy, keccak(text="c"), 1, price,
                         payees, b"\0" * 32) == {"price": price}


def test_transfers_split_with_remainder_and_confirm_once(world: World) -> None:
    pid = world.policy(price=333)  # 70 % content provider, 30 % payee2
    world.issue(SERIAL, cap=10_000)
    world.settle(world.use(SERIAL, pid, 1, price=333))
    receipt, ids = world.c("clearing_center").request_transfers([pid])
    reqs = [world.c("bank").transfer_request(i) for i in ids]
    amounts = {r.payee: r.amount for r in reqs}
    assert amounts == {world.addr("content_provider"): 333 - 333 * 3000 // 10_000, world.addr("payee2"): 99}
    assert sum(amounts.values()) == 333
    pol = world.c("bank").policy(pid)
    assert pol.requested == pol.settled == 333 and pol.accrued == 0
    expect_revert("NothingToRequest", world.c("clearing_center").request_transfers, [pid])
    world.c("bank").confirm_transfer(ids[0], keccak(text="wire-1"))
    assert world.c("bank").transfer_request(ids[0]).confirmed
    assert expect_revert("TransferAlreadyConfirmed", world.c("bank").confirm_transfer, ids[0], keccak(text="w2")) == {
        "requestId": ids[0], "bankRef": keccak(text="wire-1")}
    expect_revert("UnknownTransferRequest", world.c("bank").confirm_transfer, keccak(text="no"), b"\0" * 32)
    expect_revert("NotActiveMember", world.c("clearing_center").confirm_transfer, ids[1], b"\0" * 32)


def test_transfers_aggregate_payees_and_reject_duplicates(world: World) -> None:
    a, b = world.policy(price=100), world.policy(price=50)
    world.issue(SERIAL, cap=10_000)
    world.settle(world.item(world.batch(SERIAL, [a, b], [(0, 100, world.now), (1, 50, world.now)])))
    expect_revert("DuplicatePolicyInRequest", world.c("clearing_center").request_transfers, [a, a])
    expect_revert("UnknownPolicy", world.c("clearing_center").request_transfers, [keccak(text="none")])
    _, ids = world.c("clearing_center").request_transfers([a, b])
    assert len(ids) == 2
    total = sum(world.c("bank").transfer_request(i).amount for i in ids)
    assert total == 150
