"""The bank as its own process behind the real CC: exactly-once transfers, same id with another payload refused,
requests that disagree with the chain refused, and transfer requests waiting while the bank is down.
"""

from __future__ import annotations

from typing import Any

import pytest

from offchain.trust.certs import Envelope
from offchain.content_provider.publisher import content_id_for
from offchain.core.errors import DuplicateMessage, NotFound, WrongRole
from offchain.core.messages import TransferReceipt, TransferRequest

PRICE = 250
Flow = Any  # tests/services/conftest.py Flow


def sealed_request(flow: Flow, request_id: bytes, payee: str, amount: int) -> dict[str, Any]:
    cc = flow.consortium.member("cc")
    request = TransferRequest(request_id=request_id, payee=payee, amount=amount)
    return {"request": Envelope.seal(request, flow.consortium.domain, cc.eth_private_key(),
                                     cc.cert_path.read_bytes()).to_json()}


def spend_and_settle(flow: Flow, device: Any, uses: int) -> None:
    for _ in range(uses):
        device.use(content_id_for("bank-film"), 1)
    device.upload()
    serial, spent = device.balance().serial, device.balance().spent
    flow.wait_for(lambda: flow.chain().issue_log(serial).spent == spent, what="settlement")


@pytest.fixture(scope="module")
def paid(flow: Flow) -> dict[str, Any]:
    """One full round: deposit, issue, 4 uses, settlement, transfer requests, all confirmed by the bank."""
    flow.deposit("dep-bank-1", "alice", 5_000)
    flow.publish("bank-film")
    device = flow.device()
    device.request_issue_log(4_000)
    device.download(content_id_for("bank-film"), 1)
    spend_and_settle(flow, device, 4)
    chain = flow.chain()
    requests = flow.wait_for(lambda: flow.transfer_requests(), what="transfer requests")
    flow.wait_for(lambda: all(chain.transfer_request(r).confirmed for r, _p, _a in requests), what="confirmations")
    return {"device": device, "requests": requests}


def test_replayed_transfer_returns_same_receipt_and_pays_once(flow: Flow, paid: dict[str, Any]) -> None:
    request_id, payee, amount = paid["requests"][0]
    cc_bank = flow.services.client("cc", "bank")
    body = sealed_request(flow, request_id, payee, amount)
    first, again = cc_bank.post("/v1/transfers", body), cc_bank.post("/v1/transfers", body)
    receipt = Envelope.from_json(first["receipt"]).decode()
    assert isinstance(receipt, TransferReceipt) and receipt.amount == amount
    assert Envelope.from_json(again["receipt"]).decode() == receipt
    assert receipt.bank_ref == flow.chain().transfer_request(request_id).bank_ref
    entries = [e for e in flow.ledger()["entries"] if e["key"] == "transfer:0x" + request_id.hex()]
    assert len(entries) == 1


def test_same_request_id_with_other_amount_is_duplicate(flow: Flow, paid: dict[str, Any]) -> None:
    request_id, payee, amount = paid["requests"][0]
    with pytest.raises(DuplicateMessage):
        flow.services.client("cc", "bank").post("/v1/transfers", sealed_request(flow, request_id, payee, amount + 1))


def test_unknown_request_id_is_refused(flow: Flow, paid: dict[str, Any]) -> None:
    _rid, payee, amount = paid["requests"][0]
    before = flow.ledger()["balances"]
    with pytest.raises(NotFound):
        flow.services.client("cc", "bank").post("/v1/transfers", sealed_request(flow, b"\x42" * 32, payee, amount))
    assert flow.ledger()["balances"] == before


def test_transfer_request_from_non_cc_is_refused(flow: Flow, paid: dict[str, Any]) -> None:
    request_id, payee, amount = paid["requests"][0]
    with pytest.raises(WrongRole):
        flow.services.client("sp", "bank").post("/v1/transfers", sealed_request(flow, request_id, payee, amount))


def test_requests_wait_while_bank_is_down_then_are_paid(flow: Flow, paid: dict[str, Any]) -> None:
    known = {r for r, _p, _a in paid["requests"]}
    flow.services.stop("bank")
    try:
        spend_and_settle(flow, paid["device"], 2)
        new = flow.wait_for(lambda: [r for r in flow.transfer_requests() if r[0] not in known],
                            what="new transfer requests")
        chain = flow.chain()
        assert not any(chain.transfer_request(r).confirmed for r, _p, _a in new)
    finally:
        flow.services.start("bank")
    flow.wait_for(lambda: all(chain.transfer_request(r).confirmed for r, _p, _a in new), what="late confirmations")
    ledger = flow.ledger()
    assert ledger["trial_balance"]["balanced"]
    paid_total = sum(a for _r, _p, a in flow.transfer_requests())
    assert paid_total == 6 * PRICE
    assert sum(v for k, v in ledger["balances"].items() if k.startswith("payee:")) == paid_total

