"""Quiescence waits for real conditions, the chain's too: a transfer request the chain shows without its
confirmation keeps the run from being called quiescent even when every database table is empty (the CC records
its transfer rows only once the request is final, so empty tables alone once let the checker run too early)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from offchain.operator.sim import checker, runner
from offchain.operator.sim.workload import Timeline

REQUEST = b"\x01" * 32


class ChainDouble:
    events: list[dict[str, Any]] = []

    def __init__(self, _url: str, _deployment: Any) -> None:
        pass

    def pin(self) -> int:
        return 1

    def logs(self) -> list[dict[str, Any]]:
        return list(self.events)

    def call(self, name: str, *_args: Any) -> tuple[Any, ...]:
        assert name == "policy"
        return (b"", 1, "0x", 50, b"", 100, 100, [])  # settled 100, requested 100: nothing accrued


class Drained:
    def drain_round(self) -> list[str]:
        return []


def _world(tmp_path: Path) -> Any:
    return SimpleNamespace(node=SimpleNamespace(url="http://unused"), consortium=SimpleNamespace(deployment_path=""),
                           network="anvil", db=lambda name: tmp_path / f"{name}.db", wallets=lambda: {})


@pytest.fixture
def chain(monkeypatch: pytest.MonkeyPatch) -> type[ChainDouble]:
    ChainDouble.events = [{"event": "PolicyRegistered", "policyId": b"\x02" * 32},
                          {"event": "TransferRequested", "requestId": REQUEST, "payee": "0x", "amount": 100}]
    monkeypatch.setattr(checker, "RawChain", ChainDouble)
    return ChainDouble


def test_an_unconfirmed_transfer_on_chain_is_not_quiescent(tmp_path: Path, chain: type[ChainDouble]) -> None:
    quiescent, left = runner._quiesce(_world(tmp_path), Drained(), Timeline(), budget_s=0.5)  # type: ignore[arg-type]
    assert not quiescent
    assert left == ["transfers requested on chain, not confirmed: 1"]


def test_a_confirmed_transfer_is_quiescent(tmp_path: Path, chain: type[ChainDouble]) -> None:
    chain.events.append({"event": "TransferConfirmed", "requestId": REQUEST, "payee": "0x", "amount": 100})
    timeline = Timeline()
    assert runner._quiesce(_world(tmp_path), Drained(), timeline, budget_s=30.0) == (True, [])  # type: ignore[arg-type]
    assert timeline.entries[-1]["what"] == "nothing in flight"


class AdvancingChain:
    """A chain on which the CC's requestTransfers is mined right after the first eth_getLogs: block 10 has the
    settlement (100 accrued), block 11 the TransferRequested (the accrual requested). Reads follow `block`."""

    head = 10
    reads = 0

    def __init__(self, _url: str, _deployment: Any) -> None:
        self.block = "latest"

    def pin(self) -> int:
        self.block = hex(AdvancingChain.head)
        return AdvancingChain.head

    def _at(self) -> int:
        return AdvancingChain.head if self.block == "latest" else int(self.block, 16)

    def logs(self) -> list[dict[str, Any]]:
        at = self._at()
        events = [{"event": "PolicyRegistered", "policyId": b"\x02" * 32, "block": 10},
                  {"event": "TransferRequested", "requestId": REQUEST, "payee": "0x", "amount": 100, "block": 11}]
        AdvancingChain.reads += 1
        if AdvancingChain.reads == 1:
            AdvancingChain.head = 11  # mined meanwhile
        return [e for e in events if e["block"] <= at]

    def call(self, name: str, *_args: Any) -> tuple[Any, ...]:
        requested = 100 if self._at() >= 11 else 0
        return (b"", 1, "0x", 50, b"", 100, requested, [])


def test_a_block_mined_between_the_logs_and_the_views_is_not_quiescent(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Seeds 19, 28 and 31 of a deep run: the logs read before requestTransfers was mined (no TransferRequested),
    the policy view after it (nothing accrued), so the run was called quiescent with a payout unconfirmed."""
    AdvancingChain.head, AdvancingChain.reads = 10, 0
    monkeypatch.setattr(checker, "RawChain", AdvancingChain)
    quiescent, left = runner._quiesce(_world(tmp_path), Drained(), Timeline(), budget_s=0.5)  # type: ignore[arg-type]
    assert not quiescent
    assert any(line.startswith(("accrued on chain", "transfers requested on chain")) for line in left), left
