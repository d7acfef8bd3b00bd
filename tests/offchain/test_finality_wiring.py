"""The bank's and the CC's lazily built finality trackers take their `confirmations` override through the one
wiring helper (`offchain.transport.wiring.finality_tracker_for`), against a node that identifies as anvil."""

from __future__ import annotations

from typing import Any

from offchain.bank.finality import TransferFinality
from offchain.clearing_center.finality import FinalityWatch
from offchain.transport.wiring import finality_tracker, finality_tracker_for


class AnvilProvider:
    def make_request(self, method: str, params: list[Any]) -> dict[str, Any]:
        if method == "web3_clientVersion":
            return {"result": "anvil/v0.2.0"}
        return {"error": {"code": -32601, "message": f"{method} not supported"}}


class AnvilWeb3:
    provider = AnvilProvider()


def test_finality_tracker_for_uses_the_override_or_the_chains_policy() -> None:
    assert finality_tracker_for(AnvilWeb3(), None).policy.confirmations == 0  # anvil: instant
    assert finality_tracker_for(AnvilWeb3(), 3).policy.confirmations == 3


def test_service_settings_confirmations_reach_the_tracker() -> None:
    settings = type("Settings", (), {"confirmations": 2})()
    assert finality_tracker(settings, AnvilWeb3()).policy.confirmations == 2


def test_bank_and_cc_lazy_trackers_take_their_confirmations() -> None:
    assert TransferFinality(AnvilWeb3(), None, confirmations=4).tracker.policy.confirmations == 4
    assert FinalityWatch(None, AnvilWeb3(), confirmations=5).tracker.policy.confirmations == 5  # type: ignore[arg-type]
