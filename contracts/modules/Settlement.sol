// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {ISettlement} from "../interfaces/ISettlement.sol";
import {CheckedCast} from "../libraries/CheckedCast.sol";
import {LogHashes} from "../libraries/LogHashes.sol";
import {Signatures} from "../libraries/Signatures.sol";
import {ContentPolicies} from "./ContentPolicies.sol";
import {IssueLogs} from "./IssueLogs.sol";

/// @title Settlement module: the hot path
/// @notice Per item: entries format, policies, fees, expiry, device signature, receiver signature, sequence,
///         cap, then one write of the issue log's slot B and one write per distinct policy. No per-log storage:
///         uniqueness of (serial, seq) comes from the contiguous high-water mark nextSeq.
/// @dev Gas notes (see tests/contracts/test_gas.py for the figures):
///      - entries stay in calldata; they are read 32 bytes (two entries) per slice and never copied to memory,
///        except once by keccak256 for the batch hash;
///      - a batch with one policy (the common case) takes a fast path without per-policy memory arrays: an entry
///        is valid iff `entry >> 32 == price` (policy index 0 and fee == price in one comparison) and
///        `usedAt <= expiresAt`; its total is count * price;
///      - every packed slot (member, issue log A and B, policy hot slot) is read in straight-line code so the
///        optimizer folds the field reads into one SLOAD;
///      - a failing entry is re-examined by `_rejectEntry`, which reverts with the same named error, in the same
///        order of checks (index, fee, expiry), as a per-field check would have.
abstract contract Settlement is IssueLogs, ContentPolicies, ISettlement {
    uint256 private constant ENTRY_BYTES = 16;
    uint256 private constant PAIR_BYTES = 32;
    uint256 private constant MAX_ENTRIES = 65_535;
    uint256 private constant FEE_MASK = type(uint88).max;
    uint256 private constant USED_AT_MASK = type(uint32).max;
    /// @dev The usedAt fields of the two entries in a 32-byte word: bits 128..159 and 0..31.
    uint256 private constant USED_AT_PAIR = (USED_AT_MASK << 128) | USED_AT_MASK;
    /// @dev The bits a late usedAt carries into once biased (see _checkOnePolicyEntries): bits 160 and 32.
    uint256 private constant LATE_PAIR = (1 << 160) | (1 << 32);
    /// @inheritdoc ISettlement
    uint256 public constant WITHHOLD_WINDOW = 7 days;

    // STORAGE
    /// @dev keccak256(receiver, count, total) of each range skipped by skipRange, until its batch settles.
    mapping(bytes32 serial => mapping(uint64 firstSeq => bytes32 skipKey)) private _skipped;
    /// @dev Fees charged to users' caps by skipped ranges, not yet credited to any policy, per receiver.
    mapping(address receiver => uint256 amount) private _heldFees;

    // EXTERNAL
    /// @inheritdoc ISettlement
    function settle(SettlementItem[] calldata items) external {
        _requireActive(msg.sender, ROLE_CLEARING_CENTER);
        bytes32 separator = _domainSeparator();
        uint256 itemCount = items.length;
        for (uint256 i; i < itemCount;) {
            _settleItem(items[i], separator);
            // cannot overflow: i < itemCount <= calldata size
            unchecked {
                ++i;
            }
        }
    }

    /// @inheritdoc ISettlement
    function skipRange(SkipRange calldata range, bytes calldata deviceSignature, bytes calldata receiverSignature)
        external
    {
        _requireActive(msg.sender, ROLE_CLEARING_CENTER);
        SkipRange memory r = range; // decoded once: the fields are read several times below
        IssueLogRecord storage log = _issueLogs[r.serial];
        address device = log.device;
        if (device == address(0)) revert UnknownSerial(r.serial);
        if (r.count == 0) revert MalformedEntries(0);
        _checkSkipSignatures(r, device, deviceSignature, receiverSignature);
        uint256 due = uint256(r.receivedAt) + WITHHOLD_WINDOW;
        if (block.timestamp < due) revert WithholdWindowOpen(r.serial, r.firstSeq, due);
        // receiver zero: a skip never releases an earlier skip, a replay is BatchReplayed
        _advance(log, r.serial, r.firstSeq, r.count, r.total, address(0));
        _skipped[r.serial][r.firstSeq] = _skipKey(r.receiver, r.count, r.total);
        _heldFees[r.receiver] += r.total;
        emit RangeSkipped(r.serial, device, r.receiver, r.firstSeq, r.count, r.total, r.usageBatch);
    }

    /// @inheritdoc ISettlement
    function heldFees(address receiver) external view returns (uint256) {
        return _heldFees[receiver];
    }

    // INTERNAL
    /// @notice The device signed the SkipRange; the receiver countersigned the withheld batch's ReceiveLog (it
    ///         acknowledged it at receivedAt) and is, or was, a service provider.
    function _checkSkipSignatures(
        SkipRange memory r,
        address device,
        bytes calldata deviceSignature,
        bytes calldata receiverSignature
    ) private view {
        bytes32 separator = _domainSeparator();
        address signer = Signatures.recover(Signatures.typedDigest(separator, LogHashes.skipRange(r)), deviceSignature);
        if (signer != device) revert SignerMismatch(device, signer);
        bytes32 receiveHash = LogHashes.receiveLog(r.usageBatch, device, r.receivedAt);
        signer = Signatures.recover(Signatures.typedDigest(separator, receiveHash), receiverSignature);
        if (signer != r.receiver) revert ReceiverMismatch(r.receiver, signer);
        if (!_hadRole(r.receiver, ROLE_SERVICE_PROVIDER)) revert NotActiveMember(r.receiver, ROLE_SERVICE_PROVIDER);
    }

    function _skipKey(address receiver, uint256 count, uint256 total) private pure returns (bytes32) {
        return keccak256(abi.encode(receiver, count, total));
    }

    function _settleItem(SettlementItem calldata item, bytes32 separator) private {
        UsageBatch calldata batch = item.batch;
        bytes32 serial = batch.serial;
        uint256 length = batch.entries.length;
        if (length == 0 || length % ENTRY_BYTES != 0 || length > MAX_ENTRIES * ENTRY_BYTES) {
            revert MalformedEntries(length);
        }
        IssueLogRecord storage log = _issueLogs[serial];
        // slot A, read once (straight-line field reads fold into one SLOAD)
        address device = log.device;
        uint256 expiresAt = log.expiresAt;
        if (device == address(0)) revert UnknownSerial(serial);
        uint256 total = batch.policyIds.length == 1
            ? _checkAndCreditOnePolicy(batch, expiresAt)
            : _checkAndCreditPolicies(batch, expiresAt);
        bytes32 receiveDigest = _checkSignatures(item, device, separator);
        // cannot overflow: length <= MAX_ENTRIES * ENTRY_BYTES
        uint256 count;
        unchecked {
            count = length / ENTRY_BYTES;
        }
        uint64 firstSeq = batch.firstSeq;
        _advance(log, serial, firstSeq, count, total, batch.receiver);
        emit UsageSettled(serial, device, batch.receiver, firstSeq, uint32(count), total, receiveDigest);
    }

    /// @notice Fast path for a batch with exactly one policy: checks every entry, credits the policy, returns the
    ///         total. The credit is written before the signature, sequence and cap checks; any later failure
    ///         reverts the whole call, so the order of writes is not observable.
    function _checkAndCreditOnePolicy(UsageBatch calldata batch, uint256 expiresAt) private returns (uint256 total) {
        bytes32 policyId = batch.policyIds[0];
        PolicyRecord storage p = _policies[policyId];
        // hot slot, read once
        uint256 price = p.price;
        uint256 settled = p.settled;
        bool exists = p.exists;
        if (!exists) revert UnknownPolicy(policyId);
        _checkOnePolicyEntries(batch, price, expiresAt);
        // cannot overflow: price < 2^88 and entries.length / 16 < 2^16
        unchecked {
            total = price * (batch.entries.length / ENTRY_BYTES);
        }
        p.settled = CheckedCast.toUint128(settled + total);
    }

    /// @notice Checks every entry of a one-policy batch, two entries (one 32-byte calldata word) at a time.
    /// @dev An entry is policyIndex (8) | fee (88) | usedAt (32). With one policy, a valid entry has index 0 and
    ///      fee == price, so a valid word is `price << 160 | usedAtHigh << 128 | price << 32 | usedAtLow`:
    ///      - index and fee of both entries: `word & ~USED_AT_PAIR == price << 160 | price << 32`;
    ///      - expiry of both entries: adding `bias = 2^32 - 1 - expiresAt` to a 32-bit usedAt carries into bit 32
    ///        iff usedAt > expiresAt; the two usedAt fields are masked first, so the carries land in bits 32 and
    ///        160 without touching anything else (bias = 0 when expiresAt >= 2^32 - 1: nothing can be late).
    ///      Any failing word is re-examined entry by entry by `_rejectEntry` for the named error.
    function _checkOnePolicyEntries(UsageBatch calldata batch, uint256 price, uint256 expiresAt) private pure {
        bytes calldata entries = batch.entries;
        uint256 length = entries.length;
        uint256 expected = (price << 160) | (price << 32);
        uint256 bias = expiresAt >= USED_AT_MASK ? 0 : USED_AT_MASK - expiresAt;
        bias = (bias << 128) | bias;
        uint256 pairEnd = length - length % PAIR_BYTES; // cannot underflow: length % 32 <= length
        for (uint256 offset; offset < pairEnd;) {
            uint256 word = uint256(bytes32(entries[offset:]));
            if (word & ~USED_AT_PAIR != expected || ((word & USED_AT_PAIR) + bias) & LATE_PAIR != 0) {
                _rejectEntry(batch, word >> 128, _single(price), expiresAt);
                _rejectEntry(batch, uint128(word), _single(price), expiresAt);
            }
            // cannot overflow: offset < pairEnd <= length <= MAX_ENTRIES * ENTRY_BYTES
            unchecked {
                offset += PAIR_BYTES;
            }
        }
        if (pairEnd < length) {
            // one trailing entry (odd count): the last 16 bytes
            uint256 entry = uint128(bytes16(entries[pairEnd:]));
            if (entry >> 32 != price || entry & USED_AT_MASK > expiresAt) {
                _rejectEntry(batch, entry, _single(price), expiresAt);
            }
        }
    }

    /// @notice General path (zero or several policies): checks every entry against its policy and the log's
    ///         expiry, credits each policy its total, returns the overall total.
    function _checkAndCreditPolicies(UsageBatch calldata batch, uint256 expiresAt) private returns (uint256 total) {
        uint256[] memory prices = _loadPrices(batch.policyIds);
        uint256[] memory counts = _countEntries(batch, prices, expiresAt);
        bytes32[] calldata policyIds = batch.policyIds;
        for (uint256 i; i < prices.length;) {
            uint256 count = counts[i];
            if (count != 0) {
                uint256 policyTotal;
                // cannot overflow: price < 2^88, count < 2^16, and the sum of all policy totals < 2^104
                unchecked {
                    policyTotal = prices[i] * count;
                    total += policyTotal;
                }
                PolicyRecord storage p = _policies[policyIds[i]];
                p.settled = CheckedCast.toUint128(p.settled + policyTotal);
            }
            // cannot overflow: i < prices.length
            unchecked {
                ++i;
            }
        }
    }

    /// @notice One cold read per policy: its price, or UnknownPolicy.
    function _loadPrices(bytes32[] calldata policyIds) private view returns (uint256[] memory prices) {
        uint256 policyCount = policyIds.length;
        prices = new uint256[](policyCount);
        for (uint256 i; i < policyCount;) {
            PolicyRecord storage p = _policies[policyIds[i]];
            // hot slot, read once
            uint256 price = p.price;
            bool exists = p.exists;
            if (!exists) revert UnknownPolicy(policyIds[i]);
            prices[i] = price;
            // cannot overflow: i < policyCount
            unchecked {
                ++i;
            }
        }
    }

    /// @notice Checks every entry (index, fee, expiry); returns the number of entries per policy.
    function _countEntries(UsageBatch calldata batch, uint256[] memory prices, uint256 expiresAt)
        private
        pure
        returns (uint256[] memory counts)
    {
        uint256 policyCount = prices.length;
        counts = new uint256[](policyCount);
        bytes calldata entries = batch.entries;
        uint256 length = entries.length;
        for (uint256 offset; offset < length;) {
            uint256 entry = uint128(bytes16(entries[offset:offset + ENTRY_BYTES]));
            uint256 index = entry >> 120;
            if (index >= policyCount || (entry >> 32) & FEE_MASK != prices[index] || entry & USED_AT_MASK > expiresAt) {
                _rejectEntry(batch, entry, prices, expiresAt);
            }
            // cannot overflow: counts are at most 65,535 and offset < length <= MAX_ENTRIES * ENTRY_BYTES
            unchecked {
                ++counts[index];
                offset += ENTRY_BYTES;
            }
        }
    }

    /// @notice Cold path: reverts with the first failing check of `entry` (index, fee, expiry) against the
    ///         batch's `prices`; returns if the entry is valid.
    function _rejectEntry(UsageBatch calldata batch, uint256 entry, uint256[] memory prices, uint256 expiresAt)
        private
        pure
    {
        uint256 index = entry >> 120;
        uint256 fee = (entry >> 32) & FEE_MASK;
        uint256 usedAt = entry & USED_AT_MASK;
        if (index >= prices.length) revert PolicyIndexOutOfRange(index, prices.length);
        if (fee != prices[index]) revert FeeMismatch(batch.policyIds[index], prices[index], fee);
        if (usedAt > expiresAt) revert UsageAfterExpiry(batch.serial, usedAt, expiresAt);
    }

    /// @notice Cold path: the price list of a one-policy batch.
    function _single(uint256 price) private pure returns (uint256[] memory prices) {
        prices = new uint256[](1);
        prices[0] = price;
    }

    /// @notice Device signature over the batch, receiver signature over its ReceiveLog; returns that log's digest.
    function _checkSignatures(SettlementItem calldata item, address device, bytes32 separator)
        private
        view
        returns (bytes32 receiveDigest)
    {
        UsageBatch calldata batch = item.batch;
        address receiver = batch.receiver;
        bytes32 batchHash =
            LogHashes.usageBatch(batch.serial, batch.firstSeq, receiver, batch.policyIds, batch.entries);
        address signer = Signatures.recover(Signatures.typedDigest(separator, batchHash), item.deviceSignature);
        if (signer != device) revert SignerMismatch(device, signer);
        _requireActive(device, ROLE_DEVICE);
        receiveDigest = Signatures.typedDigest(separator, LogHashes.receiveLog(batchHash, device, item.receivedAt));
        signer = Signatures.recover(receiveDigest, item.receiverSignature);
        if (signer != receiver) revert ReceiverMismatch(receiver, signer);
        // active now, or revoked after it countersigned (receivedAt < revokedAt)
        _requireMemberAt(receiver, ROLE_SERVICE_PROVIDER, item.receivedAt);
    }

    /// @notice Sequence and cap checks, then the one write of slot B. A batch below nextSeq that is exactly a range
    ///         skipped for `receiver` (same count and total) releases that range's held fees instead: its policies
    ///         were credited by the caller, its cap was charged by the skip.
    function _advance(
        IssueLogRecord storage log,
        bytes32 serial,
        uint64 firstSeq,
        uint256 count,
        uint256 total,
        address receiver
    ) private {
        uint256 seqLimit = log.seqLimit; // slot A, warm: the caller read it
        // slot B, read once
        uint256 cap = log.cap;
        uint256 spent = log.spent;
        uint64 nextSeq = log.nextSeq;
        if (firstSeq < nextSeq) {
            _releaseSkipped(serial, firstSeq, count, total, receiver, nextSeq);
            return;
        }
        if (firstSeq > nextSeq) revert SequenceGap(serial, nextSeq, firstSeq);
        uint256 end;
        uint256 wanted;
        // cannot overflow: firstSeq < 2^64, count < 2^16, spent < 2^96 and total < 2^104
        unchecked {
            end = uint256(firstSeq) + count;
            wanted = spent + total;
        }
        if (end > seqLimit) revert SequenceBeyondClosedLog(serial, uint64(seqLimit), uint64(end));
        if (wanted > cap) revert CapExceeded(serial, cap, wanted);
        log.spent = uint96(wanted);
        log.nextSeq = uint64(end);
    }

    /// @notice Cold path of a batch below nextSeq: releases the held fees of the matching skipped range, or reverts
    ///         BatchReplayed (settled already, or skipped for another receiver, count or total).
    function _releaseSkipped(
        bytes32 serial,
        uint64 firstSeq,
        uint256 count,
        uint256 total,
        address receiver,
        uint64 nextSeq
    ) private {
        mapping(uint64 => bytes32) storage skipped = _skipped[serial];
        if (receiver == address(0) || skipped[firstSeq] != _skipKey(receiver, count, total)) {
            revert BatchReplayed(serial, firstSeq, nextSeq);
        }
        delete skipped[firstSeq];
        _heldFees[receiver] -= total;
        emit SkippedRangeReleased(serial, receiver, firstSeq, uint32(count), total);
    }
}
