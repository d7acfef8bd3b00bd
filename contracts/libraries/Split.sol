// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {IContentPolicies} from "../interfaces/IContentPolicies.sol";

/// @title Revenue split arithmetic
/// @notice Parts are cumulative and monotone (see `parts`); the remainder goes to payees[0] (the remainder payee),
///         so the parts always sum to `amount`. Validation enforces 1..8 unique non-zero payees summing to 10,000.
library Split {
    uint256 internal constant TOTAL_BPS = 10_000;
    uint256 internal constant MAX_PAYEES = 8;

    /// @notice Reverts unless `payees` is a valid split.
    function validate(IContentPolicies.Payee[] calldata payees) internal pure {
        uint256 count = payees.length;
        if (count == 0 || count > MAX_PAYEES) revert IContentPolicies.TooManyPayees(count);
        uint256 sumBps;
        for (uint256 i; i < count; ++i) {
            address account = payees[i].account;
            if (account == address(0) || payees[i].bps == 0) revert IContentPolicies.BadPayee(i);
            for (uint256 j; j < i; ++j) {
                if (payees[j].account == account) revert IContentPolicies.BadPayee(i);
            }
            sumBps += payees[i].bps;
        }
        if (sumBps != TOTAL_BPS) revert IContentPolicies.BadSplit(sumBps);
    }

    /// @notice The cumulative parts of `amount` (a policy's settled total) per payee, under a rule in which every
    ///         part is non-decreasing in `amount`, so parts(settled) - parts(requested) is never negative and
    ///         the sum of a payee's requests equals its part of the final total whatever the request cadence.
    /// @dev A chain of two-way splits: payees[1] gets floor(amount * bps_1 / 10000), each next payee k gets
    ///      floor(rest * bps_k / bpsLeft) of what the earlier ones left, and payees[0] (the remainder payee) gets
    ///      the final rest. Each step is monotone in its input, hence so is every part; they sum to `amount`.
    ///      (Flooring every payee of the whole amount is not monotone for the remainder payee with three or more
    ///      payees: 2000/4000/4000 bps gives payees[0] 2 of 2 and 1 of 3.)
    function parts(uint256 amount, IContentPolicies.Payee[] memory payees)
        internal
        pure
        returns (uint256[] memory shares)
    {
        uint256 count = payees.length;
        shares = new uint256[](count);
        uint256 rest = amount;
        uint256 bpsLeft = TOTAL_BPS;
        for (uint256 i = 1; i < count; ++i) {
            uint256 bps = payees[i].bps;
            // bpsLeft >= bps_i + bps_0 > 0: the split sums to TOTAL_BPS and every bps is non-zero
            uint256 share = rest * bps / bpsLeft;
            shares[i] = share;
            rest -= share;
            bpsLeft -= bps;
        }
        shares[0] = rest;
    }
}
