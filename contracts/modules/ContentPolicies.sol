// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {IContentPolicies} from "../interfaces/IContentPolicies.sol";
import {Split} from "../libraries/Split.sol";
import {PolicyId, PolicyIdLibrary} from "../types/PolicyId.sol";
import {Membership} from "./Membership.sol";

/// @title Content-policy module: versioned prices and revenue splits, and cumulative fee counters
/// @notice `settled` only grows, so every settlement write is non-zero to non-zero after the first;
///         `requested` lives in a colder slot written only by transfer requests.
abstract contract ContentPolicies is Membership, IContentPolicies {
    // STORAGE
    struct PolicyRecord {
        // hot slot: price (96) | settled (128) | exists (8): read and written by settlement
        uint96 price;
        uint128 settled;
        bool exists;
        // cold slot: requested (128) | version (32)
        uint128 requested;
        uint32 version;
        bytes32 contentId;
        bytes32 policyHash;
        Payee[] payees;
    }

    struct ContentRecord {
        // one slot: owner (160) | latest version (32)
        address owner;
        uint32 latest;
    }

    mapping(bytes32 policyId => PolicyRecord) internal _policies;
    mapping(bytes32 contentId => ContentRecord) private _contents;

    // EXTERNAL
    /// @inheritdoc IContentPolicies
    function registerPolicy(
        bytes32 contentId,
        uint32 version,
        uint96 price,
        Payee[] calldata payees,
        bytes32 policyHash
    ) external {
        _requireActive(msg.sender, ROLE_CONTENT_PROVIDER);
        _claimVersion(contentId, version);
        if (price == 0 || price > type(uint88).max) revert BadPrice(price);
        Split.validate(payees);
        bytes32 policyId = PolicyId.unwrap(PolicyIdLibrary.fromContent(contentId, version));
        PolicyRecord storage p = _policies[policyId];
        p.price = price;
        p.exists = true;
        p.version = version;
        p.contentId = contentId;
        p.policyHash = policyHash;
        for (uint256 i; i < payees.length; ++i) {
            p.payees.push(payees[i]);
        }
        emit PolicyRegistered(policyId, contentId, msg.sender, version, price, payees, policyHash);
    }

    /// @inheritdoc IContentPolicies
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
        )
    {
        PolicyRecord storage p = _policies[policyId];
        if (!p.exists) revert UnknownPolicy(policyId);
        contentId = p.contentId;
        return (contentId, p.version, _contents[contentId].owner, p.price, p.policyHash, p.settled, p.requested, p.payees);
    }

    /// @inheritdoc IContentPolicies
    function latestVersion(bytes32 contentId) external view returns (uint32) {
        return _contents[contentId].latest;
    }

    // INTERNAL
    /// @notice Version 1 claims the content for the caller; later versions are exactly latest + 1, by the owner.
    function _claimVersion(bytes32 contentId, uint32 version) private {
        ContentRecord storage c = _contents[contentId];
        uint32 latest = c.latest;
        if (latest == 0) {
            if (version != 1) revert VersionGap(1, version);
            c.owner = msg.sender;
        } else {
            if (c.owner != msg.sender) revert NotContentOwner(contentId, c.owner, msg.sender);
            if (version <= latest) revert PolicyExists(contentId, version);
            if (version != latest + 1) revert VersionGap(latest + 1, version);
        }
        c.latest = version;
    }
}
