"""The settlement worker's test-only crash hook refuses a point it does not know: a typo in CLEARHOUSE_CRASH_AT
must stop the worker at start, not run a crash test that never crashes (and passes for the wrong reason).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from offchain import storage
from offchain.clearing_center.settlement import CRASH_ENV, CRASH_POINTS, SettlementWorker, build_worker
from offchain.clearing_center.store import CcStore


class NoChain:
    """ChainWriter double for the constructor: it only reads `w3`; nothing is ever sent."""

    w3 = None


@pytest.fixture
def store(tmp_path: Path) -> CcStore:
    return CcStore(storage.make_engine(f"sqlite:///{tmp_path / 'cc.db'}"), lambda: 1_000)


def test_unknown_crash_point_is_refused_naming_the_variable_and_the_points(store: CcStore) -> None:
    assert CRASH_ENV == "CLEARHOUSE_CRASH_AT" and CRASH_POINTS == ("before_broadcast", "after_broadcast")
    with pytest.raises(ValueError) as caught:
        SettlementWorker(store, NoChain(), crash_at="before_brodcast")  # type: ignore[arg-type]
    message = str(caught.value)
    assert message.startswith("CLEARHOUSE_CRASH_AT must be one of")
    assert "before_broadcast" in message and "after_broadcast" in message
    # positive controls: each known point, and no point at all, build a worker that keeps it
    for point in (*CRASH_POINTS, None):
        assert SettlementWorker(store, NoChain(), crash_at=point).crash_at == point  # type: ignore[arg-type]


def test_unknown_crash_point_from_the_environment_stops_build_worker(store: CcStore,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    settings = SimpleNamespace(settle_batch_max_items=8, settle_gas_budget=None)
    monkeypatch.setenv(CRASH_ENV, "halfway")
    with pytest.raises(ValueError, match="CLEARHOUSE_CRASH_AT must be one of"):
        build_worker(settings, store, NoChain())  # type: ignore[arg-type]
    monkeypatch.setenv(CRASH_ENV, "after_broadcast")
    assert build_worker(settings, store, NoChain()).crash_at == "after_broadcast"  # type: ignore[arg-type]
    monkeypatch.setenv(CRASH_ENV, "")  # empty is "no crash point"
    worker = build_worker(settings, store, NoChain())  # type: ignore[arg-type]
    assert (worker.crash_at, worker.max_items, worker.gas_budget) == (None, 8, None)
