"""Database fixtures: every test taking `engine` runs on SQLite (a temp file) and on PostgreSQL.

`db_url` lives in tests/conftest.py so the service tests share it. PostgreSQL comes from CLEARHOUSE_TEST_PG_URL (bin/test starts a throwaway cluster and sets it); each test module
gets its own fresh database, dropped afterwards. Without the variable only the postgres parameter is skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from offchain.storage.engine import Base, create_schema, make_engine

@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """An engine with the full schema; the tables are dropped afterwards so the next test starts empty."""
    eng = make_engine(db_url)
    create_schema(eng)
    yield eng
    Base.metadata.drop_all(eng)
    eng.dispose()
