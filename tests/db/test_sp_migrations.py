"""The SP's data migrations fill what they add from rows already there (SQLite and PostgreSQL): sp_0002's
sp_catalog.policy_id and sp_0003's sp_batches.device."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, text

from offchain.core.messages import policy_id
from offchain.storage import make_engine, migrate

SCHEMA = migrate.ROLES["service_provider"]
DEVICE = "0x00000000000000000000000000000000000000D1"


@pytest.fixture
def fresh(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    yield engine
    with engine.begin() as conn:
        SCHEMA.metadata().drop_all(conn)
        conn.execute(text(f"DROP TABLE IF EXISTS {SCHEMA.version_table}"))
    engine.dispose()


def test_upgrade_back_fills_policy_id_and_batch_device(fresh: Engine) -> None:
    migrate.upgrade(fresh, SCHEMA, "sp_0001")
    content_id = b"\xc0" * 32
    with fresh.begin() as conn:
        conn.execute(text("INSERT INTO sp_catalog (content_id, version, container_bytes, content_key_encrypted, "
                          "policy_json, policy_hash, created_at) VALUES (:c, 3, :b, :k, '{}', :h, 1)"),
                     {"c": content_id, "b": b"container", "k": b"k", "h": bytes(32)})
        conn.execute(text("INSERT INTO sp_usage_logs (device, serial, seq, log_json, signature, payload_hash, "
                          "received_at) VALUES (:d, :s, 7, '{}', :sig, :h, 1)"),
                     {"d": DEVICE, "s": b"\x11" * 32, "sig": b"\x01" * 65, "h": bytes(32)})
        conn.execute(text("INSERT INTO sp_batches (id, serial, first_seq, count, batch_json, device_sig, status, "
                          "payload_hash, created_at, updated_at) VALUES (:i, :s, 7, 1, '{}', :sig, 'pending', :h, 1, 1)"),
                     {"i": b"\xb1" * 32, "s": b"\x11" * 32, "sig": b"\x01" * 65, "h": bytes(32)})
    migrate.upgrade(fresh, SCHEMA)
    with fresh.connect() as conn:
        assert bytes(conn.execute(text("SELECT policy_id FROM sp_catalog")).scalar_one()) == policy_id(content_id, 3)
        assert conn.execute(text("SELECT device FROM sp_batches")).scalar_one() == DEVICE
    migrate.downgrade(fresh, SCHEMA, "sp_0001")
    assert migrate.current(fresh, SCHEMA) == "sp_0001"
