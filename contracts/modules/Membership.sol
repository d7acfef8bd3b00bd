// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {IMembership} from "../interfaces/IMembership.sol";

/// @title Membership module: members registered by the immutable authority
/// @notice The active check reads one packed slot, so it is cheap enough for the settlement hot path.
abstract contract Membership is IMembership {
    uint8 internal constant ROLE_CLEARING_CENTER = 1;
    uint8 internal constant ROLE_SERVICE_PROVIDER = 2;
    uint8 internal constant ROLE_CONTENT_PROVIDER = 3;
    uint8 internal constant ROLE_BANK = 4;
    uint8 internal constant ROLE_DEVICE = 5;

    // STORAGE
    struct MemberRecord {
        // slot 0: role (8) | revoked (8) | validFrom (40) | validUntil (40) | revokedAt (40): all the active check
        // and the revoked-receiver check of settlement need
        uint8 role;
        bool revoked;
        uint40 validFrom;
        uint40 validUntil;
        uint40 revokedAt;
        // slot 1, 2: identity, read only by views
        bytes32 memberId;
        bytes32 certFingerprint;
        // slot 3: a device's user (keccak256 of the user id in its certificate), read by issue and renew
        bytes32 userIdHash;
    }

    /// @inheritdoc IMembership
    address public immutable authority;
    mapping(address account => MemberRecord) private _members;

    constructor(address authority_) {
        authority = authority_;
    }

    // EXTERNAL
    /// @inheritdoc IMembership
    function registerMember(
        address account,
        uint8 role,
        bytes32 memberId,
        bytes32 certFingerprint,
        bytes32 userIdHash,
        uint40 validFrom,
        uint40 validUntil
    ) external {
        if (msg.sender != authority) revert NotAuthority(msg.sender);
        if (role == 0 || role > ROLE_DEVICE) revert InvalidRole(role);
        if (validFrom > validUntil) revert InvalidValidity(validFrom, validUntil);
        if ((role == ROLE_DEVICE) == (userIdHash == bytes32(0))) revert InvalidUserIdHash(account, role, userIdHash);
        MemberRecord storage m = _members[account];
        if (m.revoked) revert MemberRevoked(account);
        m.role = role;
        m.validFrom = validFrom;
        m.validUntil = validUntil;
        m.memberId = memberId;
        m.certFingerprint = certFingerprint;
        m.userIdHash = userIdHash;
        emit MemberRegistered(account, role, memberId, certFingerprint, userIdHash, validFrom, validUntil);
    }

    /// @inheritdoc IMembership
    function revokeMember(address account) external {
        if (msg.sender != authority) revert NotAuthority(msg.sender);
        MemberRecord storage m = _members[account];
        if (m.revoked) revert MemberRevoked(account);
        uint8 role = m.role;
        if (role == 0) revert NotActiveMember(account, 0);
        m.revoked = true;
        m.revokedAt = uint40(block.timestamp);
        emit MemberRevocationRecorded(account, role);
    }

    /// @inheritdoc IMembership
    function member(address account)
        external
        view
        returns (
            uint8 role,
            bool revoked,
            uint40 validFrom,
            uint40 validUntil,
            bytes32 memberId,
            bytes32 certFingerprint,
            bytes32 userIdHash
        )
    {
        MemberRecord storage m = _members[account];
        return (m.role, m.revoked, m.validFrom, m.validUntil, m.memberId, m.certFingerprint, m.userIdHash);
    }

    /// @inheritdoc IMembership
    function revokedAt(address account) external view returns (uint40) {
        return _members[account].revokedAt;
    }

    /// @inheritdoc IMembership
    function deviceUser(address account) external view returns (bytes32) {
        return _members[account].userIdHash;
    }

    /// @inheritdoc IMembership
    function isActive(address account, uint8 role) external view returns (bool) {
        return _isActive(account, role);
    }

    // INTERNAL
    /// @dev The four fields are read in straight-line code (no branch in between), so the optimizer folds them
    ///      into one SLOAD of slot 0; the short-circuit `&&` chain would re-read the slot once per field.
    function _isActive(address account, uint8 role) internal view returns (bool) {
        MemberRecord storage m = _members[account];
        uint8 memberRole = m.role;
        bool revoked = m.revoked;
        uint256 validFrom = m.validFrom;
        uint256 validUntil = m.validUntil;
        return memberRole == role && !revoked && block.timestamp >= validFrom && block.timestamp <= validUntil;
    }

    /// @notice Whether `account` was revoked, and the end of its validity (read by issue-log release only).
    function _revocation(address account) internal view returns (bool revoked, uint256 validUntil) {
        MemberRecord storage m = _members[account];
        return (m.revoked, m.validUntil);
    }

    /// @notice The user id hash recorded for `account` (zero unless it is a device).
    function _deviceUser(address account) internal view returns (bytes32) {
        return _members[account].userIdHash;
    }

    /// @notice Reverts with NotActiveMember unless `account` is active with `role`.
    function _requireActive(address account, uint8 role) internal view {
        if (!_isActive(account, role)) revert NotActiveMember(account, role);
    }

    /// @notice Reverts with NotActiveMember unless `account` was a member with `role` at `at`: active now, or
    ///         revoked at a time after `at` with `at` inside its validity window (a receive log it countersigned
    ///         before its revocation). Reads slot 0 once, like `_isActive`.
    /// @dev `at` is the member's own signed statement (a receive log's receivedAt): the chain cannot check it against
    ///      a clock. A stolen key of a revoked service provider can backdate its receive logs, but it can only
    ///      countersign batches a device signed naming it, and settlement pays the policies' payees, never the
    ///      receiver (docs/design.md, "A revoked or withholding SP").
    function _requireMemberAt(address account, uint8 role, uint256 at) internal view {
        MemberRecord storage m = _members[account];
        uint8 memberRole = m.role;
        bool revoked = m.revoked;
        uint256 validFrom = m.validFrom;
        uint256 validUntil = m.validUntil;
        uint256 revokedAt_ = m.revokedAt;
        if (memberRole == role && !revoked && block.timestamp >= validFrom && block.timestamp <= validUntil) return;
        if (memberRole == role && revoked && at < revokedAt_ && at >= validFrom && at <= validUntil) return;
        revert NotActiveMember(account, role);
    }

    /// @notice Whether `account` ever held `role` (active, expired or revoked).
    function _hadRole(address account, uint8 role) internal view returns (bool) {
        return _members[account].role == role;
    }
}
