"""Health and metrics of a service: `/healthz`, `/livez` and `/metrics` (Prometheus text) on a listener of their own.

The service port requires a member certificate during the TLS handshake (`ssl.CERT_REQUIRED`), so a load balancer
probe or a Prometheus scraper without one cannot reach it. Rather than weaken that to `CERT_OPTIONAL` and check the
certificate per route (one forgotten check would open a route to anonymous callers), the ops documents are served
on a separate plain-HTTP listener (`metrics_host`, default 127.0.0.1, and `metrics_port`). It serves nothing but
these read-only documents: no key, no ledger row, no member data beyond counts.

Both documents say which chain node the service uses (`rpc`: the endpoint its chain client talks to now, the
configured endpoints in order, the failover switches so far), read from the service's own provider without a
network call; `clearhouse network status --consortium DIR` shows it per service.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import Engine

METRICS_KEY = "clearhouse.metrics"
PROBE_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class Sample:
    """One value a role reads from its own tables at scrape time (`counter` for totals that never go down)."""

    name: str
    help: str
    value: float
    labels: tuple[tuple[str, str], ...] = ()
    counter: bool = False


Counts = Callable[[Engine], Iterable[Sample]]


class ServiceMetrics:
    """The metrics of one service application: its own registry (tests build several apps in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("clearhouse_http_requests", "HTTP requests served, by route template and status.",
                                ("route", "method", "status"), registry=self.registry)
        self.settlement_round = Histogram(
            "clearhouse_settlement_round_seconds", "Duration of one settlement round of the clearing center.",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60), registry=self.registry)

    def watch(self, probe: HealthProbe, engine: Engine, counts: Counts | None) -> None:
        """Add the scrape-time collector: chain head and age from `probe`, the role's table counts from `counts`."""
        self.registry.register(_ScrapeCollector(probe, engine, counts))

    def render(self) -> bytes:
        return generate_latest(self.registry)


def request_metrics(metrics: ServiceMetrics) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Middleware counting every request by its route template (not the raw path: ids would explode the labels)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                         ) -> web.StreamResponse:
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            metrics.requests.labels(_route_label(request), request.method, str(status)).inc()

    return middleware


def _route_label(request: web.Request) -> str:
    route = request.match_info.route
    resource = getattr(route, "resource", None)
    return resource.canonical if resource is not None else "unmatched"


# --- health ----------------------------------------------------------------------------------------------------------
def rpc_endpoint(w3: Any) -> dict[str, Any]:
    """Which node `w3` talks to: {"current", "endpoints", "switches"} (failover provider or a plain HTTP one)."""
    provider = getattr(w3, "provider", None)
    if hasattr(provider, "current_url"):  # offchain.chain.failover.FailoverHTTPProvider
        return {"current": provider.current_url, "endpoints": list(provider.rpc_urls),
                "switches": int(getattr(provider, "switches", 0))}
    url = str(getattr(provider, "endpoint_uri", "") or "")
    return {"current": url, "endpoints": [url] if url else [], "switches": 0}


class HealthProbe:
    """Readiness checks: the chain answers (head, age, code at the deployment address) and the database is writable.

    `rpc_urls`: the service's endpoints (one URL or several, read through the failover provider with a short
    timeout). `service_w3`: the Web3 of the service's chain client, whose current node `rpc` reports."""

    def __init__(self, rpc_urls: str | Sequence[str], contract_address: str | None, engine: Engine, *,
                 timeout_s: float = PROBE_TIMEOUT_S, clock: Callable[[], float] = time.time,
                 service_w3: Any = None) -> None:
        from offchain.chain.failover import connect

        urls = [rpc_urls] if isinstance(rpc_urls, str) else list(rpc_urls)
        self.w3 = connect(urls, timeout_s=timeout_s)  # with the POA middleware (Clique: a longer extraData)
        self.service_w3 = service_w3
        self.contract_address = contract_address
        self.engine = engine
        self.clock = clock

    def rpc(self) -> dict[str, Any]:
        """The node the service's chain client uses now; `source` says "probe" when the service's Web3 is not
        known and the probe's own (same endpoints, same order) is reported instead."""
        if self.service_w3 is not None:
            return {**rpc_endpoint(self.service_w3), "source": "service"}
        return {**rpc_endpoint(self.w3), "source": "probe"}

    def chain(self) -> dict[str, Any]:
        try:
            head = self.w3.eth.get_block("latest")
            result: dict[str, Any] = {"ok": True, "chain_id": int(self.w3.eth.chain_id), "head": int(head["number"]),
                                      "head_age_s": max(0.0, self.clock() - int(head["timestamp"]))}
            if self.contract_address:
                has_code = len(self.w3.eth.get_code(self.w3.to_checksum_address(self.contract_address))) > 0
                result["contract_code"] = has_code
                if not has_code:
                    result.update(ok=False, error=f"no contract code at {self.contract_address}")
            return result
        except Exception as exc:  # noqa: BLE001 - a probe reports every failure as data, never raises
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}

    def database(self) -> dict[str, Any]:
        try:
            with self.engine.begin() as conn:  # SQLite: BEGIN IMMEDIATE takes the write lock
                if self.engine.dialect.name == "postgresql":
                    if conn.exec_driver_sql("SHOW transaction_read_only").scalar() == "on":
                        return {"ok": False, "error": "database is read-only"}
                else:
                    conn.exec_driver_sql("SELECT 1")
            return {"ok": True, "dialect": self.engine.dialect.name}
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}

    def report(self, **identity: str) -> dict[str, Any]:
        checks = {"chain": self.chain(), "database": self.database()}
        ready = all(check["ok"] for check in checks.values())
        return {"status": "ok" if ready else "unavailable", "live": True, "ready": ready, **identity,
                "rpc": self.rpc(), "checks": checks}


class _ScrapeCollector:
    """Reads the chain head and the role's counts when Prometheus scrapes (the database is the source of truth,
    so the totals survive a restart)."""

    def __init__(self, probe: HealthProbe, engine: Engine, counts: Counts | None) -> None:
        self.probe, self.engine, self.counts = probe, engine, counts

    def describe(self) -> list[Metric]:
        return []  # scrape-time values: nothing to check for duplicates at registration

    def collect(self) -> Iterator[Metric]:
        chain = self.probe.chain()
        yield _gauge("clearhouse_chain_up", "1 when the chain node answered the last scrape.", float(chain["ok"]))
        rpc = self.probe.rpc()
        endpoint = GaugeMetricFamily("clearhouse_chain_rpc_endpoint",
                                     "1 for the chain node the service's client uses now.", labels=["url"])
        endpoint.add_metric([rpc["current"]], 1.0)
        yield endpoint
        switches = CounterMetricFamily("clearhouse_chain_rpc_switches",
                                       "RPC failover switches of the service's chain client since start.")
        switches.add_metric([], float(rpc["switches"]))
        yield switches
        if "head" in chain:
            yield _gauge("clearhouse_chain_head_block", "Latest block number the node reports.", chain["head"])
            yield _gauge("clearhouse_chain_head_age_seconds",
                         "Seconds since the latest block's timestamp (the chain's lag behind wall time).",
                         chain["head_age_s"])
        if self.counts is None:
            return
        try:
            samples = list(self.counts(self.engine))
        except Exception:  # noqa: BLE001 - a database outage shows as clearhouse_database_up 0, not a failed scrape
            yield _gauge("clearhouse_database_up", "1 when the role's tables could be read.", 0.0)
            return
        yield _gauge("clearhouse_database_up", "1 when the role's tables could be read.", 1.0)
        yield from _families(samples)


def _gauge(name: str, help_text: str, value: float) -> Metric:
    family = GaugeMetricFamily(name, help_text)
    family.add_metric([], float(value))
    return family


def _families(samples: Iterable[Sample]) -> Iterator[Metric]:
    grouped: dict[str, list[Sample]] = {}
    for sample in samples:
        grouped.setdefault(sample.name, []).append(sample)
    for name, group in grouped.items():
        first = group[0]
        label_names = [key for key, _ in first.labels]
        family: Metric = (CounterMetricFamily(name, first.help, labels=label_names) if first.counter
                          else GaugeMetricFamily(name, first.help, labels=label_names))
        for sample in group:
            family.add_metric([value for _, value in sample.labels], sample.value)  # type: ignore[attr-defined]
        yield family


def status_samples(name: str, help_text: str, counts: dict[str, int], statuses: Iterable[str]) -> list[Sample]:
    """One gauge sample per status, zero included, so a dashboard sees every series from the first scrape."""
    return [Sample(name, help_text, float(counts.get(status, 0)), (("status", status),)) for status in statuses]


# --- background loops: one warning per outage ------------------------------------------------------------------------
class LoopBackoff:
    """What a background loop does on failure: one warning when it starts failing (a traceback only for an error
    that is not a known outage), silence while it keeps failing with the wait doubling up to `max_s`, and one
    `recovered` line when a round succeeds again. `failed`/`succeeded` return the seconds to wait. `log` is a
    structlog or a stdlib logger (plain messages, `exc_info` only)."""

    def __init__(self, name: str, log: Any, interval_s: float, *, max_s: float = 30.0) -> None:
        self.name, self.log, self.interval_s, self.max_s = name, log, interval_s, max(max_s, interval_s)
        self.failures = 0

    def failed(self, exc: BaseException) -> float:
        from offchain.core.errors import ClearhouseError

        self.failures += 1
        delay = min(self.max_s, self.interval_s * 2 ** (self.failures - 1))
        if self.failures == 1:
            known = isinstance(exc, (ClearhouseError, OSError, TimeoutError)) or _is_transport_error(exc)
            error = f"{type(exc).__name__}: {exc}"[:500]
            self.log.warning(f"{self.name} failing ({error}); retrying with backoff up to {self.max_s:g} s, "
                             "quiet until it recovers", exc_info=None if known else exc)
        return delay

    def succeeded(self) -> float:
        if self.failures:
            self.log.info(f"{self.name} recovered after {self.failures} failed rounds")
            self.failures = 0
        return self.interval_s


def _is_transport_error(exc: BaseException) -> bool:
    module = type(exc).__module__
    return module.startswith(("requests", "urllib3", "aiohttp", "web3.exceptions"))


# --- the ops listener ------------------------------------------------------------------------------------------------
SERVICE_AGENT_KEYS = ("clearing_center", "bank", "provider")  # what each role's build_app stores its agent under


def service_web3(app: web.Application) -> Any:
    """The Web3 of the service's chain client: `app["chain"].w3` when the app stores its client, else its agent's
    `chain.w3`; None when neither is known (a test app, or an agent that keeps no chain client)."""
    candidates = [app.get("chain")] + [getattr(app.get(key), "chain", None) for key in SERVICE_AGENT_KEYS]
    return next((c.w3 for c in candidates if getattr(c, "w3", None) is not None), None)


def ops_app(metrics: ServiceMetrics, probe: HealthProbe, identity: dict[str, str]) -> web.Application:
    """The plain-HTTP application: GET /healthz (readiness, 503 when not ready), /livez, /metrics."""

    async def healthz(_request: web.Request) -> web.Response:
        report = await asyncio.to_thread(probe.report, **identity)
        return web.Response(text=json.dumps(report), content_type="application/json",
                            status=200 if report["ready"] else 503)

    async def livez(_request: web.Request) -> web.Response:  # no network call: answers while the chain is down
        return web.json_response({"status": "ok", "live": True, **identity, "rpc": probe.rpc()})

    async def scrape(_request: web.Request) -> web.Response:
        body = await asyncio.to_thread(metrics.render)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/livez", livez)
    app.router.add_get("/metrics", scrape)
    return app


async def start_ops_listener(settings: Any, app: web.Application, counts: Counts | None
                             ) -> web.AppRunner | None:
    """Start the ops listener of `app` when `settings.metrics_port` is set; returns its runner (or None)."""
    port = getattr(settings, "metrics_port", None)
    if port is None:
        return None
    from offchain.storage import make_engine
    from offchain.transport.wiring import deployment_domain

    engine = make_engine(settings.database_url)
    urls = settings.chain_urls() if hasattr(settings, "chain_urls") else [settings.rpc_url]
    probe = HealthProbe(urls, deployment_domain(settings.deployment_path).verifying_contract, engine,
                        service_w3=service_web3(app))
    metrics = app.get(METRICS_KEY) or ServiceMetrics()
    metrics.watch(probe, engine, counts)
    runner = web.AppRunner(ops_app(metrics, probe, {"role": settings.ROLE_NAME, "member_id": settings.member_id}),
                           access_log=None)
    await runner.setup()
    from offchain.transport.server import _start_site

    try:
        await _start_site(web.TCPSite(runner, settings.metrics_host, port, reuse_address=True), settings.metrics_host,
                          port, "metrics_port")
    except BaseException:
        await runner.cleanup()
        raise
    bound = runner.addresses[0][1] if runner.addresses else port
    logging.getLogger(__name__).info("ops listener (healthz, metrics) on http://%s:%d", settings.metrics_host, bound)
    return runner


__all__ = ["LoopBackoff", "Sample", "Counts", "ServiceMetrics", "HealthProbe", "request_metrics", "status_samples", "ops_app",
           "start_ops_listener", "METRICS_KEY", "rpc_endpoint", "service_web3"]
