// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

/// @title Issue logs: spending caps granted to a device for a user
/// @notice The clearing center issues a cap backed by unallocated deposits and renews it against a balance
///         statement signed by the device. A renewal with unsettled usage closes the old log at the attested
///         totals so the outstanding usage can still settle, and nothing more.
interface IIssueLogs {
    /// @notice What a device attests about one of its issue logs (EIP-712 type BalanceStatement).
    struct BalanceStatement {
        bytes32 serial;
        uint64 nextSeq;
        uint96 spent;
        uint40 attestedAt;
    }

    // ERRORS
    /// @notice `serial` was already used by an issue log.
    error DuplicateSerial(bytes32 serial);
    /// @notice No issue log has `serial`.
    error UnknownSerial(bytes32 serial);
    /// @notice The user's unallocated deposits do not cover the wanted amount.
    error InsufficientDeposits(bytes32 userIdHash, uint256 available, uint256 wanted);
    /// @notice The issue log was closed by a renewal.
    error IssueLogClosed(bytes32 serial);
    /// @notice The balance statement is about another serial.
    error StatementMismatch(bytes32 serial, bytes32 statementSerial);
    /// @notice The attested spent is below what already settled.
    error AttestationBelowSettled(bytes32 serial, uint256 settledSpent, uint256 attestedSpent);
    /// @notice The attested next sequence number is below what already settled.
    error AttestedSeqBelowSettled(bytes32 serial, uint64 settledSeq, uint64 attestedSeq);
    /// @notice The attested spent is above the cap.
    error AttestationOverCap(bytes32 serial, uint256 cap, uint256 attestedSpent);
    /// @notice Renewal in place while attested usage is still unsettled: a new serial is required.
    error SerialReuseWhileUnsettled(bytes32 serial, uint64 settledSeq, uint64 attestedSeq);
    /// @notice The expiry is not in the future.
    error ExpiryInPast(uint40 expiresAt);
    /// @notice `device` is registered for user `expected` (its member record), not for `got`.
    error DeviceUserMismatch(address device, bytes32 expected, bytes32 got);
    /// @notice The log's device is still active and the log has not been expired for the grace period yet.
    error ReleaseTooEarly(bytes32 serial, uint256 releasableAt);
    /// @notice Only the authority or an active clearing center may release an issue log.
    error NotReleaser(address caller);

    // EVENTS
    /// @notice An issue log was opened.
    event IssueLogRecorded(
        bytes32 indexed serial, address indexed device, bytes32 indexed userIdHash, uint256 cap, uint40 expiresAt
    );
    /// @notice An issue log was renewed (topped up in place, or closed and carried into `newSerial`).
    event IssueLogRenewed(
        bytes32 indexed oldSerial,
        bytes32 indexed newSerial,
        address indexed device,
        uint256 attestedSpent,
        uint64 attestedNextSeq,
        uint256 carried,
        uint256 newMoney,
        uint256 newCap,
        uint40 expiresAt,
        bytes32 statementDigest
    );

    /// @notice A log was closed at its settled totals and the unsettled rest of its cap returned to the user's
    ///         unallocated deposits (stolen, revoked or expired device).
    event IssueLogReleased(
        bytes32 indexed serial,
        address indexed device,
        bytes32 indexed userIdHash,
        uint256 settledSpent,
        uint64 settledNextSeq,
        uint256 released
    );

    // EXTERNAL
    /// @notice Opens an issue log with `cap` allocated from the user's deposits (ClearingCenter only).
    /// @dev `userIdHash` must be the user recorded in the device's member record (DeviceUserMismatch): even the
    ///      clearing center key cannot spend one user's deposits on another user's device.
    function issue(bytes32 serial, address device, bytes32 userIdHash, uint96 cap, uint40 expiresAt) external;

    /// @notice Renews `oldSerial` against a device-signed balance statement (ClearingCenter only).
    /// @dev The log's user must still be the user recorded for its device (DeviceUserMismatch).
    /// @param newSerial equal to `oldSerial` for a top-up in place (only when everything attested settled)
    /// @param newMoney fresh money allocated from the user's deposits
    function renew(
        bytes32 oldSerial,
        BalanceStatement calldata statement,
        bytes calldata deviceSignature,
        bytes32 newSerial,
        uint96 newMoney,
        uint40 expiresAt
    ) external;

    /// @notice Closes `serial` at its settled spent and next sequence number and returns `cap - spent` to the
    ///         user's unallocated deposits (authority or ClearingCenter). Later usage of the serial cannot settle
    ///         (SequenceBeyondClosedLog, or NotActiveMember for a revoked device) and it cannot renew
    ///         (IssueLogClosed).
    /// @dev Allowed at once when the device is revoked: nothing it signed can settle any more, and a revoked
    ///      address never comes back. Otherwise only `RELEASE_GRACE` seconds after the earlier of the log's expiry
    ///      and the device's validity end, so that usage logs still in transit can settle first
    ///      (ReleaseTooEarly). Works on a log closed by a renewal too: its attested but unsettled rest is
    ///      released. A log with nothing left to close reverts with IssueLogClosed.
    function releaseIssueLog(bytes32 serial) external returns (uint256 released);

    /// @notice The stored state of an issue log; `seqLimit` is type(uint48).max while the log is open.
    function issueLog(bytes32 serial)
        external
        view
        returns (
            address device,
            bytes32 userIdHash,
            uint256 cap,
            uint256 spent,
            uint64 nextSeq,
            uint64 seqLimit,
            uint40 expiresAt,
            bool closed
        );
}
