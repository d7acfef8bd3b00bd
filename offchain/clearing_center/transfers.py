"""The clearing center's transfer worker: accrued fees of settled policies become on-chain transfer requests,
each delivered to the bank (signed TransferRequest) until the bank's signed TransferReceipt is stored.

Requests are mirrored from the chain's TransferRequested events, so a request sent just before a crash is still
delivered; delivery is idempotent by request id at the bank. The worker never books money itself.

Reorgs: the blocks not yet `confirmations` deep are scanned again every round, and an open request whose
transaction was reorged (or is not final) is checked against the contract. A request id the canonical chain no
longer has becomes `void` (never delivered); a request that landed again with other ids, or an id reused for
another payee or amount, is mirrored from the chain as it is now. While a request transaction is not final, no
new one is sent: the old one may still land and take the accruals.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog

from offchain.chain.protocols import ChainWriter
from offchain.clearing_center.finality import FinalityWatch
from offchain.clearing_center.store import CcStore
from offchain.clearing_center.tables import TransferReceiptRow
from offchain.core.errors import ClearhouseError, DuplicateMessage
from offchain.core.messages import TransferReceipt, TransferRequest
from offchain.core.types import Clock, Role, to_hex
from offchain.transport.client import JsonClient
from offchain.trust.certs import CertificateVerifier, Envelope

# A transfer round views the policies a receive log settled for since this long before its previous look (a
# settlement stamped just before the look may commit just after it), beside those it saw accruing.
SETTLED_RECHECK_S = 10


class TransferWorker:
    """Turns accrued fees into on-chain transfer requests and delivers each to the bank until it is receipted."""

    def __init__(self, store: CcStore, chain: ChainWriter, verifier: CertificateVerifier, private_key: bytes,
                 cert_pem: bytes, *, interval_s: float, threshold_minor: int, clock: Clock = time.time,
                 max_backoff_s: float = 60.0, log: Any = None, finality: FinalityWatch | None = None,
                 confirmations: int | None = None) -> None:
        self.store = store
        self.chain = chain
        self.verifier = verifier
        self._private_key = private_key
        self._cert_pem = cert_pem
        self.interval_s = interval_s
        self.threshold_minor = threshold_minor
        self.clock = clock
        self.max_backoff_s = max_backoff_s
        self.log = log or structlog.get_logger("transfers")
        self._last_request_at = clock()
        self._scanned_block = chain.deployment.deploy_block - 1
        self._retry: dict[bytes, tuple[int, float]] = {}  # request id -> (attempts, next attempt at)
        self._rescan_all = True  # the next look views every settled policy (first look, or a request re-derived)
        self._looked_at = 0  # store time of the previous look at accrued fees
        self._accruing: set[bytes] = set()  # policies seen with accrued fees and not requested since
        # every CC transaction is followed to finality here; a request goes to the bank only once it is final
        self.finality = finality or FinalityWatch(store, chain.w3, confirmations=confirmations, log=self.log)

    def due_policies(self) -> list[bytes]:
        """Settled policies with accrued fees: all when the interval passed, else those at the threshold."""
        interval_passed = self.clock() - self._last_request_at >= self.interval_s
        if not interval_passed and not self.threshold_minor:
            return []  # nothing can be due: no view call per settled policy every round
        due = []
        for policy_id in self._candidates():
            accrued = self.chain.policy(policy_id).accrued
            if accrued > 0:
                self._accruing.add(policy_id)
            else:
                self._accruing.discard(policy_id)
            if accrued > 0 and (interval_passed or (self.threshold_minor and accrued >= self.threshold_minor)):
                due.append(policy_id)
        return due

    def _candidates(self) -> list[bytes]:
        """The policies whose accrued fees a round views: every settled policy on the first look and after a
        reorg re-derived or voided a request (its accruals may be back); else those a receive log settled for
        since the previous look (SETTLED_RECHECK_S earlier) and those seen accruing and not requested since.
        Accrued fees grow only when a receive log of the policy settles, and the store stamps its
        `last_settled_at` in that transaction, so nothing due is missed and a round costs what settled since,
        not the whole history."""
        now = int(self.store.now())
        since = None if self._rescan_all else self._looked_at - SETTLED_RECHECK_S
        settled = self.store.settled_policy_ids(since=since)
        self._looked_at, self._rescan_all = now, False
        return list(dict.fromkeys([*settled, *sorted(self._accruing)]))

    def request_round(self) -> int:
        """Request transfers for the due policies (none while an earlier request transaction is not final), then
        mirror every TransferRequested event; returns new rows."""
        due = [] if self.store.transfer_request_txs_in_flight() else self.due_policies()
        if due:
            _receipt, request_ids = self.chain.request_transfers(due)
            self._accruing.difference_update(due)
            self._last_request_at = self.clock()
            self.log.info("transfers.requested", policies=len(due), requests=len(request_ids))
        return self.sync_from_chain()

    def sync_from_chain(self) -> int:
        """Mirror the TransferRequested events of the blocks that are new or not yet final (also those of a request
        sent just before a crash), then void open requests whose id the chain no longer has; returns new rows."""
        head = self.chain.w3.eth.block_number
        events = [] if head <= self._scanned_block else self.chain.contract.events.TransferRequested().get_logs(
            from_block=self._scanned_block + 1, to_block=head)
        rows = [(bytes(e["args"]["requestId"]), e["args"]["payee"], int(e["args"]["amount"]),
                 "0x" + bytes(e["transactionHash"]).hex()) for e in events]
        outcomes = self.store.mirror_transfer_requests(rows)
        for (request_id, payee, amount, tx_hash), (_id, outcome) in zip(rows, outcomes):
            if outcome not in ("created", "same"):  # a reorg moved it: the chain's version replaces ours
                self._rescan_all = True
                self.log.warning("transfers.rederived", request_id=to_hex(request_id), outcome=outcome,
                                 payee=payee, amount=amount, tx_hash=tx_hash)
        self._void_missing({request_id for request_id, *_rest in rows})
        # blocks at the configured depth are final: never scanned again; the younger ones are, every round
        self._scanned_block = max(self._scanned_block, head - self.finality.tracker.policy.confirmations)
        return sum(1 for _id, outcome in outcomes if outcome == "created")

    def _void_missing(self, seen: set[bytes]) -> int:
        """Open requests not seen in this scan whose transaction is not final (or was reorged): the contract says
        whether the id exists; an id it does not have is void (the bank would refuse it with NotFound)."""
        gone = [row.request_id for row in self.store.transfer_requests_to_verify()
                if row.request_id not in seen and int(self.chain.transfer_request(row.request_id).payee, 16) == 0]
        if gone:
            self.store.void_transfer_requests(gone)
            self._rescan_all = True  # their accruals are the policies' again on the canonical chain
            self.log.warning("transfers.voided", requests=[to_hex(r) for r in gone],
                             reason="not on the canonical chain (its transaction was reorged out)")
        return len(gone)

    async def deliver(self, client: JsonClient) -> int:
        """Send each open request to the bank (exponential backoff per request while it fails); returns receipts."""
        receipts = 0
        for row in await asyncio.to_thread(self.store.open_transfer_requests):
            attempts, not_before = self._retry.get(row.request_id, (0, 0.0))
            if self.clock() < not_before:
                continue
            if row.tx_hash is not None and not await asyncio.to_thread(self.finality.is_final, row.tx_hash):
                continue  # included, not yet at the configured depth (or reorged: the watch repairs it)
            try:
                await self._deliver_one(client, row.request_id, row.payee, row.amount)
                receipts += 1
                self._retry.pop(row.request_id, None)
            except ClearhouseError as exc:
                delay = min(self.max_backoff_s, 0.5 * 2 ** attempts)
                self._retry[row.request_id] = (attempts + 1, self.clock() + delay)
                self.log.warning("transfers.delivery_failed", request_id=to_hex(row.request_id), error=exc.code,
                                 retry_in_s=delay)
        return receipts

    async def _deliver_one(self, client: JsonClient, request_id: bytes, payee: str, amount: int) -> None:
        request = TransferRequest(request_id=request_id, payee=payee, amount=amount)
        envelope = Envelope.seal(request, self.chain.domain, self._private_key, self._cert_pem)
        await asyncio.to_thread(self.store.mark_transfer_sent, request_id)
        answer = await client.post("/v1/transfers", {"request": envelope.to_json()})
        receipt_row = self.verify_receipt(answer, request)
        await asyncio.to_thread(self.store.record_transfer_receipt, receipt_row)
        self.log.info("transfers.receipted", request_id=to_hex(request_id), bank_ref=to_hex(receipt_row.bank_ref))

    def verify_receipt(self, answer: Any, request: TransferRequest) -> TransferReceiptRow:
        """The bank's Envelope(TransferReceipt): bank certificate and signature, same request id and amount."""
        envelope = Envelope.from_json((answer or {}).get("receipt"))
        receipt, bank = envelope.open(self.verifier, self.chain.domain, Role.BANK)
        if not isinstance(receipt, TransferReceipt) or receipt.request_id != request.request_id \
                or receipt.amount != request.amount:
            raise DuplicateMessage("the bank's receipt is not for this transfer request", kind="transfer_receipt",
                                   key=to_hex(request.request_id))
        return TransferReceiptRow(request_id=receipt.request_id, bank_ref=receipt.bank_ref, amount=receipt.amount,
                                  confirmed_at=receipt.confirmed_at, bank_member_id=bank.member_id,
                                  envelope=envelope.to_json(), received_at=int(self.clock()))


__all__ = ["TransferWorker"]
