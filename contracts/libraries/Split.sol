// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {IContentPolicies} from "../interfaces/IContentPolicies.sol";

/// @title Revenue split arithmetic
/// @notice Payee i gets floor(amount * bps_i / 10000); the remainder goes to payees[0] (the remainder payee),
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

    /// @notice The parts of `amount` per payee under the rounding rule.
    function parts(uint256 amount, IContentPolicies.Payee[] memory payees)
        internal
        pure
        returns (uint256[] memory shares)
    {
        uint256 count = payees.length;
        shares = new uint256[](count);
        uint256 given;
        for (uint256 i = 1; i < count; ++i) {
            shares[i] = amount * payees[i].bps / TOTAL_BPS;
            given += shares[i];
        }
        shares[0] = amount - given;
    }
}
