"""The CC bounds a cap to the contract's uint96 before planning an issue or renewal (issue 10, item 3)."""

from __future__ import annotations

import pytest

from offchain.clearing_center.agent import MAX_CAP, _bound_cap
from offchain.core.errors import AllowanceExceeded


def test_cap_at_uint96_max_is_accepted() -> None:
    _bound_cap(bytes(32), 2**96 - 1, "alice", 1)
    assert MAX_CAP == 2**96 - 1


def test_cap_above_uint96_is_refused_before_sending() -> None:
    with pytest.raises(AllowanceExceeded) as info:
        _bound_cap(b"\x01" * 32, 2**96, "alice", 5)
    assert (info.value.cap, info.value.wanted, info.value.user_id) == (2**96 - 1, 5, "alice")
