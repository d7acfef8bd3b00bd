// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

/// @title Serial: the id of one issue log (EIP-712 `IssueLog.serial`)
/// @notice A value type over bytes32 in the Uniswap v4-core style: the ABI stays `bytes32`, the compiler keeps a
///         serial apart from a policy id or a user id hash. Free of gas: wrap and unwrap compile to nothing.
type Serial is bytes32;

using {equals as ==, notEquals as !=} for Serial global;
using SerialLibrary for Serial global;

function equals(Serial a, Serial b) pure returns (bool) {
    return Serial.unwrap(a) == Serial.unwrap(b);
}

function notEquals(Serial a, Serial b) pure returns (bool) {
    return Serial.unwrap(a) != Serial.unwrap(b);
}

/// @title Helpers of Serial
library SerialLibrary {
    /// @notice The zero serial: "no previous serial" in an IssueLog.
    Serial internal constant NONE = Serial.wrap(bytes32(0));

    function isNone(Serial serial) internal pure returns (bool) {
        return Serial.unwrap(serial) == bytes32(0);
    }
}
