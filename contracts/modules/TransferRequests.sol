// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {ITransferRequests} from "../interfaces/ITransferRequests.sol";
import {CheckedCast} from "../libraries/CheckedCast.sol";
import {Split} from "../libraries/Split.sol";
import {ContentPolicies} from "./ContentPolicies.sol";

/// @title Transfer-request module: accrued fees become one payout request per payee, confirmed by a bank
/// @notice `requested` catches up with `settled` for every listed policy, so a policy's accrual is requested once.
///         Each payee gets parts(settled) - parts(requested) (Split.parts is cumulative and monotone): what a
///         payee has been requested for a policy is always its part of the policy's requested total, whatever
///         the cadence of requests, and no extra storage per payee is needed.
abstract contract TransferRequests is ContentPolicies, ITransferRequests {
    // STORAGE
    struct TransferRecord {
        // slot 0: payee (160) | amount (96)
        address payee;
        uint96 amount;
        // slot 1: confirmed flag; slot 2: the bank's reference
        bool confirmed;
        bytes32 bankRef;
    }

    mapping(bytes32 requestId => TransferRecord) private _transfers;
    uint256 private _requestNonce;

    // EXTERNAL
    /// @inheritdoc ITransferRequests
    function requestTransfers(bytes32[] calldata policyIds) external returns (bytes32[] memory requestIds) {
        _requireActive(msg.sender, ROLE_CLEARING_CENTER);
        (address[] memory payees, uint256[] memory amounts, uint256 count) = _collectAccruals(policyIds);
        if (count == 0) revert NothingToRequest();
        requestIds = new bytes32[](count);
        uint256 nonce = _requestNonce;
        for (uint256 i; i < count; ++i) {
            bytes32 requestId = keccak256(abi.encode(block.chainid, address(this), nonce++, payees[i]));
            _transfers[requestId] = TransferRecord(payees[i], CheckedCast.toUint96(amounts[i]), false, bytes32(0));
            requestIds[i] = requestId;
            emit TransferRequested(requestId, payees[i], amounts[i]);
        }
        _requestNonce = nonce;
    }

    /// @inheritdoc ITransferRequests
    function confirmTransfer(bytes32 requestId, bytes32 bankRef) external {
        _requireActive(msg.sender, ROLE_BANK);
        TransferRecord storage t = _transfers[requestId];
        if (t.payee == address(0)) revert UnknownTransferRequest(requestId);
        if (t.confirmed) revert TransferAlreadyConfirmed(requestId, t.bankRef);
        t.confirmed = true;
        t.bankRef = bankRef;
        emit TransferConfirmed(requestId, t.payee, msg.sender, t.amount, bankRef);
    }

    /// @inheritdoc ITransferRequests
    function transferRequest(bytes32 requestId)
        external
        view
        returns (address payee, uint256 amount, bool confirmed, bytes32 bankRef)
    {
        TransferRecord storage t = _transfers[requestId];
        return (t.payee, t.amount, t.confirmed, t.bankRef);
    }

    // INTERNAL
    /// @notice Moves each policy's accrual to requested and sums its split per payee, in first-seen order.
    function _collectAccruals(bytes32[] calldata policyIds)
        private
        returns (address[] memory payees, uint256[] memory amounts, uint256 count)
    {
        payees = new address[](policyIds.length * Split.MAX_PAYEES);
        amounts = new uint256[](payees.length);
        for (uint256 i; i < policyIds.length; ++i) {
            bytes32 policyId = policyIds[i];
            for (uint256 j; j < i; ++j) {
                if (policyIds[j] == policyId) revert DuplicatePolicyInRequest(policyId);
            }
            PolicyRecord storage p = _policies[policyId];
            if (!p.exists) revert UnknownPolicy(policyId);
            uint256 settled = p.settled;
            uint256 requested = p.requested;
            uint256 amount = settled - requested;
            if (amount == 0) continue;
            p.requested = uint128(settled);
            emit AccrualRequested(policyId, amount);
            Payee[] memory split = p.payees;
            count = _addShares(split, _due(settled, requested, split), payees, amounts, count);
        }
    }

    /// @notice Each payee's part of `settled` minus its part of `requested` (never negative: parts are monotone).
    function _due(uint256 settled, uint256 requested, Payee[] memory split)
        private
        pure
        returns (uint256[] memory shares)
    {
        shares = Split.parts(settled, split);
        uint256[] memory before = Split.parts(requested, split);
        for (uint256 k; k < shares.length; ++k) {
            shares[k] -= before[k];
        }
    }

    function _addShares(
        Payee[] memory split,
        uint256[] memory shares,
        address[] memory payees,
        uint256[] memory amounts,
        uint256 count
    ) private pure returns (uint256) {
        for (uint256 k; k < split.length; ++k) {
            if (shares[k] == 0) continue;
            uint256 slot = count;
            for (uint256 m; m < count; ++m) {
                if (payees[m] == split[k].account) {
                    slot = m;
                    break;
                }
            }
            if (slot == count) {
                payees[count++] = split[k].account;
            }
            amounts[slot] += shares[k];
        }
        return count;
    }
}
