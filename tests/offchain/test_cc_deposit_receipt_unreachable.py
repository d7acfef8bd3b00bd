"""The CC proves a deposit notice from the transaction's receipt; a node that does not answer that read is
`chain_unreachable` (HTTP 502, the bank retries), not an opaque 500 `internal_error`. Found by the fault
simulator (`clearhouse sim`, seed 82): the receipt read (raw web3, outside the chain client's error mapping)
raised requests' ConnectionError ('Connection aborted', RemoteDisconnected) and the notice answered 500.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import requests
from web3.exceptions import TransactionNotFound

from offchain.clearing_center.agent import ClearingCenter
from offchain.core.errors import ChainUnreachable, DepositNotProven

TX = "0x" + "ab" * 32


def _cc(error: Exception) -> Any:
    def receipt(_tx: str) -> Any:
        raise error

    return SimpleNamespace(chain=SimpleNamespace(w3=SimpleNamespace(eth=SimpleNamespace(
        get_transaction_receipt=receipt)), address="0x" + "cc" * 20))


@pytest.mark.parametrize("error", [requests.exceptions.ConnectionError("('Connection aborted.', RemoteDisconnected())"),
                                   requests.exceptions.ReadTimeout("read timed out"),
                                   ConnectionRefusedError(111, "Connection refused")])
def test_a_node_that_does_not_answer_the_receipt_read_is_chain_unreachable(error: Exception) -> None:
    with pytest.raises(ChainUnreachable) as caught:
        ClearingCenter._deposit_event(_cc(error), b"\x01" * 32, TX)  # type: ignore[arg-type]
    assert (caught.value.code, caught.value.http_status) == ("chain_unreachable", 502)
    assert caught.value.fields["function"] == "getTransactionReceipt"


def test_an_unknown_transaction_stays_deposit_not_proven() -> None:  # the control: the node answered
    with pytest.raises(DepositNotProven) as caught:
        ClearingCenter._deposit_event(_cc(TransactionNotFound("no such tx")), b"\x01" * 32, TX)  # type: ignore[arg-type]
    assert caught.value.fields["reason"] == "unknown transaction"
