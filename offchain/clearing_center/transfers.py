"""The clearing center's transfer worker: accrued fees of settled policies become on-chain transfer requests,
each delivered to the bank (signed TransferRequest) until the bank's signed TransferReceipt is stored.

Requests are mirrored from the chain's TransferRequested events, so a request sent just before a crash is still
delivered; delivery is idempotent by request id at the bank. The worker never books money itself.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog

from offchain.chain.protocols import ChainWriter
from offchain.clearing_center.finality import FinalityWatch
from offchain.clearing_center.store import CcStore, TransferReceiptRow
from offchain.core.errors import ClearhouseError, DuplicateMessage
from offchain.core.messages import TransferReceipt, TransferRequest
from offchain.core.types import Clock, Role, to_hex
from offchain.transport.client import JsonClient
from offchain.trust.certs import CertificateVerifier, Envelope


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
        # every CC transaction is followed to finality here; a request goes to the bank only once it is final
        self.finality = finality or FinalityWatch(store, chain.w3, confirmations=confirmations, log=self.log)

    def due_policies(self) -> list[bytes]:
        """Settled policies with accrued fees: all when the interval passed, else those at the threshold."""
        interval_passed = self.clock() - self._last_request_at >= self.interval_s
        if not interval_passed and not self.threshold_minor:
            return []  # nothing can be due: no view call per settled policy every round
        due = []
        for policy_id in self.store.settled_policy_ids():
            accrued = self.chain.policy(policy_id).accrued
            if accrued > 0 and (interval_passed or (self.threshold_minor and accrued >= self.threshold_minor)):
                due.append(policy_id)
        return due

    def request_round(self) -> int:
        """Request transfers for the due policies, then mirror every TransferRequested event; returns new rows."""
        due = self.due_policies()
        if due:
            _receipt, request_ids = self.chain.request_transfers(due)
            self._last_request_at = self.clock()
            self.log.info("transfers.requested", policies=len(due), requests=len(request_ids))
        return self.sync_from_chain()

    def sync_from_chain(self) -> int:
        """Store TransferRequested events not yet known (also those of a request sent just before a crash)."""
        head = self.chain.w3.eth.block_number
        if head <= self._scanned_block:
            return 0
        events = self.chain.contract.events.TransferRequested().get_logs(from_block=self._scanned_block + 1,
                                                                        to_block=head)
        rows = [(bytes(e["args"]["requestId"]), e["args"]["payee"], int(e["args"]["amount"]),
                 "0x" + bytes(e["transactionHash"]).hex()) for e in events]
        created = self.store.record_transfer_requests(rows)
        self._scanned_block = head
        return created

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
