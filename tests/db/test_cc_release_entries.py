"""The CC's `release` balance entries (issue 10 item 1): a database migrated to head accepts them, one migrated only
to cc_0002 refuses them (the check the new revision replaces), and a release raises `available` exactly once.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import IntegrityError

from offchain.clearing_center.store import CcStore
from offchain.storage import make_engine, migrate

SERIAL = b"\x11" * 32
CC = migrate.ROLES["clearing_center"]


@pytest.fixture
def fresh(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    yield engine
    with engine.begin() as conn:
        CC.metadata().drop_all(conn)
        conn.execute(text(f"DROP TABLE IF EXISTS {CC.version_table}"))
    engine.dispose()


def _insert_release(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO users (user_id, user_id_hash, display_name, created_at) "
                          "VALUES ('alice', :h, 'alice', 0)"), {"h": b"\x01" * 32})
        conn.execute(text("INSERT INTO user_balance_entries (idempotency_key, user_id, kind, amount, payload_hash, "
                          "created_at) VALUES ('release:x', 'alice', 'release', 5, :h, 0)"), {"h": b"\x02" * 32})


def test_release_kind_is_refused_before_cc_0003_and_accepted_at_head(fresh: Engine) -> None:
    migrate.upgrade(fresh, CC, "cc_0002")
    with pytest.raises(IntegrityError):
        _insert_release(fresh)
    migrate.upgrade(fresh, CC)
    assert migrate.current(fresh, CC) == migrate.head(CC)
    _insert_release(fresh)


def test_release_raises_available_once_per_serial(fresh: Engine) -> None:
    migrate.upgrade(fresh, CC)
    store = CcStore(fresh, clock=lambda: 1_000)
    store.credit_deposit(b"\x05" * 32, "alice", 10_000, "0xdeposit")
    with fresh.begin() as conn:  # 10,000 allocated to a device's log, as an issue would
        conn.execute(text("INSERT INTO user_balance_entries (idempotency_key, user_id, kind, amount, payload_hash, "
                          "created_at) VALUES ('issue:a', 'alice', 'allocation', 10000, :h, 0)"), {"h": b"\x03" * 32})
    assert store.balance("alice").available == 0
    assert store.credit_release(SERIAL, "alice", 9_000, "0xrelease") is True
    assert store.credit_release(SERIAL, "alice", 9_000, "0xrelease") is False  # the same event seen again
    balance = store.balance("alice")
    assert (balance.released, balance.available) == (9_000, 9_000)
    assert store.user_view("alice")["released"] == 9_000
