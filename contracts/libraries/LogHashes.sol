// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {ISettlement} from "../interfaces/ISettlement.sol";

/// @title EIP-712 typehashes and struct hashes of the Clearhouse logs
/// @notice The type strings match docs/design.md and offchain.messages byte for byte; tests/contracts/test_vectors.py
///         checks them against golden vectors. `bytes32[]` hashes as keccak256(abi.encodePacked(array)).
library LogHashes {
    bytes32 internal constant DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");
    bytes32 internal constant NAME_HASH = keccak256("Clearhouse");
    bytes32 internal constant VERSION_HASH = keccak256("1");

    bytes32 internal constant ISSUE_LOG_TYPEHASH = keccak256(
        "IssueLog(bytes32 serial,address device,bytes32 userIdHash,uint96 cap,uint40 expiresAt,bytes32 previousSerial,uint96 carried)"
    );
    bytes32 internal constant BALANCE_STATEMENT_TYPEHASH =
        keccak256("BalanceStatement(bytes32 serial,uint64 nextSeq,uint96 spent,uint40 attestedAt)");
    bytes32 internal constant USAGE_LOG_TYPEHASH = keccak256(
        "UsageLog(bytes32 serial,uint64 seq,bytes32 policyId,uint96 fee,address receiver,uint32 usedAt)"
    );
    bytes32 internal constant USAGE_BATCH_TYPEHASH = keccak256(
        "UsageBatch(bytes32 serial,uint64 firstSeq,address receiver,bytes32[] policyIds,bytes entries)"
    );
    bytes32 internal constant RECEIVE_LOG_TYPEHASH =
        keccak256("ReceiveLog(bytes32 usageBatch,address payer,uint64 receivedAt)");
    bytes32 internal constant SKIP_RANGE_TYPEHASH = keccak256(
        "SkipRange(bytes32 serial,uint64 firstSeq,uint32 count,address receiver,uint96 total,bytes32 usageBatch,uint64 receivedAt)"
    );
    bytes32 internal constant TRANSFER_REQUEST_TYPEHASH =
        keccak256("TransferRequest(bytes32 requestId,address payee,uint96 amount)");
    bytes32 internal constant TRANSFER_RECEIPT_TYPEHASH =
        keccak256("TransferReceipt(bytes32 requestId,bytes32 bankRef,uint96 amount,uint64 confirmedAt)");

    /// @notice The domain separator of ("Clearhouse", "1", chainId, verifyingContract).
    function domainSeparator(uint256 chainId, address verifyingContract) internal pure returns (bytes32) {
        return keccak256(abi.encode(DOMAIN_TYPEHASH, NAME_HASH, VERSION_HASH, chainId, verifyingContract));
    }

    function issueLog(
        bytes32 serial,
        address device,
        bytes32 userIdHash,
        uint96 cap,
        uint40 expiresAt,
        bytes32 previousSerial,
        uint96 carried
    ) internal pure returns (bytes32) {
        return keccak256(
            abi.encode(ISSUE_LOG_TYPEHASH, serial, device, userIdHash, cap, expiresAt, previousSerial, carried)
        );
    }

    function balanceStatement(bytes32 serial, uint64 nextSeq, uint96 spent, uint40 attestedAt)
        internal
        pure
        returns (bytes32)
    {
        return keccak256(abi.encode(BALANCE_STATEMENT_TYPEHASH, serial, nextSeq, spent, attestedAt));
    }

    function usageLog(bytes32 serial, uint64 seq, bytes32 policyId, uint96 fee, address receiver, uint32 usedAt)
        internal
        pure
        returns (bytes32)
    {
        return keccak256(abi.encode(USAGE_LOG_TYPEHASH, serial, seq, policyId, fee, receiver, usedAt));
    }

    function usageBatch(
        bytes32 serial,
        uint64 firstSeq,
        address receiver,
        bytes32[] calldata policyIds,
        bytes calldata entries
    ) internal pure returns (bytes32) {
        return keccak256(
            abi.encode(
                USAGE_BATCH_TYPEHASH,
                serial,
                firstSeq,
                receiver,
                keccak256(abi.encodePacked(policyIds)),
                keccak256(entries)
            )
        );
    }

    function receiveLog(bytes32 usageBatchHash, address payer, uint64 receivedAt) internal pure returns (bytes32) {
        return keccak256(abi.encode(RECEIVE_LOG_TYPEHASH, usageBatchHash, payer, receivedAt));
    }

    /// @notice The struct hash of a SkipRange: a static struct, so abi.encode(typehash, range) is its encodeData.
    function skipRange(ISettlement.SkipRange memory range) internal pure returns (bytes32) {
        return keccak256(abi.encode(SKIP_RANGE_TYPEHASH, range));
    }

    function transferRequest(bytes32 requestId, address payee, uint96 amount) internal pure returns (bytes32) {
        return keccak256(abi.encode(TRANSFER_REQUEST_TYPEHASH, requestId, payee, amount));
    }

    function transferReceipt(bytes32 requestId, bytes32 bankRef, uint96 amount, uint64 confirmedAt)
        internal
        pure
        returns (bytes32)
    {
        return keccak256(abi.encode(TRANSFER_RECEIPT_TYPEHASH, requestId, bankRef, amount, confirmedAt));
    }
}
