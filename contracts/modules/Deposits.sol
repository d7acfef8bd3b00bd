// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {IDeposits} from "../interfaces/IDeposits.sol";
import {IIssueLogs} from "../interfaces/IIssueLogs.sol";
import {Membership} from "./Membership.sol";

/// @title Deposits module: money paid in per user, and how much of it backs issue-log caps
/// @notice `allocated` only grows (by new money put into caps); carried balances move between a user's logs
///         without touching it, so sum(caps net of carried) <= deposited always holds.
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
}
