"""The bank (account management institution): deposits into the CC management account and exactly-once transfers
to payees, booked in the double-entry ledger (ledger.py) and mirrored on chain.

Deposits: ledger, then on-chain `recordDeposit`, then the CC is notified (api.py); every step is idempotent by
deposit id, so the operator simply retries. Transfers: a CC-signed TransferRequest that matches the chain's record
is paid exactly once by request id, confirmed on chain (retried, idempotent) and answered with a signed
TransferReceipt. The ledger is the source of truth for money, the chain for what was requested.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from offchain.bank.finality import TransferFinality
from offchain.bank.ledger import Ledger
from offchain.chain.views import TransferRequestInfo
from offchain.core import messages
from offchain.core.errors import ChainError, ContractReverted, DuplicateMessage, MalformedMessage, NotFound, TransferMismatch
from offchain.core.messages import Domain, TransferReceipt, TransferRequest, keccak
from offchain.core.types import Clock, Role, to_hex, user_id_hash
from offchain.trust.certs import CertificateVerifier, Envelope, MemberIdentity


def deposit_key(deposit_id: str) -> bytes:
    """bytes32 deposit id: the value itself when it is 0x + 64 hex digits, else keccak256 of the string."""
    body = deposit_id.removeprefix("0x")
    if deposit_id.startswith("0x") and len(body) == 64:
        try:
            return bytes.fromhex(body)
        except ValueError:
            pass
    return keccak(deposit_id.encode())


# --- chain access ----------------------------------------------------------------------------------------------------
class BankChain(Protocol):
    """The part of the chain the bank uses (offchain.chain.protocols.ChainWriter, i.e. ClearhouseChain, has it)."""

    contract: Any  # web3 Contract: `.events.DepositRecorded()` finds the transaction of a replayed deposit

    def record_deposit(self, deposit_id: bytes, user_id_hash: bytes, amount: int, bank_ref: bytes) -> Any: ...

    def transfer_request(self, request_id: bytes) -> TransferRequestInfo: ...

    def confirm_transfer(self, request_id: bytes, bank_ref: bytes) -> Any: ...


def transfer_on_chain(chain: BankChain, request_id: bytes) -> TransferRequestInfo:
    """The chain's record of a transfer request (offchain.chain.TransferRequestInfo); NotFound if unknown."""
    info = chain.transfer_request(request_id)
    if int(info.payee, 16) == 0:
        raise NotFound("the chain has no such transfer request", request_id=request_id)
    return info


# --- the service logic ---------------------------------------------------------------------------------------------
class Bank:
    """Deposits and transfers; the ledger is the source of truth for money, the chain for what was requested."""

    def __init__(self, *, ledger: Ledger, chain: BankChain, domain: Domain, private_key: bytes, cert_pem: bytes,
                 verifier: CertificateVerifier, clock: Clock = time.time,
                 finality: TransferFinality | None = None, confirmations: int | None = None) -> None:
        """`finality`: the finality checks of transfer requests and confirmations; by default built over the
        chain's web3 (a chain double without `w3` has none: its answers are final by construction)."""
        self.ledger = ledger
        self.chain = chain
        self.domain = domain
        self._private_key = private_key
        self._cert_pem = cert_pem
        self._verifier = verifier
        self._clock = clock
        if finality is None and getattr(chain, "w3", None) is not None:
            deployment = getattr(chain, "deployment", None)
            finality = TransferFinality(chain.w3, chain.contract, confirmations=confirmations,
                                        deploy_block=getattr(deployment, "deploy_block", 0))
        self.finality = finality

    # --- deposits ---------------------------------------------------------------------------------------------
    def record_deposit(self, deposit_id: str, user_id: str, amount: int) -> tuple[bytes, str]:
        """Ledger (exactly once), then `recordDeposit` on chain (a replay finds the original tx); (bank_ref, tx)."""
        key = deposit_key(deposit_id)
        entry = self.ledger.deposit(key, user_id, amount, external_ref=deposit_id)
        try:
            receipt = self.chain.record_deposit(key, user_id_hash(user_id), amount, entry.bank_ref)
            return entry.bank_ref, _tx_hash(receipt)
        except ContractReverted as exc:
            if exc.fields.get("error_name") != "DuplicateDeposit":
                raise
        return entry.bank_ref, self._deposit_tx(key)

    def _deposit_tx(self, key: bytes) -> str:
        event = self.chain.contract.events.DepositRecorded()
        logs = event.get_logs(from_block=0, argument_filters={"depositId": key})
        if not logs:
            raise ChainError("deposit recorded on chain but its event is not found", deposit_id=key)
        return to_hex(bytes(logs[0]["transactionHash"]))

    # --- transfers --------------------------------------------------------------------------------------------
    def transfer(self, envelope: Envelope, peer: MemberIdentity) -> Envelope:
        """Pay a CC-signed transfer request exactly once, confirm it on chain, return the signed receipt."""
        request, _cc = envelope.open(self._verifier, self.domain, Role.CLEARING_CENTER, peer=peer)
        if not isinstance(request, TransferRequest):
            raise MalformedMessage("request must be a TransferRequest", type=envelope.kind, field="kind",
                                   value=envelope.kind, reason="wrong message type")
        request_hash = request.digest(self.domain)
        if self.ledger.find_transfer(request.request_id) is None:
            self._check_against_chain(request)
            if self.finality is not None:  # only a final request is paid (block hash at its height re-read)
                self.finality.require_request_final(request.request_id)
        entry = self.ledger.execute_transfer(request.request_id, request.payee, request.amount, request_hash)
        self.confirm_on_chain(request.request_id, entry.bank_ref)
        if self.finality is not None:  # the receipt only once our confirmation is final; until then retryable
            self.finality.require_confirmation_final(request.request_id)
        booked = self.ledger.find_transfer(request.request_id)
        confirmed_at = booked.created_at if booked is not None else int(self._clock())
        receipt = TransferReceipt(request_id=request.request_id, bank_ref=entry.bank_ref, amount=request.amount,
                                  confirmed_at=confirmed_at)
        return Envelope.seal(receipt, self.domain, self._private_key, self._cert_pem)

    def _check_against_chain(self, request: TransferRequest) -> None:
        """Before a first payment: the chain has this request with this payee and amount, and nobody paid it yet."""
        on_chain = transfer_on_chain(self.chain, request.request_id)
        if on_chain.confirmed:  # paid already, yet not in this ledger (restored backup, another bank): never twice
            raise DuplicateMessage("the chain shows this transfer request already paid and confirmed",
                                   kind="transfer_request", key=request.request_id, bank_ref=on_chain.bank_ref)
        for name, expected, got in (("payee", messages.to_checksum_address(on_chain.payee), request.payee),
                                    ("amount", on_chain.amount, request.amount)):
            if expected != got:
                raise TransferMismatch(f"transfer request {name} differs from the chain's record",
                                       request_id=request.request_id, field=name, on_chain=expected, got=got)

    def confirm_on_chain(self, request_id: bytes, bank_ref: bytes) -> None:
        """`confirmTransfer` unless already confirmed with this bank_ref (another ref is a loud error)."""
        on_chain = transfer_on_chain(self.chain, request_id)
        if not on_chain.confirmed:
            try:
                self.chain.confirm_transfer(request_id, bank_ref)
                return
            except ContractReverted as exc:
                if exc.fields.get("error_name") != "TransferAlreadyConfirmed":
                    raise
            on_chain = transfer_on_chain(self.chain, request_id)
        if on_chain.bank_ref != bank_ref:
            raise TransferMismatch("the chain confirmed this transfer with another bank reference",
                                   request_id=request_id, field="bank_ref", on_chain=on_chain.bank_ref, got=bank_ref)

    # --- reconciliation ---------------------------------------------------------------------------------------
    def ledger_view(self) -> dict[str, Any]:
        trial = self.ledger.trial_balance()
        entries = self.ledger.entries(limit=100_000)
        return {
            "balances": self.ledger.balances(),
            "trial_balance": {"credits": trial.credits, "debits": trial.debits, "balanced": trial.balanced},
            "entries": [{"entry_id": e.entry_id, "key": e.key, "kind": e.kind, "bank_ref": to_hex(e.bank_ref),
                         "external_ref": e.external_ref, "created_at": e.created_at,
                         "postings": [[account, amount] for account, amount in e.postings]} for e in entries],
        }


def _tx_hash(receipt: Any) -> str:
    value = receipt["transactionHash"]
    return value if isinstance(value, str) else to_hex(bytes(value))


__all__ = ["Bank", "BankChain", "deposit_key", "transfer_on_chain"]
