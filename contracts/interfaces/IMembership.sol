// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

/// @title Membership registry of the Clearhouse permissioned network
/// @notice The authority (the certificate authority's key, fixed at deployment) registers and revokes members.
///         A member is active for a role when its role matches, it is not revoked and
///         validFrom <= block.timestamp <= validUntil.
interface IMembership {
    // ERRORS
    /// @notice Only the authority may call this function.
    error NotAuthority(address caller);
    /// @notice `account` is not an active member with role `expectedRole`.
    error NotActiveMember(address account, uint8 expectedRole);
    /// @notice `account` was revoked and can never be registered again.
    error MemberRevoked(address account);
    /// @notice `role` is not one of 1..5.
    error InvalidRole(uint8 role);
    /// @notice The validity window is empty.
    error InvalidValidity(uint40 from, uint40 until);
    /// @notice A device must name its user (non-zero `userIdHash`); any other role must not (zero).
    error InvalidUserIdHash(address account, uint8 role, bytes32 userIdHash);

    // EVENTS
    /// @notice A member was registered or its certificate was updated.
    event MemberRegistered(
        address indexed account,
        uint8 indexed role,
        bytes32 indexed memberId,
        bytes32 certFingerprint,
        bytes32 userIdHash,
        uint40 validFrom,
        uint40 validUntil
    );
    /// @notice A member was revoked for good.
    event MemberRevocationRecorded(address indexed account, uint8 indexed role);

    // EXTERNAL
    /// @notice Registers `account` (or updates an active member's certificate).
    /// @param memberId keccak256 of the member id string
    /// @param certFingerprint SHA-256 of the member's X.509 certificate (DER)
    /// @param userIdHash for a device, keccak256 of the user id its certificate names (urn:clearhouse:user:<id>):
    ///        `issue` and `renew` spend only this user's deposits on this device; zero for every other role
    function registerMember(
        address account,
        uint8 role,
        bytes32 memberId,
        bytes32 certFingerprint,
        bytes32 userIdHash,
        uint40 validFrom,
        uint40 validUntil
    ) external;

    /// @notice Revokes `account`; a revoked address can never come back.
    function revokeMember(address account) external;

    /// @notice The stored member record of `account` (all zero when unknown).
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
        );

    /// @notice The block timestamp of `account`'s revocation (zero unless revoked). Settlement accepts a receive log
    ///         of a revoked service provider whose receivedAt is before it.
    function revokedAt(address account) external view returns (uint40);

    /// @notice The user id hash recorded for device `account` (zero for other roles and unknown accounts).
    function deviceUser(address account) external view returns (bytes32);

    /// @notice True when `account` is an active member with `role` at the current block time.
    function isActive(address account, uint8 role) external view returns (bool);

    /// @notice The authority key fixed at deployment.
    function authority() external view returns (address);
}
