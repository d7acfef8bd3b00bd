"""The clearing center's side of a withheld range: a device's SkipRange, checked and settled with `skipRange`.

A device whose SP acknowledged a batch (the SP-signed ReceiveLog it got as the ack) and never forwarded it signs
a SkipRange after the withhold window and posts it with that ack (`POST /v1/skips`); the CC checks both envelopes
and the serial's state on chain here and sends `skipRange`, so the serial's later batches (of other SPs) settle.
The device then sends its own copy of the batch (`POST /v1/skips/release`): the contract's release path credits
its policies and releases the held fees. Neither stores anything but the settled-policy mark: the chain is the
record (a repeated request is answered from its event). The chain re-checks every signature and the window.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from offchain.chain.protocols import ChainWriter
from offchain.core import messages
from offchain.core.errors import ContractReverted, IdentityMismatch, MalformedMessage, NotFound, SequenceError
from offchain.chain.codec import SettlementItem
from offchain.core.messages import Domain, ReceiveLog, SkipRange, UsageBatch
from offchain.core.types import Role, from_hex, to_hex
from offchain.trust.certs import CertificateVerifier, Envelope, MemberIdentity

WITHHOLD_WINDOW_S = 7 * 86_400  # the contract's WITHHOLD_WINDOW
SKIP_PATH = "/v1/skips"
RELEASE_PATH = "/v1/skips/release"


class ReleaseBody(BaseModel):
    """`POST /v1/skips/release`: the skipped batch as the device signed it, and the SP's signed ack of it."""

    usage_batch: dict[str, Any]
    device_signature: str
    receive_log: dict[str, Any]


class SkipBody(BaseModel):
    """`POST /v1/skips`: the device's SkipRange Envelope and the SP's ReceiveLog Envelope (its signed ack)."""

    skip_range: dict[str, Any]
    receive_log: dict[str, Any]


@dataclass(frozen=True)
class SkipRequest:
    """The device's SkipRange envelope and the withholding SP's ReceiveLog envelope (its ack of the batch)."""

    skip_range: dict[str, Any]
    receive_log: dict[str, Any]


def verify_skip(request: SkipRequest, verifier: CertificateVerifier, domain: Domain,
                peer: MemberIdentity) -> tuple[SkipRange, bytes, bytes]:
    """(skip, device signature, receiver signature): the skip is the TLS peer device's, the receive log is a
    service provider's ack of that very batch, from that device, at that time, and names the skip's receiver."""
    skip, device_sig = open_skip(request, verifier, domain, peer)
    return skip, device_sig, check_ack(request, skip, domain, peer)


def open_skip(request: SkipRequest, verifier: CertificateVerifier, domain: Domain,
              peer: MemberIdentity) -> tuple[SkipRange, bytes]:
    """(skip, device signature): a SkipRange sealed by the TLS peer device's own certificate."""
    skip_envelope = Envelope.from_json(request.skip_range)
    skip, _device = skip_envelope.open(verifier, domain, Role.DEVICE, peer=peer)
    if not isinstance(skip, SkipRange):
        raise MalformedMessage("skip_range must be a SkipRange", type=skip_envelope.kind, field="kind",
                               value=skip_envelope.kind, reason="wrong message type")
    return skip, skip_envelope.signature_bytes()


def check_ack(request: SkipRequest, skip: SkipRange, domain: Domain, peer: MemberIdentity) -> bytes:
    """The receiver's signature of the ack: a ReceiveLog signed by the skip's receiver about that very batch,
    from the peer device, at the skip's time."""
    receive_envelope = Envelope.from_json(request.receive_log)
    receive_log = receive_envelope.decode()
    if not isinstance(receive_log, ReceiveLog):
        raise MalformedMessage("receive_log must be a ReceiveLog", type=receive_envelope.kind, field="kind",
                               value=receive_envelope.kind, reason="wrong message type")
    # the SP may be revoked by now: its signature, not its certificate's standing, proves the ack
    receiver = messages.recover(receive_log, domain, receive_envelope.signature_bytes())
    if receiver != skip.receiver:
        raise IdentityMismatch("the receive log is signed by another SP than the skip names", expected=skip.receiver,
                               got=receiver)
    if (receive_log.usage_batch, receive_log.payer, receive_log.received_at) != (
            skip.usage_batch, peer.eth_address, skip.received_at):
        raise MalformedMessage("the receive log is about another batch, payer or time than the skip",
                               type="SkipRange", field="usageBatch", value="0x" + skip.usage_batch.hex(),
                               reason="receive log mismatch")
    return receive_envelope.signature_bytes()


HeldReceiveLogs = Callable[[bytes], Sequence[Any]]  # serial -> the CC's live receive log rows (first_seq, count, id)


def submit_skip(request: SkipRequest, chain: ChainWriter, verifier: CertificateVerifier,
                peer: MemberIdentity, held: HeldReceiveLogs | None = None) -> dict[str, Any]:
    """Verify, check the serial on chain, and send `skipRange`: {status: skipped, serial, tx_hash, next_seq}.

    Refusals, each named before a transaction is sent: the serial is unknown (NotFound) or another device's
    (IdentityMismatch); the chain is past the range and no skip of this very batch moved it there: it settled
    (SequenceError, expected = nextSeq > first seq); an earlier range is unsettled (SequenceError, expected =
    nextSeq < first seq); the CC holds the SP's batch of this range after all (SequenceError with
    held_receive_log_id: it settles as it is, so its fees are not held). The chain's own refusals
    (WithholdWindowOpen, SignerMismatch, ReceiverMismatch, CapExceeded, ...) propagate as ContractReverted from
    the gas estimate, before anything is sent. A request repeated after its skip was mined is answered as the
    first one was (idempotent)."""
    skip, device_sig = open_skip(request, verifier, chain.domain, peer)
    log = chain.issue_log(skip.serial)
    if not log.exists:
        raise NotFound("no issue log with this serial on chain", serial=skip.serial)
    if log.device != peer.eth_address:
        raise IdentityMismatch("the serial belongs to another device: only its own device skips its ranges",
                               serial=skip.serial, expected=log.device, got=peer.eth_address)
    receiver_sig = check_ack(request, skip, chain.domain, peer)
    if skip.first_seq < log.next_seq:
        done = _skip_event(chain, skip)
        if done is None:
            raise SequenceError("the chain settled this range already: nothing to skip", serial=skip.serial,
                                first_seq=skip.first_seq, expected=log.next_seq, got=skip.first_seq)
        return _answer("skipped", skip, done, log.next_seq)
    for row in held(skip.serial) if held is not None else ():
        if row.first_seq < skip.first_seq + skip.count and skip.first_seq < row.first_seq + row.count:
            raise SequenceError("the clearing center holds the SP's batch of this range: it settles without a skip",
                                serial=skip.serial, first_seq=skip.first_seq, held_receive_log_id=bytes(row.id))
    if skip.first_seq > log.next_seq:
        raise SequenceError("an earlier range of this serial is unsettled: skip or settle it first",
                            serial=skip.serial, first_seq=skip.first_seq, expected=log.next_seq, got=skip.first_seq)
    try:
        receipt = chain.skip_range(skip, device_sig, receiver_sig)
    except ContractReverted as exc:
        done = _skip_event(chain, skip) if exc.error_name == "BatchReplayed" else None
        if done is None:  # a concurrent request for the same range won the race: the same answer
            raise
        return _answer("skipped", skip, done, chain.issue_log(skip.serial).next_seq)
    return _answer("skipped", skip, "0x" + bytes(receipt["transactionHash"]).hex(),
                   chain.issue_log(skip.serial).next_seq)


def release_skipped(body: ReleaseBody, chain: ChainWriter, peer: MemberIdentity,
                    note_settled: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Settle the batch of a skipped range from the device's own copy (its batch, its signature, the SP's signed
    ack): the contract's release path credits the batch's policies and releases the held fees, without charging
    the cap again. `note_settled(batch_json)` tells the CC's transfer rounds that its policies have settled fees.

    Refusals: the serial is another device's (IdentityMismatch), the batch not signed by it (SignerMismatch), the
    ack another SP's (IdentityMismatch) or about another batch or device (MalformedMessage), no range of this
    batch was skipped (NotFound); the chain's (FeeMismatch, BatchReplayed for another count or total, ...)
    propagate from the gas estimate. A release already mined is answered as the first one was."""
    batch = UsageBatch.from_json(body.usage_batch)
    device_sig = from_hex(body.device_signature, "device_signature")
    log = chain.issue_log(batch.serial)
    if log.device != peer.eth_address:
        raise IdentityMismatch("the serial belongs to another device: only its own device releases its ranges",
                               serial=batch.serial, expected=log.device, got=peer.eth_address)
    messages.verify(batch, chain.domain, device_sig, peer.eth_address)
    receive_envelope = Envelope.from_json(body.receive_log)
    receive_log = receive_envelope.decode()
    if not isinstance(receive_log, ReceiveLog):
        raise MalformedMessage("receive_log must be a ReceiveLog", type=receive_envelope.kind, field="kind",
                               value=receive_envelope.kind, reason="wrong message type")
    receiver = messages.recover(receive_log, chain.domain, receive_envelope.signature_bytes())
    if receiver != batch.receiver:
        raise IdentityMismatch("the receive log is signed by another SP than the batch names",
                               expected=batch.receiver, got=receiver)
    if (receive_log.usage_batch, receive_log.payer) != (batch.struct_hash(), peer.eth_address):
        raise MalformedMessage("the receive log is about another batch or payer", type="ReceiveLog",
                               field="usageBatch", value=to_hex(receive_log.usage_batch), reason="receive log mismatch")
    skip = SkipRange(serial=batch.serial, first_seq=batch.first_seq, count=batch.count, receiver=batch.receiver,
                     total=batch.total, usage_batch=receive_log.usage_batch, received_at=receive_log.received_at)
    if _skip_event(chain, skip) is None:
        raise NotFound("no range of this batch was skipped: it settles through its SP", serial=batch.serial,
                       seq=batch.first_seq)
    done = _release_event(chain, skip)
    if done is None:
        item = SettlementItem(batch, device_sig, receive_log.received_at, receive_envelope.signature_bytes())
        done = "0x" + bytes(chain.settle([item])["transactionHash"]).hex()
    if note_settled is not None:
        note_settled(batch.to_json())
    return {**_answer("released", skip, done, chain.issue_log(batch.serial).next_seq),
            "held_fees": chain.held_fees(batch.receiver)}


def _release_event(chain: ChainWriter, skip: SkipRange) -> str | None:
    events = chain.contract.events.SkippedRangeReleased().get_logs(
        from_block=chain.deployment.deploy_block, argument_filters={"serial": skip.serial})
    for event in events:
        args = event["args"]
        if (int(args["firstSeq"]), args["receiver"], int(args["count"]), int(args["total"])) == (
                skip.first_seq, skip.receiver, skip.count, skip.total):
            return "0x" + bytes(event["transactionHash"]).hex()
    return None


def _skip_event(chain: ChainWriter, skip: SkipRange) -> str | None:
    """The tx hash of the RangeSkipped event that skipped exactly this range (same batch, first seq and
    receiver), or None."""
    events = chain.contract.events.RangeSkipped().get_logs(
        from_block=chain.deployment.deploy_block, argument_filters={"serial": skip.serial})
    for event in events:
        args = event["args"]
        if (int(args["firstSeq"]), bytes(args["usageBatch"]), args["receiver"]) == (
                skip.first_seq, skip.usage_batch, skip.receiver):
            return "0x" + bytes(event["transactionHash"]).hex()
    return None


def _answer(status: str, skip: SkipRange, tx_hash: str, next_seq: int) -> dict[str, Any]:
    return {"status": status, "serial": "0x" + skip.serial.hex(), "first_seq": skip.first_seq,
            "count": skip.count, "total": skip.total, "tx_hash": tx_hash, "next_seq": next_seq}


__all__ = ["RELEASE_PATH", "SKIP_PATH", "ReleaseBody", "SkipBody", "SkipRequest", "WITHHOLD_WINDOW_S", "check_ack",
           "open_skip", "release_skipped", "submit_skip", "verify_skip"]
