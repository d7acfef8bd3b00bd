"""What every service's `build_app` reads from its settings: the deployment's EIP-712 domain, the chain client,
the member verifier (CA + CRL + on-chain status) and the paths a service cannot run without.

No routes and no business logic here; `offchain.transport.server.serve_app` runs the app these build.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from offchain.core.errors import ConfigError
from offchain.core.messages import Domain
from offchain.core.types import Clock

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
        raise ConfigError(f"cannot read the deployment file {deployment_path}: {exc!r}",
                          path=str(deployment_path)) from None


def file_reader(path: Path | None) -> Callable[[], bytes] | None:
    """A callable returning the current bytes of `path` (the CA rewrites its CRL in place), or None."""
    if path is None:
        return None
    return lambda: Path(path).read_bytes()


def require_path(value: Path | None, name: str) -> Path:
    if value is None:
        raise ConfigError(f"setting {name} is required for this service", field=name)
    return Path(value)


def connect_chain(settings: Any) -> ChainWriter:
    """The ClearhouseChain client of a service's settings (rpc_url, deployment_path, its signing key)."""
    from web3 import Web3

    from offchain.chain.client import ClearhouseChain, Deployment

    w3 = Web3(Web3.HTTPProvider(settings.rpc_url, request_kwargs={"timeout": 60}))
    return ClearhouseChain(w3, Deployment.load(settings.deployment_path), settings.eth_signing_key())


def member_verifier(settings: Any, chain: ChainReader, clock: Clock) -> CertificateVerifier:
    """The certificate verifier every service uses for peers and signers: our CA, the current CRL, and the
    member's on-chain status (a member revoked on chain only is refused too)."""
    from offchain.trust.certs import CertificateVerifier

    return CertificateVerifier(require_path(settings.ca_path, "ca_path").read_bytes(), file_reader(settings.crl_path),
                               chain_status=lambda address, role: chain.is_active(address, int(role)), clock=clock)


__all__ = ["deployment_domain", "file_reader", "require_path", "connect_chain", "member_verifier"]
