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

    /// @notice A device-signed statement (EIP-712 type SkipRange) that its batch [firstSeq, firstSeq + count), worth
    ///         `total`, was acknowledged by `receiver` at `receivedAt` (its ReceiveLog over `usageBatch`) and never
    ///         forwarded: the clearing center may skip it after WITHHOLD_WINDOW.
    struct SkipRange {
        bytes32 serial;
        uint64 firstSeq;
        uint32 count;
        address receiver;
        uint96 total;
        bytes32 usageBatch;
        uint64 receivedAt;
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

    /// @notice A skip of a withheld range before the receiver's WITHHOLD_WINDOW has passed (due = receivedAt + window).
    error WithholdWindowOpen(bytes32 serial, uint64 firstSeq, uint256 due);

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

    /// @notice A withheld range was skipped: the serial's nextSeq moved past it, `total` was charged to its cap and is
    ///         held for `receiver` (credited to no policy) until the batch itself settles.
    event RangeSkipped(
        bytes32 indexed serial,
        address indexed device,
        address indexed receiver,
        uint64 firstSeq,
        uint32 count,
        uint256 total,
        bytes32 usageBatch
    );
    /// @notice A skipped range's batch settled after all: its policies were credited (UsageSettled in the same call)
    ///         and its held fees released.
    event SkippedRangeReleased(
        bytes32 indexed serial, address indexed receiver, uint64 firstSeq, uint32 count, uint256 total
    );

    // EXTERNAL
    /// @notice Settles the items in order (ClearingCenter only); any failure reverts the whole call. A receiver
    ///         revoked after it countersigned (receivedAt < revokedAt) still settles; a batch that is exactly a
    ///         skipped range releases that range's held fees.
    function settle(SettlementItem[] calldata items) external;

    /// @notice Skips a range an SP acknowledged and withheld past WITHHOLD_WINDOW (ClearingCenter only): checks the
    ///         device's SkipRange signature, the receiver's ReceiveLog signature and the window, then advances
    ///         nextSeq and charges the cap as a settled batch would.
    function skipRange(SkipRange calldata range, bytes calldata deviceSignature, bytes calldata receiverSignature)
        external;

    /// @notice Fees charged by skipped ranges of `receiver` that no policy has been credited with yet.
    function heldFees(address receiver) external view returns (uint256);

    /// @notice How long after its receive log an SP may withhold a batch before the range can be skipped (7 days).
    function WITHHOLD_WINDOW() external view returns (uint256);
}
