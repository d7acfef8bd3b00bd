"""The whole settlement story with every service in its own process on anvil: deposit -> issue log -> offline
uses -> upload -> receive log -> on-chain settlement -> transfer requests -> bank transfers -> confirmation, and
the money adding up at every party (chain, CC balance database, bank ledger) after each step.
"""

from __future__ import annotations

from typing import Any

import pytest

from offchain.core.types import user_id_hash

PRICE = 250
DEPOSIT = 10_000
CAP = 5_000
USES = 3

Flow = Any  # tests/services/conftest.py Flow


@pytest.fixture(scope="module")
def story(flow: Flow) -> dict[str, Any]:
    return {}


def test_deposit_is_on_chain_in_bank_ledger_and_in_cc(flow: Flow, story: dict[str, Any]) -> None:
    answer = flow.deposit("dep-alice-1", "alice", DEPOSIT)
    assert answer["cc_notified"] is True
    assert flow.deposit("dep-alice-1", "alice", DEPOSIT)["bank_ref"] == answer["bank_ref"]  # idempotent replay
    funds = flow.chain().user_funds(user_id_hash("alice"))
    assert (funds.deposited, funds.allocated) == (DEPOSIT, 0)
    assert flow.ledger()["balances"]["cc:management"] == DEPOSIT
    view = flow.services.client("bank", "cc").get("/v1/users/alice")  # the device is not linked to alice yet
    assert view["deposited"] == DEPOSIT


def test_issue_log_is_anchored_and_installed(flow: Flow, story: dict[str, Any]) -> None:
    story["policy_id"] = flow.publish("e2e-film")
    device = flow.device()
    story["device"] = device
    balance = device.request_issue_log(CAP)
    assert (balance.cap, balance.spent) == (CAP, 0)
    on_chain = flow.chain().issue_log(balance.serial)
    assert (on_chain.cap, on_chain.device) == (CAP, device.module.eth_address)
    assert flow.chain().user_funds(user_id_hash("alice")).allocated == CAP


def test_uses_are_offline(flow: Flow, story: dict[str, Any]) -> None:
    from offchain.content_provider.publisher import content_id_for

    device = story["device"]
    device.download(content_id_for("e2e-film"), 1)
    flow.services.stop("sp")
    flow.services.stop("cc")
    try:
        for _ in range(USES):
            assert device.use(content_id_for("e2e-film"), 1) == b"e2e-film" * 100
    finally:
        flow.services.start("cc")
        flow.services.start("sp")
    assert device.balance().spent == USES * PRICE


def test_upload_settles_on_chain_and_bank_pays_the_split(flow: Flow, story: dict[str, Any]) -> None:
    device = story["device"]
    result = device.upload()
    assert (result.batches, result.logs) == (1, USES)
    chain = flow.chain()
    serial = device.balance().serial
    flow.wait_for(lambda: chain.issue_log(serial).spent == USES * PRICE, what="settlement on chain")
    policy = chain.policy(story["policy_id"])
    assert policy.settled == USES * PRICE
    flow.wait_for(lambda: chain.policy(story["policy_id"]).requested == USES * PRICE, what="transfer requests")
    requests = flow.transfer_requests()
    flow.wait_for(lambda: all(chain.transfer_request(rid).confirmed for rid, _p, _a in requests),
                  what="bank confirmations on chain")
    assert_money_adds_up(flow, requests)


def assert_money_adds_up(flow: Flow, requests: list[tuple[bytes, str, int]]) -> None:
    """Chain, bank ledger and the split agree to the minor unit."""
    total = USES * PRICE
    studio, studio2 = (flow.consortium.member(m).eth_address for m in ("studio", "studio2"))
    paid = {payee: amount for _rid, payee, amount in requests}
    assert paid == {studio: total * 7000 // 10000 + total - (total * 7000 // 10000 + total * 3000 // 10000),
                    studio2: total * 3000 // 10000}
    assert sum(paid.values()) == total
    ledger = flow.ledger()
    balances = ledger["balances"]
    assert ledger["trial_balance"]["balanced"]
    assert balances[f"payee:{studio}"] == paid[studio] and balances[f"payee:{studio2}"] == paid[studio2]
    assert balances["cc:management"] == DEPOSIT - total
    chain = flow.chain()
    for request_id, _payee, _amount in requests:
        info = chain.transfer_request(request_id)
        entry = [e for e in ledger["entries"] if e["key"] == "transfer:0x" + request_id.hex()]
        assert info.confirmed and len(entry) == 1 and entry[0]["bank_ref"] == "0x" + info.bank_ref.hex()


def test_cc_balance_view_matches_chain(flow: Flow, story: dict[str, Any]) -> None:
    view = flow.services.client("alice-phone", "cc").get("/v1/users/alice")
    funds = flow.chain().user_funds(user_id_hash("alice"))
    assert (view["deposited"], view["allocated"]) == (funds.deposited, funds.allocated) == (DEPOSIT, CAP)
