"""The bank waits for finality: it pays a transfer request only when its TransferRequested event is final, and
answers with a receipt only when its own TransferConfirmed event is final.

Both checks read the event's (transaction, block number, block hash) from the chain and ask
`offchain.chain.finality.FinalityTracker`, which re-reads the block hash at that height: a request included on a
fork that a reorg undid is not found (or is `reorged`) and is not paid. Not final yet raises
`TransactionPending` (retryable): the CC delivers again later, and every step of the bank is idempotent by request
id. A reorged confirmation is re-derived from the chain: the request shows unconfirmed again, so the next delivery
confirms it again (the contract accepts one confirmation per request id).
"""

from __future__ import annotations

from typing import Any

from offchain.chain.finality import FinalityTracker, Inclusion, TxState
from offchain.core.errors import NotFound, TransactionPending
from offchain.core.types import to_hex


class TransferFinality:
    """Finality checks of the bank's two events; `tracker` is built from the node on first use when not given."""

    def __init__(self, w3: Any, contract: Any, tracker: FinalityTracker | None = None, *,
                 confirmations: int | None = None, deploy_block: int = 0) -> None:
        self.w3 = w3
        self.contract = contract
        self._tracker = tracker
        self.confirmations = confirmations
        self.deploy_block = deploy_block

    @property
    def tracker(self) -> FinalityTracker:
        if self._tracker is None:
            from offchain.transport.wiring import finality_tracker_for

            self._tracker = finality_tracker_for(self.w3, self.confirmations)
        return self._tracker

    def require_request_final(self, request_id: bytes) -> Inclusion:
        """The TransferRequested event of `request_id` is final; else TransactionPending (or NotFound)."""
        return self._require_final("TransferRequested", request_id)

    def require_confirmation_final(self, request_id: bytes) -> Inclusion:
        """The TransferConfirmed event of `request_id` is final; else TransactionPending (or NotFound)."""
        return self._require_final("TransferConfirmed", request_id)

    def _require_final(self, event_name: str, request_id: bytes) -> Inclusion:
        event = getattr(self.contract.events, event_name)()
        logs = event.get_logs(from_block=self.deploy_block, argument_filters={"requestId": request_id})
        if not logs:
            raise NotFound(f"no {event_name} event for this transfer request on the canonical chain",
                           request_id=request_id)
        last = logs[-1]
        inclusion = Inclusion("0x" + bytes(last["transactionHash"]).hex(), int(last["blockNumber"]),
                              "0x" + bytes(last["blockHash"]).hex())
        verdict = self.tracker.check(inclusion.tx_hash, inclusion)
        if verdict.state is not TxState.FINAL:
            raise TransactionPending(f"{event_name} of {to_hex(request_id)} is {verdict.state.value} "
                                     f"(depth {verdict.depth} of {self.tracker.policy.confirmations}): retry later",
                                     tx_hash=inclusion.tx_hash)
        return inclusion


__all__ = ["TransferFinality"]
