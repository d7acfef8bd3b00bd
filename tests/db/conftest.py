"""Database fixtures: every test taking `db_url`/`engine` runs on SQLite (a temp file) and on PostgreSQL.

PostgreSQL comes from CLEARHOUSE_TEST_PG_URL (bin/test starts a throwaway cluster and sets it); each test module
gets its own fresh database, dropped afterwards. Without the variable only the postgres parameter is skipped.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from offchain.db import Base, create_schema, make_engine

PG_ENV = "CLEARHOUSE_TEST_PG_URL"


@pytest.fixture(scope="module")
def pg_database_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test module (CREATE DATABASE t_<random>, dropped at the end)."""
    admin_url = os.environ.get(PG_ENV)
    if not admin_url:
        pytest.skip(f"{PG_ENV} not set (bin/test sets it)")
    name = "t_" + secrets.token_hex(6)
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database URL with no tables yet: a temp SQLite file, or the module's PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'test.db'}"
    return str(request.getfixturevalue("pg_database_url"))


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """An engine with the full schema; the tables are dropped afterwards so the next test starts empty."""
    eng = make_engine(db_url)
    create_schema(eng)
    yield eng
    Base.metadata.drop_all(eng)
    eng.dispose()
