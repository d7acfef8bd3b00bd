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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from web3 import Web3
from web3.exceptions import TransactionNotFound

from offchain.clearing_center.store import CcStore, ReceiveLogRow, SettlementOutbox
from offchain.chain.client import ClearhouseChain, SettlementItem, encode_settlement_item
from offchain.core.errors import ContractReverted
from offchain.core.messages import UsageBatch

CRASH_ENV = "CLEARHOUSE_CRASH_AT"
CRASH_POINTS = ("before_broadcast", "after_broadcast")
GAS_HEADROOM = 1.25
Clock = Callable[[], float]

# Linear gas model of one `settle` transaction, an upper bound fitted to `clearhouse bench gas` (README, paris):
# N=1/D=1 64,610; N=16/D=1 69,466; N=16/D=16 177,804; N=256/D=1 150,692; N=256/D=16 360,998 gas per tx, and the
# pipeline's ~27,000 gas per extra 512-log item. Per item: two signatures, the batch calldata head, member,
# issue-log and policy reads and writes, the event (43,300 measured for the first item, less for later ones);
# per usage log: 16 bytes of calldata (256 gas) and its checks (~340 one-policy, ~760 with many policies); per
# further distinct policy of the item: a cold policy slot read and write (~7,200 measured at N=16).
GAS_PER_SETTLE_TX = 21_000
GAS_PER_SETTLE_ITEM = 45_000
GAS_PER_USAGE_LOG = 800
GAS_PER_EXTRA_POLICY = 7_500
DEFAULT_GAS_BUDGET = 12_000_000  # per settle transaction: well below anvil's and mainnet's 30M block gas limit


def revert_reason(error: ContractReverted) -> str:
    """`Name(arg=value, ...)` of a decoded revert, as stored in `receive_logs.reject_reason`."""
    values = error.error_args if isinstance(error.error_args, dict) else {}
    args = ", ".join(f"{k}={'0x' + v.hex() if isinstance(v, bytes) else v}" for k, v in values.items())
    return f"{error.error_name or 'UnknownRevert'}({args})"


def settlement_item(row: ReceiveLogRow) -> tuple[Any, ...]:
    """The `SettlementItem` ABI tuple of a stored receive log."""
    batch = UsageBatch.from_json(row.usage_batch_json)
    return encode_settlement_item(SettlementItem(batch, row.device_sig, row.received_at, row.receiver_sig))


@dataclass(frozen=True)
class Selection:
    """One round's plan: contiguous receive logs to send, and those the chain shows settled or unsettleable."""

    to_send: tuple[ReceiveLogRow, ...]
    already_settled: tuple[bytes, ...]
    overlapping: tuple[bytes, ...]


def estimated_item_gas(usage_logs: int, policies: int) -> int:
    """Upper-bound gas one settlement item adds to a `settle` transaction (the linear model above)."""
    return GAS_PER_SETTLE_ITEM + usage_logs * GAS_PER_USAGE_LOG + max(policies - 1, 0) * GAS_PER_EXTRA_POLICY


def row_gas(row: ReceiveLogRow) -> int:
    return estimated_item_gas(row.count, len(row.usage_batch_json.get("policyIds") or ()))


def select_contiguous(rows: Sequence[ReceiveLogRow], next_seq: dict[bytes, int], max_items: int,
                      gas_budget: int | None = None) -> Selection:
    """Per serial (rows sorted by serial, first_seq): logs wholly below nextSeq are settled already, a log that
    starts exactly at the cursor extends the run, a partial overlap can never settle, a gap waits.

    The transaction closes at `max_items` items, or before the item whose estimated gas would take it over
    `gas_budget`; an item over the budget on its own still goes, alone (the pre-check then has the last word)."""
    to_send: list[ReceiveLogRow] = []
    settled: list[bytes] = []
    overlapping: list[bytes] = []
    cursor: dict[bytes, int] = dict(next_seq)
    gas, closed = GAS_PER_SETTLE_TX, False
    for row in rows:
        start = cursor[row.serial]
        if row.first_seq + row.count <= next_seq[row.serial]:
            settled.append(row.id)
        elif row.first_seq < start:
            overlapping.append(row.id)
        elif row.first_seq == start and not closed:
            item_gas = row_gas(row)
            if to_send and gas_budget is not None and gas + item_gas > gas_budget:
                closed = True  # full by gas: this row and all after it wait for the next transaction
                continue
            to_send.append(row)
            cursor[row.serial] = start + row.count
            gas += item_gas
            closed = len(to_send) >= max_items
    return Selection(tuple(to_send), tuple(settled), tuple(overlapping))


@dataclass
class RoundReport:
    settled: int = 0
    rejected: dict[str, str] = field(default_factory=dict)
    recovered: dict[int, str] = field(default_factory=dict)
    tx_hash: str | None = None


class SettlementWorker:
    """Batches accepted receive logs into `settle` transactions; call `recover()` at start, then `tick()`."""

    def __init__(self, store: CcStore, chain: ClearhouseChain, *, max_items: int = 64,
                 gas_budget: int | None = DEFAULT_GAS_BUDGET, crash_at: str | None = None,
                 receipt_timeout_s: float = 60.0, log: Any = None) -> None:
        if crash_at is not None and crash_at not in CRASH_POINTS:
            raise ValueError(f"{CRASH_ENV} must be one of {CRASH_POINTS}")
        self.store = store
        self.chain = chain
        self.w3: Web3 = chain.w3
        self.max_items = max_items
        self.gas_budget = gas_budget  # estimated gas per settle transaction (None: by item count only)
        self.crash_at = crash_at
        self.receipt_timeout_s = receipt_timeout_s
        self.log = log or structlog.get_logger("settlement")

    # --- recovery ---------------------------------------------------------------------------------------------
    def recover(self) -> dict[int, str]:
        """Resolve every outbox row left pending or sent, from the chain only; returns {outbox id: outcome}."""
        outcomes: dict[int, str] = {}
        for row in self.store.unfinished_settlements():
            outcomes[row.id] = self._recover_one(row)
            self.log.info("settlement.recovered", outbox_id=row.id, tx_hash=row.tx_hash, outcome=outcomes[row.id])
        return outcomes

    def _recover_one(self, row: SettlementOutbox) -> str:
        if row.tx_hash is None:
            return self._resolve_unknown(row, "no transaction was signed")
        receipt = self._receipt(row.tx_hash)
        if receipt is not None:
            if row.status == "pending":  # killed between broadcast and marking it: the receipt proves it was sent
                self.store.update_settlement(row.id, "sent")
            return self._record_receipt(row.id, receipt)
        if self._in_mempool(row.tx_hash):
            return "in_mempool"  # still pending: the next tick looks again, nothing is re-sent meanwhile
        return self._resolve_unknown(row, f"transaction {row.tx_hash} unknown to the chain")

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
        """Recover, then send rounds until nothing contiguous is left (each round waits for its receipt)."""
        report = RoundReport(recovered=self.recover())
        if any(outcome == "in_mempool" for outcome in report.recovered.values()):
            return report  # never build on top of a transaction whose fate is still open
        while True:
            sent = self._round(report)
            if not sent:
                return report

    def _round(self, report: RoundReport) -> bool:
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
        items = list(selection.to_send)
        offender = self._first_failing(items)
        if offender is not None:
            index, revert = offender
            reason = revert_reason(revert)
            self.store.reject_receive_logs({items[index].id: reason})
            report.rejected["0x" + items[index].id.hex()] = reason
            self.log.warning("settlement.rejected", receive_log_id="0x" + items[index].id.hex(),
                             error=revert.error_name, reason=reason)
            return True
        self._send(items, report)
        return True

    def _next_seqs(self, serials: set[bytes]) -> dict[bytes, int]:
        return {serial: self.chain.issue_log(serial).next_seq for serial in serials}

    def _call(self, items: Sequence[ReceiveLogRow]) -> ContractReverted | None:
        try:
            self.chain.call("settle", [settlement_item(r) for r in items])
        except ContractReverted as exc:
            return exc
        return None

    def _first_failing(self, items: list[ReceiveLogRow]) -> tuple[int, ContractReverted] | None:
        """Pre-validate with eth_call; on a revert, bisect for the longest passing prefix: the next item is the
        offender (checks are per item and in order, so a prefix passes iff each of its items does)."""
        revert = self._call(items)
        if revert is None:
            return None
        good, bad = 0, len(items)  # invariant: items[:good] passes, items[:bad] fails
        while bad - good > 1:
            middle = (good + bad) // 2
            if self._call(items[:middle]) is None:
                good = middle
            else:
                bad = middle
        return bad - 1, self._call(items[:bad]) or revert

    def _send(self, items: list[ReceiveLogRow], report: RoundReport) -> None:
        outbox: dict[str, int] = {}

        def record(tx_hash: str, nonce: int, raw_tx: bytes) -> None:
            outbox["id"] = self.store.create_settlement([r.id for r in items], tx_hash=tx_hash, nonce=nonce,
                                                        raw_tx=raw_tx)
            self._maybe_crash("before_broadcast")

        tx_hash = self.chain.send_via_outbox("settle", [settlement_item(r) for r in items], record=record)
        self._maybe_crash("after_broadcast")
        self.store.update_settlement(outbox["id"], "sent")
        receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=self.receipt_timeout_s,
                                                           poll_latency=0.01)
        outcome = self._record_receipt(outbox["id"], receipt)
        report.tx_hash = tx_hash
        if outcome == "confirmed":
            report.settled += len(items)
        self.log.info("settlement.sent", outbox_id=outbox["id"], tx_hash=tx_hash, items=len(items),
                      outcome=outcome, gas_used=receipt["gasUsed"])

    def _maybe_crash(self, point: str) -> None:
        if self.crash_at == point:
            self.log.warning("settlement.crash_point", point=point)
            os.kill(os.getpid(), signal.SIGKILL)  # test hook: die like a power cut, no cleanup at all


# --- standalone entry (also the subprocess of the SIGKILL recovery test) ------------------------------------------
def build_worker(settings: Any, store: CcStore, chain: ClearhouseChain, log: Any = None) -> SettlementWorker:
    """A worker from ClearingCenterSettings (crash point from CLEARHOUSE_CRASH_AT, test only)."""
    return SettlementWorker(store, chain, max_items=settings.settle_batch_max_items,
                            gas_budget=settings.settle_gas_budget, crash_at=os.environ.get(CRASH_ENV) or None,
                            log=log)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m offchain.clearing_center.settlement --config cc.json [--once]`: run the worker alone (no HTTP)."""
    from offchain.chain.client import Deployment
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
           "estimated_item_gas", "DEFAULT_GAS_BUDGET", "CRASH_ENV", "CRASH_POINTS", "build_worker", "main"]
