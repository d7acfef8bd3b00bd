"""`accrual_shares`: what one AccrualRequested pays each payee (kills the `+ new + old` Python mutant of split.py).

Hand-computed from the chain-of-two-way-splits rule in `cumulative_parts`' docstring, not from the code.
"""

from __future__ import annotations

from offchain.core.split import accrual_shares, cumulative_parts

A = "0x" + "aa" * 20
B = "0x" + "bb" * 20


def test_accrual_shares_after_an_earlier_request_pay_only_the_difference() -> None:
    # parts(15) = [11, 4] (B: floor(15 * 3000 / 10000) = 4); parts(10) = [7, 3]: this request pays A 4 and B 1.
    assert cumulative_parts(15, [7000, 3000]) == [11, 4]
    assert accrual_shares(10, 5, [(A, 7000), (B, 3000)]) == {A: 4, B: 1}


def test_accrual_shares_sum_per_account_when_an_account_is_listed_twice() -> None:
    # parts(9) = [5, 4] for two 50 % entries of the same account; nothing was requested before.
    assert accrual_shares(0, 9, [(A, 5000), (A, 5000)]) == {A: 9}


def test_accrual_shares_always_add_up_to_the_amount_requested() -> None:
    payees = [(A, 6667), (B, 3333)]
    for before in range(0, 40):
        for amount in range(1, 12):
            shares = accrual_shares(before, amount, payees)
            assert sum(shares.values()) == amount, (before, amount, shares)
