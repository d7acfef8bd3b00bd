"""What every service's `build_app` reads from its settings: the deployment's EIP-712 domain, the chain client,
the member verifier (CA + CRL + on-chain status) and the paths a service cannot run without.

No routes and no business logic here; `offchain.transport.server.serve_app` runs the app these build.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from offchain.core.errors import PathError, SettingError
from offchain.core.messages import Domain
from offchain.core.types import Clock

_log = logging.getLogger(__name__)

if TYPE_CHECKING:  # imported lazily below: a device or a tool reading a deployment file needs no web3 or TLS stack
    from offchain.chain.protocols import ChainReader, ChainWriter
    from offchain.trust.certs import CertificateVerifier


def deployment_domain(deployment_path: Path) -> Domain:
    """The EIP-712 domain named by a deployment file (docs/design.md "Deployment file")."""
    try:
        data = json.loads(Path(deployment_path).read_text())
        return Domain(chain_id=int(data["chain_id"]),
                      verifying_contract=data["contracts"]["Clearhouse"]["address"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PathError(f"cannot read the deployment file {deployment_path}: {exc!r}",
                        path=str(deployment_path)) from None


def file_reader(path: Path | None) -> Callable[[], bytes] | None:
    """A callable returning the current bytes of `path` (the CA rewrites its CRL in place), or None."""
    if path is None:
        return None
    return lambda: Path(path).read_bytes()


def require_path(value: Path | None, name: str) -> Path:
    if value is None:
        raise SettingError(f"setting {name} is required for this service", field=name)
    return Path(value)


def chain_web3(settings: Any) -> Any:
    """The Web3 of a service's settings: over `rpc_urls` with failover (offchain.chain.failover) when several are
    given, else over `rpc_url`; either way with the POA extraData middleware (Clique; harmless on anvil). Logs
    which node it starts on; the failover provider logs every switch."""
    from web3 import Web3
    from web3.middleware import ExtraDataToPOAMiddleware

    urls = settings.chain_urls() if hasattr(settings, "chain_urls") else [settings.rpc_url]
    if len(urls) > 1:
        from offchain.chain.failover import connect

        w3 = connect(urls)
        _log.info("chain: rpc failover over %d endpoints, using %s", len(urls), w3.provider.current_url)
        return w3
    from offchain.chain.failover import http_provider

    w3 = Web3(http_provider(urls[0], timeout_s=60))
    w3.middleware_onion.inject(ExtraDataToPOAMiddleware, layer=0)
    _log.info("chain: using %s", urls[0])
    return w3


def connect_chain(settings: Any) -> ChainWriter:
    """The ClearhouseChain client of a service's settings (rpc_url or rpc_urls, deployment_path, signing key)."""
    from offchain.chain import ClearhouseChain, Deployment

    # The bank waits for each transaction it sends: past `stuck_tx_after_s` the wait replaces it (higher fees, same
    # nonce). The CC replaces through its settlement outbox instead (clearing_center/stuck.py), whose rows follow
    # the new hash; a replacement inside its waits would orphan the hashes its issue-request rows record.
    stuck_after_s = getattr(settings, "stuck_tx_after_s", None) if settings.ROLE_NAME == "bank" else None
    return ClearhouseChain(chain_web3(settings), Deployment.load(settings.deployment_path),
                           settings.eth_signing_key(), stuck_after_s=stuck_after_s)


def finality_tracker(settings: Any, w3: Any) -> Any:
    """The FinalityTracker of a service: `finality_tracker_for` with the `confirmations` setting."""
    return finality_tracker_for(w3, getattr(settings, "confirmations", None))


def finality_tracker_for(w3: Any, confirmations: int | None) -> Any:
    """A FinalityTracker: the chain's policy (offchain.chain.finality) with `confirmations` as override.
    Detection asks the node (web3_clientVersion, clique_getSigners); a chain it cannot identify gets depth 6,
    never 0."""
    from offchain.chain.finality import FinalityPolicy, FinalityTracker, Web3Reader

    def request(method: str, params: list[Any]) -> Any:
        reply = w3.provider.make_request(method, params)
        if "error" in reply:
            raise SettingError(f"{method}: {reply['error']}", source=method)
        return reply.get("result")

    policy = FinalityPolicy.detect(request, confirmations)
    _log.info("chain: finality %s, confirmations %d", policy.kind, policy.confirmations)
    return FinalityTracker(Web3Reader(w3), policy)


def final_views(settings: Any, chain: Any) -> Any:
    """The device's or SP's `FinalViews` over `chain`: `final_views_for` with its `confirmations` and
    `finality_wait_s` settings."""
    return final_views_for(chain, getattr(settings, "confirmations", None),
                           wait_s=getattr(settings, "finality_wait_s", 0.0))


def final_views_for(chain: Any, confirmations: int | None, *, wait_s: float = 0.0) -> Any:
    """`chain`'s views at the finality depth (offchain.chain.views.FinalViews). The depth is the chain's policy
    with `confirmations` as override, detected on the first read (`finality_tracker_for`, which also refuses a
    Clique depth below the quorum), so building it needs no node."""
    from offchain.chain.views import FinalViews

    return FinalViews(chain, lambda: finality_tracker_for(chain.w3, confirmations).policy.confirmations,
                      wait_s=wait_s)


def member_verifier(settings: Any, chain: ChainReader, clock: Clock) -> CertificateVerifier:
    """The certificate verifier every service uses for peers and signers: our CA, the current CRL, and the
    member's on-chain status (a member revoked on chain only is refused too)."""
    from offchain.trust.certs import CertificateVerifier

    return CertificateVerifier(require_path(settings.ca_path, "ca_path").read_bytes(), file_reader(settings.crl_path),
                               chain_status=lambda address, role: chain.is_active(address, int(role)), clock=clock)


__all__ = ["deployment_domain", "file_reader", "require_path", "chain_web3", "connect_chain", "finality_tracker",
           "finality_tracker_for", "final_views", "final_views_for", "member_verifier"]
