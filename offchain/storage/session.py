"""Transactions and the idempotency helpers every role's repository functions use.

`insert_idempotent` makes an effect happen once per key: the same key with the same payload hash returns the
stored row, with another payload raises DuplicateMessage. `transition` moves a status along an allowed flow.
Nothing here knows a role's tables.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from offchain.core.errors import DuplicateMessage, InvalidTransition, NotFound


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """One transaction: commits on success, rolls back on any exception; objects stay readable afterwards."""
    session = Session(engine, expire_on_commit=False)
    try:
        with session.begin():
            yield session
    finally:
        session.close()


def payload_hash(payload: Any) -> bytes:
    """SHA-256 of the canonical JSON of `payload` (sorted keys, no spaces): the idempotency fingerprint."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=_json_default)
    return hashlib.sha256(canonical.encode()).digest()


def _json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return "0x" + bytes(value).hex()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def insert_idempotent(session: Session, row: Any, key: dict[str, Any], what: str) -> tuple[Any, bool]:
    """Insert `row` unless a row with the same key exists: same payload hash -> (existing, False), else raise.

    The insert runs in a SAVEPOINT so that losing a race on the unique key (PostgreSQL) leaves the caller's
    transaction usable; the winner's row is then re-read and compared like any other replay.
    """
    model = type(row)
    existing = session.scalars(select(model).filter_by(**key)).one_or_none()
    if existing is None:
        try:
            with session.begin_nested():
                session.add(row)
            return row, True
        except IntegrityError:
            existing = session.scalars(select(model).filter_by(**key)).one_or_none()
            if existing is None:
                raise
    if existing.payload_hash != row.payload_hash:
        raise DuplicateMessage(
            f"{what} {_show(key)} was already stored with a different payload; use a new id for a new effect",
            kind=what,
            key=_show(key),
            stored_hash=existing.payload_hash,
            got_hash=row.payload_hash,
        )
    return existing, False


def _show(key: dict[str, Any]) -> str:
    return ",".join(f"{k}={'0x' + v.hex() if isinstance(v, bytes) else v}" for k, v in key.items())


def transition(row: Any, new_status: str, allowed: dict[str, tuple[str, ...]], what: str) -> None:
    """Move `row.status` forward along `allowed`; staying put is a no-op; anything else is InvalidTransition."""
    if row.status == new_status:
        return
    if new_status not in allowed.get(row.status, ()):
        raise InvalidTransition(
            f"{what} cannot go from {row.status} to {new_status}", kind=what, current=row.status, wanted=new_status
        )
    row.status = new_status


def get_row(session: Session, model: type[Any], ident: Any, what: str) -> Any:
    """`session.get(model, ident)`, or NotFound naming `what`."""
    row = session.get(model, ident)
    if row is None:
        shown = "0x" + ident.hex() if isinstance(ident, bytes) else str(ident)
        raise NotFound(f"unknown {what} {shown}", kind=what, id=shown)
    return row
