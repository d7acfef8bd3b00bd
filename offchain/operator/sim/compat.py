"""Transport names the simulator uses, wherever the transport package keeps them (it is being split into
`client` and `wiring`; until that lands in every checkout, fall back to `server`)."""

from __future__ import annotations

try:
    from offchain.transport.client import SyncJsonClient
    from offchain.transport.wiring import deployment_domain, file_reader
except ImportError:  # the layout before the split
    from offchain.transport.server import SyncJsonClient, deployment_domain, file_reader  # type: ignore[no-redef]

__all__ = ["SyncJsonClient", "deployment_domain", "file_reader"]
