"""The clearing center's settlement worker: accepted receive logs -> `settle` transactions through an outbox.

Every transaction is signed and written to `settlement_outbox` (raw tx, nonce, hash) before it is broadcast, and
recovery trusts only the chain: a receipt by hash, else the issue logs' settled `nextSeq`. It never guesses, so a
receive log is settled at most once; a crash (`CLEARHOUSE_CRASH_AT`, test only) loses nothing.
"""

from __future__ import annotations

import argparse
import os
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from web3 import Web3
from web3.exceptions import TransactionNotFound

from offchain.clearing_center.stuck import replace_stuck_settlement
from offchain.clearing_center.store import CcStore
from offchain.clearing_center.tables import ReceiveLogRow, SettlementOutbox
from offchain.chain import ClearhouseChain, SettlementItem, encode_settlement_item
from offchain.chain.protocols import ChainWriter
from offchain.core.errors import CallRefused, ContractReverted
from offchain.core.gas import (
    DEFAULT_GAS_BUDGET,
    GAS_PER_EXTRA_POLICY,
    GAS_PER_SETTLE_ITEM,
    GAS_PER_SETTLE_TX,
    GAS_PER_USAGE_LOG,
    estimated_item_gas,
)
from offchain.core.messages import UsageBatch

CRASH_ENV = "CLEARHOUSE_CRASH_AT"
CRASH_POINTS = ("before_broadcast", "after_broadcast")
# geth's pool refuses a transaction over 128 KiB ("oversized data"); anvil has no limit. A settle transaction's
# calldata stays under this, with room for the signature and RLP envelope.
MAX_SETTLE_CALLDATA_BYTES = 120_000

# The gas model (GAS_PER_*, DEFAULT_GAS_BUDGET, estimated_item_gas) lives in offchain.core.gas: the device and the
# SP bound their batches by it too.


PreCheckFailure = ContractReverted | CallRefused  # a deterministic answer of the node: the item's own fault


def revert_reason(error: PreCheckFailure) -> str:
    """`Name(arg=value, ...)` of a decoded revert (or `CallRefused(reason=...)` of a node refusal), as stored in
    `receive_logs.reject_reason`."""
    if isinstance(error, CallRefused):
        return f"CallRefused(reason={(error.reason or '')[:200]})"
    values = error.error_args if isinstance(error.error_args, dict) else {}
    args = ", ".join(f"{k}={'0x' + v.hex() if isinstance(v, bytes) else v}" for k, v in values.items())
    return f"{error.error_name or 'UnknownRevert'}({args})"


def settlement_item(row: ReceiveLogRow) -> tuple[Any, ...]:
    """The `SettlementItem` ABI tuple of a stored receive log."""
    batch = UsageBatch.from_json(row.usage_batch_json)
    return encode_settlement_item(SettlementItem(batch, row.device_sig, row.received_at, row.receiver_sig))


@dataclass(frozen=True)
class Selection:
    """One round's plan: contiguous receive logs to send, and those the chain shows settled or unsettleable.
    `full`: a limit (item count or gas budget) left a contiguous receive log for a later transaction."""

    to_send: tuple[ReceiveLogRow, ...]
    already_settled: tuple[bytes, ...]
    overlapping: tuple[bytes, ...]
    full: bool = False


def row_gas(row: ReceiveLogRow) -> int:
    return estimated_item_gas(row.count, len(row.usage_batch_json.get("policyIds") or ()))


def select_contiguous(rows: Sequence[ReceiveLogRow], next_seq: dict[bytes, int], max_items: int,
                      gas_budget: int | None = None) -> Selection:
    """Per serial (rows sorted by serial, first_seq): logs wholly below nextSeq are settled already, a log that
    starts exactly at the cursor extends the run, a partial overlap can never settle, a gap waits.

    The transaction closes at `max_items` items. An item whose estimated gas does not fit what is left of
    `gas_budget` waits for a later transaction, and so do the later items of its serial (they must follow it),
    but the items of other serials after it still go: one serial never holds back another. An item over the
    budget on its own goes alone, first (the pre-check then has the last word and parks it)."""
    to_send: list[ReceiveLogRow] = []
    settled: list[bytes] = []
    overlapping: list[bytes] = []
    cursor: dict[bytes, int] = dict(next_seq)
    waiting: set[bytes] = set()  # serials whose next item did not fit this transaction
    gas, full = GAS_PER_SETTLE_TX, False
    for row in rows:
        start = cursor[row.serial]
        if row.first_seq + row.count <= next_seq[row.serial]:
            settled.append(row.id)
        elif row.first_seq < start:
            overlapping.append(row.id)
        elif row.first_seq == start and row.serial not in waiting:
            item_gas = row_gas(row)
            if len(to_send) >= max_items or (to_send and gas_budget is not None and gas + item_gas > gas_budget):
                waiting.add(row.serial)  # full for this item: its serial waits, other serials go on
                full = True
                continue
            to_send.append(row)
            cursor[row.serial] = start + row.count
            gas += item_gas
    return Selection(tuple(to_send), tuple(settled), tuple(overlapping), full)


@dataclass
class RoundReport:
    settled: int = 0
    rejected: dict[str, str] = field(default_factory=dict)
    recovered: dict[int, str] = field(default_factory=dict)
    tx_hash: str | None = None


class SettlementWorker:
    """Batches accepted receive logs into `settle` transactions; call `recover()` at start, then `tick()`."""

    def __init__(self, store: CcStore, chain: ChainWriter, *, max_items: int = 64,
                 gas_budget: int | None = DEFAULT_GAS_BUDGET, crash_at: str | None = None,
                 receipt_timeout_s: float = 60.0, stuck_after_s: float | None = None, log: Any = None) -> None:
        if crash_at is not None and crash_at not in CRASH_POINTS:
            raise ValueError(f"{CRASH_ENV} must be one of {CRASH_POINTS}")
        self.store = store
        self.chain = chain
        self.w3: Web3 = chain.w3
        self.max_items = max_items
        self.gas_budget = gas_budget  # estimated gas per settle transaction (None: by item count only)
        self.crash_at = crash_at
        self.receipt_timeout_s = receipt_timeout_s
        self.stuck_after_s = stuck_after_s  # an unmined settle() older than this is replaced with higher fees
        self.log = log or structlog.get_logger("settlement")
        # receive log id -> its SettlementItem ABI tuple and its share of settle() calldata, built once per
        # receive log while it waits (a stored receive log never changes: its id is the digest of its content)
        self._items: dict[bytes, tuple[Any, ...]] = {}
        self._item_bytes: dict[bytes, int] = {}
        self._gas_limit: int | None = None  # the chain's block gas limit, read once

    # --- recovery ---------------------------------------------------------------------------------------------
    def recover(self) -> dict[int, str]:
        """Resolve every outbox row left pending or sent, from the chain only; returns {outbox id: outcome}."""
        outcomes: dict[int, str] = {}
        self.chain.rebroadcast_forgotten()  # what the node forgot (a restart), before judging rows by the chain
        rows = self.store.unfinished_settlements()
        for row in rows:
            outcomes[row.id] = self._recover_one(row, rows)
            self.log.info("settlement.recovered", outbox_id=row.id, tx_hash=row.tx_hash, outcome=outcomes[row.id])
        return outcomes

    def _recover_one(self, row: SettlementOutbox, rows: Sequence[SettlementOutbox] = ()) -> str:
        if row.tx_hash is None:
            return self._resolve_unknown(row, "no transaction was signed")
        receipt = self._receipt(row.tx_hash)
        if receipt is not None:
            if row.status == "pending":  # killed between broadcast and marking it: the receipt proves it was sent
                self.store.update_settlement(row.id, "sent")
            return self._record_receipt(row.id, receipt)
        if self._in_mempool(row.tx_hash):
            if self.stuck_after_s is not None and row.raw_tx and self.store.now() - row.updated_at >= self.stuck_after_s:
                return replace_stuck_settlement(self.store, self.chain, row, self.log)
            return "in_mempool"  # still pending: the next tick looks again, nothing is re-sent meanwhile
        if self._fill_gap(row, rows):
            return "in_mempool"
        return self._resolve_unknown(row, f"transaction {row.tx_hash} unknown to the chain")

    def _fill_gap(self, row: SettlementOutbox, rows: Sequence[SettlementOutbox]) -> bool:
        """A forgotten transaction of a pipelined round while a later one of the worker's waits in the pool on
        its nonce: re-queuing this one's logs would leave that one stuck behind the gap for ever (and no tick
        builds on an open fate), so the same signed bytes are sent again. True when the node took them."""
        if not row.raw_tx or row.nonce is None:
            return False
        later = [r.tx_hash for r in rows if r.nonce is not None and r.nonce > row.nonce and r.tx_hash]
        if not any(self._in_mempool(tx_hash) for tx_hash in later):
            return False
        try:
            self.w3.eth.send_raw_transaction(row.raw_tx)
        except Exception as exc:  # noqa: BLE001 - its nonce is used or the bytes are refused: the chain decides
            self.log.warning("settlement.gap_not_filled", outbox_id=row.id, tx_hash=row.tx_hash, error=str(exc))
            return False
        self.log.warning("settlement.gap_filled", outbox_id=row.id, tx_hash=row.tx_hash, nonce=row.nonce)
        return True

    def _resolve_unknown(self, row: SettlementOutbox, why: str) -> str:
        """The chain never saw the transaction: settled nextSeq decides per log (settled or re-queued)."""
        logs = self.store.receive_logs_of(row.id)
        next_seq = self._next_seqs({r.serial for r in logs})
        settled = {r.id for r in logs if r.first_seq + r.count <= next_seq[r.serial]}
        self.store.resolve_unknown_settlement(row.id, settled, why)
        return f"unknown: {len(settled)} settled on chain, {len(logs) - len(settled)} re-queued"

    def _receipt(self, tx_hash: str) -> Any:
        try:
            return self.w3.eth.get_transaction_receipt(tx_hash)
        except TransactionNotFound:
            return None

    def _in_mempool(self, tx_hash: str) -> bool:
        try:
            tx = self.w3.eth.get_transaction(tx_hash)
        except TransactionNotFound:
            return False
        return tx is not None and tx.get("blockNumber") is None

    def _record_receipt(self, outbox_id: int, receipt: Any) -> str:
        if receipt["status"] == 1:
            self.store.update_settlement(outbox_id, "confirmed")
            return "confirmed"
        # A reverted batch: its logs go back to `accepted`; pre-validation finds the offender next round.
        self.store.update_settlement(outbox_id, "failed", error=f"reverted in block {receipt['blockNumber']}")
        return "reverted"

    # --- one round --------------------------------------------------------------------------------------------
    def tick(self) -> RoundReport:
        """Recover, then send rounds until what was contiguous at the start is sent (each round waits for its
        receipt). A round whose transaction took every contiguous receive log ends the tick: receive logs that
        arrive meanwhile wait for the next tick and share its transaction, instead of one transaction each."""
        report = RoundReport(recovered=self.recover())
        if any(outcome == "in_mempool" for outcome in report.recovered.values()):
            return report  # never build on top of a transaction whose fate is still open
        while True:
            more = self._round(report)
            if not more:
                return report

    def _round(self, report: RoundReport) -> bool:
        """One transaction (or one parked item); True when another round should follow in this tick."""
        rows = self.store.accepted_receive_logs()
        if not rows:
            return False
        selection = select_contiguous(rows, self._next_seqs({r.serial for r in rows}), self.max_items,
                                      self.gas_budget)
        self.store.mark_settled_without_outbox(selection.already_settled)
        if selection.overlapping:
            reasons = {i: "BatchReplayed(partially settled by another batch)" for i in selection.overlapping}
            self.store.reject_receive_logs(reasons)
            report.rejected.update({"0x" + i.hex(): r for i, r in reasons.items()})
        if not selection.to_send:
            return bool(selection.already_settled or selection.overlapping)
        chunks = self._chunks(list(selection.to_send))
        items = [row for chunk in chunks for row in chunk]
        checked = self._precheck(items)
        if isinstance(checked, int):  # the whole round passes: sent with the gas its pre-check estimated
            self._send(chunks, report, gas=checked)
            return selection.full or len(items) < len(selection.to_send)  # a limit left some for another round
        index, failure = self._first_failing(items, checked)
        if failure is None:  # items[index] passes alone: only the sum was too much, send what fits
            self._send([self._fit_calldata(items[:index])], report)
            return True
        self._park(items[index], failure, report)
        return True  # the next round settles the rest without it

    def _chunks(self, items: list[ReceiveLogRow]) -> list[list[ReceiveLogRow]]:
        """The round's transactions: `items` cut into calldata-sized prefixes, sent back to back with
        consecutive nonces so that one block can carry them all (a Clique signer builds its next block from the
        pool as the previous one lands: a transaction sent after that waits two periods, not one). Each one's
        gas limit is the pre-check estimate of the whole round, an upper bound of its own use, so the
        transactions together must fit the block gas limit; whatever does not waits for the next round."""
        chunks: list[list[ReceiveLogRow]] = []
        rest = items
        while rest:
            chunk = self._fit_calldata(rest)
            chunks.append(chunk)
            rest = rest[len(chunk):]
        if len(chunks) == 1:
            return chunks
        round_gas = GAS_PER_SETTLE_TX + sum(row_gas(row) for row in items)  # the model bounds the estimate
        fit = max(1, min(len(chunks), self._block_gas_limit() // max(round_gas, 1)))
        return chunks[:fit]

    def _block_gas_limit(self) -> int:
        if self._gas_limit is None:
            self._gas_limit = int(self.w3.eth.get_block("latest")["gasLimit"])
        return self._gas_limit

    def _fit_calldata(self, items: list[ReceiveLogRow]) -> list[ReceiveLogRow]:
        """The longest prefix of `items` whose settle() calldata fits MAX_SETTLE_CALLDATA_BYTES (at least one
        item): a later item of a serial only follows its earlier ones, so a prefix keeps every serial contiguous.
        Each item's share (its ABI encoding plus its offset word) is measured once per receive log."""
        encode = getattr(getattr(self.chain, "contract", None), "encode_abi", None)
        if encode is None:
            return items
        total = 4 + 64  # selector, offset and length of the array
        for index, row in enumerate(items):
            if row.id not in self._item_bytes:
                single = encode("settle", args=[[self._item(row)]])
                self._item_bytes[row.id] = (len(single) - 2) // 2 - 4 - 64
            total += self._item_bytes[row.id]
            if total > MAX_SETTLE_CALLDATA_BYTES and index > 0:
                return items[:index]
        return items

    def _park(self, row: ReceiveLogRow, failure: PreCheckFailure, report: RoundReport) -> None:
        """The item's own deterministic failure (a revert, or the node refusing it): out of every later round."""
        reason = revert_reason(failure)
        self.store.reject_receive_logs({row.id: reason})
        self._forget([row])
        report.rejected["0x" + row.id.hex()] = reason
        self.log.warning("settlement.rejected", receive_log_id="0x" + row.id.hex(),
                         error=getattr(failure, "error_name", None) or failure.code, reason=reason)

    def _item(self, row: ReceiveLogRow) -> tuple[Any, ...]:
        """The SettlementItem ABI tuple of `row`, decoded from its stored batch once while it waits."""
        item = self._items.get(row.id)
        if item is None:
            item = self._items[row.id] = settlement_item(row)
        return item

    def _forget(self, rows: Sequence[ReceiveLogRow]) -> None:
        """Drop what was built for receive logs that left the queue (sent or parked)."""
        for row in rows:
            self._items.pop(row.id, None)
            self._item_bytes.pop(row.id, None)

    def _next_seqs(self, serials: set[bytes]) -> dict[bytes, int]:
        return {serial: self.chain.issue_log(serial).next_seq for serial in serials}

    def _precheck(self, items: Sequence[ReceiveLogRow]) -> int | PreCheckFailure:
        """Estimate `settle(items)` (the node runs it): its gas when it passes, the failure when the node answers
        that it does not. ChainUnreachable (no answer at all) propagates: the only reason to stop a round."""
        try:
            return self.chain.estimate("settle", [self._item(r) for r in items])
        except (ContractReverted, CallRefused) as exc:
            return exc

    def _call(self, items: Sequence[ReceiveLogRow]) -> PreCheckFailure | None:
        """The pre-check of `items`: None when it passes, else the failure."""
        checked = self._precheck(items)
        return None if isinstance(checked, int) else checked

    def _first_failing(self, items: list[ReceiveLogRow],
                       failure: PreCheckFailure) -> tuple[int, PreCheckFailure | None]:
        """`items` failed their pre-check with `failure`: bisect for the longest passing prefix items[:k], then
        check items[k] alone: its own failure makes it the offender (index, failure); passing alone (index, None)
        means only the sum failed (out of gas over many items), so items[:k] can go as they are."""
        good, bad = 0, len(items)  # invariant: items[:good] passes, items[:bad] fails
        while bad - good > 1:
            middle = (good + bad) // 2
            if self._call(items[:middle]) is None:
                good = middle
            else:
                bad = middle
        index = bad - 1
        alone = failure if len(items) == 1 else self._call(items[index:bad])
        if alone is None and index > 0:
            return index, None
        return index, alone or self._call(items[:bad]) or failure

    def _send(self, chunks: list[list[ReceiveLogRow]], report: RoundReport, gas: int | None = None) -> None:
        """Sign, record and broadcast one transaction per chunk (consecutive nonces), then wait for each
        receipt in order. A later chunk builds on the earlier ones: if one reverts, those after it revert too
        and every one of their logs goes back to `accepted`."""
        sent = [(chunk, *self._broadcast(chunk, gas)) for chunk in chunks]
        for chunk, outbox_id, tx_hash in sent:
            receipt = self._wait_receipt(tx_hash)
            outcome = self._record_receipt(outbox_id, receipt)
            report.tx_hash = tx_hash
            if outcome == "confirmed":
                report.settled += len(chunk)
            self.log.info("settlement.sent", outbox_id=outbox_id, tx_hash=tx_hash, items=len(chunk),
                          outcome=outcome, gas_used=receipt["gasUsed"], round_txs=len(chunks))

    def _wait_receipt(self, tx_hash: str) -> Any:
        return self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=self.receipt_timeout_s, poll_latency=0.01)

    def _broadcast(self, items: list[ReceiveLogRow], gas: int | None) -> tuple[int, str]:
        outbox: dict[str, int] = {}

        def record(tx_hash: str, nonce: int, raw_tx: bytes) -> None:
            outbox["id"] = self.store.create_settlement([r.id for r in items], tx_hash=tx_hash, nonce=nonce,
                                                        raw_tx=raw_tx)
            self._maybe_crash("before_broadcast")

        tx_hash = self.chain.send_via_outbox("settle", [self._item(r) for r in items], record=record, gas=gas)
        self._forget(items)  # recorded as submitted: a failed transaction re-queues them, rebuilt on demand
        self._maybe_crash("after_broadcast")
        self.store.update_settlement(outbox["id"], "sent")
        return outbox["id"], tx_hash

    def _maybe_crash(self, point: str) -> None:
        if self.crash_at == point:
            self.log.warning("settlement.crash_point", point=point)
            os.kill(os.getpid(), signal.SIGKILL)  # test hook: die like a power cut, no cleanup at all


# --- standalone entry (also the subprocess of the SIGKILL recovery test) ------------------------------------------
def build_worker(settings: Any, store: CcStore, chain: ChainWriter, log: Any = None) -> SettlementWorker:
    """A worker from ClearingCenterSettings (crash point from CLEARHOUSE_CRASH_AT, test only)."""
    return SettlementWorker(store, chain, max_items=settings.settle_batch_max_items,
                            gas_budget=settings.settle_gas_budget, crash_at=os.environ.get(CRASH_ENV) or None,
                            stuck_after_s=getattr(settings, "stuck_tx_after_s", None), log=log)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m offchain.clearing_center.settlement --config cc.json [--once]`: run the worker alone (no HTTP)."""
    from offchain.chain import Deployment
    from offchain.storage import make_engine
    from offchain.core.settings import ClearingCenterSettings, configure_logging, load_settings

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--once", action="store_true", help="one tick, then exit")
    args = parser.parse_args(argv)
    settings = load_settings(ClearingCenterSettings, args.config)
    log = configure_logging(settings)
    store = CcStore(make_engine(settings.database_url), time.time)
    store.create_schema()
    w3 = Web3(Web3.HTTPProvider(settings.rpc_url, request_kwargs={"timeout": 60}))
    chain = ClearhouseChain(w3, Deployment.load(settings.deployment_path), settings.eth_signing_key())
    worker = build_worker(settings, store, chain, log)
    while True:
        report = worker.tick()
        log.info("settlement.tick", settled=report.settled, rejected=len(report.rejected),
                 recovered=len(report.recovered))
        if args.once:
            return 0
        time.sleep(settings.settle_interval_s)


if __name__ == "__main__":  # pragma: no cover - exercised through a subprocess in the recovery test
    raise SystemExit(main())


__all__ = ["SettlementWorker", "RoundReport", "Selection", "select_contiguous", "settlement_item", "revert_reason",
           "estimated_item_gas", "DEFAULT_GAS_BUDGET", "GAS_PER_SETTLE_TX", "GAS_PER_SETTLE_ITEM", "GAS_PER_USAGE_LOG",
           "GAS_PER_EXTRA_POLICY", "CRASH_ENV", "CRASH_POINTS", "build_worker", "main"]
