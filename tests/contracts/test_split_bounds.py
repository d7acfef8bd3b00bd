"""Split validation at its bounds: eight payees (Split.MAX_PAYEES) are a valid split, nine are not.

Kills the `count > MAX_PAYEES` -> `count >= MAX_PAYEES` mutant that survived `make mutate`.
"""

from __future__ import annotations

from eth_account import Account
from eth_utils import keccak

from chainkit import World, expect_revert


def _payees(n: int) -> list[tuple[str, int]]:
    accounts = [Account.from_key(keccak(text=f"split-payee-{i}")).address for i in range(n)]
    bps = [10_000 // n] * n
    bps[0] += 10_000 - sum(bps)
    return list(zip(accounts, bps))


def test_policy_with_max_payees_registers(chain_env) -> None:
    world = World(chain_env)
    pid = world.policy(price=100, payees=_payees(8))
    assert len(world.c("bank").policy(pid).payees) == 8


def test_policy_with_one_payee_too_many_reverts(chain_env) -> None:
    world = World(chain_env)
    assert expect_revert("TooManyPayees", world.policy, price=100, payees=_payees(9))["count"] == 9
