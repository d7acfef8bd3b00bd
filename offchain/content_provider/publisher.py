"""The content provider tool: package content into a secure container, register its policy on chain, publish it.

Registration is idempotent (an existing policy with the same hash is fine, another hash is PolicyMismatch) so a
failed publish can simply be re-run. The content key leaves this tool only over mTLS to the service provider.
"""

from __future__ import annotations

import base64
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from offchain.chain.protocols import ChainWriter
from offchain.trust import container as containers
from offchain.trust.ca import MemberCredentials
from offchain.core.errors import ContractReverted, PolicyMismatch
from offchain.transport.client import JsonTransport
from offchain.core.messages import keccak, to_checksum_address


JSON_PUBLISH_MAX_BYTES = 8 * 1024 * 1024  # bigger containers go to the SP's streamed route


@dataclass(frozen=True)
class Published:
    content_id: bytes
    version: int
    policy_id: bytes
    policy_hash: bytes
    price: int


def content_id_for(name: str) -> bytes:
    """A bytes32 content id derived from a human name (keccak256 of it)."""
    return keccak(name.encode())


class ContentProvider:
    """Packages, registers and publishes content as one content provider member (`chain` signs with its key,
    `sp` is the mTLS connection to the service provider)."""

    def __init__(self, credentials: MemberCredentials, chain: ChainWriter, sp: JsonTransport) -> None:
        self._credentials = credentials
        self._chain = chain
        self._sp = sp

    def package(self, content: bytes, policy: containers.Policy, *, title: str = "",
                media_type: str = "application/octet-stream") -> tuple[bytes, bytes]:
        """(container blob, content key)."""
        return containers.package(content, policy.content_id, policy, self._credentials, title=title,
                                  media_type=media_type)

    def register(self, policy: containers.Policy) -> bytes:
        """Register `policy` on chain unless it already is with the same hash; returns the policy hash."""
        digest = containers.policy_hash(policy)
        try:
            self._chain.register_policy(policy.content_id, policy.version, policy.price,
                                        [(p.account, p.bps) for p in policy.payees], digest)
        except ContractReverted as exc:
            if exc.fields.get("error_name") != "PolicyExists":
                raise
            registered = self._chain.policy(policy.policy_id).policy_hash
            if registered != digest:
                raise PolicyMismatch("this content version is registered on chain with another policy",
                                     policy_id=policy.policy_id, expected=registered, got=digest) from None
        return digest

    def upload(self, blob: bytes, content_key: bytes) -> Any:
        """Send a container and its key to the SP: streamed as the raw body of /v1/catalog/container when the
        transport streams (any size up to the SP's max_container_bytes, past the HTTP body limit), else as JSON."""
        key_b64 = base64.b64encode(content_key).decode()
        if not hasattr(self._sp, "post_file") or len(blob) <= JSON_PUBLISH_MAX_BYTES:
            return self._sp.post("/v1/catalog", {"container_b64": base64.b64encode(blob).decode(),
                                                 "content_key_b64": key_b64})
        with tempfile.TemporaryDirectory(prefix="clearhouse-publish-") as folder:
            source = Path(folder) / "container"
            source.write_bytes(blob)
            return self._sp.post_file("/v1/catalog/container", source, {"X-Clearhouse-Content-Key": key_b64})

    def publish(self, content: bytes, *, content_id: bytes, version: int, price: int,
                payees: Sequence[tuple[str, int]], title: str = "") -> Published:
        """Package, register on chain, then upload container and key to the SP; returns what was published."""
        policy = containers.Policy(content_id=content_id, version=version, price=price,
                                   payees=tuple(containers.Payee(account, bps) for account, bps in payees),
                                   provider=to_checksum_address(self._credentials.eth_address))
        blob, content_key = self.package(content, policy, title=title)
        digest = self.register(policy)
        self.upload(blob, content_key)
        return Published(content_id, version, policy.policy_id, digest, price)


__all__ = ["ContentProvider", "Published", "content_id_for"]
