// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {ISignatureErrors} from "./ISignatureErrors.sol";

/// @title Batch settlement of device usage logs
/// @notice The clearing center settles usage batches signed by the device and received (countersigned) by the
///         service provider. Entries are 16 bytes each: policyIndex uint8 | fee uint88 | usedAt uint32.
interface ISettlement is ISignatureErrors {
    /// @notice A device-signed batch of consecutive usage logs of one issue log (EIP-712 type UsageBatch).
    struct UsageBatch {
        bytes32 serial;
        uint64 firstSeq;
        address receiver;
        bytes32[] policyIds;
        bytes entries;
    }

    /// @notice A batch with the device's signature and the receiver's ReceiveLog signature.
    struct SettlementItem {
        UsageBatch batch;
        bytes deviceSignature;
        uint64 receivedAt;
        bytes receiverSignature;
    }

    // ERRORS
    /// @notice Entries are empty, not a multiple of 16 bytes, or more than 65,535.
    error MalformedEntries(uint256 length);
    /// @notice An entry's policy index is outside the batch's policy list.
    error PolicyIndexOutOfRange(uint256 index, uint256 count);
    /// @notice An entry's fee differs from the policy's price.
    error FeeMismatch(bytes32 policyId, uint256 expected, uint256 got);
    /// @notice An entry was used after its issue log expired.
    error UsageAfterExpiry(bytes32 serial, uint256 usedAt, uint256 expiresAt);
    /// @notice The receive log signature is valid but not by the batch's receiver.
    error ReceiverMismatch(address expected, address got);
    /// @notice The batch starts below the settled high-water mark: already settled.
    error BatchReplayed(bytes32 serial, uint64 firstSeq, uint64 nextSeq);
    /// @notice The batch starts above the settled high-water mark.
    error SequenceGap(bytes32 serial, uint64 expected, uint64 got);
    /// @notice The batch goes past the sequence limit of a closed issue log.
    error SequenceBeyondClosedLog(bytes32 serial, uint64 seqLimit, uint64 wanted);
    /// @notice Settling the batch would spend beyond the issue log's cap.
    error CapExceeded(bytes32 serial, uint256 cap, uint256 wanted);

    // EVENTS
    /// @notice A usage batch settled; the usage logs are recoverable from the transaction's calldata.
    event UsageSettled(
        bytes32 indexed serial,
        address indexed device,
        address indexed receiver,
        uint64 firstSeq,
        uint32 count,
        uint256 total,
        bytes32 receiveLogDigest
    );

    // EXTERNAL
    /// @notice Settles the items in order (ClearingCenter only); any failure reverts the whole call.
    function settle(SettlementItem[] calldata items) external;
}
