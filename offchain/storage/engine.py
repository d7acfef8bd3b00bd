"""The database engine of a service: SQLite or PostgreSQL, and schema creation from the roles' MetaData.

Tables are not defined here: each role declares its own in its `store.py` (clearing_center, service_provider,
bank) and passes its MetaData to `create_schema`. Transactions and idempotency helpers are in `session.py`,
column types in `columns.py`. Migrations are in `migrate.py`: `create_schema` creates a fresh role schema at the
migrations' head and refuses a database behind it (`clearhouse db upgrade`).

Concurrency strategy. SQLite: every transaction starts with `BEGIN IMMEDIATE`, so writers are serialized and
a read-then-write never meets a stale snapshot (busy_timeout waits for the lock). PostgreSQL: READ COMMITTED
plus (1) unique constraints on idempotency keys, checked inside the same transaction as the effect, so a racing
duplicate fails with IntegrityError and is re-read, and (2) `SELECT ... FOR UPDATE` on the row whose balance
is debited (see `Ledger._lock_account` in bank/ledger.py) so that two debits cannot both pass a balance check.
We do not use SERIALIZABLE: it would be correct too, but every caller would have to retry serialization failures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, MetaData, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.pool import StaticPool


def make_engine(url: str, *, echo: bool = False) -> Engine:
    """An Engine for `url`: SQLite (WAL, foreign keys, busy timeout, BEGIN IMMEDIATE) or PostgreSQL (psycopg2)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(url, parsed.database, echo)
    if parsed.get_backend_name() == "postgresql":
        if parsed.drivername == "postgresql":
            url = parsed.set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)
        return create_engine(
            url, echo=echo, pool_size=5, max_overflow=5, pool_pre_ping=True, pool_recycle=1800
        )
    return create_engine(url, echo=echo)


def _sqlite_engine(url: str, database: str | None, echo: bool) -> Engine:
    in_memory = database in (None, "", ":memory:")
    if in_memory:
        engine = create_engine(
            url, echo=echo, poolclass=StaticPool, connect_args={"check_same_thread": False}
        )
    else:
        Path(database).parent.mkdir(parents=True, exist_ok=True)  # type: ignore[arg-type]
        engine = create_engine(url, echo=echo, connect_args={"timeout": 30, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # let us emit BEGIN ourselves (pysqlite's own BEGIN is deferred)
        cursor = dbapi_connection.cursor()
        if not in_memory:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def create_schema(engine: Engine, *metadatas: MetaData) -> None:
    """Create the tables of `metadatas` in a fresh database, stamped at the migrations' head (idempotent).

    A role passes its own MetaData (e.g. `offchain.clearing_center.tables.create_schema` passes `CcTable.metadata`),
    so nothing has to be imported for its side effect of registering tables."""
    if not metadatas:
        raise ValueError("create_schema needs the MetaData of at least one role's tables")
    from offchain.storage import migrate

    for metadata in metadatas:
        schema = migrate.role_for(metadata)
        if schema is None:
            metadata.create_all(engine)
        else:  # fresh: created and stamped at head; at head: as is; behind: SchemaOutdated naming the command
            migrate.ensure_current(engine, schema)

