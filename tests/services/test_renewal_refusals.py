"""A renewal is refused when the device's balance statement cannot be renewed against: an unknown serial, another
device's serial, attested spending over the cap, or attested totals below what already settled.

Each test calls `ClearingCenter.renew` (what `POST /v1/issue-logs/renew` runs after mTLS) with a statement the
device signed, on anvil. A refusal must leave nothing planned or reserved and nothing on chain; then the same
device renews with a true statement (the positive control), so the refusal was about the statement.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_clearing_center import PRICE, CcWorld, make_world

from offchain.clearing_center.bodies import RenewBody
from offchain.clearing_center.settlement import SettlementWorker
from offchain.core import messages
from offchain.core.errors import ClearhouseError, IdentityMismatch, NotFound, StatementRejected
from offchain.core.messages import IssueLog

CAP = 20 * PRICE


@pytest.fixture()
def world(chain_env: Any, tmp_path: Path) -> CcWorld:
    made = make_world(chain_env, tmp_path)
    made.deposit("alice", 1_000)
    return made


def issued(world: CcWorld) -> IssueLog:
    log, _ = world.issue("r1", amount=CAP)
    return log


def settle(world: CcWorld, log: IssueLog, count: int) -> None:
    assert len(world.receive(world.receive_item(*world.batch(log.serial, 0, count)))["accepted"]) == 1
    assert SettlementWorker(world.store, world.env.client("clearing_center")).tick().settled == 1


def refuse(world: CcWorld, statement: dict[str, Any], error: type[ClearhouseError]) -> ClearhouseError:
    """The renewal is refused with `error`; nothing is planned, reserved or sent."""
    renewals_before = renewals(world)
    with pytest.raises(error) as info:
        world.cc.renew(RenewBody(request_id="bad", statement=statement, amount=100), world.peers["device"])
    assert world.store.issue_request(world.peers["device"].eth_address, "bad") is None
    assert world.store.reserved("alice") == 0
    assert renewals(world) == renewals_before
    return info.value


def renewals(world: CcWorld) -> int:
    return len(world.env.client("clearing_center").contract.events.IssueLogRenewed().get_logs(
        from_block=world.env.deployment.deploy_block))


def control(world: CcWorld, log: IssueLog, next_seq: int, spent: int) -> dict[str, Any]:
    """The same device renews with a true statement: accepted."""
    answer = world.cc.renew(RenewBody(request_id="good", statement=world.statement(log.serial, next_seq, spent),
                                      amount=100), world.peers["device"])
    assert answer["mode"] in ("top_up", "new_serial") and renewals(world) == 1
    return answer


def test_renew_refused_for_unknown_serial(world: CcWorld) -> None:
    log = issued(world)
    unknown = messages.keccak(b"no such serial")
    error = refuse(world, world.statement(unknown, 0, 0), NotFound)
    assert error.code == "not_found" and error.http_status == 404
    assert error.fields == {"serial": unknown}
    control(world, log, 0, 0)


def test_renew_refused_for_a_statement_about_another_devices_serial(world: CcWorld) -> None:
    """Alice's device signs (validly, with its own certificate) a statement about bob's device's serial."""
    log = issued(world)
    world.deposit("bob", 1_000, tag="d2")
    bobs, _ = world.issue("b1", user_id="bob", amount=CAP, device="device2")
    error = refuse(world, world.statement(bobs.serial, 0, 0, device="device"), IdentityMismatch)
    assert error.code == "identity_mismatch" and error.http_status == 403
    assert error.fields == {"serial": bobs.serial, "expected": world.peers["device2"].eth_address,
                            "got": world.peers["device"].eth_address}
    assert world.env.client("clearing_center").issue_log(bobs.serial).cap == CAP  # bob's log untouched
    control(world, log, 0, 0)


def test_renew_refused_when_attested_spent_exceeds_the_cap(world: CcWorld) -> None:
    log = issued(world)
    error = refuse(world, world.statement(log.serial, 21, CAP + 1), StatementRejected)
    assert error.code == "statement_rejected" and error.http_status == 422
    assert error.fields == {"serial": log.serial, "reason": "over_cap", "cap": CAP, "settled_spent": 0,
                            "settled_next_seq": 0, "attested_spent": CAP + 1, "attested_next_seq": 21}
    control(world, log, 20, CAP)  # spending exactly the cap is a true statement


@pytest.mark.parametrize(("next_seq", "spent"), [(0, 0), (3, 0), (1, 3 * PRICE)],
                         ids=["both-below", "spent-below", "seq-below"])
def test_renew_refused_when_attested_totals_are_below_settled(world: CcWorld, next_seq: int, spent: int) -> None:
    log = issued(world)
    settle(world, log, 3)
    settled = world.env.client("clearing_center").issue_log(log.serial)
    assert (settled.next_seq, settled.spent) == (3, 3 * PRICE)
    error = refuse(world, world.statement(log.serial, next_seq, spent), StatementRejected)
    assert error.fields == {"serial": log.serial, "reason": "below_settled", "cap": CAP,
                            "settled_spent": 3 * PRICE, "settled_next_seq": 3, "attested_spent": spent,
                            "attested_next_seq": next_seq}
    assert control(world, log, 3, 3 * PRICE)["mode"] == "top_up"  # equal to settled: everything settled
