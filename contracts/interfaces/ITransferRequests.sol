// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

/// @title Transfer requests: paying out accrued fees to payees
/// @notice The clearing center turns accrued fees (settled - requested) into one request per payee; a bank
///         confirms each request once, with its bank reference.
interface ITransferRequests {
    // ERRORS
    /// @notice None of the listed policies has accrued fees.
    error NothingToRequest();
    /// @notice A policy is listed twice.
    error DuplicatePolicyInRequest(bytes32 policyId);
    /// @notice No transfer request has this id.
    error UnknownTransferRequest(bytes32 requestId);
    /// @notice The transfer request was already confirmed with `bankRef`.
    error TransferAlreadyConfirmed(bytes32 requestId, bytes32 bankRef);

    // EVENTS
    /// @notice A policy's accrued fees were moved into transfer requests.
    event AccrualRequested(bytes32 indexed policyId, uint256 amount);
    /// @notice A transfer to `payee` was requested.
    event TransferRequested(bytes32 indexed requestId, address indexed payee, uint256 amount);
    /// @notice A bank confirmed a transfer.
    event TransferConfirmed(
        bytes32 indexed requestId, address indexed payee, address indexed bank, uint256 amount, bytes32 bankRef
    );

    // EXTERNAL
    /// @notice Requests the accrued fees of `policyIds`, one request per payee (ClearingCenter only).
    /// @return requestIds keccak256(abi.encode(chainid, this, nonce, payee)) per payee, in first-seen order
    function requestTransfers(bytes32[] calldata policyIds) external returns (bytes32[] memory requestIds);

    /// @notice Confirms a transfer request (Bank only).
    function confirmTransfer(bytes32 requestId, bytes32 bankRef) external;

    /// @notice A stored transfer request.
    function transferRequest(bytes32 requestId)
        external
        view
        returns (address payee, uint256 amount, bool confirmed, bytes32 bankRef);
}
