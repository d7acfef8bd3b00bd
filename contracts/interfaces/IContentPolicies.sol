// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

/// @title Content policies: price and revenue split per content version
/// @notice Version 1 is registered first, then exactly latest + 1, only by the provider of version 1.
///         A split gives payee i floor(amount * bps_i / 10000) and the remainder to payees[0].
interface IContentPolicies {
    /// @notice One payee of a split, in basis points of 10,000.
    struct Payee {
        address account;
        uint16 bps;
    }

    // ERRORS
    /// @notice This version of the content is already registered.
    error PolicyExists(bytes32 contentId, uint32 version);
    /// @notice Versions must be registered in order.
    error VersionGap(uint32 expected, uint32 got);
    /// @notice Only the provider that registered version 1 may add versions.
    error NotContentOwner(bytes32 contentId, address owner, address caller);
    /// @notice The payees' basis points do not sum to 10,000.
    error BadSplit(uint256 sumBps);
    /// @notice Payee `index` has a zero account, zero bps, or repeats an earlier account.
    error BadPayee(uint256 index);
    /// @notice A split has 1..8 payees.
    error TooManyPayees(uint256 count);
    /// @notice The price is zero or above type(uint88).max.
    error BadPrice(uint256 price);
    /// @notice No policy has this id.
    error UnknownPolicy(bytes32 policyId);

    // EVENTS
    /// @notice A content provider registered a policy version.
    event PolicyRegistered(
        bytes32 indexed policyId,
        bytes32 indexed contentId,
        address indexed provider,
        uint32 version,
        uint256 price,
        Payee[] payees,
        bytes32 policyHash
    );

    // EXTERNAL
    /// @notice Registers a policy version (ContentProvider only); policyId = keccak256(abi.encode(contentId, version)).
    /// @param policyHash binds the secure container's policy; devices check it
    function registerPolicy(
        bytes32 contentId,
        uint32 version,
        uint96 price,
        Payee[] calldata payees,
        bytes32 policyHash
    ) external;

    /// @notice A stored policy; `settled` and `requested` are cumulative, accrued = settled - requested.
    function policy(bytes32 policyId)
        external
        view
        returns (
            bytes32 contentId,
            uint32 version,
            address provider,
            uint256 price,
            bytes32 policyHash,
            uint256 settled,
            uint256 requested,
            Payee[] memory payees
        );

    /// @notice The latest registered version of `contentId` (0 when none).
    function latestVersion(bytes32 contentId) external view returns (uint32);
}
