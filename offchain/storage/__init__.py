"""Storage machinery shared by the roles: engine, transactions, idempotent inserts and the Money column.

The tables themselves belong to the roles (`clearing_center/tables.py`, `service_provider/store.py`,
`bank/store.py`).
"""

from offchain.storage.columns import MONEY_MAX, Address, Base, Bytes32, Money, money, require_money, status_check
from offchain.storage.engine import create_schema, make_engine
from offchain.storage.session import get_row, insert_idempotent, payload_hash, session_scope, transition

__all__ = [
    "MONEY_MAX", "Address", "Base", "Bytes32", "Money", "money", "require_money", "status_check",
    "create_schema", "make_engine",
    "get_row", "insert_idempotent", "payload_hash", "session_scope", "transition",
]
