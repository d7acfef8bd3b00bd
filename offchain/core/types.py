"""The small shared vocabulary of the off-chain code: role numbers, the clock type, ids, hex helpers, the root.

One definition of each, imported everywhere else (no module keeps a private `_hex` or `Clock`). Nothing here
talks to the chain, the network or a database; the hex parsers raise `MalformedMessage`, and an edge that
answers with another error (a 422 body, a tampered container) catches it and says so.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

from offchain.core.errors import MalformedMessage

try:  # safe-pysha3 (pinned) is ~4x faster than pycryptodome per call; both give Ethereum keccak-256.
    from sha3 import keccak_256 as _keccak_256

    def keccak(data: bytes) -> bytes:
        return _keccak_256(data).digest()

except ImportError:  # pragma: no cover - fallback when the C extension is missing
    from eth_utils import keccak as _eth_keccak

    def keccak(data: bytes) -> bytes:
        return _eth_keccak(data)


Clock = Callable[[], float]
"""Seconds since the epoch, like `time.time`; agents take one so tests can pin time."""

PACKAGE_ROOT = Path(__file__).resolve().parents[2]
"""The checkout this package was imported from (contracts/, deployments/, ape-config.yaml live here)."""


def project_root() -> Path:
    """The project root: $CLEARHOUSE_ROOT when set (bin/env.sh sets it), else the checkout of this package."""
    return Path(os.environ.get("CLEARHOUSE_ROOT") or PACKAGE_ROOT)


class Role(IntEnum):
    """A member's role: the `uint8` the Membership contract stores (docs/design.md, Roles)."""

    NONE = 0
    CLEARING_CENTER = 1
    SERVICE_PROVIDER = 2
    CONTENT_PROVIDER = 3
    BANK = 4
    DEVICE = 5


# --- hex --------------------------------------------------------------------------------------------------------
def to_hex(data: bytes | bytearray) -> str:
    """Lower-case 0x-hex of `data`, the form every JSON body and log line uses."""
    return "0x" + bytes(data).hex()


def from_hex(value: str | bytes | bytearray, name: str = "value", *, size: int | None = None) -> bytes:
    """Bytes of a 0x-hex (or bare hex) string; bytes pass through. MalformedMessage if not hex or not `size`."""
    if isinstance(value, (bytes, bytearray)):
        raw = bytes(value)
    elif isinstance(value, str):
        try:
            raw = bytes.fromhex(value.removeprefix("0x"))
        except ValueError:
            raise MalformedMessage(f"{name} is not hex: {value[:80]!r}", type="hex", field=name, value=value[:80],
                                   reason="expected 0x-hex") from None
    else:
        raise MalformedMessage(f"{name} is not hex: {value!r}", type="hex", field=name, value=repr(value)[:80],
                               reason="expected a 0x-hex string")
    if size is not None and len(raw) != size:
        raise MalformedMessage(f"{name} must be {size} bytes, got {len(raw)}", type="hex", field=name,
                               value=to_hex(raw)[:80], reason=f"expected {size} bytes")
    return raw


def hex32(value: str | bytes | bytearray) -> str:
    """Canonical lower-case 0x-hex of a bytes32 given as hex or bytes (MalformedMessage unless 32 bytes)."""
    return to_hex(from_hex(value, "bytes32", size=32))


# --- ids ----------------------------------------------------------------------------------------------------------
def user_id_hash(user_id: str) -> bytes:
    """The on-chain userIdHash: keccak256 of the user id string (like memberId)."""
    return keccak(user_id.encode())


def member_id_hash(member_id: str) -> bytes:
    """The on-chain memberId: keccak256 of the member id string."""
    return keccak(member_id.encode())


# --- money views ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class UserFunds:
    """A user's totals in minor units: deposited at the bank, allocated to issue logs, and carried from one
    serial to the next (the CC's ledger counts carries; the chain's `userFunds()` has no carry total, so the
    chain view reports 0)."""

    deposited: int
    allocated: int
    carried: int = 0

    @property
    def available(self) -> int:
        """What the user can still allocate: deposited minus allocated."""
        return self.deposited - self.allocated


__all__ = ["Clock", "PACKAGE_ROOT", "project_root", "Role", "keccak", "to_hex", "from_hex", "hex32", "user_id_hash",
           "member_id_hash", "UserFunds"]
