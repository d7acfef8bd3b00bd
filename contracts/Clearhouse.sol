// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {IClearhouse} from "./interfaces/IClearhouse.sol";
import {Membership} from "./modules/Membership.sol";
import {Settlement} from "./modules/Settlement.sol";
import {TransferRequests} from "./modules/TransferRequests.sol";

/// @title Clearhouse
/// @notice The one deployed contract: membership, deposits, issue logs, content policies, batch settlement and
///         transfer requests, composed from the modules in ./modules. See docs/design.md, "Contract".
contract Clearhouse is IClearhouse, Settlement, TransferRequests {
    constructor(address authority_) Membership(authority_) {}

    // EXTERNAL
    /// @inheritdoc IClearhouse
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
        )
    {
        return (hex"0f", "Clearhouse", "1", block.chainid, address(this), bytes32(0), new uint256[](0));
    }

    /// @inheritdoc IClearhouse
    function domainSeparator() external view returns (bytes32) {
        return _domainSeparator();
    }
}
