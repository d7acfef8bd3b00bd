"""Revoking a member in an order that can be resumed: the chain first, then the CRL, then (for a device) releasing
its issue logs so the user's money is not stranded on a stolen phone. Re-running a half-done revocation completes
it; `revocation_status` shows where one stands.

It does not decide whether a member should be revoked, and it signs only with the key it is given: a wrong
authority key fails on chain (NotAuthority) before anything is written to the CRL.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from eth_utils import to_checksum_address

from offchain.chain import ClearhouseChain
from offchain.core.errors import ContractReverted
from offchain.core.types import to_hex
from offchain.trust.ca import CertificateAuthority

ROLE_DEVICE = 5


@dataclass(frozen=True)
class LogRelease:
    """One issue log of a revoked device: what it still holds, and what its release returned."""

    serial: bytes
    open_amount: int
    released: int | None = None
    releasable_at: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"serial": to_hex(self.serial), "open_amount": self.open_amount, "released": self.released,
                "releasable_at": self.releasable_at}


@dataclass(frozen=True)
class RevocationStatus:
    """Where a revocation stands: addresses revoked on chain, certificates on the CRL, device logs still holding
    money. `complete` once every step is done (logs that are not releasable yet are listed, not counted)."""

    member_id: str
    on_chain: dict[str, bool]
    on_crl: bool
    logs: tuple[LogRelease, ...] = field(default=())

    @property
    def complete(self) -> bool:
        return all(self.on_chain.values()) and self.on_crl

    @property
    def pending_steps(self) -> list[str]:
        steps = [f"revoke {a} on chain" for a, done in self.on_chain.items() if not done]
        if not self.on_crl:
            steps.append("write the CRL")
        steps += [f"release {to_hex(r.serial)} ({r.open_amount})" for r in self.logs
                  if r.open_amount and r.released is None]
        return steps

    def to_json(self) -> dict[str, Any]:
        return {"member_id": self.member_id, "complete": self.complete,
                "revoked_addresses": sorted(a for a, done in self.on_chain.items() if done),
                "on_chain": self.on_chain, "on_crl": self.on_crl, "issue_logs": [r.to_json() for r in self.logs],
                "pending_steps": self.pending_steps}


def member_addresses(ca: CertificateAuthority, member_id: str) -> list[str]:
    return sorted({to_checksum_address(e["eth_address"]) for e in ca.issued if e["member_id"] == member_id})


def device_serials(chain: ClearhouseChain, device: str) -> list[bytes]:
    """Every serial ever issued to `device` (IssueLogRecorded, and the new serials of IssueLogRenewed)."""
    events = chain.contract.events
    start = max(chain.deployment.deploy_block, 0) if hasattr(chain, "deployment") else 0
    recorded = events.IssueLogRecorded().get_logs(argument_filters={"device": device}, from_block=start)
    renewed = events.IssueLogRenewed().get_logs(argument_filters={"device": device}, from_block=start)
    serials = [bytes(e["args"]["serial"]) for e in recorded] + [bytes(e["args"]["newSerial"]) for e in renewed]
    return list(dict.fromkeys(serials))


def _open_amount(chain: ClearhouseChain, serial: bytes) -> int:
    """cap - settled spent, or 0 when the log has nothing left to close (the contract's IssueLogClosed case)."""
    log = chain.issue_log(serial)
    if log.seq_limit == log.next_seq and log.cap == log.spent:
        return 0
    return log.cap - log.spent


def revocation_status(ca: CertificateAuthority, chain: ClearhouseChain, member_id: str) -> RevocationStatus:
    """Read-only: where the revocation of `member_id` stands (NotFound if the CA never issued to it)."""
    addresses = member_addresses(ca, member_id)
    if not addresses:
        ca.revoke(member_id)  # raises NotFound: the CA never issued to this member (nothing is written)
    members = {a: chain.member(a) for a in addresses}
    logs = tuple(LogRelease(s, _open_amount(chain, s)) for a, m in members.items() if m.role == ROLE_DEVICE
                 for s in device_serials(chain, a))
    return RevocationStatus(member_id, {a: m.revoked for a, m in members.items()}, ca.is_revoked(member_id), logs)


def revoke_member(ca: CertificateAuthority, authority: ClearhouseChain, member_id: str, *,
                  release_logs: bool = False) -> RevocationStatus:
    """Revoke `member_id`: every address on chain first (skipping those already revoked), then the CRL, then with
    `release_logs` each of a device's issue logs that still holds money (releaseIssueLog). Any chain error stops
    before the CRL is written and propagates; running it again resumes where it stopped."""
    status = revocation_status(ca, authority, member_id)
    for address, done in status.on_chain.items():
        if not done and authority.member(address).role != 0:
            authority.revoke_member(address)
    ca.revoke(member_id)
    logs = status.logs
    if release_logs:
        logs = tuple(_release_all(authority, status.logs))
    after = revocation_status(ca, authority, member_id)
    released = {r.serial: r for r in logs}
    return RevocationStatus(member_id, after.on_chain, after.on_crl,
                            tuple(released.get(r.serial, r) for r in after.logs))


def _release_all(authority: ClearhouseChain, logs: Iterable[LogRelease]) -> Iterable[LogRelease]:
    for log in logs:
        if log.open_amount == 0:
            yield log
            continue
        try:
            receipt = authority.send("releaseIssueLog", log.serial)
        except ContractReverted as exc:
            if exc.error_name != "ReleaseTooEarly":
                raise
            yield LogRelease(log.serial, log.open_amount, releasable_at=int(exc.error_args["releasableAt"]))
            continue
        events = authority.contract.events.IssueLogReleased().process_receipt(receipt)
        yield LogRelease(log.serial, log.open_amount, released=int(events[0]["args"]["released"]))
