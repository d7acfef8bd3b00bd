"""Transport names the simulator uses, in one place: the blocking client and the settings wiring."""

from __future__ import annotations

from offchain.transport.client import SyncJsonClient
from offchain.transport.wiring import deployment_domain, file_reader

__all__ = ["SyncJsonClient", "deployment_domain", "file_reader"]
