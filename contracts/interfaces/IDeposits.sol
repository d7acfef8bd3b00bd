// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

/// @title Deposits recorded by banks
/// @notice A bank records the money a user paid in; issue logs allocate caps out of it.
interface IDeposits {
    // ERRORS
    /// @notice `depositId` was already recorded.
    error DuplicateDeposit(bytes32 depositId);
    /// @notice An amount that must be positive was zero.
    error ZeroAmount();

    // EVENTS
    /// @notice A bank recorded a deposit for a user.
    event DepositRecorded(
        bytes32 indexed depositId, bytes32 indexed userIdHash, address indexed bank, uint256 amount, bytes32 bankRef
    );

    // EXTERNAL
    /// @notice Records a deposit (Bank only); `depositId` is its idempotency key.
    function recordDeposit(bytes32 depositId, bytes32 userIdHash, uint96 amount, bytes32 bankRef) external;

    /// @notice Deposited money and the part of it allocated to issue-log caps.
    function userFunds(bytes32 userIdHash) external view returns (uint256 deposited, uint256 allocated);
}
