// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {ISettlement} from "../interfaces/ISettlement.sol";
import {LogHashes} from "../libraries/LogHashes.sol";
import {Signatures} from "../libraries/Signatures.sol";

/// @title Test-only probe exposing LogHashes and Signatures
/// @notice Lets the Python golden vectors be checked against the Solidity struct hashes and digests. Not deployed
///         by scripts/deploy.py.
contract LogHashesProbe {
    function domainSeparator(uint256 chainId, address verifyingContract) external pure returns (bytes32) {
        return LogHashes.domainSeparator(chainId, verifyingContract);
    }

    function issueLog(
        bytes32 separator,
        bytes32 serial,
        address device,
        bytes32 userIdHash,
        uint96 cap,
        uint40 expiresAt,
        bytes32 previousSerial,
        uint96 carried
    ) external pure returns (bytes32 structHash, bytes32 digest) {
        structHash = LogHashes.issueLog(serial, device, userIdHash, cap, expiresAt, previousSerial, carried);
        digest = Signatures.typedDigest(separator, structHash);
    }

    function balanceStatement(bytes32 separator, bytes32 serial, uint64 nextSeq, uint96 spent, uint40 attestedAt)
        external
        pure
        returns (bytes32 structHash, bytes32 digest)
    {
        structHash = LogHashes.balanceStatement(serial, nextSeq, spent, attestedAt);
        digest = Signatures.typedDigest(separator, structHash);
    }

    function usageLog(
        bytes32 separator,
        bytes32 serial,
        uint64 seq,
        bytes32 policyId,
        uint96 fee,
        address receiver,
        uint32 usedAt
    ) external pure returns (bytes32 structHash, bytes32 digest) {
        structHash = LogHashes.usageLog(serial, seq, policyId, fee, receiver, usedAt);
        digest = Signatures.typedDigest(separator, structHash);
    }

    function usageBatch(
        bytes32 separator,
        bytes32 serial,
        uint64 firstSeq,
        address receiver,
        bytes32[] calldata policyIds,
        bytes calldata entries
    ) external pure returns (bytes32 structHash, bytes32 digest) {
        structHash = LogHashes.usageBatch(serial, firstSeq, receiver, policyIds, entries);
        digest = Signatures.typedDigest(separator, structHash);
    }

    function receiveLog(bytes32 separator, bytes32 usageBatch_, address payer, uint64 receivedAt)
        external
        pure
        returns (bytes32 structHash, bytes32 digest)
    {
        structHash = LogHashes.receiveLog(usageBatch_, payer, receivedAt);
        digest = Signatures.typedDigest(separator, structHash);
    }

    function skipRange(
        bytes32 separator,
        bytes32 serial,
        uint64 firstSeq,
        uint32 count,
        address receiver,
        uint96 total,
        bytes32 usageBatch_,
        uint64 receivedAt
    ) external pure returns (bytes32 structHash, bytes32 digest) {
        structHash = LogHashes.skipRange(
            ISettlement.SkipRange(serial, firstSeq, count, receiver, total, usageBatch_, receivedAt)
        );
        digest = Signatures.typedDigest(separator, structHash);
    }

    function transferRequest(bytes32 separator, bytes32 requestId, address payee, uint96 amount)
        external
        pure
        returns (bytes32 structHash, bytes32 digest)
    {
        structHash = LogHashes.transferRequest(requestId, payee, amount);
        digest = Signatures.typedDigest(separator, structHash);
    }

    function transferReceipt(bytes32 separator, bytes32 requestId, bytes32 bankRef, uint96 amount, uint64 confirmedAt)
        external
        pure
        returns (bytes32 structHash, bytes32 digest)
    {
        structHash = LogHashes.transferReceipt(requestId, bankRef, amount, confirmedAt);
        digest = Signatures.typedDigest(separator, structHash);
    }

    /// @notice Signatures.recover, for signature-rule tests.
    function recover(bytes32 digest, bytes calldata signature) external pure returns (address) {
        return Signatures.recover(digest, signature);
    }
}
