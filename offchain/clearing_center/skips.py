"""The clearing center's side of a withheld range: a device's SkipRange, checked and settled with `skipRange`.

A device whose SP acknowledged a batch (the SP-signed ReceiveLog it got as the ack) and never forwarded it signs
a SkipRange after the withhold window; the CC checks both envelopes here and sends `skipRange`, so the serial's
later batches (of other SPs) settle. It stores nothing: the chain's nextSeq is the record (a second request for
the same range is answered from it). The chain re-checks every signature and the window.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from offchain.chain.protocols import ChainWriter
from offchain.core import messages
from offchain.core.errors import ContractReverted, IdentityMismatch, MalformedMessage
from offchain.core.messages import Domain, ReceiveLog, SkipRange
from offchain.core.types import Role
from offchain.trust.certs import CertificateVerifier, Envelope, MemberIdentity

WITHHOLD_WINDOW_S = 7 * 86_400  # the contract's WITHHOLD_WINDOW


@dataclass(frozen=True)
class SkipRequest:
    """The device's SkipRange envelope and the withholding SP's ReceiveLog envelope (its ack of the batch)."""

    skip_range: dict[str, Any]
    receive_log: dict[str, Any]


def verify_skip(request: SkipRequest, verifier: CertificateVerifier, domain: Domain,
                peer: MemberIdentity) -> tuple[SkipRange, bytes, bytes]:
    """(skip, device signature, receiver signature): the skip is the TLS peer device's, the receive log is a
    service provider's ack of that very batch, from that device, at that time, and names the skip's receiver."""
    skip_envelope = Envelope.from_json(request.skip_range)
    skip, _device = skip_envelope.open(verifier, domain, Role.DEVICE, peer=peer)
    if not isinstance(skip, SkipRange):
        raise MalformedMessage("skip_range must be a SkipRange", type=skip_envelope.kind, field="kind",
                               value=skip_envelope.kind, reason="wrong message type")
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
    return skip, skip_envelope.signature_bytes(), receive_envelope.signature_bytes()


def submit_skip(request: SkipRequest, chain: ChainWriter, verifier: CertificateVerifier,
                peer: MemberIdentity) -> dict[str, Any]:
    """Verify and send `skipRange`; a range the chain already moved past is answered `already_settled`
    (idempotent), any other revert propagates as ContractReverted (WithholdWindowOpen, SignerMismatch, ...)."""
    skip, device_sig, receiver_sig = verify_skip(request, verifier, chain.domain, peer)
    try:
        receipt = chain.skip_range(skip, device_sig, receiver_sig)
    except ContractReverted as exc:
        if exc.error_name == "BatchReplayed":
            return {"status": "already_settled", "serial": "0x" + skip.serial.hex(),
                    "next_seq": chain.issue_log(skip.serial).next_seq}
        raise
    return {"status": "skipped", "serial": "0x" + skip.serial.hex(),
            "tx_hash": "0x" + bytes(receipt["transactionHash"]).hex(),
            "next_seq": chain.issue_log(skip.serial).next_seq}


__all__ = ["SkipRequest", "WITHHOLD_WINDOW_S", "submit_skip", "verify_skip"]
