"""Audit trails from the chain alone: index (events + calldata in SQLite), trails, re-verification, rendering.

Import from here (`from offchain.operator.audit import AuditIndex, open_index, serial_trail, render`). The CLI
entry points (`main_serial`, ...) are in `offchain.operator.audit.cli`; click itself lives in `offchain.cli`.
"""

from offchain.core.types import hex32
from offchain.operator.audit.cli import main_content, main_device, main_payee, main_serial, main_verify
from offchain.operator.audit.index import (
    CALLDATA_FUNCTIONS,
    DEFAULT_CHUNK_BLOCKS,
    SCHEMA_VERSION,
    AuditIndex,
    CallRecord,
    ChainEvent,
    Check,
    ContractRef,
    RenewCall,
    Section,
    SerialOrigin,
    SettledItem,
    SyncStats,
    Trail,
    default_cache_path,
    gas_by_function,
    open_index,
    plain,
    serial_origin,
)
from offchain.operator.audit.render import OUTPUT_FORMATS, render, render_csv, render_table
from offchain.operator.audit.trails import (
    content_trail,
    device_trail,
    payee_pairs,
    payee_trail,
    policies,
    renewal_mode,
    serial_trail,
    split_amount,
)
from offchain.operator.audit.verify import verify_batches, verify_item, verify_renewals, verify_trail

__all__ = [
    "AuditIndex", "open_index", "default_cache_path", "ContractRef", "ChainEvent", "CallRecord", "SettledItem",
    "RenewCall", "SyncStats", "Trail", "Section", "Check", "SerialOrigin", "serial_origin", "gas_by_function", "plain",
    "CALLDATA_FUNCTIONS", "DEFAULT_CHUNK_BLOCKS", "SCHEMA_VERSION",
    "serial_trail", "device_trail", "payee_trail", "content_trail", "renewal_mode", "payee_pairs", "split_amount",
    "policies",
    "verify_item", "verify_batches", "verify_renewals", "verify_trail",
    "render", "render_table", "render_csv", "OUTPUT_FORMATS",
    "main_serial", "main_device", "main_payee", "main_content", "main_verify",
    "hex32",
]
