"""The clearing center's HTTP surface: routes (role-checked), the app with its workers, `serve`.

Handlers only parse, check the caller's role and run the ClearingCenter's decision in a worker thread; every
decision is in agent.py. Served over mutual TLS; the settlement and transfer loops run while the app is up.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from offchain import storage
from offchain.chain.protocols import ChainWriter
from offchain.clearing_center import metrics as cc_metrics
from offchain.clearing_center.agent import ClearingCenter
from offchain.clearing_center.bodies import DepositNotice, IssueBody, ReceiveBody, ReceiveItem, RenewBody
from offchain.clearing_center.records import note_settled_policies
from offchain.clearing_center.settlement import SettlementWorker, build_worker
from offchain.clearing_center.skips import (RELEASE_PATH, SKIP_PATH, ReleaseBody, SkipBody, SkipRequest,
                                            release_skipped, submit_skip)
from offchain.clearing_center.store import CcStore
from offchain.clearing_center.transfers import TransferWorker
from offchain.core.settings import ClearingCenterSettings, configure_logging
from offchain.core.settings import load_settings as _load_settings
from offchain.core.types import Clock, Role, from_hex
from offchain.transport.client import JsonClient
from offchain.transport.ops import METRICS_KEY, LoopBackoff
from offchain.transport.server import Route, add_routes, new_app, serve_app
from offchain.transport.wiring import connect_chain, member_verifier, require_path
from offchain.trust.certs import MemberIdentity

PLAN_RESOLVE_MIN_INTERVAL_S = 2.0


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

    async def renewal(request: web.Request, peer: MemberIdentity, _body: None) -> dict[str, Any]:
        serial = from_hex(request.match_info["serial"], "serial")
        return await asyncio.to_thread(cc.renewal_result, serial, peer)

    async def skip(_r: web.Request, peer: MemberIdentity, body: SkipBody) -> dict[str, Any]:
        request = SkipRequest(skip_range=body.skip_range, receive_log=body.receive_log)
        return await asyncio.to_thread(submit_skip, request, cc.chain, cc.verifier, peer, cc.store.live_receive_logs)

    async def release(_r: web.Request, peer: MemberIdentity, body: ReleaseBody) -> dict[str, Any]:
        return await asyncio.to_thread(release_skipped, body, cc.chain, peer, _note_settled(cc.store))

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
        Route("GET", "/v1/issue-logs/renewals/{serial}", renewal, (Role.DEVICE,), None, None,
              "The answer of this device's completed renewal of a serial (after a lost answer)"),
        Route("POST", SKIP_PATH, skip, (Role.DEVICE,), SkipBody, None,
              "Skip a range an SP acknowledged and withheld past the window (the device's SkipRange + the SP's ack)"),
        Route("POST", RELEASE_PATH, release, (Role.DEVICE,), ReleaseBody, None,
              "Settle a skipped range's batch from the device's copy: its policies credited, the held fees released"),
    ]


def _note_settled(store: CcStore) -> Callable[[dict[str, Any]], None]:
    """Record a released batch's policies as settled, so the transfer rounds request their fees."""
    def note(batch_json: dict[str, Any]) -> None:
        with storage.session_scope(store.engine) as session:
            note_settled_policies(session, [batch_json], store.now())

    return note


def load_settings(config_path: Path | None = None, **overrides: Any) -> ClearingCenterSettings:
    return _load_settings(ClearingCenterSettings, config_path, **overrides)


def build_app(settings: ClearingCenterSettings, *, chain: ChainWriter | None = None, clock: Clock = time.time,
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
                        log=log, settle_gas_budget=settings.settle_gas_budget, confirmations=settings.confirmations)
    app = new_app(clearing_center=cc)
    add_routes(app, routes(cc), lambda request: tls.peer_identity(request, verifier),
               title="Clearhouse clearing center")
    if workers:
        settlement = build_worker(settings, store, chain, log)
        transfers = TransferWorker(store, chain, verifier, key, cert_pem, interval_s=settings.transfer_interval_s,
                                   threshold_minor=settings.transfer_threshold_minor, clock=clock, log=log,
                                   confirmations=settings.confirmations, finality=cc.finality)
        client = JsonClient(settings.bank_url, tls.client_ssl_context(settings.cert_path, settings.key_path, ca_path))
        app.cleanup_ctx.append(_background(cc, settlement, transfers, client, settings, log))
    return app


def _background(cc: ClearingCenter, settlement: SettlementWorker, transfers: TransferWorker, client: JsonClient,
                settings: ClearingCenterSettings, log: Any) -> Callable[[web.Application], Any]:
    async def plan_loop() -> None:
        gate = LoopBackoff("issue_requests.resolve", log, max(10 * settings.settle_interval_s,
                                                               PLAN_RESOLVE_MIN_INTERVAL_S))
        while True:  # at start, then on a timer: no plan a crash left `planned` stays open
            try:
                outcomes = await asyncio.to_thread(cc.resolve_open_plans)
                if outcomes:
                    log.info("issue_requests.resolved", outcomes=outcomes)
                delay = gate.succeeded()
            except Exception as exc:  # noqa: BLE001 - keep the loop alive; the next round resolves from the chain
                delay = gate.failed(exc)
            await asyncio.sleep(delay)

    async def settle_loop(round_seconds: Any) -> None:
        gate = LoopBackoff("settlement.tick", log, settings.settle_interval_s)
        while True:
            try:
                with round_seconds.time():
                    await asyncio.to_thread(settlement.tick)
                delay = gate.succeeded()
            except Exception as exc:  # noqa: BLE001 - keep the loop alive; the next tick recovers from the outbox
                delay = gate.failed(exc)
            await asyncio.sleep(delay)

    async def transfer_loop() -> None:
        gate = LoopBackoff("transfers.round", log, min(settings.settle_interval_s, settings.transfer_interval_s))
        while True:
            try:
                await asyncio.to_thread(transfers.request_round)
                await transfers.deliver(client)
                delay = gate.succeeded()
            except Exception as exc:  # noqa: BLE001 - keep the loop alive; requests are mirrored from chain events
                delay = gate.failed(exc)
            await asyncio.sleep(delay)

    async def finality_loop() -> None:
        gate = LoopBackoff("finality.tick", log, settings.settle_interval_s)
        while True:  # included -> final at the configured depth; a reorged transaction is re-broadcast
            try:
                await asyncio.to_thread(transfers.finality.tick)
                delay = gate.succeeded()
            except Exception as exc:  # noqa: BLE001 - keep the loop alive; a stalled or unreachable chain waits
                delay = gate.failed(exc)
            await asyncio.sleep(delay)

    async def context(app: web.Application) -> Any:
        tasks = [asyncio.create_task(finality_loop()), asyncio.create_task(plan_loop()), asyncio.create_task(settle_loop(app[METRICS_KEY].settlement_round)),
                 asyncio.create_task(transfer_loop())]
        yield
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await client.close()

    return context


def serve(settings: ClearingCenterSettings) -> None:
    """Run the CC (HTTPS with mutual TLS) and its workers until SIGTERM/SIGINT; in-flight requests finish."""
    configure_logging(settings)
    serve_app(settings, build_app(settings), counts=cc_metrics.counts)


__all__ = ["DepositNotice", "IssueBody", "RenewBody", "ReceiveItem", "ReceiveBody", "routes", "build_app", "serve",
           "load_settings"]  # the bodies are re-exported: callers build requests from the API module
