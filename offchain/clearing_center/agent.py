"""The clearing center's decisions: deposits credited against the chain, issue logs and renewals (top-up in place
or a new serial while unsettled) anchored on chain before the answer, receive-log intake, the balance view.

Every effect is anchored on chain or persisted (CcStore) before the answer and is idempotent by the sender's id.
The CC trusts no body field it can check: deposits against the chain's DepositRecorded event, logs against
signatures, certificates and the contract's issue logs and policies. It never moves money itself: the bank does.
Request bodies are bodies.py, routes and app api.py; the settlement and transfer workers are settlement.py and transfers.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import structlog
from web3 import Web3
from web3.exceptions import TimeExhausted, TransactionNotFound, Web3RPCError

from offchain import storage
from offchain.chain import RECEIPT_POLL_S, IssueLogInfo, encode_balance_statement
from offchain.chain.protocols import ChainWriter
from offchain.clearing_center.bodies import DepositNotice, IssueBody, ReceiveItem, RenewBody
from offchain.clearing_center.finality import FinalityWatch
from offchain.clearing_center.records import IssueLogRecord, ReceiveLogRecord
from offchain.clearing_center.store import CcStore
from offchain.clearing_center.tables import IssueRequestRow
from offchain.core import messages
from offchain.core.errors import (
    AllowanceExceeded,
    ChainUnreachable,
    ClearhouseError,
    ContractReverted,
    DepositNotProven,
    DuplicateMessage,
    FeeMismatch,
    IdentityMismatch,
    InsufficientFunds,
    IssueLogExpired,
    MalformedMessage,
    NotFound,
    RebroadcastRefused,
    SequenceError,
    StatementRejected,
    TransactionPending,
)
from offchain.core.gas import DEFAULT_GAS_BUDGET, check_batch_fits
from offchain.core.messages import BalanceStatement, IssueLog, ReceiveLog, UsageBatch
from offchain.core.types import Clock, Role, from_hex, to_hex, user_id_hash
from offchain.trust.certs import CertificateVerifier, Envelope, MemberIdentity

ReceiptWaiter = Callable[[str], Any]  # tx hash -> its receipt (TransactionPending while it stays unmined)


MAX_CAP = 2**96 - 1  # uint96 cap in the IssueLogs module


def derive_serial(device: str, kind: str, request_id: str) -> bytes:
    """A serial fixed by the request (so a retried request finds its own serial on chain, never a second one)."""
    return messages.keccak(f"clearhouse:serial:{kind}:{device}:{request_id}".encode())


# --- the agent --------------------------------------------------------------------------------------------------------
class ClearingCenter:
    """The CC's decisions; HTTP handlers call these in a worker thread. Money decisions are serialized by a lock."""

    def __init__(self, store: CcStore, chain: ChainWriter, verifier: CertificateVerifier, private_key: bytes,
                 cert_pem: bytes, *, issue_expiry_s: int, clock: Clock = time.time, receipt_timeout_s: float = 60.0,
                 log: Any = None, wait_receipt: ReceiptWaiter | None = None,
                 settle_gas_budget: int = DEFAULT_GAS_BUDGET, finality: FinalityWatch | None = None,
                 confirmations: int | None = None) -> None:
        """`wait_receipt(tx_hash)` returns the receipt of a sent transaction; by default it polls the chain for
        up to `receipt_timeout_s` (TransactionPending after that). Tests inject one to crash mid-request.
        `finality` (or one built with `confirmations`, the chain's policy when None) decides when a released
        issue log is final enough to credit."""
        self.store = store
        self.chain = chain
        self.domain = chain.domain
        self.verifier = verifier
        self._private_key = private_key
        self._cert_pem = cert_pem
        self.issue_expiry_s = issue_expiry_s
        self.clock = clock
        self.receipt_timeout_s = receipt_timeout_s
        self.log = log or structlog.get_logger("clearing_center")
        self._money_lock = threading.Lock()
        self._receive_lock = threading.Lock()
        self._wait_receipt: ReceiptWaiter = wait_receipt or self._wait_receipt_on_chain
        self.settle_gas_budget = settle_gas_budget  # receive logs whose batch one settle tx cannot carry: refused
        self.finality = finality or FinalityWatch(store, chain.w3, confirmations=confirmations, log=self.log)

    # deposits ---------------------------------------------------------------------------------------------------
    def credit_deposit(self, notice: DepositNotice, peer: MemberIdentity) -> dict[str, Any]:
        """Credit a deposit only if the bank's transaction emitted the matching DepositRecorded event."""
        deposit_id = from_hex(notice.deposit_id, "deposit_id")
        event = self._deposit_event(deposit_id, notice.tx_hash)
        expected = {"userIdHash": user_id_hash(notice.user_id), "amount": notice.amount,
                    "bankRef": from_hex(notice.bank_ref, "bank_ref"), "bank": peer.eth_address}
        got = {"userIdHash": bytes(event["userIdHash"]), "amount": event["amount"],
               "bankRef": bytes(event["bankRef"]), "bank": event["bank"]}
        for name, value in expected.items():
            if got[name] != value:
                raise DepositNotProven(f"deposit notice disagrees with the chain on {name}", deposit_id=deposit_id,
                                       tx_hash=notice.tx_hash, reason=f"{name} mismatch", expected=value,
                                       got=got[name])
        entry_id, created = self.store.credit_deposit(deposit_id, notice.user_id, notice.amount, notice.tx_hash)
        self.log.info("deposit.credited", deposit_id=notice.deposit_id, user_id=notice.user_id,
                      amount=notice.amount, created=created)
        return {"deposit_id": notice.deposit_id, "user_id": notice.user_id, "amount": notice.amount,
                "bank_ref": notice.bank_ref, "tx_hash": notice.tx_hash, "entry_id": entry_id}

    def _deposit_event(self, deposit_id: bytes, tx_hash: str) -> Any:
        try:
            receipt = self.chain.w3.eth.get_transaction_receipt(tx_hash)
        except TransactionNotFound:
            raise DepositNotProven("deposit transaction not found on chain (not mined yet?); retry later",
                                   deposit_id=deposit_id, tx_hash=tx_hash, reason="unknown transaction") from None
        except OSError as exc:  # requests' ConnectionError/Timeout too: the node did not answer (was a bare 500)
            raise ChainUnreachable(f"getTransactionReceipt: node error: {exc}",
                                   function="getTransactionReceipt") from None
        if receipt["status"] != 1 or receipt["to"] != self.chain.address:
            raise DepositNotProven("deposit transaction failed or did not call Clearhouse", deposit_id=deposit_id,
                                   tx_hash=tx_hash, reason="failed or foreign transaction")
        for log_entry in receipt["logs"]:
            if log_entry["address"] != self.chain.address:
                continue
            try:
                event = self.chain.contract.events.DepositRecorded().process_log(log_entry)
            except Exception:  # noqa: BLE001 - another event of the contract: not ours to decode here
                continue
            if bytes(event["args"]["depositId"]) == deposit_id:
                return event["args"]
        raise DepositNotProven("the transaction has no DepositRecorded event for this deposit id",
                               deposit_id=deposit_id, tx_hash=tx_hash, reason="no matching event")

    # issue logs ------------------------------------------------------------------------------------------------
    def issue(self, body: IssueBody, peer: MemberIdentity) -> dict[str, Any]:
        """Issue a log of up to the user's unallocated deposits, anchored on chain before the answer. The user is
        the one the CA named in the device's certificate; the body's `user_id` must agree with it."""
        user_id = _certified_user(peer, body.user_id)
        fingerprint = storage.payload_hash({"kind": "issue", "user_id": user_id, "amount": body.amount})
        with self._money_lock:
            plan = self._replay(peer.eth_address, body.request_id, fingerprint)
            if plan is None:
                self.store.bind_device(peer.eth_address, peer.member_id, user_id)
                amount = self._new_money(user_id, body.amount, minimum=1)
                _bound_cap(bytes(32), amount, user_id, amount)
                now = int(self.clock())
                plan = self.store.plan_issue_request(IssueRequestRow(
                    device=peer.eth_address, request_id=body.request_id, kind="issue", payload_hash=fingerprint,
                    user_id=user_id, serial=derive_serial(peer.eth_address, "issue", body.request_id),
                    previous_serial=None, new_money=amount, carried=0, cap=amount, old_cap=0,
                    expires_at=now + self.issue_expiry_s, mode="issue", status="planned", created_at=now))
            elif plan.status == "done":
                return dict(plan.response or {})
            tx_hash = self._anchored(plan, "issue", plan.serial, plan.device, user_id_hash(plan.user_id), plan.cap,
                                     plan.expires_at)
            return self._finish(plan, tx_hash, revision=0)

    def _replay(self, device: str, request_id: str, fingerprint: bytes) -> IssueRequestRow | None:
        plan = self.store.issue_request(device, request_id)
        if plan is not None and plan.payload_hash != fingerprint:
            raise DuplicateMessage(f"request {request_id!r} was already made with another payload; use a new id",
                                   kind="issue_request", key=request_id)
        return plan

    def _new_money(self, user_id: str, wanted: int | None, *, minimum: int) -> int:
        self.credit_releases(user_id)
        available = self.store.balance(user_id).available - self.store.reserved(user_id)
        amount = available if wanted is None else wanted
        if amount > available:
            raise AllowanceExceeded(f"{amount} wanted but only {available} of the deposits is unallocated",
                                    user_id=user_id, available=available, wanted=amount)
        if amount < minimum:
            raise InsufficientFunds(f"user {user_id!r} has {available} unallocated; deposit at the bank first",
                                    user_id=user_id, available=available, wanted=amount)
        return amount

    def _finish(self, plan: IssueRequestRow, tx_hash: str, *, revision: int) -> dict[str, Any]:
        """Sign the IssueLog (CC eth key), seal it with the CC certificate, record it and the balance entries."""
        log = IssueLog(serial=plan.serial, device=plan.device, user_id_hash=user_id_hash(plan.user_id), cap=plan.cap,
                       expires_at=plan.expires_at, previous_serial=plan.previous_serial or bytes(32),
                       carried=plan.carried)
        envelope = Envelope.seal(log, self.domain, self._private_key, self._cert_pem)
        response: dict[str, Any] = {"issue_log": envelope.to_json(), "tx_hash": tx_hash}
        if plan.kind == "renew":
            response["mode"] = plan.mode
        record = IssueLogRecord(
            serial=plan.serial, revision=revision, device=plan.device, user_id_hash=log.user_id_hash, cap=plan.cap,
            expires_at=plan.expires_at, previous_serial=plan.previous_serial, carried=plan.carried,
            new_money=plan.new_money, cc_signature=envelope.signature_bytes(), issue_log_json=envelope.message)
        self.store.complete_issue_request(plan, record, tx_hash, response)
        self.log.info("issue_log.issued", serial=to_hex(plan.serial), mode=plan.mode, cap=plan.cap,
                      new_money=plan.new_money, carried=plan.carried, tx_hash=tx_hash)
        return response

    # renewal: top-up in place, new serial while unsettled -------------------------------------------------
    def renew(self, body: RenewBody, peer: MemberIdentity) -> dict[str, Any]:
        """Renew against the device's signed balance: a new serial while anything attested is unsettled, else a
        top-up of the same serial. New cap = new deposits + carried (= old cap - attested spent)."""
        envelope = Envelope.from_json(body.statement)
        statement, _identity = envelope.open(self.verifier, self.domain, Role.DEVICE, peer=peer)
        if not isinstance(statement, BalanceStatement):
            raise MalformedMessage("statement must be a BalanceStatement", type=envelope.kind, field="kind",
                                   value=envelope.kind, reason="wrong message type")
        fingerprint = storage.payload_hash({"kind": "renew", "statement": envelope.message,
                                       "signature": envelope.signature, "amount": body.amount})
        with self._money_lock:
            plan = self._replay(peer.eth_address, body.request_id, fingerprint)
            if plan is None:
                plan = self._plan_renewal(body, peer, statement, fingerprint)
            elif plan.status == "done":
                return dict(plan.response or {})
            tx_hash = self._anchored(plan, "renew", plan.previous_serial, encode_balance_statement(statement),
                                     envelope.signature_bytes(), plan.serial, plan.new_money, plan.expires_at)
            revision = self.store.next_revision(plan.serial) if plan.mode == "top_up" else 0
            return self._finish(plan, tx_hash, revision=revision)

    def _plan_renewal(self, body: RenewBody, peer: MemberIdentity, statement: BalanceStatement,
                      fingerprint: bytes) -> IssueRequestRow:
        old = self._renewable_log(statement, peer)
        user_id = self.store.device_user(peer.eth_address)
        if user_id is None:
            raise NotFound("device has no issue log at this CC", device=peer.eth_address)
        _certified_user(peer, user_id)  # a binding made before certificates named the user must still agree
        unsettled = old.spent < statement.spent or old.next_seq < statement.next_seq
        carried = old.cap - statement.spent
        new_money = self._new_money(user_id, body.amount, minimum=0)
        _bound_cap(old.serial, carried + new_money if unsettled else old.cap + new_money, user_id, new_money)
        if unsettled:
            mode, serial, cap = "new_serial", derive_serial(peer.eth_address, "renew", body.request_id), carried + new_money
        else:
            mode, serial, cap = "top_up", old.serial, old.cap + new_money  # = attested spent + carried + new money
        now = int(self.clock())
        return self.store.plan_issue_request(IssueRequestRow(
            device=peer.eth_address, request_id=body.request_id, kind="renew", payload_hash=fingerprint,
            user_id=user_id, serial=serial, previous_serial=old.serial, new_money=new_money, carried=carried, cap=cap,
            old_cap=old.cap, expires_at=now + self.issue_expiry_s, mode=mode, status="planned", created_at=now))

    def _renewable_log(self, statement: BalanceStatement, peer: MemberIdentity) -> IssueLogInfo:
        old = self.chain.issue_log(statement.serial)
        if not old.exists:
            raise NotFound("balance statement about an unknown serial", serial=statement.serial)
        if old.device != peer.eth_address:
            raise IdentityMismatch("the statement's serial belongs to another device", serial=statement.serial,
                                   expected=old.device, got=peer.eth_address)
        checks = (("closed", old.closed, "the issue log was closed by an earlier renewal"),
                  ("over_cap", statement.spent > old.cap, "attested spent exceeds the cap"),
                  ("below_settled", statement.spent < old.spent or statement.next_seq < old.next_seq,
                   "attested totals are below what already settled"))
        for reason, failed, text in checks:
            if failed:
                raise StatementRejected(text, serial=statement.serial, reason=reason, cap=old.cap,
                                        settled_spent=old.spent, settled_next_seq=old.next_seq,
                                        attested_spent=statement.spent, attested_next_seq=statement.next_seq)
        return old

    # chain anchoring: the plan row is the outbox ------------------------------------------------------------------
    def _anchored(self, plan: IssueRequestRow, function: str, *args: Any) -> str:
        """Apply the plan's chain call exactly once; returns the hash of the transaction that applied it.

        The signed transaction is stored in the plan before it is broadcast, so a retry resumes that very
        transaction and never reads caps or balances to guess. A revert (decoded before sending, or a mined
        transaction that reverted) drops the plan, so nothing stays reserved."""
        try:
            if plan.tx_hash is not None:
                resumed = self._resume(plan, function)
                if resumed is not None:
                    return resumed
            return self._send(plan, function, args)
        except ContractReverted:
            self.store.drop_issue_request(plan.device, plan.request_id)
            raise

    def _send(self, plan: IssueRequestRow, function: str, args: Sequence[Any]) -> str:
        def record(tx_hash: str, nonce: int, raw_tx: bytes) -> None:
            self.store.record_issue_tx(plan.device, plan.request_id, tx_hash, nonce, raw_tx)

        tx_hash = self.chain.send_via_outbox(function, *args, record=record)
        self.log.info("issue_request.sent", request_id=plan.request_id, function=function, tx_hash=tx_hash)
        return self._applied(plan, function, tx_hash, self._wait_receipt(tx_hash))

    def _resume(self, plan: IssueRequestRow, function: str) -> str | None:
        """The recorded transaction's fate: mined (applied or reverted), pending (wait for it), dropped (the same
        raw transaction again: same nonce, so it can never apply twice) or superseded (its nonce went to another
        transaction, so it can never be mined: returns None and the plan is sent anew)."""
        tx_hash, nonce = str(plan.tx_hash), int(plan.tx_nonce or 0)
        receipt = _receipt_or_none(self.chain.w3, tx_hash)
        if receipt is None and not _in_mempool(self.chain.w3, tx_hash):
            if self.chain.w3.eth.get_transaction_count(self.chain.sender, "latest") > nonce:
                receipt = _receipt_or_none(self.chain.w3, tx_hash)  # mined between the reads above?
                if receipt is None:
                    self.store.forget_issue_tx(plan.device, plan.request_id, tx_hash)
                    self.log.warning("issue_request.superseded", request_id=plan.request_id, tx_hash=tx_hash,
                                     nonce=nonce)
                    return None
            else:
                self._rebroadcast(plan, tx_hash, nonce)
        if receipt is None:
            receipt = self._wait_receipt(tx_hash)
        self.log.info("issue_request.resumed", request_id=plan.request_id, tx_hash=tx_hash, status=receipt["status"])
        return self._applied(plan, function, tx_hash, receipt)

    def _rebroadcast(self, plan: IssueRequestRow, tx_hash: str, nonce: int) -> None:
        try:
            self.chain.w3.eth.send_raw_transaction(bytes(plan.raw_tx or b""))
        except Web3RPCError as exc:  # e.g. another pending transaction holds the nonce: it decides on a later retry
            raise RebroadcastRefused(f"the request's transaction {tx_hash} could not be re-broadcast ({exc}); "
                                     "retry later", tx_hash=tx_hash, nonce=nonce, request_id=plan.request_id,
                                     node_message=str(exc)) from None
        self.log.warning("issue_request.rebroadcast", request_id=plan.request_id, tx_hash=tx_hash, nonce=nonce)

    def _wait_receipt_on_chain(self, tx_hash: str) -> Any:
        """The receipt (fast polling); still pending after `receipt_timeout_s` is TransactionPending (retry later)."""
        try:
            return self.chain.wait_receipt(tx_hash, self.receipt_timeout_s)  # re-broadcasts what the node forgot
        except TimeExhausted:
            raise TransactionPending(f"transaction {tx_hash} is still pending after {self.receipt_timeout_s} s; "
                                     "retry the request (it resumes this transaction, nothing is sent twice)",
                                     tx_hash=tx_hash, waited_s=self.receipt_timeout_s) from None

    # plans left open (a crash, a request that gave up) ----------------------------------------------------------
    def resolve_open_plans(self) -> dict[str, str]:
        """Resolve every plan still `planned` from the chain, never leave it open (its new money stays reserved):
        completed when its transaction was mined, dropped when nothing was signed, it reverted or its nonce went
        to another transaction, re-broadcast when the node forgot it, left alone while pending. Under the money
        lock, so no request works on a plan meanwhile. Called at start and on a timer; {request id: outcome}."""
        with self._money_lock:
            return {plan.request_id: self._resolve_plan(plan) for plan in self.store.planned_issue_requests()}

    def _resolve_plan(self, plan: IssueRequestRow) -> str:
        if plan.tx_hash is None:  # killed between planning and signing: nothing can ever apply
            self.store.drop_issue_request(plan.device, plan.request_id)
            return "dropped: no transaction was signed"
        w3, tx_hash, nonce = self.chain.w3, str(plan.tx_hash), int(plan.tx_nonce or 0)
        receipt = _receipt_or_none(w3, tx_hash)
        if receipt is None:
            if _in_mempool(w3, tx_hash):
                return "pending"
            if w3.eth.get_transaction_count(self.chain.sender, "latest") <= nonce:
                try:
                    self._rebroadcast(plan, tx_hash, nonce)  # the node forgot it (a restart): the same bytes again
                except RebroadcastRefused:
                    return "rebroadcast refused"
                return "rebroadcast"
            receipt = _receipt_or_none(w3, tx_hash)  # mined between the reads above?
            if receipt is None:  # its nonce went to another transaction: it can never be mined
                self.store.drop_issue_request(plan.device, plan.request_id)
                return "dropped: superseded"
        if receipt["status"] != 1:
            self.store.drop_issue_request(plan.device, plan.request_id)
            return "dropped: reverted"
        revision = self.store.next_revision(plan.serial) if plan.mode == "top_up" else 0
        self._finish(plan, tx_hash, revision=revision)
        self.log.info("issue_request.resolved", request_id=plan.request_id, tx_hash=tx_hash)
        return "completed"

    def renewal_result(self, serial: bytes, peer: MemberIdentity) -> dict[str, Any]:
        """The answer of this device's latest completed renewal of `serial`: a device that attested and lost the
        answer (and its kept request) reads it here instead of staying frozen."""
        plan = self.store.renewal_of(peer.eth_address, serial)
        if plan is None:
            raise NotFound("no completed renewal of this serial by this device", serial=serial,
                           device=peer.eth_address)
        return dict(plan.response or {})

    def _applied(self, plan: IssueRequestRow, function: str, tx_hash: str, receipt: Any) -> str:
        """A successful receipt applied the plan; a reverted one drops it and raises the decoded error."""
        if receipt["status"] == 1:
            return tx_hash
        self.store.drop_issue_request(plan.device, plan.request_id)
        raise self.chain.revert_reason(receipt, function)

    # receive logs ------------------------------------------------------------------------------------------------
    def receive_logs(self, items: Sequence[ReceiveItem], peer: MemberIdentity) -> dict[str, Any]:
        """Verify and persist each receive log before answering; per-item failures are reported, not fatal.

        Chain reads (see `_IntakeReads`): each member's status and each policy's price once per request, the
        issue log once per item, under the receive lock, for both the terms and the sequence and cap checks.
        The issue log is not reused by a later item of the same serial. Against settlement alone it could be:
        the chain's `spent` and `next_seq` from any one block, with the held rows read under the lock, give the
        cap check the same sum (settling moves a held row from pending to spent; a row stays held once settled).
        But the other writers of the log do not take this lock: a skip moves `next_seq` and `spent` past a range
        the CC never held, a renewal to a new serial or a release closes the log (`seq_limit`, `cap`), and a read
        taken for an earlier item would admit what those now refuse (SequenceError, AllowanceExceeded) for as
        long as the request runs, where a read per item leaves only the instant between read and write."""
        reads = _IntakeReads(self.verifier, self.chain)
        accepted: list[str] = []
        rejected: list[dict[str, Any]] = []
        for index, item in enumerate(items):
            try:
                record, batch = self._verify_receive_item(item, peer, reads)
                with self._receive_lock:
                    on_chain = self.chain.issue_log(record.serial)  # as fresh as the checks it feeds
                    _check_terms(batch, record.payer, on_chain, reads)
                    self._admit(record, on_chain)
                accepted.append(to_hex(record.id))
            except ClearhouseError as exc:
                rejected.append({"index": index, **exc.to_dict()})
                self.log.warning("receive_log.rejected", index=index, error=exc.code, message=exc.message)
        return {"accepted": accepted, "rejected": rejected}

    def _verify_receive_item(self, item: ReceiveItem, peer: MemberIdentity,
                             reads: _IntakeReads) -> tuple[ReceiveLogRecord, UsageBatch]:
        """Everything but the chain's issue log: signatures, certificates (the request's verifier), the batch
        against the receive log, and the prices of its policies (loaded here, outside the lock)."""
        envelope = Envelope.from_json(item.receive_log)
        receive_log, _sp = envelope.open(reads.verifier, self.domain, Role.SERVICE_PROVIDER, peer=peer)
        if not isinstance(receive_log, ReceiveLog):
            raise MalformedMessage("receive_log must be a ReceiveLog", type=envelope.kind, field="kind",
                                   value=envelope.kind, reason="wrong message type")
        batch = UsageBatch.from_json(item.usage_batch)
        check_batch_fits(batch.count, len(batch.policy_ids), self.settle_gas_budget)  # BatchTooLarge: never settles
        if batch.receiver != peer.eth_address:
            raise IdentityMismatch("the usage batch names another receiver", expected=peer.eth_address,
                                   got=batch.receiver)
        if receive_log.usage_batch != batch.struct_hash():
            raise MalformedMessage("the receive log is about another usage batch", type="ReceiveLog",
                                   field="usageBatch", value=to_hex(receive_log.usage_batch), reason="hash mismatch")
        device_signature = from_hex(item.device_signature, "device_signature")
        device = messages.recover(batch, self.domain, device_signature)
        reads.verifier.verify_signer(item.device_certificate, device, Role.DEVICE)
        if receive_log.payer != device:
            raise IdentityMismatch("the receive log's payer is not the batch signer", expected=device,
                                   got=receive_log.payer)
        reads.load_prices(batch.policy_ids)
        return ReceiveLogRecord(
            id=receive_log.id(self.domain), sp_address=peer.eth_address, payer=device, serial=batch.serial,
            first_seq=batch.first_seq, count=batch.count, total=batch.total, usage_batch_json=batch.to_json(),
            device_sig=device_signature, receiver_sig=envelope.signature_bytes(),
            received_at=receive_log.received_at), batch

    def _admit(self, record: ReceiveLogRecord, on_chain: IssueLogInfo | None = None) -> None:
        """Same id again: replay (same answer) or DuplicateMessage; new: sequence and cap checks against
        `on_chain` (read under the receive lock; read here when not given), then persist."""
        if self.store.receive_log(record.id) is not None:
            self.store.store_receive_log(record)  # raises DuplicateMessage on another payload
            return
        on_chain = self.chain.issue_log(record.serial) if on_chain is None else on_chain
        end = record.first_seq + record.count
        if record.first_seq < on_chain.next_seq:
            raise SequenceError("these usage logs are already settled", serial=record.serial,
                                expected=on_chain.next_seq, got=record.first_seq)
        if end > on_chain.seq_limit:
            raise SequenceError("usage beyond the closed issue log's sequence limit", serial=record.serial,
                                expected=on_chain.seq_limit, got=end)
        held = self.store.live_receive_logs(record.serial)
        for other in held:
            if other.first_seq < end and record.first_seq < other.first_seq + other.count:
                raise SequenceError("usage logs overlap a receive log the CC already holds", serial=record.serial,
                                    expected=other.first_seq + other.count, got=record.first_seq,
                                    held_receive_log_id=to_hex(other.id))
        # In flight = held logs the chain's cursor has not passed. Not by status: a log whose settlement is mined
        # but not yet recorded (still `submitted`) is in `on_chain.spent` already and must not count twice.
        pending = sum(r.total for r in held if r.first_seq >= on_chain.next_seq)
        if on_chain.spent + pending + record.total > on_chain.cap:
            raise AllowanceExceeded("usage beyond the issue log's cap", serial=record.serial, cap=on_chain.cap,
                                    wanted=on_chain.spent + pending + record.total)
        self.store.store_receive_log(record)
        self.log.info("receive_log.accepted", id=to_hex(record.id), serial=to_hex(record.serial),
                      first_seq=record.first_seq, count=record.count, total=record.total)

    # released logs (a stolen or expired device) ----------------------------------------------------------------
    def credit_releases(self, user_id: str) -> int:
        """Credit every IssueLogReleased of this user's logs to its balance (one `release` entry per serial, from
        the event, whoever sent the release: the authority's `member revoke --release-logs` or this CC), so the
        money a revoked device never spent can be issued to the user's next device. A release is credited only
        once its transaction is final at the configured depth (`_release_final`); until then it is followed as
        `included`, and a reorg that drops it leaves nothing to undo. Returns the new entries."""
        events = self.chain.contract.events.IssueLogReleased().get_logs(
            argument_filters={"userIdHash": user_id_hash(user_id)}, from_block=self.chain.deployment.deploy_block)
        credited = self.store.released_serials(user_id)
        created = 0
        for event in events:
            serial, released = bytes(event["args"]["serial"]), int(event["args"]["released"])
            if serial in credited:
                continue
            tx_hash = to_hex(bytes(event["transactionHash"]))
            if not self._release_final(serial, tx_hash, to_hex(bytes(event["blockHash"]))):
                continue
            if self.store.credit_release(serial, user_id, released, tx_hash):
                created += 1
                self.log.info("issue_log.release_credited", serial=to_hex(serial), user_id=user_id,
                              released=released, tx_hash=tx_hash)
        return created

    def _release_final(self, serial: bytes, tx_hash: str, block_hash: str) -> bool:
        """Follow the release transaction in cc_chain_txs (kind `release`; the finality loop re-broadcasts its
        bytes if a reorg drops it) and say whether it is final, in the very block the event was read from (a
        reorg between the event read and the check re-reads next time: `released` is the chain's, at that block)."""
        self.store.track_transaction("release", to_hex(serial), tx_hash, None)
        if not self.finality.is_final(tx_hash):
            return False
        row = self.store.chain_tx(tx_hash)
        return row is not None and (row.block_hash or "").lower() == block_hash.lower()

    # balance view ------------------------------------------------------------------------------------------------
    def user_view(self, user_id: str, peer: MemberIdentity) -> dict[str, Any]:
        """A device reads only the balance of the user its certificate names; the bank reads any."""
        if peer.role == Role.DEVICE:
            _certified_user(peer, user_id)
        with self._money_lock:
            self.credit_releases(user_id)
        return self.store.user_view(user_id)


class _IntakeReads:
    """The chain facts one receive request reads at most once, and drops with the request: each member's
    on-chain status (`verifier`, scoped to the request) and each policy's price. A price cannot change on
    chain (registerPolicy writes it once; a policy id is one content version, and a version is claimed once),
    but it is not kept across requests: at "latest" a registration can still be reorged out and another made
    with the same id and another price. An unknown policy stays unknown for the rest of the request."""

    def __init__(self, verifier: CertificateVerifier, chain: ChainWriter) -> None:
        self.verifier = verifier.for_one_request()
        self._chain = chain
        self._prices: dict[bytes, int | ContractReverted] = {}

    def load_prices(self, policy_ids: Sequence[bytes]) -> None:
        for policy_id in policy_ids:
            if policy_id not in self._prices:
                try:
                    self._prices[policy_id] = self._chain.policy(policy_id).price
                except ContractReverted as exc:
                    self._prices[policy_id] = exc

    def price(self, policy_id: bytes) -> int:
        """The loaded price; NotFound for a policy the chain does not know."""
        if policy_id not in self._prices:
            self.load_prices([policy_id])
        found = self._prices[policy_id]
        if isinstance(found, ContractReverted):
            raise NotFound("usage of an unknown policy", policy_id=policy_id, error=found.fields.get("error_name"))
        return found


def _check_terms(batch: UsageBatch, device: str, on_chain: IssueLogInfo, reads: _IntakeReads) -> None:
    """Device owns the serial; every fee equals the on-chain price; no use after the log's expiry."""
    if not on_chain.exists:
        raise NotFound("usage batch for an unknown serial", serial=batch.serial)
    if on_chain.device != device:
        raise IdentityMismatch("the batch signer does not own the serial", expected=on_chain.device, got=device)
    prices = {policy_id: reads.price(policy_id) for policy_id in batch.policy_ids}
    for usage in batch.logs():
        if usage.fee != prices[usage.policy_id]:
            raise FeeMismatch("usage fee differs from the on-chain price", policy_id=usage.policy_id,
                              expected=prices[usage.policy_id], got=usage.fee, seq=usage.seq)
        if usage.used_at > on_chain.expires_at:
            raise IssueLogExpired("usage after the issue log expired", serial=batch.serial, seq=usage.seq,
                                  used_at=usage.used_at, expires_at=on_chain.expires_at)


def _bound_cap(serial: bytes, cap: int, user_id: str, new_money: int) -> None:
    """The contract stores caps as uint96 and reverts with AmountOverflow above it: refuse before planning, so a
    renewal that cannot be mined is never sent (nothing reserved, the device's wallet unchanged)."""
    if cap > MAX_CAP:
        raise AllowanceExceeded(f"the renewed cap {cap} exceeds the largest cap {MAX_CAP} (2**96 - 1)",
                                serial=serial, cap=MAX_CAP, user_id=user_id, wanted=new_money)


def _certified_user(peer: MemberIdentity, claimed: str) -> str:
    """The user the CA named in the device's certificate; a request naming another user is IdentityMismatch."""
    if peer.user_id is None or claimed != peer.user_id:
        raise IdentityMismatch(f"device {peer.member_id} belongs to user {peer.user_id!r} (its certificate), "
                               f"not {claimed!r}: a device spends and reads only its own user's deposits",
                               member_id=peer.member_id, expected_user=peer.user_id, got_user=claimed)
    return peer.user_id


def _receipt_or_none(w3: Web3, tx_hash: str) -> Any:
    try:
        return w3.eth.get_transaction_receipt(tx_hash)  # type: ignore[arg-type]
    except TransactionNotFound:
        return None


def _in_mempool(w3: Web3, tx_hash: str) -> bool:
    try:
        tx = w3.eth.get_transaction(tx_hash)  # type: ignore[arg-type]
    except TransactionNotFound:
        return False
    return tx is not None and tx.get("blockNumber") is None


__all__ = ["ClearingCenter", "ReceiptWaiter", "derive_serial"]
