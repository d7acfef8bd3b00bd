"""The contract's revenue-split rule (contracts/libraries/Split.sol) for every off-chain mirror: audit, reconcile,
explorer. Parts are cumulative and monotone in the policy's settled total, so a payee's requests add up to its part
of the total whatever the request cadence. Pure arithmetic on ints (minor units); no chain access.
"""

from __future__ import annotations

from collections.abc import Sequence

TOTAL_BPS = 10_000


def cumulative_parts(amount: int, bps: Sequence[int]) -> list[int]:
    """Each payee's part of a policy's cumulative `amount`: a chain of two-way splits, payees[1] first (floor of
    amount * bps_1 / 10000), each next payee a floor share of what the earlier ones left, the rest to payees[0]."""
    parts = [0] * len(bps)
    rest, bps_left = amount, TOTAL_BPS
    for i in range(1, len(bps)):
        parts[i] = rest * bps[i] // bps_left
        rest -= parts[i]
        bps_left -= bps[i]
    if bps:
        parts[0] = rest
    return parts


def accrual_shares(requested_before: int, amount: int, payees: Sequence[tuple[str, int]]) -> dict[str, int]:
    """What one AccrualRequested of `amount` pays each payee, given the policy's requested total before it:
    parts(requested_before + amount) - parts(requested_before), summed per account."""
    bps = [b for _, b in payees]
    after = cumulative_parts(requested_before + amount, bps)
    before = cumulative_parts(requested_before, bps)
    shares: dict[str, int] = {}
    for (account, _), new, old in zip(payees, after, before):
        shares[account] = shares.get(account, 0) + new - old
    return shares
