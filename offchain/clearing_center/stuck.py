"""Stuck settle() transactions: one still unmined `stuck_tx_after_s` after it was sent is replaced at the same nonce
with higher fees, and the outbox row follows the replacement (its new hash and signed bytes are written before the
broadcast, as for the first send).

Whichever of the two gets mined uses the nonce once; the worker's recovery resolves a row by the chain's state
(receipt of the current hash, else each log's settled sequence), so an old hash mined after all is not lost.
"""

from __future__ import annotations

from typing import Any

from offchain.chain.protocols import ChainWriter
from offchain.clearing_center.store import CcStore
from offchain.clearing_center.tables import SettlementOutbox
from offchain.storage.session import get_row, session_scope


def record_replacement(store: CcStore, outbox_id: int, old_hash: str, new_hash: str, raw_tx: bytes) -> None:
    """The outbox row now names the replacement; `error` keeps the hash it replaced (for the operator and audit)."""
    with session_scope(store.engine) as session:
        row = get_row(session, SettlementOutbox, outbox_id, "settlement")
        row.tx_hash, row.raw_tx, row.updated_at = new_hash, raw_tx, store.now()
        row.error = f"replaced {old_hash} (unmined after the stuck timeout)"[:500]


def replace_stuck_settlement(store: CcStore, chain: ChainWriter, row: SettlementOutbox, log: Any) -> str:
    """Replace the row's transaction; returns the recovery outcome ("replaced", or "in_mempool" if it got mined)."""
    old_hash = str(row.tx_hash)

    def record(tx_hash: str, _nonce: int, raw_tx: bytes) -> None:
        record_replacement(store, row.id, old_hash, tx_hash, raw_tx)

    new_hash = chain.replace_stuck(bytes(row.raw_tx or b""), record=record)
    if new_hash is None:
        return "in_mempool"  # the nonce was used meanwhile: the next tick finds the receipt
    log.warning("settlement.replaced", outbox_id=row.id, old_tx=old_hash, tx_hash=new_hash, nonce=row.nonce)
    return "in_mempool"  # still open: never build on top of it until it is mined


__all__ = ["replace_stuck_settlement", "record_replacement"]
