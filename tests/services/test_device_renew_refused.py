"""A renewal the real CC refuses changes nothing in the wallet; a renewal whose answer is lost keeps the request
and the frozen log for an identical retry (issue 10 item 7). The device talks to the CC service over mTLS.

Refusals: more new money than is unallocated (AllowanceExceeded, from the CC) and an amount the CC's body rules
refuse (negative, or 2**96 and above). After each: same cap, spent, next seq and pending logs, not
`renewal_pending`, no kept request, and offline use still possible. Then a true renewal succeeds (the control).
"""

from __future__ import annotations

from typing import Any

import pytest

from offchain.content_provider.publisher import content_id_for
from offchain.core.errors import AllowanceExceeded, ClearhouseError, InvalidRequest, ServiceUnavailable

DEPOSIT, CAP, PRICE = 5_000, 2_000, 250
Flow = Any  # tests/services/conftest.py Flow


class LoseAnswers:
    """The real CC transport (a JsonTransport), but the next `lose` answers are lost after the CC applied the
    request; the device gets it through its constructor."""

    def __init__(self, inner: Any, lose: int) -> None:
        self.inner, self.lose = inner, lose

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        answer = self.inner.post(path, body)
        if self.lose:
            self.lose -= 1
            raise ServiceUnavailable("the connection closed before the answer", url=path, reason="cut")
        return answer

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.fixture(scope="module")
def cc_link(flow: Flow) -> LoseAnswers:
    return LoseAnswers(flow.services.client("alice-phone", "cc"), lose=0)


@pytest.fixture(scope="module")
def device(flow: Flow, cc_link: LoseAnswers) -> Any:
    flow.deposit("dep-renew-refused", "alice", DEPOSIT)
    flow.publish("renew-film", price=PRICE)
    device = flow.device("alice-phone", cc=cc_link)
    device.request_issue_log(CAP)
    device.download(content_id_for("renew-film"), 1)
    device.use(content_id_for("renew-film"), 1)
    return device


def snapshot(device: Any) -> tuple[Any, ...]:
    b = device.balance()
    return b.serial, b.cap, b.spent, b.next_seq, b.pending_count, b.renewal_pending


@pytest.mark.parametrize("amount, code", [(DEPOSIT, AllowanceExceeded.code), (-1, InvalidRequest.code),
                                          (2**96, InvalidRequest.code)], ids=["over available", "negative", "2**96"])
def test_refused_renewal_leaves_the_wallet_unchanged(device: Any, amount: int, code: str) -> None:
    before = snapshot(device)
    assert before[-1] is False
    with pytest.raises(ClearhouseError) as info:
        device.renew(amount)
    assert info.value.code == code
    assert snapshot(device) == before and device.pending_request() is None
    device.use(content_id_for("renew-film"), 1)  # not frozen: offline use goes on
    assert device.balance().spent == before[2] + PRICE


def test_lost_answer_keeps_the_frozen_log_and_an_identical_retry_applies_once(flow: Flow, device: Any,
                                                                             cc_link: LoseAnswers) -> None:
    cc_link.lose = 1
    with pytest.raises(ServiceUnavailable):
        device.renew(1_000)
    assert cc_link.lose == 0  # the answer of the applied renewal was the one lost
    kept = device.pending_request()
    assert kept is not None and device.balance().renewal_pending  # it may have applied: stay frozen
    renewed = device.resume_pending()
    assert renewed is not None and not renewed.renewal_pending and device.pending_request() is None
    on_chain = flow.chain().issue_log(renewed.serial)
    assert on_chain.cap == renewed.cap
    view = flow.services.client("alice-phone", "cc").get("/v1/users/alice")
    assert view["allocated"] == CAP + 1_000  # the retried request allocated its new money once
