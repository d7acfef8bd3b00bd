// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {ISignatureErrors} from "../interfaces/ISignatureErrors.sol";
import {LogHashes} from "../libraries/LogHashes.sol";
import {Signatures} from "../libraries/Signatures.sol";

/// @title Test-only naive baseline for the gas benchmark
/// @notice One transaction per usage log, one storage slot per log id for uniqueness, the same two signature
///         checks (device over the UsageLog, receiver over a ReceiveLog of it). Not deployed by scripts/deploy.py.
contract NaiveSettlement is ISignatureErrors {
    error NotOwner(address caller);
    error AlreadySettled(bytes32 logId);
    error CapExceeded(bytes32 serial, uint256 cap, uint256 wanted);
    error FeeMismatch(bytes32 policyId, uint256 expected, uint256 got);

    event UsageLogSettled(bytes32 indexed logId, bytes32 indexed serial, uint256 fee);

    struct UsageLog {
        bytes32 serial;
        uint64 seq;
        bytes32 policyId;
        uint96 fee;
        address receiver;
        uint32 usedAt;
    }

    struct Log {
        address device;
        uint96 cap;
        uint96 spent;
    }

    address private immutable _owner;
    bytes32 private immutable _separator;
    mapping(bytes32 serial => Log) private _logs;
    mapping(bytes32 policyId => uint256) private _prices;
    mapping(bytes32 policyId => uint256) private _settled;
    mapping(bytes32 logId => bool) private _seen;

    constructor() {
        _owner = msg.sender;
        _separator = LogHashes.domainSeparator(block.chainid, address(this));
    }

    function setup(bytes32 serial, address device, uint96 cap, bytes32 policyId, uint256 price) external {
        if (msg.sender != _owner) revert NotOwner(msg.sender);
        _logs[serial] = Log(device, cap, 0);
        _prices[policyId] = price;
    }

    function settleOne(UsageLog calldata u, bytes calldata deviceSig, uint64 receivedAt, bytes calldata receiverSig)
        external
    {
        if (msg.sender != _owner) revert NotOwner(msg.sender);
        bytes32 structHash = LogHashes.usageLog(u.serial, u.seq, u.policyId, u.fee, u.receiver, u.usedAt);
        bytes32 logId = Signatures.typedDigest(_separator, structHash);
        if (_seen[logId]) revert AlreadySettled(logId);
        Log storage log = _logs[u.serial];
        address signer = Signatures.recover(logId, deviceSig);
        if (signer != log.device) revert SignerMismatch(log.device, signer);
        bytes32 receiveDigest =
            Signatures.typedDigest(_separator, LogHashes.receiveLog(structHash, log.device, receivedAt));
        signer = Signatures.recover(receiveDigest, receiverSig);
        if (signer != u.receiver) revert SignerMismatch(u.receiver, signer);
        if (u.fee != _prices[u.policyId]) revert FeeMismatch(u.policyId, _prices[u.policyId], u.fee);
        uint256 wanted = log.spent + u.fee;
        if (wanted > log.cap) revert CapExceeded(u.serial, log.cap, wanted);
        _seen[logId] = true;
        log.spent = uint96(wanted);
        _settled[u.policyId] += u.fee;
        emit UsageLogSettled(logId, u.serial, u.fee);
    }

    function domainSeparator() external view returns (bytes32) {
        return _separator;
    }
}
