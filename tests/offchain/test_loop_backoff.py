"""A background loop that keeps failing logs one warning (not a traceback per poll), backs off, and says once when
it recovers."""

from __future__ import annotations

import logging

import pytest

from offchain.core.errors import ChainUnreachable
from offchain.transport.ops import LoopBackoff


def test_an_outage_gives_one_warning_with_backoff_and_one_recovery(caplog: pytest.LogCaptureFixture) -> None:
    gate = LoopBackoff("settlement.tick", logging.getLogger("loop-test"), 0.5, max_s=8)
    with caplog.at_level(logging.INFO, logger="loop-test"):
        delays = [gate.failed(ChainUnreachable("no chain answers", url="http://127.0.0.1:1")) for _ in range(100)]
        assert gate.succeeded() == 0.5
    assert delays[:6] == [0.5, 1, 2, 4, 8, 8] and max(delays) == 8
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "no chain answers" in warnings[0].getMessage()
    assert warnings[0].exc_info is None  # a known outage: no traceback
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.INFO] == \
        ["settlement.tick recovered after 100 failed rounds"]


def test_an_unexpected_error_keeps_its_traceback_once(caplog: pytest.LogCaptureFixture) -> None:
    gate = LoopBackoff("transfers.round", logging.getLogger("loop-test"), 1)
    with caplog.at_level(logging.INFO, logger="loop-test"):
        for _ in range(3):
            gate.failed(KeyError("bug"))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].exc_info is not None
    assert gate.succeeded() == 1 and gate.failed(KeyError("again")) == 1  # a new outage starts from the interval
