// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {IMembership} from "./IMembership.sol";
import {IDeposits} from "./IDeposits.sol";
import {IIssueLogs} from "./IIssueLogs.sol";
import {IContentPolicies} from "./IContentPolicies.sol";
import {ISettlement} from "./ISettlement.sol";
import {ITransferRequests} from "./ITransferRequests.sol";

/// @title Clearhouse: the permissioned clearing house for content usage fees
/// @notice One contract so settlement reads members, issue logs and policies from its own storage.
///         Implements EIP-5267 for its EIP-712 domain ("Clearhouse", "1", chainid, this).
interface IClearhouse is IMembership, IDeposits, IIssueLogs, IContentPolicies, ISettlement, ITransferRequests {
    /// @notice EIP-5267 description of the EIP-712 domain.
    function eip712Domain()
        external
        view
        returns (
            bytes1 fields,
            string memory name,
            string memory version,
            uint256 chainId,
            address verifyingContract,
            bytes32 salt,
            uint256[] memory extensions
        );

    /// @notice The EIP-712 domain separator for the current chain.
    function domainSeparator() external view returns (bytes32);
}
