"""The service provider's repository functions (offchain/service_provider/store.py) on SQLite and PostgreSQL: the
catalog's one content-key encryption, the catalog rows, usage uploads and the batch flow the forwarder drives."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Engine, func, select

from offchain.core.errors import ConfigError, DuplicateMessage, InvalidTransition, NotFound
from offchain.service_provider import store as sp
from offchain.storage import session_scope

DEVICE = "0x00000000000000000000000000000000000000D1"
OTHER_DEVICE = "0x00000000000000000000000000000000000000D2"
SERIAL = b"\x11" * 32
CONTENT_ID = b"\xc0" * 32


def batch_row(batch_id: bytes, *, first_seq: int = 0, count: int = 2, now: int = 1) -> sp.SpBatch:
    return sp.SpBatch(id=batch_id, device=DEVICE, serial=SERIAL, first_seq=first_seq, count=count, batch_json={"n": first_seq},
                      device_sig=b"\x01" * 65, receive_log_json={"id": "0x" + batch_id.hex(), "envelope": {}},
                      receiver_sig=b"\x02" * 65, status="pending", payload_hash=b"\x03" * 32, created_at=now,
                      updated_at=now)


def log_rows(first_seq: int, count: int) -> list[dict]:
    return [{"device": DEVICE, "serial": SERIAL, "seq": seq, "log_json": {"seq": seq}, "signature": b"\x04" * 65,
             "payload_hash": bytes([seq]) * 32, "received_at": 1} for seq in range(first_seq, first_seq + count)]


# --- catalog encryption ---------------------------------------------------------------------------------------
def test_content_key_sealed_at_rest_opens_only_with_the_catalog_key() -> None:
    catalog_key, content_key = AESGCM(os.urandom(32)), os.urandom(32)
    sealed = sp.seal_content_key(catalog_key, CONTENT_ID, 1, content_key)
    assert content_key not in sealed
    assert sp.open_content_key(catalog_key, CONTENT_ID, 1, sealed) == content_key
    with pytest.raises(ConfigError) as info:
        sp.open_content_key(AESGCM(os.urandom(32)), CONTENT_ID, 1, sealed)
    assert (info.value.content_id, info.value.version) == (CONTENT_ID, 1)


def test_content_key_sealed_for_one_row_does_not_open_for_another() -> None:
    catalog_key, content_key = AESGCM(os.urandom(32)), os.urandom(32)
    sealed = sp.seal_content_key(catalog_key, CONTENT_ID, 1, content_key)
    with pytest.raises(ConfigError):
        sp.open_content_key(catalog_key, CONTENT_ID, 2, sealed)
    with pytest.raises(ConfigError):
        sp.open_content_key(catalog_key, b"\xc1" * 32, 1, sealed)


def test_content_key_aad_is_content_id_and_big_endian_version() -> None:
    """Rows sealed by earlier SP versions (AAD = content id || uint32 version) stay readable."""
    key, content_key, nonce = os.urandom(32), os.urandom(32), os.urandom(12)
    sealed = nonce + AESGCM(key).encrypt(nonce, content_key, CONTENT_ID + (7).to_bytes(4, "big"))
    assert sp.open_content_key(AESGCM(key), CONTENT_ID, 7, sealed) == content_key


# --- catalog rows -----------------------------------------------------------------------------------------------
def test_catalog_item_added_once_and_conflicting_container_refused(engine: Engine) -> None:
    item = dict(content_id=CONTENT_ID, version=1, container=b"container", sealed_key=b"\x05" * 60,
                policy_json={"price": 10, "title": "t"}, policy_hash=b"\x0f" * 32, now=1)
    with session_scope(engine) as session:
        assert sp.add_catalog_item(session, **item)
    with session_scope(engine) as session:
        assert not sp.add_catalog_item(session, **item)
        with pytest.raises(DuplicateMessage) as info:
            sp.add_catalog_item(session, **{**item, "container": b"another container"})
        assert (info.value.content_id, info.value.version) == (CONTENT_ID, 1)
    with session_scope(engine) as session:
        assert [(r.content_id, r.version) for r in sp.catalog_items(session)] == [(CONTENT_ID, 1)]
    with session_scope(engine) as session:
        assert sp.catalog_item(session, CONTENT_ID, 1).container_bytes == b"container"
        assert sp.catalog_item(session, CONTENT_ID, 1).policy_json["price"] == 10
        with pytest.raises(NotFound):
            sp.catalog_item(session, CONTENT_ID, 2)


# --- usage uploads and the forwarder's batch flow ------------------------------------------------------------------
def test_upload_stores_logs_and_batch_and_reports_the_highest_seq(engine: Engine) -> None:
    with session_scope(engine) as session:
        assert sp.latest_usage_log(session, DEVICE, SERIAL) is None
        sp.store_upload(session, log_rows(0, 2), batch_row(b"\xb1" * 32))
    with session_scope(engine) as session:
        sp.store_upload(session, log_rows(2, 3), batch_row(b"\xb2" * 32, first_seq=2, count=3))
    with session_scope(engine) as session:
        assert sp.latest_usage_log(session, DEVICE, SERIAL) == 4
        assert sp.latest_usage_log(session, OTHER_DEVICE, SERIAL) is None  # continuity is per (device, serial)
        assert session.scalar(select(func.count()).select_from(sp.SpUsageLog)) == 5
        assert sp.find_batch(session, b"\xb2" * 32).first_seq == 2
        assert sp.find_batch(session, b"\xb3" * 32) is None


def test_batch_flow_acked_rejected_and_counted(engine: Engine) -> None:
    ids = [bytes([0xb0 + i]) * 32 for i in range(3)]
    with session_scope(engine) as session:
        for i, batch_id in enumerate(ids):
            sp.store_upload(session, [], batch_row(batch_id, first_seq=2 * i, now=i))
    with session_scope(engine) as session:
        assert [r.id for r in sp.open_batches(session, 10)] == ids
        assert sp.ack_batches(session, ["0x" + ids[0].hex(), "0x" + "ee" * 32], 5) == 1
        sp.reject_batch(session, ids[1], "fee_mismatch", "fee differs", 6)
    with session_scope(engine) as session:
        assert [r.id for r in sp.open_batches(session, 10)] == [ids[2]]
        assert sp.batch_status_counts(session) == {"pending": 1, "forwarded": 0, "acked": 1, "rejected": 1}
        [rejected] = sp.rejected_batches(session, 10)
        assert (rejected.id, rejected.reject_error, rejected.reject_message) == (ids[1], "fee_mismatch", "fee differs")
        with pytest.raises(InvalidTransition) as info:
            sp.reject_batch(session, ids[0], "late", "acked already", 7)
        assert (info.value.current, info.value.wanted) == ("acked", "rejected")
        with pytest.raises(NotFound):
            sp.reject_batch(session, b"\x00" * 32, "x", "y", 7)
