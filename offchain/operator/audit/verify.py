"""Re-verification of a trail's signatures from chain data alone: the device over each UsageBatch, the SP over
each ReceiveLog, the device over each renewal's BalanceStatement. A failed check is reported, never raised.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from offchain.core.errors import SignatureError
from offchain.core.messages import Domain, ReceiveLog, recover
from offchain.operator.audit.index import AuditIndex, ChainEvent, Check, Section, SettledItem, Trail, serial_origin


# --- re-verification ---------------------------------------------------------------------------------------------
def _recover_or_none(message: Any, domain: Domain, signature: bytes) -> tuple[str | None, str]:
    try:
        return recover(message, domain, signature), ""
    except SignatureError as exc:
        return None, exc.message


def verify_item(domain: Domain, event: ChainEvent, item: SettledItem | None, expected_device: str) -> list[Check]:
    """Re-verify one settled batch from its calldata: event fields, device signature, receive log digest and
    the receiver's signature."""
    args = event.args
    subject = f"batch {args['serial']}#{args['firstSeq']}"
    if item is None:
        return [Check(subject, "calldata found", False, f"no SettlementItem for it in {event.tx_hash}")]
    batch = item.batch
    same = (batch.count, batch.total) == (int(args["count"]), int(args["total"]))
    checks = [Check(subject, "event matches calldata", same,
                    f"calldata count {batch.count} total {batch.total}; event {args['count']} / {args['total']}")]
    device, error = _recover_or_none(batch, domain, item.device_signature)
    checks.append(Check(subject, "device signed the UsageBatch", device == expected_device == args["device"],
                        error or f"recovered {device}, issue log device {expected_device}"))
    receive_log = ReceiveLog(usage_batch=batch.struct_hash(), payer=expected_device, received_at=item.received_at)
    digest = "0x" + receive_log.digest(domain).hex()
    checks.append(Check(subject, "ReceiveLog digest == event", digest == args["receiveLogDigest"],
                        f"recomputed {digest}"))
    receiver, error = _recover_or_none(receive_log, domain, item.receiver_signature)
    checks.append(Check(subject, "receiver signed the ReceiveLog", receiver == batch.receiver == args["receiver"],
                        error or f"recovered {receiver}, batch receiver {batch.receiver}"))
    return checks


def verify_batches(index: AuditIndex, settled: Sequence[ChainEvent], expected_device: str | None = None
                   ) -> list[Check]:
    """Re-verify every UsageSettled event against its transaction's calldata (device from the issue log)."""
    checks: list[Check] = []
    devices: dict[str, str] = {}
    items_by_tx: dict[str, dict[tuple[str, int], SettledItem]] = {}
    for event in settled:
        if event.tx_hash not in items_by_tx:
            items_by_tx[event.tx_hash] = {("0x" + i.batch.serial.hex(), i.batch.first_seq): i
                                          for i in index.settled_items(event.tx_hash)}
        serial = event.args["serial"]
        if serial not in devices:
            devices[serial] = expected_device or serial_origin(index, serial).device
        item = items_by_tx[event.tx_hash].get((serial, int(event.args["firstSeq"])))
        checks += verify_item(index.ref.domain, event, item, devices[serial])
    return checks


def verify_renewals(index: AuditIndex, renewals: Sequence[ChainEvent]) -> list[Check]:
    """Re-verify every renewal: the device signed the BalanceStatement whose digest the event records."""
    checks = []
    for event in renewals:
        args = event.args
        subject = f"renewal {args['oldSerial']} -> {args['newSerial']}"
        call = index.renew_call(event.tx_hash)
        if call is None:
            checks.append(Check(subject, "calldata found", False, f"{event.tx_hash} is not a direct renew call"))
            continue
        digest = "0x" + call.statement.digest(index.ref.domain).hex()
        checks.append(Check(subject, "statement digest == event", digest == args["statementDigest"],
                            f"recomputed {digest}"))
        signer, error = _recover_or_none(call.statement, index.ref.domain, call.device_signature)
        checks.append(Check(subject, "device signed the BalanceStatement", signer == args["device"],
                            error or f"recovered {signer}, event device {args['device']}"))
        attested = (call.statement.spent, call.statement.next_seq)
        checks.append(Check(subject, "statement matches event", attested == (int(args["attestedSpent"]),
                                                                               int(args["attestedNextSeq"])),
                            f"statement spent/nextSeq {attested}"))
    return checks


def verify_trail(index: AuditIndex) -> Trail:
    """Re-verify every settled batch and every renewal on the contract."""
    settled = index.events("UsageSettled")
    renewals = index.events("IssueLogRenewed")
    checks = verify_batches(index, settled) + verify_renewals(index, renewals)
    summary = Section("Verified", ("settled_batches", "usage_logs", "renewals", "checks", "failures"),
                      ((len(settled), sum(int(e.args["count"]) for e in settled), len(renewals), len(checks),
                        sum(1 for c in checks if not c.ok)),))
    return Trail(title="all signatures", sections=(summary,), checks=tuple(checks))
