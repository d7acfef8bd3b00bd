"""The gas model of one `settle` transaction, and the largest usage batch it lets one transaction carry.

The device splits its uploads by it, and the SP and the CC refuse a bigger batch (BatchTooLarge), so no batch
that an honest settlement round could never send is ever acknowledged. The model is an upper bound, not a
measurement: the settlement worker's eth_call pre-check still has the last word on every item.
"""

from __future__ import annotations

from offchain.core.errors import BatchTooLarge

# Linear gas model of one `settle` transaction, an upper bound fitted to `clearhouse bench gas` (README, paris):
# N=1/D=1 64,610; N=16/D=1 69,466; N=16/D=16 177,804; N=256/D=1 150,692; N=256/D=16 360,998 gas per tx, and the
# pipeline's ~27,000 gas per extra 512-log item. Per item: two signatures, the batch calldata head, member,
# issue-log and policy reads and writes, the event (43,300 measured for the first item, less for later ones);
# per usage log: 16 bytes of calldata (256 gas) and its checks (~340 one-policy, ~760 with many policies); per
# further distinct policy of the item: a cold policy slot read and write (~7,200 measured at N=16).
GAS_PER_SETTLE_TX = 21_000
GAS_PER_SETTLE_ITEM = 45_000
GAS_PER_USAGE_LOG = 800
GAS_PER_EXTRA_POLICY = 7_500
DEFAULT_GAS_BUDGET = 12_000_000  # per settle transaction: well below anvil's and mainnet's 30M block gas limit


def estimated_item_gas(usage_logs: int, policies: int) -> int:
    """Upper-bound gas one settlement item adds to a `settle` transaction (the linear model above)."""
    return GAS_PER_SETTLE_ITEM + usage_logs * GAS_PER_USAGE_LOG + max(policies - 1, 0) * GAS_PER_EXTRA_POLICY


def max_batch_logs(policies: int, gas_budget: int = DEFAULT_GAS_BUDGET) -> int:
    """The most usage logs one batch over `policies` distinct policies may hold: alone in a `settle`
    transaction it stays within `gas_budget` (0 when even one log would not)."""
    room = gas_budget - GAS_PER_SETTLE_TX - estimated_item_gas(0, policies)
    return max(room // GAS_PER_USAGE_LOG, 0)


def check_batch_fits(count: int, policies: int, gas_budget: int = DEFAULT_GAS_BUDGET) -> None:
    """BatchTooLarge unless a batch of `count` logs over `policies` policies fits one settle transaction."""
    maximum = max_batch_logs(policies, gas_budget)
    if count > maximum:
        raise BatchTooLarge(f"a batch of {count} usage logs over {policies} policies cannot settle in one "
                            f"transaction at a gas budget of {gas_budget:,}: upload at most {maximum} logs per batch",
                            count=count, maximum=maximum, policies=policies, gas_budget=gas_budget)


__all__ = ["GAS_PER_SETTLE_TX", "GAS_PER_SETTLE_ITEM", "GAS_PER_USAGE_LOG", "GAS_PER_EXTRA_POLICY",
           "DEFAULT_GAS_BUDGET", "estimated_item_gas", "max_batch_logs", "check_batch_fits"]
