"""`member revoke` as an ordered, resumable operation (offchain/operator/revocation.py) on anvil with a real CA:
the chain step first, the CRL only after it, a device's issue logs released, a half-done revocation shown and
completed by running it again. The stolen-phone story: revoke, release, the user's new phone gets the money."""

from __future__ import annotations

from pathlib import Path

import pytest
from eth_account import Account
from eth_utils import keccak

from chainkit import World, expect_revert
from offchain.core.errors import ContractReverted
from offchain.core.types import Role
from offchain.operator.revocation import revocation_status, revoke_member
from offchain.trust.ca import CertificateAuthority

PHONE = keccak(text="serial-stolen")
NEW_PHONE = keccak(text="serial-replacement")


@pytest.fixture()
def world(chain_env) -> World:
    return World(chain_env)


@pytest.fixture()
def ca(tmp_path: Path, world: World) -> CertificateAuthority:
    authority = CertificateAuthority.create(tmp_path / "ca")
    authority.issue_member("alice-phone", Role.DEVICE, world.addr("device"), user_id="alice")
    return authority


def test_revoke_with_wrong_authority_key_writes_no_crl(world: World, ca: CertificateAuthority) -> None:
    with pytest.raises(ContractReverted) as info:
        revoke_member(ca, world.c("attacker"), "alice-phone")
    assert info.value.error_name == "NotAuthority"
    assert not ca.is_revoked("alice-phone")  # the old order put the member on the CRL and then failed
    status = revocation_status(ca, world.c("authority"), "alice-phone")
    assert not status.complete and status.pending_steps[0].startswith("revoke ")
    assert revoke_member(ca, world.c("authority"), "alice-phone").complete  # positive control


def test_half_done_revocation_is_visible_and_resumes(world: World, ca: CertificateAuthority) -> None:
    world.c("authority").revoke_member(world.addr("device"))  # the chain step went through, then a crash
    status = revocation_status(ca, world.c("authority"), "alice-phone")
    assert status.on_chain == {world.addr("device"): True} and not status.on_crl
    assert status.pending_steps == ["write the CRL"]
    done = revoke_member(ca, world.c("authority"), "alice-phone")  # revokeMember is not sent twice
    assert done.complete and ca.is_revoked("alice-phone") and done.pending_steps == []


def test_stolen_phone_money_goes_to_the_new_phone(world: World, ca: CertificateAuthority) -> None:
    user = world.c("bank").member(world.addr("device")).user_id_hash
    pid = world.policy(price=100)
    world.issue(PHONE, cap=10_000)
    world.settle(world.use(PHONE, pid, 10))
    thief_log = world.use(PHONE, pid, 1)  # signed on the stolen phone, uploaded later
    status = revoke_member(ca, world.c("authority"), "alice-phone", release_logs=True)
    assert status.complete and [(r.serial, r.open_amount, r.released) for r in status.logs] == [
        (PHONE, 9_000, 9_000)]
    assert world.c("bank").user_funds(user).allocated == 1_000
    expect_revert("NotActiveMember", world.settle, thief_log)
    new_phone = Account.from_key(keccak(text="replacement")).address
    world.c("authority").register_member(new_phone, 5, keccak(text="alice-tablet"), keccak(text="cert"), 0,
                                         2**40 - 1, user_id_hash=user)
    world.c("clearing_center").issue(NEW_PHONE, new_phone, user, 9_000, world.now + 86400)
    assert world.c("bank").user_funds(user).allocated == 10_000
    again = revoke_member(ca, world.c("authority"), "alice-phone", release_logs=True)  # idempotent
    assert again.complete and [r.open_amount for r in again.logs] == [0]
