"""Read models of the contract's views (frozen dataclasses), and `FinalViews`: the same views read at the finality
depth, for the decisions a device and an SP take on chain facts (a policy's hash and owner, a serial's device, a
member's status).

`UserFunds` is the shared `offchain.core.types.UserFunds` (the chain reports no carry total). `FinalViews` never
uses the `safe`/`finalized` tags (geth refuses them on Clique): it pins each read to a block number. A fact that
is included but not yet at the depth is `NotFinal` (retry later), never "unknown".
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from offchain.core.errors import ContractReverted, NotFinal
from offchain.core.types import UserFunds

T = TypeVar("T")
BlockId = int | str  # a block number, or "latest"


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


# --- views at the finality depth --------------------------------------------------------------------------------
class PinnedReader(Protocol):
    """The views `FinalViews` reads, each at a given block (`ClearhouseChain` is one)."""

    w3: Any

    def is_active(self, account: str, role: int, *, block: BlockId = "latest") -> bool: ...

    def issue_log(self, serial: bytes, *, block: BlockId = "latest") -> IssueLogInfo: ...

    def policy(self, policy_id: bytes, *, block: BlockId = "latest") -> PolicyInfo: ...


def final_block(head: int, confirmations: int) -> int:
    """The newest block whose facts are final with the chain at `head`: a fact included in block b is final when
    head - b + 1 >= confirmations (the FinalityTracker's count, inclusive), so b <= head - confirmations + 1.
    0 and 1 confirmations both mean the head itself."""
    return max(head - max(confirmations, 1) + 1, 0)


class FinalViews:
    """`policy`, `issue_log` and `is_active` as `ClearhouseChain` answers them (same values, same reverts), but
    each fact a decision needs is read at `final_block(head, confirmations)`:

    - known at the depth: that answer;
    - unknown at the head too: the head's answer (unknown policy revert, an empty issue log, inactive);
    - known at the head only (included, not final): wait up to `wait_s` for the depth (polling the head every
      `poll_s`), then `NotFinal` (retry later).

    A revocation counts as soon as it is included: `is_active` is False when the member is inactive at the head,
    and it never waits (the services call it on their event loop while checking the TLS peer).
    `confirmations` may be a callable, asked once on first use (the chain's policy is detected lazily, so a
    device can be built offline). With 0 or 1 confirmations every read is one call at "latest", as before.
    On Clique the depth alone suffices: a signer seals at most one of any floor(N/2)+1 consecutive blocks, so
    `confirmations` >= quorum consecutive blocks always carry a quorum of distinct signers.
    """

    def __init__(self, chain: PinnedReader, confirmations: int | Callable[[], int], *, wait_s: float = 0.0,
                 poll_s: float = 0.5, head: Callable[[], int] | None = None,
                 monotonic: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        self.chain = chain
        self._confirmations = confirmations
        self.wait_s = wait_s
        self._poll_s = poll_s
        self._head = head if head is not None else (lambda: int(chain.w3.eth.block_number))
        self._monotonic = monotonic
        self._sleep = sleep
        deployment = getattr(chain, "deployment", None)  # below its deploy block the contract has no code at all
        self._deploy_block = int(getattr(deployment, "deploy_block", 0) or 0)
        self._final_members: set[tuple[str, int]] = set()  # (account, role) seen active at the depth

    @property
    def confirmations(self) -> int:
        if callable(self._confirmations):
            self._confirmations = int(self._confirmations())
        return self._confirmations

    # --- the views -------------------------------------------------------------------------------------------
    def policy(self, policy_id: bytes) -> PolicyInfo:
        """The policy at the depth; an unknown policy raises the contract's revert (UnknownPolicy), like
        `ClearhouseChain.policy`."""
        def read(block: BlockId) -> PolicyInfo | ContractReverted:
            try:
                return self.chain.policy(policy_id, block=block)
            except ContractReverted as exc:
                if exc.fields.get("error_name") == "UnknownPolicy":
                    return exc
                raise

        found = self._decide("policy", policy_id, read,
                             lambda view: isinstance(view, PolicyInfo) and int(view.provider, 16) != 0)
        if isinstance(found, ContractReverted):
            raise found
        return found

    def issue_log(self, serial: bytes) -> IssueLogInfo:
        """The issue log at the depth (`exists` False when the serial is on chain nowhere)."""
        return self._decide("issue_log", serial, lambda block: self.chain.issue_log(serial, block=block),
                            lambda view: view.exists)

    def is_active(self, account: str, role: int) -> bool:
        """Active at the head and at the depth; inactive at the head (never registered, revoked, expired) is
        False at once; active at the head only (a registration not final yet) is NotFinal, without waiting.

        A member once seen active at the depth stays so (a final block is never undone, and a revoked member
        cannot be registered again), so later checks read the head only: one call per TLS request, not three.
        Inactive at the head forgets it."""
        confirmations = self.confirmations
        if confirmations <= 1:
            return self.chain.is_active(account, role)
        key = (account.lower(), int(role))
        if key in self._final_members:
            if self.chain.is_active(account, role, block="latest"):
                return True
            self._final_members.discard(key)
            return False
        head = self._head()
        if not self.chain.is_active(account, role, block=head):
            return False
        depth = final_block(head, confirmations)
        if depth >= self._deploy_block and self.chain.is_active(account, role, block=depth):
            self._final_members.add(key)
            return True
        raise self._not_final("member", account, head, depth, confirmations)

    # --- the rule ----------------------------------------------------------------------------------------------
    def _decide(self, fact: str, subject: Any, read: Callable[[BlockId], T], known: Callable[[T], bool]) -> T:
        confirmations = self.confirmations
        if confirmations <= 1:
            return read("latest")
        deadline = self._monotonic() + self.wait_s
        while True:
            head = self._head()
            depth = final_block(head, confirmations)
            if depth >= self._deploy_block:  # a contract deployed less than the depth ago: nothing is final yet
                at_depth = read(depth)
                if known(at_depth):
                    return at_depth
            at_head = read(head)
            if not known(at_head):
                return at_head  # on chain nowhere: the caller's "unknown", not a wait
            if self._monotonic() >= deadline:
                raise self._not_final(fact, subject, head, depth, confirmations)
            self._sleep(self._poll_s)

    def _not_final(self, fact: str, subject: Any, head: int, depth: int, confirmations: int) -> NotFinal:
        return NotFinal(f"the {fact} is on chain but not yet {confirmations} blocks deep (head {head}, final "
                        f"through block {depth}); retry later", fact=fact, subject=subject, head=head,
                        final_block=depth, confirmations=confirmations)


__all__ = ["MemberInfo", "IssueLogInfo", "PolicyInfo", "UserFunds", "TransferRequestInfo", "FinalViews",
           "PinnedReader", "final_block"]
