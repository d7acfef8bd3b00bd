"""A web3 provider over several RPC endpoints of one chain: when the current node stops answering, use the next.

Failover happens on transport failures only (connection refused, reset, timeout), never on a JSON-RPC error
answer: a node that says "nonce too low" is answering. It is sticky (it stays on the node that answers) and says
which node it uses (`current_url`, and a log line on every switch). It does not compare the nodes' heads; a node
that answers but lags is the finality tracker's business. A timed-out `eth_sendRawTransaction` is re-sent to the
next node as the same signed bytes, so it cannot become a second transaction.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

import requests
from web3 import Web3
from web3.middleware import ExtraDataToPOAMiddleware
from web3.providers.base import JSONBaseProvider
from web3.providers.rpc import HTTPProvider
from web3.types import RPCEndpoint, RPCResponse

from offchain.core.errors import ChainUnreachable, SettingError

log = logging.getLogger(__name__)
TRANSPORT_ERRORS = (requests.ConnectionError, requests.Timeout)


def http_provider(url: str, *, timeout_s: float, **kwargs: Any) -> HTTPProvider:
    """An HTTPProvider that asks its node for `eth_chainId` once: web3's validation middleware asks for it twice
    per eth_call, estimate and send, which made two of every three requests. One provider talks to one node, whose
    chain id does not change while it runs; nothing else is cached (heads, blocks and views always go to the node)."""
    return HTTPProvider(url, request_kwargs={"timeout": timeout_s}, cache_allowed_requests=True,
                        cacheable_requests={RPCEndpoint("eth_chainId")}, **kwargs)


class FailoverHTTPProvider(JSONBaseProvider):
    """HTTP JSON-RPC over `rpc_urls` in order; on a transport failure, the next one (wrapping round once)."""

    def __init__(self, rpc_urls: Sequence[str], *, timeout_s: float = 10.0) -> None:
        super().__init__()
        if not rpc_urls:
            raise SettingError("rpc_urls is empty: give at least one endpoint", field="rpc_urls")
        self.rpc_urls = list(rpc_urls)
        # no retries inside one endpoint: a dead node should cost one refused connection, not a backoff
        self._providers = [http_provider(url, timeout_s=timeout_s, exception_retry_configuration=None)
                           for url in self.rpc_urls]
        self._index = 0
        self._lock = threading.Lock()
        self.switches = 0

    @property
    def current_url(self) -> str:
        return self.rpc_urls[self._index]

    def __str__(self) -> str:
        return f"failover RPC {self.current_url} (of {len(self.rpc_urls)})"

    def make_request(self, method: RPCEndpoint, params: Any) -> RPCResponse:
        return self._each(lambda p: p.make_request(method, params), str(method))

    def make_batch_request(self, batch_requests: list[tuple[RPCEndpoint, Any]]) -> Any:
        return self._each(lambda p: p.make_batch_request(batch_requests), "batch")

    def is_connected(self, show_traceback: bool = False) -> bool:
        try:
            self.make_request(RPCEndpoint("web3_clientVersion"), [])
            return True
        except ChainUnreachable:
            if show_traceback:
                raise
            return False

    def _each(self, call: Any, method: str) -> Any:
        errors: list[str] = []
        for _ in range(len(self._providers)):
            index = self._index
            try:
                return call(self._providers[index])
            except TRANSPORT_ERRORS as exc:
                errors.append(f"{self.rpc_urls[index]}: {type(exc).__name__}")
                self._advance(index, method, exc)
        raise ChainUnreachable(f"no RPC endpoint answers ({'; '.join(errors)})", rpc_urls=list(self.rpc_urls),
                               method=method)

    def _advance(self, failed: int, method: str, exc: BaseException) -> None:
        with self._lock:
            if self._index != failed:  # another thread moved on already
                return
            self._index = (failed + 1) % len(self._providers)
            self.switches += 1
        log.warning("rpc failover: %s did not answer %s (%s); now using %s", self.rpc_urls[failed], method,
                    type(exc).__name__, self.current_url)


def connect(rpc_urls: Sequence[str], *, poa: bool = True, timeout_s: float = 10.0) -> Web3:
    """A Web3 over `rpc_urls` with failover; `poa` injects ExtraDataToPOAMiddleware at layer 0 (Clique's
    extraData is longer than 32 bytes, which web3's block formatter otherwise refuses). Harmless on anvil."""
    w3 = Web3(FailoverHTTPProvider(rpc_urls, timeout_s=timeout_s))
    if poa:
        w3.middleware_onion.inject(ExtraDataToPOAMiddleware, layer=0)
    return w3
