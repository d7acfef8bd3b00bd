// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

/// @title Signature errors shared by every Clearhouse signature check
/// @notice Signatures follow the OpenZeppelin ECDSA rules: 65 bytes r || s || v, v in {27, 28},
///         s in the lower half of the curve order, recovered signer non-zero.
interface ISignatureErrors {
    /// @notice The signature is not exactly 65 bytes long.
    error InvalidSignatureLength(uint256 length);
    /// @notice The signature's s value is in the upper half of the curve order (malleable).
    error InvalidSignatureS(bytes32 s);
    /// @notice The signature's v value is neither 27 nor 28.
    error InvalidSignatureV(uint8 v);
    /// @notice The signature recovers to the zero address.
    error InvalidSignature();
    /// @notice The signature is valid but by another signer than the expected one (for a usage batch or a balance
    ///         statement: not the serial's device).
    error SignerMismatch(address expected, address got);
}
