// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {LogHashes} from "../libraries/LogHashes.sol";

/// @title EIP-712 domain ("Clearhouse", "1", chainid, this) with a cached separator
/// @notice The separator is cached at construction and recomputed only if the chain id changes (a fork), as
///         OpenZeppelin's EIP712 does, so signatures never verify under another chain's id.
abstract contract TypedDomain {
    // STORAGE
    bytes32 private immutable _cachedSeparator;
    uint256 private immutable _cachedChainId;

    constructor() {
        _cachedChainId = block.chainid;
        _cachedSeparator = LogHashes.domainSeparator(block.chainid, address(this));
    }

    // INTERNAL
    /// @notice The domain separator for the current chain id.
    function _domainSeparator() internal view returns (bytes32) {
        if (block.chainid == _cachedChainId) return _cachedSeparator;
        return LogHashes.domainSeparator(block.chainid, address(this));
    }
}
