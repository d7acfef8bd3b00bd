"""The bank service (account management institution): HTTP over the double-entry ledger of offchain/ledger.py.

Deposits: ledger, then on-chain `recordDeposit`, then the CC is notified; every step is idempotent by deposit id,
so the operator simply retries. Transfers: a CC-signed TransferRequest that matches the chain's record is paid
exactly once by request id, confirmed on chain (retried, idempotent) and answered with a signed TransferReceipt.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import BaseModel, Field

from offchain.core import messages
from offchain.trust.certs import CertificateVerifier, Envelope, MemberIdentity
from offchain.core.errors import (ChainError, ContractReverted, DuplicateMessage, MalformedMessage, NotFound,
                             TransferMismatch)
from offchain.transport.client import JsonClient
from offchain.transport.server import Route, add_routes, new_app, serve_app
from offchain.transport.wiring import connect_chain, deployment_domain, member_verifier, require_path
from offchain.bank.ledger import Ledger
from offchain.core.messages import Domain, Role, TransferReceipt, TransferRequest, keccak
from offchain.core.settings import BankSettings, configure_logging
from offchain.core.settings import load_settings as _load_settings

log = logging.getLogger(__name__)
Clock = Callable[[], float]


# --- HTTP bodies ----------------------------------------------------------------------------------------------------
class DepositBody(BaseModel):
    deposit_id: str = Field(min_length=1, max_length=120)
    user_id: str = Field(min_length=1, max_length=120)
    amount: int = Field(gt=0, lt=2**96)


class DepositResponse(BaseModel):
    deposit_id: str
    bank_ref: str
    tx_hash: str
    cc_notified: bool


class TransferBody(BaseModel):
    request: dict[str, Any]


class TransferResponse(BaseModel):
    receipt: dict[str, Any]


def deposit_key(deposit_id: str) -> bytes:
    """bytes32 deposit id: the value itself when it is 0x + 64 hex digits, else keccak256 of the string."""
    body = deposit_id.removeprefix("0x")
    if deposit_id.startswith("0x") and len(body) == 64:
        try:
            return bytes.fromhex(body)
        except ValueError:
            pass
    return keccak(deposit_id.encode())


def user_id_hash(user_id: str) -> bytes:
    """The on-chain userIdHash: keccak256 of the user id string (like memberId)."""
    return keccak(user_id.encode())


def _hex(data: bytes) -> str:
    return "0x" + bytes(data).hex()


# --- chain access ----------------------------------------------------------------------------------------------------
def transfer_on_chain(chain: Any, request_id: bytes) -> Any:
    """The chain's record of a transfer request (offchain.chain.client.TransferRequestInfo); NotFound if unknown."""
    info = chain.transfer_request(request_id)
    if int(info.payee, 16) == 0:
        raise NotFound("the chain has no such transfer request", request_id=request_id)
    return info


# --- the service logic ---------------------------------------------------------------------------------------------
class Bank:
    """Deposits and transfers; the ledger is the source of truth for money, the chain for what was requested."""

    def __init__(self, *, ledger: Ledger, chain: Any, domain: Domain, private_key: bytes, cert_pem: bytes,
                 verifier: CertificateVerifier, clock: Clock = time.time) -> None:
        self.ledger = ledger
        self.chain = chain
        self.domain = domain
        self._private_key = private_key
        self._cert_pem = cert_pem
        self._verifier = verifier
        self._clock = clock

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
        return _hex(bytes(logs[0]["transactionHash"]))

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
        entry = self.ledger.execute_transfer(request.request_id, request.payee, request.amount, request_hash)
        self.confirm_on_chain(request.request_id, entry.bank_ref)
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
            "entries": [{"entry_id": e.entry_id, "key": e.key, "kind": e.kind, "bank_ref": _hex(e.bank_ref),
                         "external_ref": e.external_ref, "created_at": e.created_at,
                         "postings": [[account, amount] for account, amount in e.postings]} for e in entries],
        }


def _tx_hash(receipt: Any) -> str:
    value = receipt["transactionHash"]
    return value if isinstance(value, str) else _hex(bytes(value))


# --- HTTP ------------------------------------------------------------------------------------------------------------
def routes(bank: Bank, cc_client: JsonClient | None) -> list[Route]:
    async def deposit(_request: web.Request, _peer: MemberIdentity, body: DepositBody) -> DepositResponse:
        bank_ref, tx_hash = await asyncio.to_thread(bank.record_deposit, body.deposit_id, body.user_id, body.amount)
        notified = False
        if cc_client is not None:  # a ServiceUnavailable here is the operator's cue to retry the same deposit
            await cc_client.post("/v1/deposits/notify", {
                "deposit_id": _hex(deposit_key(body.deposit_id)), "user_id": body.user_id, "amount": body.amount,
                "bank_ref": _hex(bank_ref), "tx_hash": tx_hash})
            notified = True
        return DepositResponse(deposit_id=_hex(deposit_key(body.deposit_id)), bank_ref=_hex(bank_ref),
                               tx_hash=tx_hash, cc_notified=notified)

    async def transfer(_request: web.Request, peer: MemberIdentity, body: TransferBody) -> TransferResponse:
        receipt = await asyncio.to_thread(bank.transfer, Envelope.from_json(body.request), peer)
        return TransferResponse(receipt=receipt.to_json())

    async def ledger(_request: web.Request, _peer: MemberIdentity, _body: None) -> dict[str, Any]:
        return await asyncio.to_thread(bank.ledger_view)

    return [
        Route("POST", "/v1/deposits", deposit, (Role.BANK,), DepositBody, DepositResponse,
              "Record a user deposit (ledger, chain, CC notified); idempotent by deposit id"),
        Route("POST", "/v1/transfers", transfer, (Role.CLEARING_CENTER,), TransferBody, TransferResponse,
              "Execute a CC transfer request exactly once and confirm it on chain"),
        Route("GET", "/v1/ledger", ledger, (Role.CLEARING_CENTER, Role.BANK), None, None,
              "Balances, trial balance and journal entries"),
    ]


def load_settings(config_path: Path | None = None, **overrides: Any) -> BankSettings:
    return _load_settings(BankSettings, config_path, **overrides)


def build_app(settings: BankSettings, *, chain: Any = None, clock: Clock = time.time) -> web.Application:
    """The bank application; `chain` defaults to a client built from the settings."""
    from offchain import storage
    from offchain.bank import store as bank_store
    from offchain.trust import tls
    chain = chain if chain is not None else connect_chain(settings)
    ca_path = require_path(settings.ca_path, "ca_path")
    verifier = member_verifier(settings, chain, clock)
    engine = storage.make_engine(settings.database_url)
    bank_store.create_schema(engine)
    bank = Bank(ledger=Ledger(engine, cc_management_account=settings.cc_management_account, clock=clock),
                chain=chain, domain=deployment_domain(settings.deployment_path),
                private_key=settings.eth_signing_key(),
                cert_pem=require_path(settings.cert_path, "cert_path").read_bytes(), verifier=verifier, clock=clock)
    cc_client = None
    if settings.cc_url:
        cc_client = JsonClient(settings.cc_url, tls.client_ssl_context(settings.cert_path, settings.key_path, ca_path))
    app = new_app(bank=bank)
    add_routes(app, routes(bank, cc_client), lambda request: tls.peer_identity(request, verifier),
               title="Clearhouse bank")
    if cc_client is not None:
        app.on_cleanup.append(lambda _app: cc_client.close())
    return app


def serve(settings: BankSettings) -> None:
    """Run the bank until SIGTERM/SIGINT."""
    configure_logging(settings)
    serve_app(settings, build_app(settings))


if __name__ == "__main__":
    import sys

    serve(load_settings(Path(sys.argv[sys.argv.index("--config") + 1])))
