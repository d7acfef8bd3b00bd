// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

/// @title UserIdHash: keccak256 of a user id string (the `urn:clearhouse:user:<id>` of a device certificate)
/// @notice Deposits, allocations and a device's member record are keyed by it; a value type over bytes32, so the
///         ABI stays `bytes32`.
type UserIdHash is bytes32;

using {equals as ==, notEquals as !=} for UserIdHash global;
using UserIdHashLibrary for UserIdHash global;

function equals(UserIdHash a, UserIdHash b) pure returns (bool) {
    return UserIdHash.unwrap(a) == UserIdHash.unwrap(b);
}

function notEquals(UserIdHash a, UserIdHash b) pure returns (bool) {
    return UserIdHash.unwrap(a) != UserIdHash.unwrap(b);
}

/// @title Helpers of UserIdHash
library UserIdHashLibrary {
    /// @notice True for the zero hash: no user (every member but a device).
    function isNone(UserIdHash user) internal pure returns (bool) {
        return UserIdHash.unwrap(user) == bytes32(0);
    }
}
