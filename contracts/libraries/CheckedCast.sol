// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

/// @title Checked narrowing casts for amounts and counters
/// @notice Solidity's explicit `uintN(x)` silently drops the high bits; every narrowing of a value that a caller
///         can influence goes through here and reverts with AmountOverflow instead (OpenZeppelin SafeCast style).
library CheckedCast {
    /// @notice `value` does not fit the storage field, whose largest value is `max`.
    error AmountOverflow(uint256 value, uint256 max);

    function toUint96(uint256 value) internal pure returns (uint96) {
        if (value > type(uint96).max) revert AmountOverflow(value, type(uint96).max);
        return uint96(value);
    }

    function toUint128(uint256 value) internal pure returns (uint128) {
        if (value > type(uint128).max) revert AmountOverflow(value, type(uint128).max);
        return uint128(value);
    }

    /// @notice For a closed log's sequence limit: at most `max`, which is below the OPEN marker.
    function toUint48Below(uint256 value, uint256 max) internal pure returns (uint48) {
        if (value > max) revert AmountOverflow(value, max);
        return uint48(value);
    }
}
