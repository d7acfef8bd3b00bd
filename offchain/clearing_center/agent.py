"""The clearing center (CC): user balance database, issue logs and renewals (claims 4, 12-14), receive-log intake,
and the background settlement and transfer-request workers, served over mutual TLS (aiohttp).

Every effect is anchored on chain or persisted before the answer and is idempotent by the sender's id. The CC
trusts no body field it can check: deposits against the chain's DepositRecorded event, logs against signatures,
certificates and the contract's issue logs and policies. It never moves money itself: the bank does.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web
from pydantic import BaseModel, Field
from web3 import Web3
from web3.exceptions import TimeExhausted, TransactionNotFound, Web3RPCError

from offchain import storage
from offchain.core import messages
from offchain.clearing_center.store import (CcStore, IssueLogRecord, IssueRequestRow, ReceiveLogRecord,
                                            TransferReceiptRow, hex32, user_id_hash)
from offchain.trust.certs import CertificateVerifier, Envelope, MemberIdentity
from offchain.chain.client import RECEIPT_POLL_S, ClearhouseChain, IssueLogInfo, encode_balance_statement
from offchain.core.errors import (
    AllowanceExceeded,
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
from offchain.transport.client import JsonClient
from offchain.transport.server import Route, add_routes, new_app, serve_app
from offchain.transport.wiring import connect_chain, member_verifier, require_path
from offchain.core.messages import BalanceStatement, IssueLog, ReceiveLog, Role, TransferReceipt, TransferRequest, UsageBatch
from offchain.core.settings import ClearingCenterSettings, configure_logging
from offchain.core.settings import load_settings as _load_settings
from offchain.clearing_center.settlement import SettlementWorker, build_worker

Clock = Callable[[], float]
HEX32 = r"^0x[0-9a-fA-F]{64}$"


# --- HTTP bodies ------------------------------------------------------------------------------------------------------
class DepositNotice(BaseModel):
    deposit_id: str = Field(pattern=HEX32, description="The on-chain depositId (bytes32).")
    user_id: str = Field(min_length=1, max_length=128)
    amount: int = Field(gt=0, lt=2**96)
    bank_ref: str = Field(pattern=HEX32)
    tx_hash: str = Field(pattern=HEX32, description="The bank's recordDeposit transaction.")


class IssueBody(BaseModel):
    request_id: str = Field(min_length=1, max_length=128)
    user_id: str = Field(min_length=1, max_length=128)
    amount: int | None = Field(None, gt=0, lt=2**96, description="Default: all unallocated deposits.")


class RenewBody(BaseModel):
    request_id: str = Field(min_length=1, max_length=128)
    statement: dict[str, Any] = Field(description="Envelope(BalanceStatement) signed by the device.")
    amount: int | None = Field(None, ge=0, lt=2**96, description="New money; default: all unallocated deposits.")


class ReceiveItem(BaseModel):
    receive_log: dict[str, Any]
    usage_batch: dict[str, Any]
    device_signature: str
    device_certificate: str


class ReceiveBody(BaseModel):
    items: list[ReceiveItem] = Field(min_length=1, max_length=1024)


def _unhex(value: str, field: str) -> bytes:
    try:
        return bytes.fromhex(value.removeprefix("0x"))
    except ValueError:
        raise MalformedMessage(f"{field} is not hex", type="request", field=field, value=value[:80],
                               reason="expected 0x-hex") from None


def derive_serial(device: str, kind: str, request_id: str) -> bytes:
    """A serial fixed by the request (so a retried request finds its own serial on chain, never a second one)."""
    return messages.keccak(f"clearhouse:serial:{kind}:{device}:{request_id}".encode())


# --- the agent --------------------------------------------------------------------------------------------------------
class ClearingCenter:
    """The CC's decisions; HTTP handlers call these in a worker thread. Money decisions are serialized by a lock."""

    def __init__(self, store: CcStore, chain: ClearhouseChain, verifier: CertificateVerifier, private_key: bytes,
                 cert_pem: bytes, *, issue_expiry_s: int, clock: Clock = time.time, receipt_timeout_s: float = 60.0,
                 log: Any = None) -> None:
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

    # deposits (claim 4) ------------------------------------------------------------------------------------------
    def credit_deposit(self, notice: DepositNotice, peer: MemberIdentity) -> dict[str, Any]:
        """Credit a deposit only if the bank's transaction emitted the matching DepositRecorded event."""
        deposit_id = _unhex(notice.deposit_id, "deposit_id")
        event = self._deposit_event(deposit_id, notice.tx_hash)
        expected = {"userIdHash": user_id_hash(notice.user_id), "amount": notice.amount,
                    "bankRef": _unhex(notice.bank_ref, "bank_ref"), "bank": peer.eth_address}
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

    # issue logs (claim 12) ---------------------------------------------------------------------------------------
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
        self.log.info("issue_log.issued", serial=hex32(plan.serial), mode=plan.mode, cap=plan.cap,
                      new_money=plan.new_money, carried=plan.carried, tx_hash=tx_hash)
        return response

    # renewal (claims 13, 14) -------------------------------------------------------------------------------------
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

    def _wait_receipt(self, tx_hash: str) -> Any:
        """The receipt (fast polling); still pending after `receipt_timeout_s` is TransactionPending (retry later)."""
        try:
            return self.chain.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=self.receipt_timeout_s,
                                                                  poll_latency=RECEIPT_POLL_S)
        except TimeExhausted:
            raise TransactionPending(f"transaction {tx_hash} is still pending after {self.receipt_timeout_s} s; "
                                     "retry the request (it resumes this transaction, nothing is sent twice)",
                                     tx_hash=tx_hash, waited_s=self.receipt_timeout_s) from None

    def _applied(self, plan: IssueRequestRow, function: str, tx_hash: str, receipt: Any) -> str:
        """A successful receipt applied the plan; a reverted one drops it and raises the decoded error."""
        if receipt["status"] == 1:
            return tx_hash
        self.store.drop_issue_request(plan.device, plan.request_id)
        raise self.chain.revert_reason(receipt, function)

    # receive logs ------------------------------------------------------------------------------------------------
    def receive_logs(self, items: Sequence[ReceiveItem], peer: MemberIdentity) -> dict[str, Any]:
        """Verify and persist each receive log before answering; per-item failures are reported, not fatal."""
        accepted: list[str] = []
        rejected: list[dict[str, Any]] = []
        for index, item in enumerate(items):
            try:
                record = self._verify_receive_item(item, peer)
                with self._receive_lock:
                    self._admit(record)
                accepted.append(hex32(record.id))
            except ClearhouseError as exc:
                rejected.append({"index": index, **exc.to_dict()})
                self.log.warning("receive_log.rejected", index=index, error=exc.code, message=exc.message)
        return {"accepted": accepted, "rejected": rejected}

    def _verify_receive_item(self, item: ReceiveItem, peer: MemberIdentity) -> ReceiveLogRecord:
        envelope = Envelope.from_json(item.receive_log)
        receive_log, _sp = envelope.open(self.verifier, self.domain, Role.SERVICE_PROVIDER, peer=peer)
        if not isinstance(receive_log, ReceiveLog):
            raise MalformedMessage("receive_log must be a ReceiveLog", type=envelope.kind, field="kind",
                                   value=envelope.kind, reason="wrong message type")
        batch = UsageBatch.from_json(item.usage_batch)
        if batch.receiver != peer.eth_address:
            raise IdentityMismatch("the usage batch names another receiver", expected=peer.eth_address,
                                   got=batch.receiver)
        if receive_log.usage_batch != batch.struct_hash():
            raise MalformedMessage("the receive log is about another usage batch", type="ReceiveLog",
                                   field="usageBatch", value=hex32(receive_log.usage_batch), reason="hash mismatch")
        device_signature = _unhex(item.device_signature, "device_signature")
        device = messages.recover(batch, self.domain, device_signature)
        self.verifier.verify_signer(item.device_certificate, device, Role.DEVICE)
        if receive_log.payer != device:
            raise IdentityMismatch("the receive log's payer is not the batch signer", expected=device,
                                   got=receive_log.payer)
        self._check_terms(batch, device)
        return ReceiveLogRecord(
            id=receive_log.id(self.domain), sp_address=peer.eth_address, payer=device, serial=batch.serial,
            first_seq=batch.first_seq, count=batch.count, total=batch.total, usage_batch_json=batch.to_json(),
            device_sig=device_signature, receiver_sig=envelope.signature_bytes(), received_at=receive_log.received_at)

    def _check_terms(self, batch: UsageBatch, device: str) -> None:
        """Device owns the serial; every fee equals the on-chain price; no use after the log's expiry."""
        on_chain = self.chain.issue_log(batch.serial)
        if not on_chain.exists:
            raise NotFound("usage batch for an unknown serial", serial=batch.serial)
        if on_chain.device != device:
            raise IdentityMismatch("the batch signer does not own the serial", expected=on_chain.device, got=device)
        prices: dict[bytes, int] = {}
        for policy_id in batch.policy_ids:
            try:
                prices[policy_id] = self.chain.policy(policy_id).price
            except ContractReverted as exc:
                raise NotFound("usage of an unknown policy", policy_id=policy_id,
                               error=exc.fields.get("error_name")) from None
        for usage in batch.logs():
            if usage.fee != prices[usage.policy_id]:
                raise FeeMismatch("usage fee differs from the on-chain price", policy_id=usage.policy_id,
                                  expected=prices[usage.policy_id], got=usage.fee, seq=usage.seq)
            if usage.used_at > on_chain.expires_at:
                raise IssueLogExpired("usage after the issue log expired", serial=batch.serial, seq=usage.seq,
                                      used_at=usage.used_at, expires_at=on_chain.expires_at)

    def _admit(self, record: ReceiveLogRecord) -> None:
        """Same id again: replay (same answer) or DuplicateMessage; new: sequence and cap checks, then persist."""
        if self.store.receive_log(record.id) is not None:
            self.store.store_receive_log(record)  # raises DuplicateMessage on another payload
            return
        on_chain = self.chain.issue_log(record.serial)
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
                                    held_receive_log_id=hex32(other.id))
        # In flight = held logs the chain's cursor has not passed. Not by status: a log whose settlement is mined
        # but not yet recorded (still `submitted`) is in `on_chain.spent` already and must not count twice.
        pending = sum(r.total for r in held if r.first_seq >= on_chain.next_seq)
        if on_chain.spent + pending + record.total > on_chain.cap:
            raise AllowanceExceeded("usage beyond the issue log's cap", serial=record.serial, cap=on_chain.cap,
                                    wanted=on_chain.spent + pending + record.total)
        self.store.store_receive_log(record)
        self.log.info("receive_log.accepted", id=hex32(record.id), serial=hex32(record.serial),
                      first_seq=record.first_seq, count=record.count, total=record.total)

    # balance view ------------------------------------------------------------------------------------------------
    def user_view(self, user_id: str, peer: MemberIdentity) -> dict[str, Any]:
        """A device reads only the balance of the user its certificate names; the bank reads any."""
        if peer.role == Role.DEVICE:
            _certified_user(peer, user_id)
        return self.store.user_view(user_id)


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


# --- transfer requests ------------------------------------------------------------------------------------------------
class TransferWorker:
    """Turns accrued fees into on-chain transfer requests and delivers each to the bank until it is receipted."""

    def __init__(self, store: CcStore, chain: ClearhouseChain, verifier: CertificateVerifier, private_key: bytes,
                 cert_pem: bytes, *, interval_s: float, threshold_minor: int, clock: Clock = time.time,
                 max_backoff_s: float = 60.0, log: Any = None) -> None:
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

    def due_policies(self) -> list[bytes]:
        """Settled policies with accrued fees: all when the interval passed, else those at the threshold."""
        interval_passed = self.clock() - self._last_request_at >= self.interval_s
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
            try:
                await self._deliver_one(client, row.request_id, row.payee, row.amount)
                receipts += 1
                self._retry.pop(row.request_id, None)
            except ClearhouseError as exc:
                delay = min(self.max_backoff_s, 0.5 * 2 ** attempts)
                self._retry[row.request_id] = (attempts + 1, self.clock() + delay)
                self.log.warning("transfers.delivery_failed", request_id=hex32(row.request_id), error=exc.code,
                                 retry_in_s=delay)
        return receipts

    async def _deliver_one(self, client: JsonClient, request_id: bytes, payee: str, amount: int) -> None:
        request = TransferRequest(request_id=request_id, payee=payee, amount=amount)
        envelope = Envelope.seal(request, self.chain.domain, self._private_key, self._cert_pem)
        await asyncio.to_thread(self.store.mark_transfer_sent, request_id)
        answer = await client.post("/v1/transfers", {"request": envelope.to_json()})
        receipt_row = self.verify_receipt(answer, request)
        await asyncio.to_thread(self.store.record_transfer_receipt, receipt_row)
        self.log.info("transfers.receipted", request_id=hex32(request_id), bank_ref=hex32(receipt_row.bank_ref))

    def verify_receipt(self, answer: Any, request: TransferRequest) -> TransferReceiptRow:
        """The bank's Envelope(TransferReceipt): bank certificate and signature, same request id and amount."""
        envelope = Envelope.from_json((answer or {}).get("receipt"))
        receipt, bank = envelope.open(self.verifier, self.chain.domain, Role.BANK)
        if not isinstance(receipt, TransferReceipt) or receipt.request_id != request.request_id \
                or receipt.amount != request.amount:
            raise DuplicateMessage("the bank's receipt is not for this transfer request", kind="transfer_receipt",
                                   key=hex32(request.request_id))
        return TransferReceiptRow(request_id=receipt.request_id, bank_ref=receipt.bank_ref, amount=receipt.amount,
                                  confirmed_at=receipt.confirmed_at, bank_member_id=bank.member_id,
                                  envelope=envelope.to_json(), received_at=int(self.clock()))


# --- HTTP -------------------------------------------------------------------------------------------------------------
def routes(cc: ClearingCenter) -> list[Route]:
    async def notify_deposit(_r: web.Request, peer: MemberIdentity, body: DepositNotice) -> dict[str, Any]:
        return await asyncio.to_thread(cc.credit_deposit, body, peer)

    async def issue(_r: web.Request, peer: MemberIdentity, body: IssueBody) -> dict[str, Any]:
        return await asyncio.to_thread(cc.issue, body, peer)

    async def renew(_r: web.Request, peer: MemberIdentity, body: RenewBody) -> dict[str, Any]:
        return await asyncio.to_thread(cc.renew, body, peer)

    async def receive(_r: web.Request, peer: MemberIdentity, body: ReceiveBody) -> dict[str, Any]:
        return await asyncio.to_thread(cc.receive_logs, body.items, peer)

    async def user(request: web.Request, peer: MemberIdentity, _body: None) -> dict[str, Any]:
        return await asyncio.to_thread(cc.user_view, request.match_info["user_id"], peer)

    return [
        Route("POST", "/v1/deposits/notify", notify_deposit, (Role.BANK,), DepositNotice, None,
              "Credit a deposit after checking its DepositRecorded event"),
        Route("POST", "/v1/issue-logs", issue, (Role.DEVICE,), IssueBody, None,
              "Issue a log (anchored on chain before the answer)"),
        Route("POST", "/v1/issue-logs/renew", renew, (Role.DEVICE,), RenewBody, None,
              "Renew against a signed balance statement: new serial or top-up"),
        Route("POST", "/v1/receive-logs", receive, (Role.SERVICE_PROVIDER,), ReceiveBody, None,
              "Accept receive logs (persisted before the answer)"),
        Route("GET", "/v1/users/{user_id}", user, (Role.DEVICE, Role.BANK), None, None, "Balance database view"),
    ]


def load_settings(config_path: Path | None = None, **overrides: Any) -> ClearingCenterSettings:
    return _load_settings(ClearingCenterSettings, config_path, **overrides)


def build_app(settings: ClearingCenterSettings, *, chain: ClearhouseChain | None = None, clock: Clock = time.time,
              workers: bool = True) -> web.Application:
    """The CC application; with `workers` it runs the settlement and transfer loops while it is up."""
    from offchain.trust import tls
    chain = chain or connect_chain(settings)
    ca_path = require_path(settings.ca_path, "ca_path")
    verifier = member_verifier(settings, chain, clock)
    store = CcStore(storage.make_engine(settings.database_url), clock)
    store.create_schema()
    cert_pem = require_path(settings.cert_path, "cert_path").read_bytes()
    key = settings.eth_signing_key()
    log = structlog.get_logger("clearing_center").bind(member_id=settings.member_id)
    cc = ClearingCenter(store, chain, verifier, key, cert_pem, issue_expiry_s=settings.issue_expiry_s, clock=clock,
                        log=log)
    app = new_app(clearing_center=cc)
    add_routes(app, routes(cc), lambda request: tls.peer_identity(request, verifier),
               title="Clearhouse clearing center")
    if workers:
        settlement = build_worker(settings, store, chain, log)
        transfers = TransferWorker(store, chain, verifier, key, cert_pem, interval_s=settings.transfer_interval_s,
                                   threshold_minor=settings.transfer_threshold_minor, clock=clock, log=log)
        client = JsonClient(settings.bank_url, tls.client_ssl_context(settings.cert_path, settings.key_path, ca_path))
        app.cleanup_ctx.append(_background(settlement, transfers, client, settings, log))
    return app


def _background(settlement: SettlementWorker, transfers: TransferWorker, client: JsonClient,
                settings: ClearingCenterSettings, log: Any) -> Callable[[web.Application], Any]:
    async def settle_loop() -> None:
        while True:
            try:
                await asyncio.to_thread(settlement.tick)
            except Exception:  # noqa: BLE001 - keep the loop alive; the next tick recovers from the outbox
                log.exception("settlement.tick_failed")
            await asyncio.sleep(settings.settle_interval_s)

    async def transfer_loop() -> None:
        while True:
            try:
                await asyncio.to_thread(transfers.request_round)
                await transfers.deliver(client)
            except Exception:  # noqa: BLE001 - keep the loop alive; requests are mirrored from chain events
                log.exception("transfers.round_failed")
            await asyncio.sleep(min(settings.settle_interval_s, settings.transfer_interval_s))

    async def context(_app: web.Application) -> Any:
        tasks = [asyncio.create_task(settle_loop()), asyncio.create_task(transfer_loop())]
        yield
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await client.close()

    return context


def serve(settings: ClearingCenterSettings) -> None:
    """Run the CC (HTTPS with mutual TLS) and its workers until SIGTERM/SIGINT; in-flight requests finish."""
    configure_logging(settings)
    serve_app(settings, build_app(settings))


__all__ = ["ClearingCenter", "TransferWorker", "DepositNotice", "IssueBody", "RenewBody", "ReceiveItem", "ReceiveBody",
           "derive_serial", "routes", "build_app", "serve", "load_settings"]
