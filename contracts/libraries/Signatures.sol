// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {ISignatureErrors} from "../interfaces/ISignatureErrors.sol";

/// @title ECDSA recovery under the OpenZeppelin rules, without inline assembly
/// @notice 65-byte r || s || v, v in {27, 28}, s <= secp256k1n / 2, recovered signer non-zero.
///         Every violation reverts with a named error from ISignatureErrors.
library Signatures {
    /// @dev secp256k1n / 2: the largest s accepted (EIP-2).
    uint256 internal constant HALF_ORDER = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0;

    /// @notice Recovers the signer of `digest`, reverting on any malformed or invalid signature.
    function recover(bytes32 digest, bytes calldata signature) internal pure returns (address signer) {
        if (signature.length != 65) revert ISignatureErrors.InvalidSignatureLength(signature.length);
        bytes32 r = bytes32(signature[0:32]);
        bytes32 s = bytes32(signature[32:64]);
        uint8 v = uint8(signature[64]);
        if (uint256(s) > HALF_ORDER) revert ISignatureErrors.InvalidSignatureS(s);
        if (v != 27 && v != 28) revert ISignatureErrors.InvalidSignatureV(v);
        signer = ecrecover(digest, v, r, s);
        if (signer == address(0)) revert ISignatureErrors.InvalidSignature();
    }

    /// @notice The EIP-712 digest of `structHash` under `domainSeparator`.
    function typedDigest(bytes32 domainSeparator, bytes32 structHash) internal pure returns (bytes32) {
        return keccak256(abi.encodePacked(hex"1901", domainSeparator, structHash));
    }
}
