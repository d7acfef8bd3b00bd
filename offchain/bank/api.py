"""The bank's HTTP surface: request bodies, routes (role-checked), the app and `serve`.

Handlers only parse, check the caller's role and run the Bank's decision in a worker thread (agent.py); a
deposit is then notified to the CC, and a failed notice is the operator's cue to retry the same deposit.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import BaseModel, Field

from offchain import storage
from offchain.bank import metrics as bank_metrics
from offchain.bank import store as bank_store
from offchain.bank.agent import Bank, deposit_key
from offchain.bank.ledger import Ledger
from offchain.chain.protocols import ChainWriter
from offchain.core.settings import BankSettings, configure_logging
from offchain.core.settings import load_settings as _load_settings
from offchain.core.types import Clock, Role, to_hex
from offchain.transport.client import JsonClient
from offchain.transport.server import Route, add_routes, new_app, serve_app
from offchain.transport.wiring import connect_chain, deployment_domain, member_verifier, require_path
from offchain.trust.certs import Envelope, MemberIdentity


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


# --- HTTP ------------------------------------------------------------------------------------------------------------
def routes(bank: Bank, cc_client: JsonClient | None) -> list[Route]:
    async def deposit(_request: web.Request, _peer: MemberIdentity, body: DepositBody) -> DepositResponse:
        bank_ref, tx_hash = await asyncio.to_thread(bank.record_deposit, body.deposit_id, body.user_id, body.amount)
        notified = False
        if cc_client is not None:  # a ServiceUnavailable here is the operator's cue to retry the same deposit
            await cc_client.post("/v1/deposits/notify", {
                "deposit_id": to_hex(deposit_key(body.deposit_id)), "user_id": body.user_id, "amount": body.amount,
                "bank_ref": to_hex(bank_ref), "tx_hash": tx_hash})
            notified = True
        return DepositResponse(deposit_id=to_hex(deposit_key(body.deposit_id)), bank_ref=to_hex(bank_ref),
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


def build_app(settings: BankSettings, *, chain: ChainWriter | None = None, clock: Clock = time.time) -> web.Application:
    """The bank application; `chain` defaults to a client built from the settings."""
    from offchain.trust import tls
    chain = chain if chain is not None else connect_chain(settings)
    ca_path = require_path(settings.ca_path, "ca_path")
    verifier = member_verifier(settings, chain, clock)
    engine = storage.make_engine(settings.database_url)
    bank_store.create_schema(engine)
    bank = Bank(ledger=Ledger(engine, cc_management_account=settings.cc_management_account, clock=clock),
                chain=chain, domain=deployment_domain(settings.deployment_path),
                private_key=settings.eth_signing_key(),
                cert_pem=require_path(settings.cert_path, "cert_path").read_bytes(), verifier=verifier, clock=clock,
                confirmations=settings.confirmations)
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
    serve_app(settings, build_app(settings), counts=bank_metrics.counts)


if __name__ == "__main__":
    import sys

    serve(load_settings(Path(sys.argv[sys.argv.index("--config") + 1])))
