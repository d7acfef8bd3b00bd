// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {ISettlement} from "../interfaces/ISettlement.sol";
import {LogHashes} from "../libraries/LogHashes.sol";
import {Signatures} from "../libraries/Signatures.sol";
import {ContentPolicies} from "./ContentPolicies.sol";
import {IssueLogs} from "./IssueLogs.sol";

/// @title Settlement module: the hot path
/// @notice Per item: entries format, policies, fees, expiry, device signature, receiver signature, sequence,
///         cap, then one write of the issue log's slot B and one write per distinct policy. No per-log storage:
///         uniqueness of (serial, seq) comes from the contiguous high-water mark nextSeq.
abstract contract Settlement is IssueLogs, ContentPolicies, ISettlement {
    uint256 private constant ENTRY_BYTES = 16;
    uint256 private constant MAX_ENTRIES = 65_535;
    uint256 private constant FEE_MASK = type(uint88).max;

    // EXTERNAL
    /// @inheritdoc ISettlement
    function settle(SettlementItem[] calldata items) external {
        _requireActive(msg.sender, ROLE_CLEARING_CENTER);
        bytes32 separator = _domainSeparator();
        for (uint256 i; i < items.length; ++i) {
            _settleItem(items[i], separator);
        }
    }

    // INTERNAL
    function _settleItem(SettlementItem calldata item, bytes32 separator) private {
        UsageBatch calldata batch = item.batch;
        uint256 length = batch.entries.length;
        if (length == 0 || length % ENTRY_BYTES != 0 || length > MAX_ENTRIES * ENTRY_BYTES) {
            revert MalformedEntries(length);
        }
        IssueLogRecord storage log = _issueLogs[batch.serial];
        address device = log.device;
        if (device == address(0)) revert UnknownSerial(batch.serial);
        (uint256[] memory totals, uint256 total) = _checkEntries(batch, log.expiresAt);
        bytes32 receiveDigest = _checkSignatures(item, device, separator);
        uint256 count = length / ENTRY_BYTES;
        _advance(log, batch.serial, batch.firstSeq, count, total);
        _creditPolicies(batch.policyIds, totals);
        emit UsageSettled(batch.serial, device, batch.receiver, batch.firstSeq, uint32(count), total, receiveDigest);
    }

    /// @notice Checks every entry against its policy and the log's expiry; returns totals per policy and overall.
    function _checkEntries(UsageBatch calldata batch, uint256 expiresAt)
        private
        view
        returns (uint256[] memory totals, uint256 total)
    {
        uint256[] memory prices = _loadPrices(batch.policyIds);
        uint256 policyCount = prices.length;
        totals = new uint256[](policyCount);
        bytes calldata entries = batch.entries;
        uint256 length = entries.length;
        for (uint256 offset; offset < length; offset += ENTRY_BYTES) {
            // entry: policyIndex (8) | fee (88) | usedAt (32), big-endian
            uint128 entry = uint128(bytes16(entries[offset:offset + ENTRY_BYTES]));
            uint256 index = entry >> 120;
            uint256 fee = (entry >> 32) & FEE_MASK;
            uint256 usedAt = uint32(entry);
            if (index >= policyCount) revert PolicyIndexOutOfRange(index, policyCount);
            uint256 price = prices[index];
            if (fee != price) revert FeeMismatch(batch.policyIds[index], price, fee);
            if (usedAt > expiresAt) revert UsageAfterExpiry(batch.serial, usedAt, expiresAt);
            unchecked {
                totals[index] += fee;
                total += fee;
            }
        }
    }

    /// @notice One cold read per policy: its price, or UnknownPolicy.
    function _loadPrices(bytes32[] calldata policyIds) private view returns (uint256[] memory prices) {
        prices = new uint256[](policyIds.length);
        for (uint256 i; i < policyIds.length; ++i) {
            PolicyRecord storage p = _policies[policyIds[i]];
            if (!p.exists) revert UnknownPolicy(policyIds[i]);
            prices[i] = p.price;
        }
    }

    /// @notice Device signature over the batch, receiver signature over its ReceiveLog; returns that log's digest.
    function _checkSignatures(SettlementItem calldata item, address device, bytes32 separator)
        private
        view
        returns (bytes32 receiveDigest)
    {
        UsageBatch calldata batch = item.batch;
        bytes32 batchHash =
            LogHashes.usageBatch(batch.serial, batch.firstSeq, batch.receiver, batch.policyIds, batch.entries);
        address signer = Signatures.recover(Signatures.typedDigest(separator, batchHash), item.deviceSignature);
        if (signer != device) revert SignerMismatch(device, signer);
        _requireActive(device, ROLE_DEVICE);
        receiveDigest = Signatures.typedDigest(separator, LogHashes.receiveLog(batchHash, device, item.receivedAt));
        address receiver = batch.receiver;
        signer = Signatures.recover(receiveDigest, item.receiverSignature);
        if (signer != receiver) revert ReceiverMismatch(receiver, signer);
        _requireActive(receiver, ROLE_SERVICE_PROVIDER);
    }

    /// @notice Sequence and cap checks, then the one write of slot B.
    function _advance(IssueLogRecord storage log, bytes32 serial, uint64 firstSeq, uint256 count, uint256 total)
        private
    {
        uint64 nextSeq = log.nextSeq;
        if (firstSeq < nextSeq) revert BatchReplayed(serial, firstSeq, nextSeq);
        if (firstSeq > nextSeq) revert SequenceGap(serial, nextSeq, firstSeq);
        uint256 end = uint256(firstSeq) + count;
        uint256 seqLimit = log.seqLimit;
        if (end > seqLimit) revert SequenceBeyondClosedLog(serial, uint64(seqLimit), uint64(end));
        uint256 cap = log.cap;
        uint256 wanted = log.spent + total;
        if (wanted > cap) revert CapExceeded(serial, cap, wanted);
        log.spent = uint96(wanted);
        log.nextSeq = uint64(end);
    }

    /// @notice settled += total for every policy the batch used.
    function _creditPolicies(bytes32[] calldata policyIds, uint256[] memory totals) private {
        for (uint256 i; i < totals.length; ++i) {
            if (totals[i] != 0) {
                _policies[policyIds[i]].settled += uint128(totals[i]);
            }
        }
    }
}
