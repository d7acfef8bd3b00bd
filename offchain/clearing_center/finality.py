"""The clearing center's finality watch: every transaction it made is `included` until it is `confirmations` deep,
then `final`; a reorg that drops one is noticed and repaired from the outbox.

What it follows (cc_chain_txs, written with the CC's own rows, and caught up from its tables at start):
confirmed settlements, completed issue and renew requests, transfer requests; and releases (`releaseIssueLog`, whoever sent them), tracked by
`ClearingCenter.credit_releases` when it first reads their IssueLogReleased event. Per tick it asks `offchain.chain.finality.FinalityTracker` about each one not
yet final, against the (block number, block hash) recorded when it was first seen included:

- included / final: recorded; final is where it stops being watched.
- reorged, and the receipt now points at another canonical block: the new inclusion is recorded (included).
- reorged and gone: the **same signed bytes** are re-broadcast (from the outbox, or as the node served them while
  they were included), never a new transaction; back to pending until they are included again.
- bytes that can no longer be mined (the nonce went to another transaction): `dropped`, and the state is
  re-derived from the chain: a settlement goes back to the worker's recovery (settled nextSeq decides per log);
  a transfer request's rows are re-derived by the transfer worker (`TransferWorker.sync_from_chain`: ids the
  chain no longer has become void, ids it assigned anew are mirrored), whatever state this watch records;
  a release was never credited (credit waits for final), so its event is simply gone until the authority
  releases the still-open log again (`member revoke --release-logs`), a new transaction credited once final.

Transfer requests are delivered to the bank only once final (`is_final`). The bank checks again on its own.
A stalled chain only means nothing becomes final; the watch never blocks a service.
"""

from __future__ import annotations

from typing import Any

import structlog

from offchain.chain.finality import FinalityTracker, Inclusion, TxState
from offchain.clearing_center.store import CcStore
from offchain.clearing_center.tables import ChainTxRow

# geth/anvil answers to a re-broadcast meaning "already have it": not a failure
_ALREADY_KNOWN = ("already known", "known transaction", "already imported", "alreadyknown")
_NONCE_GONE = ("nonce too low", "nonce is too low", "replacement transaction underpriced")
# The rows that name a transaction track it as they are written (records.track_chain_tx); the scan of the whole
# history for anything untracked (rows of an older version, a row written outside the store) runs at the first
# tick and then once every this many ticks (settle_interval_s 2 s: every 20 minutes), so a tick costs what is not
# final, not the history.
FULL_SCAN_EVERY = 600


class FinalityWatch:
    """Follows the CC's transactions to finality and repairs reorgs; `tick()` from a background loop."""

    def __init__(self, store: CcStore, w3: Any, tracker: FinalityTracker | None = None, *,
                 confirmations: int | None = None, log: Any = None) -> None:
        """`tracker`: injected (tests), else built on first use from the node (policy detection plus the
        `confirmations` override), so a service whose chain is down at start still starts."""
        self.store = store
        self.w3 = w3
        self._tracker = tracker
        self.confirmations = confirmations
        self.log = log or structlog.get_logger("finality")
        self._ticks = 0

    @property
    def tracker(self) -> FinalityTracker:
        if self._tracker is None:
            from offchain.transport.wiring import finality_tracker_for

            self._tracker = finality_tracker_for(self.w3, self.confirmations)
        return self._tracker

    # --- one round --------------------------------------------------------------------------------------------
    def tick(self) -> dict[str, int]:
        """Check everything not final (and, at the first tick and every FULL_SCAN_EVERY, track whatever the
        history holds untracked); returns {state: count} of what was checked."""
        if self._ticks % FULL_SCAN_EVERY == 0:
            for kind, ref, tx_hash, raw_tx in self.store.untracked_transactions():
                self.store.track_transaction(kind, ref, tx_hash, raw_tx)
        self._ticks += 1
        seen: dict[str, int] = {}
        for row in self.store.unfinal_transactions():
            state = self.check(row)
            seen[state] = seen.get(state, 0) + 1
        return seen

    def is_final(self, tx_hash: str) -> bool:
        """True once `tx_hash` is followed and final (checked now if it is not yet)."""
        row = self.store.chain_tx(tx_hash)
        if row is None:
            return False
        if row.state == "final":
            return True
        return self.check(row) == "final"

    def check(self, row: ChainTxRow) -> str:
        """Ask the tracker about one row, record the answer, repair a reorg; returns the state stored."""
        recorded = (Inclusion(row.tx_hash, row.block_number, row.block_hash)
                    if row.block_number is not None and row.block_hash else None)
        verdict = self.tracker.check(row.tx_hash, recorded)
        if verdict.state is TxState.REORGED:
            return self._reorged(row, verdict.now_in)
        if verdict.state is TxState.PENDING:
            self._rebroadcast_if_forgotten(row)
            return "pending"
        inclusion = verdict.inclusion
        assert inclusion is not None
        raw = row.raw_tx if row.raw_tx is not None else self._raw_from_node(row.tx_hash)
        state = verdict.state.value
        if state != row.state or recorded is None or raw is not row.raw_tx:
            self.store.set_chain_tx(row.tx_hash, state, block=(inclusion.block_number, inclusion.block_hash),
                                    raw_tx=raw)
            if state == "final":
                self.log.info("finality.final", kind=row.kind, ref=row.ref, tx_hash=row.tx_hash,
                              block=inclusion.block_number, depth=verdict.depth)
        return state

    # --- repairs ----------------------------------------------------------------------------------------------
    def _reorged(self, row: ChainTxRow, now_in: Inclusion | None) -> str:
        if now_in is not None:  # mined again elsewhere (another node had it in its pool): follow the new block
            self.log.warning("finality.reorged", kind=row.kind, ref=row.ref, tx_hash=row.tx_hash,
                             was_block=row.block_number, now_block=now_in.block_number)
            self.store.set_chain_tx(row.tx_hash, "included", block=(now_in.block_number, now_in.block_hash),
                                    reorged=True)
            return "included"
        self.log.warning("finality.reorged", kind=row.kind, ref=row.ref, tx_hash=row.tx_hash,
                         was_block=row.block_number, action="rebroadcast")
        outcome = self._broadcast(row)
        if outcome == "dropped":
            return self._dropped(row)
        self.store.set_chain_tx(row.tx_hash, "pending", block=None, reorged=True)
        return "pending"

    def _rebroadcast_if_forgotten(self, row: ChainTxRow) -> None:
        """Pending and unknown to the node (a rewound node drops the discarded blocks' transactions)."""
        try:
            self.w3.eth.get_transaction(row.tx_hash)
            return
        except Exception:  # noqa: BLE001 - TransactionNotFound (or a node hiccup): try the bytes again
            pass
        if self._broadcast(row) == "dropped":
            self._dropped(row)

    def _broadcast(self, row: ChainTxRow) -> str:
        """Send the same signed bytes again: 'sent', 'known' (the node has them), 'dropped' (can never be mined),
        'none' (no bytes kept) or 'failed' (no answer: the next tick tries again)."""
        if row.raw_tx is None:
            return "none"
        try:
            self.w3.eth.send_raw_transaction(row.raw_tx)
            self.log.info("finality.rebroadcast", kind=row.kind, ref=row.ref, tx_hash=row.tx_hash)
            return "sent"
        except Exception as exc:  # noqa: BLE001 - classified by the node's message
            text = str(exc).lower()
            if any(m in text for m in _ALREADY_KNOWN):
                return "known"
            if any(m in text for m in _NONCE_GONE):
                return "dropped"
            self.log.warning("finality.rebroadcast_failed", tx_hash=row.tx_hash, error=str(exc)[:200])
            return "failed"

    def _dropped(self, row: ChainTxRow) -> str:
        self.log.error("finality.dropped", kind=row.kind, ref=row.ref, tx_hash=row.tx_hash,
                       action="re-derive from the chain")
        self.store.set_chain_tx(row.tx_hash, "dropped", block=None)
        if row.kind == "settlement":
            self.store.reopen_settlement(int(row.ref), f"reorged out and not minable again: {row.tx_hash}")
        return "dropped"

    def _raw_from_node(self, tx_hash: str) -> bytes | None:
        """The signed bytes of an included transaction, as the node serves them (geth and anvil both do)."""
        try:
            reply = self.w3.provider.make_request("eth_getRawTransactionByHash", [tx_hash])
        except Exception:  # noqa: BLE001 - optional: without it a reorg is handled by re-derivation only
            return None
        result = reply.get("result") if isinstance(reply, dict) else None
        if not result or result == "0x":
            return None
        return bytes.fromhex(str(result).removeprefix("0x"))


def summary(store: CcStore) -> dict[str, int]:
    """{state: count} of every followed transaction (for status pages and tests)."""
    return store.chain_tx_counts()


__all__ = ["FinalityWatch", "summary"]
