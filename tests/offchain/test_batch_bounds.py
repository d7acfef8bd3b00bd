"""The device splits its uploads at what one settle transaction carries (issue 9, item 1): the same gas model
(offchain.core.gas) by which the SP and the CC refuse a bigger batch with BatchTooLarge."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from offchain.core.errors import BatchTooLarge
from offchain.core.gas import DEFAULT_GAS_BUDGET, check_batch_fits, estimated_item_gas, max_batch_logs, GAS_PER_SETTLE_TX
from offchain.device.secure_module import _batchable_run

RECEIVER = "0x" + "ab" * 20


def signed_logs(count: int, policies: int = 1) -> list:
    """The fields `_batchable_run` reads of a SignedLog."""
    return [SimpleNamespace(log=SimpleNamespace(seq=i, receiver=RECEIVER, policy_id=bytes([i % policies]) * 32))
            for i in range(count)]


@pytest.mark.parametrize("policies", [1, 2, 16])
def test_device_batch_stops_at_what_one_settle_carries(policies: int) -> None:
    maximum = max_batch_logs(policies)
    run = _batchable_run(signed_logs(maximum + 500, policies))
    assert len(run) == maximum
    assert GAS_PER_SETTLE_TX + estimated_item_gas(len(run), policies) <= DEFAULT_GAS_BUDGET
    check_batch_fits(len(run), policies)  # what the device sends, the SP and the CC accept


def test_batch_one_over_the_bound_is_too_large() -> None:
    maximum = max_batch_logs(2)
    with pytest.raises(BatchTooLarge) as caught:
        check_batch_fits(maximum + 1, 2)
    assert (caught.value.count, caught.value.maximum, caught.value.gas_budget) == (maximum + 1, maximum,
                                                                                   DEFAULT_GAS_BUDGET)
    assert maximum < 40_000 < 65_535  # the review's 40,000-log batch is refused, though within the entry limit
