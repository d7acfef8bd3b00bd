"""Database fixtures: every test taking `engine` runs on SQLite (a temp file) and on PostgreSQL.

`db_url` lives in tests/conftest.py so the service tests share it. PostgreSQL comes from CLEARHOUSE_TEST_PG_URL (bin/test starts a throwaway cluster and sets it); each test module
gets its own fresh database, dropped afterwards. Without the variable only the postgres parameter is skipped.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from offchain.bank import store as bank_store
from offchain.clearing_center import tables as cc_tables
from offchain.service_provider import store as sp_store
from offchain.storage import create_schema, make_engine

ROLE_METADATA = (cc_tables.CcTable.metadata, sp_store.SpTable.metadata, bank_store.BankTable.metadata)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """An engine with every role's tables; they are dropped afterwards so the next test starts empty."""
    eng = make_engine(db_url)
    create_schema(eng, *ROLE_METADATA)
    yield eng
    for metadata in ROLE_METADATA:
        metadata.drop_all(eng)
    eng.dispose()
