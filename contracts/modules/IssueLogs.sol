// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {IIssueLogs} from "../interfaces/IIssueLogs.sol";
import {ISignatureErrors} from "../interfaces/ISignatureErrors.sol";
import {CheckedCast} from "../libraries/CheckedCast.sol";
import {LogHashes} from "../libraries/LogHashes.sol";
import {Signatures} from "../libraries/Signatures.sol";
import {Deposits} from "./Deposits.sol";
import {TypedDomain} from "./TypedDomain.sol";

/// @title Issue-log module: caps per serial, their settled high-water marks, renewal and closing
/// @notice Settlement reads slot A and slot B of a log and writes slot B only. A closed log keeps settling
///         up to its frozen cap and sequence limit, never beyond.
abstract contract IssueLogs is Deposits, TypedDomain, IIssueLogs {
    /// @dev seqLimit of an open log.
    uint48 internal constant OPEN = type(uint48).max;
    /// @dev How long after a log's (or its device's) expiry usage logs still in transit may settle before the
    ///      unsettled rest of the cap can be released back to the user.
    uint256 public constant RELEASE_GRACE = 3 days;

    // STORAGE
    struct IssueLogRecord {
        // slot A: device (160) | expiresAt (40) | seqLimit (48, OPEN while the log is open)
        address device;
        uint40 expiresAt;
        uint48 seqLimit;
        // slot B: cap (96) | spent (96) | nextSeq (64): the settled high-water marks
        uint96 cap;
        uint96 spent;
        uint64 nextSeq;
        // slot C
        bytes32 userIdHash;
    }

    mapping(bytes32 serial => IssueLogRecord) internal _issueLogs;

    /// @dev The figures of one renewal, kept in memory to stay clear of the stack limit.
    struct Renewal {
        uint256 attestedSpent;
        uint64 attestedNextSeq;
        uint256 carried;
        uint256 newMoney;
        uint256 newCap;
        uint40 expiresAt;
        bytes32 statementDigest;
    }

    // EXTERNAL
    /// @inheritdoc IIssueLogs
    function issue(bytes32 serial, address device, bytes32 userIdHash, uint96 cap, uint40 expiresAt) external {
        _requireActive(msg.sender, ROLE_CLEARING_CENTER);
        if (_issueLogs[serial].device != address(0)) revert DuplicateSerial(serial);
        _requireActive(device, ROLE_DEVICE);
        _requireDeviceUser(device, userIdHash);
        if (cap == 0) revert ZeroAmount();
        if (expiresAt <= block.timestamp) revert ExpiryInPast(expiresAt);
        _allocate(userIdHash, cap);
        _open(serial, device, userIdHash, cap, expiresAt);
        emit IssueLogRecorded(serial, device, userIdHash, cap, expiresAt);
    }

    /// @inheritdoc IIssueLogs
    function renew(
        bytes32 oldSerial,
        BalanceStatement calldata statement,
        bytes calldata deviceSignature,
        bytes32 newSerial,
        uint96 newMoney,
        uint40 expiresAt
    ) external {
        _requireActive(msg.sender, ROLE_CLEARING_CENTER);
        IssueLogRecord storage log = _issueLogs[oldSerial];
        address device = log.device;
        if (device == address(0)) revert UnknownSerial(oldSerial);
        if (log.seqLimit != OPEN) revert IssueLogClosed(oldSerial);
        if (statement.serial != oldSerial) revert StatementMismatch(oldSerial, statement.serial);
        Renewal memory r;
        r.statementDigest = _checkStatementSignature(statement, deviceSignature, device);
        bool unsettled = _checkAttestation(log, oldSerial, statement);
        if (unsettled && newSerial == oldSerial) {
            revert SerialReuseWhileUnsettled(oldSerial, log.nextSeq, statement.nextSeq);
        }
        if (expiresAt <= block.timestamp) revert ExpiryInPast(expiresAt);
        bytes32 userIdHash = log.userIdHash;
        _requireDeviceUser(device, userIdHash);
        _allocate(userIdHash, newMoney);
        r.attestedSpent = statement.spent;
        r.attestedNextSeq = statement.nextSeq;
        r.carried = log.cap - statement.spent;
        r.newMoney = newMoney;
        r.expiresAt = expiresAt;
        _applyRenewal(log, oldSerial, newSerial, r);
        emit IssueLogRenewed(
            oldSerial,
            newSerial,
            device,
            r.attestedSpent,
            r.attestedNextSeq,
            r.carried,
            r.newMoney,
            r.newCap,
            r.expiresAt,
            r.statementDigest
        );
    }

    /// @inheritdoc IIssueLogs
    function releaseIssueLog(bytes32 serial) external returns (uint256 released) {
        if (msg.sender != authority && !_isActive(msg.sender, ROLE_CLEARING_CENTER)) revert NotReleaser(msg.sender);
        IssueLogRecord storage log = _issueLogs[serial];
        address device = log.device;
        if (device == address(0)) revert UnknownSerial(serial);
        uint256 spent = log.spent;
        uint64 nextSeq = log.nextSeq;
        if (log.seqLimit == nextSeq && log.cap == spent) revert IssueLogClosed(serial);
        (bool revoked, uint256 validUntil) = _revocation(device);
        if (!revoked) {
            uint256 expiry = log.expiresAt < validUntil ? log.expiresAt : validUntil;
            uint256 releasableAt = expiry + RELEASE_GRACE;
            if (block.timestamp < releasableAt) revert ReleaseTooEarly(serial, releasableAt);
        }
        released = log.cap - spent;
        log.cap = uint96(spent);
        log.seqLimit = CheckedCast.toUint48Below(nextSeq, OPEN - 1);
        bytes32 userIdHash = log.userIdHash;
        _deallocate(userIdHash, released);
        emit IssueLogReleased(serial, device, userIdHash, spent, nextSeq, released);
    }

    /// @inheritdoc IIssueLogs
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
        )
    {
        IssueLogRecord storage log = _issueLogs[serial];
        return (
            log.device,
            log.userIdHash,
            log.cap,
            log.spent,
            log.nextSeq,
            log.seqLimit,
            log.expiresAt,
            log.device != address(0) && log.seqLimit != OPEN
        );
    }

    // INTERNAL
    function _open(bytes32 serial, address device, bytes32 userIdHash, uint256 cap, uint40 expiresAt) private {
        _issueLogs[serial] = IssueLogRecord({
            device: device,
            expiresAt: expiresAt,
            seqLimit: OPEN,
            cap: CheckedCast.toUint96(cap),
            spent: 0,
            nextSeq: 0,
            userIdHash: userIdHash
        });
    }

    /// @notice Reverts with DeviceUserMismatch unless `userIdHash` is the user recorded for `device`.
    function _requireDeviceUser(address device, bytes32 userIdHash) private view {
        bytes32 recorded = _deviceUser(device);
        if (recorded != userIdHash) revert DeviceUserMismatch(device, recorded, userIdHash);
    }

    /// @notice Top-up in place (same serial, all settled) or close the old log and open `newSerial`.
    function _applyRenewal(IssueLogRecord storage log, bytes32 oldSerial, bytes32 newSerial, Renewal memory r)
        private
    {
        if (newSerial == oldSerial) {
            r.newCap = r.attestedSpent + r.carried + r.newMoney;
            log.cap = CheckedCast.toUint96(r.newCap);
            log.expiresAt = r.expiresAt;
            return;
        }
        if (_issueLogs[newSerial].device != address(0)) revert DuplicateSerial(newSerial);
        r.newCap = r.carried + r.newMoney;
        log.cap = uint96(r.attestedSpent);
        log.seqLimit = CheckedCast.toUint48Below(r.attestedNextSeq, OPEN - 1);
        _open(newSerial, log.device, log.userIdHash, r.newCap, r.expiresAt);
    }

    /// @notice Checks the device's signature on the statement and that the device is active; returns its digest.
    function _checkStatementSignature(
        BalanceStatement calldata statement,
        bytes calldata signature,
        address device
    ) private view returns (bytes32 digest) {
        bytes32 structHash =
            LogHashes.balanceStatement(statement.serial, statement.nextSeq, statement.spent, statement.attestedAt);
        digest = Signatures.typedDigest(_domainSeparator(), structHash);
        address signer = Signatures.recover(digest, signature);
        if (signer != device) revert ISignatureErrors.SignerMismatch(device, signer);
        _requireActive(device, ROLE_DEVICE);
    }

    /// @notice settled <= attested <= cap; returns true when some attested usage has not settled yet.
    function _checkAttestation(IssueLogRecord storage log, bytes32 serial, BalanceStatement calldata statement)
        private
        view
        returns (bool unsettled)
    {
        uint256 spent = log.spent;
        uint64 nextSeq = log.nextSeq;
        if (statement.spent < spent) revert AttestationBelowSettled(serial, spent, statement.spent);
        if (statement.nextSeq < nextSeq) revert AttestedSeqBelowSettled(serial, nextSeq, statement.nextSeq);
        if (statement.spent > log.cap) revert AttestationOverCap(serial, log.cap, statement.spent);
        return statement.spent > spent || statement.nextSeq > nextSeq;
    }
}
