// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

/// @title PolicyId: the id of one version of a content policy
/// @notice `policyId = keccak256(abi.encode(bytes32 contentId, uint32 version))` (docs/design.md); a value type
///         over bytes32, so the ABI stays `bytes32`.
type PolicyId is bytes32;

using {equals as ==} for PolicyId global;
using PolicyIdLibrary for PolicyId global;

function equals(PolicyId a, PolicyId b) pure returns (bool) {
    return PolicyId.unwrap(a) == PolicyId.unwrap(b);
}

/// @title Helpers of PolicyId
library PolicyIdLibrary {
    /// @notice The policy id of `version` of `contentId` (the same formula as offchain.core.messages.policy_id).
    function fromContent(bytes32 contentId, uint32 version) internal pure returns (PolicyId) {
        return PolicyId.wrap(keccak256(abi.encode(contentId, version)));
    }
}
