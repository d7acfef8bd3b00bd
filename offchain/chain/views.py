"""Read models of the contract's views: what `ClearhouseChain`'s read methods return (frozen dataclasses).

`UserFunds` is the shared `offchain.core.types.UserFunds` (the chain reports no carry total).
"""

from __future__ import annotations

from dataclasses import dataclass

from offchain.core.types import UserFunds


# --- views ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MemberInfo:
    role: int
    revoked: bool
    valid_from: int
    valid_until: int
    member_id: bytes
    cert_fingerprint: bytes
    user_id_hash: bytes = bytes(32)  # a device's user (keccak256 of the user id in its certificate)


@dataclass(frozen=True)
class IssueLogInfo:
    serial: bytes
    device: str
    user_id_hash: bytes
    cap: int
    spent: int
    next_seq: int
    seq_limit: int
    expires_at: int
    closed: bool

    @property
    def exists(self) -> bool:
        return int(self.device, 16) != 0


@dataclass(frozen=True)
class PolicyInfo:
    policy_id: bytes
    content_id: bytes
    version: int
    provider: str
    price: int
    policy_hash: bytes
    settled: int
    requested: int
    payees: tuple[tuple[str, int], ...]

    @property
    def accrued(self) -> int:
        return self.settled - self.requested


@dataclass(frozen=True)
class TransferRequestInfo:
    request_id: bytes
    payee: str
    amount: int
    confirmed: bool
    bank_ref: bytes


__all__ = ["MemberInfo", "IssueLogInfo", "PolicyInfo", "UserFunds", "TransferRequestInfo"]
