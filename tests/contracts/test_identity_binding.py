"""On-chain identity bindings (issue 9, items 4 and 6): a device is registered for one user, and `issue`/`renew`
spend only that user's deposits on it, whoever holds the clearing center key; a content id belongs to the provider
that registered version 1, and only that provider adds versions."""

from __future__ import annotations

import pytest
from eth_abi import encode
from eth_utils import keccak

from chainkit import World, expect_revert

ALICE = keccak(text="alice")  # the user `device` is registered for (tests/conftest.py DEVICE_USERS)
BOB = keccak(text="bob")  # the user of `device2`
SERIAL = keccak(text="binding-serial")
FOREVER = 2**40 - 1


@pytest.fixture()
def world(chain_env) -> World:
    return World(chain_env)


def test_register_member_device_without_user_or_other_role_with_user_reverts(world: World) -> None:
    auth, who = world.c("authority"), world.addr("attacker")
    assert expect_revert("InvalidUserIdHash", auth.register_member, who, 5, keccak(text="m"), keccak(text="c"), 0,
                         FOREVER) == {"account": who, "role": 5, "userIdHash": bytes(32)}
    assert expect_revert("InvalidUserIdHash", auth.register_member, who, 2, keccak(text="m"), keccak(text="c"), 0,
                         FOREVER, user_id_hash=ALICE) == {"account": who, "role": 2, "userIdHash": ALICE}
    auth.register_member(who, 5, keccak(text="m"), keccak(text="c"), 0, FOREVER, user_id_hash=ALICE)
    assert auth.member(who).user_id_hash == ALICE == auth.call("deviceUser", who)


def test_issue_other_users_deposits_on_device_reverts_cc_key_cannot_redirect(world: World) -> None:
    cc = world.c("clearing_center")
    world.fund(BOB, 500)
    assert expect_revert("DeviceUserMismatch", cc.issue, SERIAL, world.addr("device"), BOB, 500,
                         world.now + 86_400) == {"device": world.addr("device"), "expected": ALICE, "got": BOB}
    assert world.c("bank").user_funds(BOB).allocated == 0
    assert not world.c("bank").issue_log(SERIAL).exists
    world.issue(SERIAL, 500, user=BOB, device="device2", fund=False)  # honest: Bob's own device still gets it
    assert world.c("bank").issue_log(SERIAL).device == world.addr("device2")
    assert world.c("bank").user_funds(BOB).allocated == 500


def test_renew_after_device_registered_for_another_user_reverts(world: World) -> None:
    world.issue(SERIAL, 300)  # device, Alice
    world.fund(ALICE, 200)
    world.c("authority").register_member(world.addr("device"), 5, keccak(text="device"), keccak(text="cert:device"),
                                         0, FOREVER, user_id_hash=BOB)  # the device changed hands
    statement, sig = world.statement(SERIAL, 0, 0)
    assert expect_revert("DeviceUserMismatch", world.c("clearing_center").renew, SERIAL, statement, sig, SERIAL,
                         200, world.now + 86_400) == {"device": world.addr("device"), "expected": BOB, "got": ALICE}
    other = keccak(text="binding-serial-2")
    world.issue(other, 100, device="device2")  # honest: device2 (Bob) renews as before
    statement, sig = world.statement(other, 0, 0, device="device2")
    world.c("clearing_center").renew(other, statement, sig, other, 0, world.now + 86_400)
    assert world.c("bank").issue_log(other).cap == 100


def test_register_policy_on_someone_elses_content_id_reverts_owner_unaffected(world: World) -> None:
    owner, content = world.c("content_provider"), keccak(text="victim-film")
    payees = [(world.addr("content_provider"), 10_000)]
    owner.register_policy(content, 1, 100, payees, keccak(text="h1"))
    world.c("authority").register_member(world.addr("attacker"), 3, keccak(text="a"), keccak(text="ca"), 0, FOREVER)
    thief = world.c("attacker")
    assert expect_revert("NotContentOwner", thief.register_policy, content, 2, 1, [(world.addr("attacker"), 10_000)],
                         keccak(text="evil")) == {"contentId": content, "owner": world.addr("content_provider"),
                                                  "caller": world.addr("attacker")}
    owner.register_policy(content, 2, 120, payees, keccak(text="h2"))  # the owner's next version still lands
    pol = owner.policy(keccak(encode(["bytes32", "uint32"], [content, 2])))
    assert (pol.provider, pol.price, pol.policy_hash) == (world.addr("content_provider"), 120, keccak(text="h2"))
