// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {IDeposits} from "../interfaces/IDeposits.sol";
import {IIssueLogs} from "../interfaces/IIssueLogs.sol";
import {Membership} from "./Membership.sol";

/// @title Deposits module: money paid in per user, and how much of it backs issue-log caps
/// @notice `allocated` grows by new money put into caps and shrinks only when a log is released (the unsettled
///         rest of its cap comes back); carried balances move between a user's logs without touching it, so
///         allocated == sum of the user's caps <= deposited always holds.
abstract contract Deposits is Membership, IDeposits {
    // STORAGE
    struct UserFunds {
        // one slot: deposited (128) | allocated (128)
        uint128 deposited;
        uint128 allocated;
    }

    mapping(bytes32 userIdHash => UserFunds) private _funds;
    mapping(bytes32 depositId => bool) private _depositSeen;

    // EXTERNAL
    /// @inheritdoc IDeposits
    function recordDeposit(bytes32 depositId, bytes32 userIdHash, uint96 amount, bytes32 bankRef) external {
        _requireActive(msg.sender, ROLE_BANK);
        if (amount == 0) revert ZeroAmount();
        if (_depositSeen[depositId]) revert DuplicateDeposit(depositId);
        _depositSeen[depositId] = true;
        _funds[userIdHash].deposited += amount;
        emit DepositRecorded(depositId, userIdHash, msg.sender, amount, bankRef);
    }

    /// @inheritdoc IDeposits
    function userFunds(bytes32 userIdHash) external view returns (uint256 deposited, uint256 allocated) {
        UserFunds storage f = _funds[userIdHash];
        return (f.deposited, f.allocated);
    }

    // INTERNAL
    /// @notice Allocates `amount` of the user's unallocated deposits, or reverts with InsufficientDeposits.
    function _allocate(bytes32 userIdHash, uint256 amount) internal {
        UserFunds storage f = _funds[userIdHash];
        uint256 available = f.deposited - f.allocated;
        if (amount > available) revert IIssueLogs.InsufficientDeposits(userIdHash, available, amount);
        f.allocated += uint128(amount);
    }

    /// @notice Returns `amount` of the user's allocated deposits to unallocated (a released issue log's rest).
    /// @dev amount <= the log's cap - spent <= allocated: allocated is the sum of the user's caps.
    function _deallocate(bytes32 userIdHash, uint256 amount) internal {
        _funds[userIdHash].allocated -= uint128(amount);
    }
}
