"""`clearhouse sp requeue BATCH`: a parked (rejected) usage batch goes back to the forwarding queue; nothing else
moves. `clearhouse sp parked` lists what is parked and why."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine

from offchain.cli import main
from offchain.core.errors import InvalidTransition, NotFound
from offchain.service_provider import store as sp_store
from offchain.service_provider.requeue import parked, requeue
from offchain.storage import make_engine, session_scope


def add_batch(engine: Engine, batch_id: bytes, status: str) -> None:
    with session_scope(engine) as session:
        session.add(sp_store.SpBatch(
            id=batch_id, device="0x" + "d1" * 20, serial=b"\x01" * 32, first_seq=int(batch_id[0]), count=2, batch_json={}, device_sig=b"\0" * 65,
            receive_log_json={"id": "0x" + batch_id.hex()}, receiver_sig=b"\0" * 65, status=status,
            payload_hash=b"\0" * 32, created_at=1, updated_at=1,
            reject_error="policy_unknown" if status == "rejected" else None,
            reject_message="HTTP 422: unknown policy" if status == "rejected" else None))


@pytest.fixture
def sp_db(tmp_path: Path) -> tuple[Engine, Path]:
    url = f"sqlite:///{tmp_path / 'sp.db'}"
    engine = make_engine(url)
    sp_store.create_schema(engine)
    add_batch(engine, b"\x01" * 32, "rejected")
    add_batch(engine, b"\x02" * 32, "acked")
    config = tmp_path / "sp.json"
    config.write_text(json.dumps({"member_id": "sp", "database_url": url}))
    return engine, config


def test_a_parked_batch_is_requeued_once(sp_db: tuple[Engine, Path]) -> None:
    engine, _config = sp_db
    assert [row["error"] for row in parked(engine)] == ["policy_unknown"]
    done = requeue(engine, "0x" + "01" * 32, now=5)
    assert (done.was_error, done.count) == ("policy_unknown", 2)
    with session_scope(engine) as session:
        assert [b.id for b in sp_store.open_batches(session, 10)] == [b"\x01" * 32]  # the forwarder's next round
    assert parked(engine) == []
    with pytest.raises(InvalidTransition) as again:
        requeue(engine, "0x" + "01" * 32, now=6)
    assert (again.value.current, again.value.wanted) == ("pending", "pending")


def test_only_parked_batches_move(sp_db: tuple[Engine, Path]) -> None:
    engine, _config = sp_db
    with pytest.raises(InvalidTransition) as acked:
        requeue(engine, "0x" + "02" * 32, now=5)
    assert acked.value.current == "acked"
    with pytest.raises(NotFound):
        requeue(engine, "0x" + "03" * 32, now=5)


def test_sp_parked_and_requeue_commands(sp_db: tuple[Engine, Path]) -> None:
    _engine, config = sp_db
    runner = CliRunner(mix_stderr=False)
    listed = runner.invoke(main, ["sp", "parked", "--config", str(config), "--json"])
    assert listed.exit_code == 0 and json.loads(listed.stdout)[0]["batch_id"] == "0x" + "01" * 32
    done = runner.invoke(main, ["sp", "requeue", "0x" + "01" * 32, "--config", str(config)])
    assert done.exit_code == 0 and json.loads(done.stdout)["was_message"] == "HTTP 422: unknown policy"
    refused = runner.invoke(main, ["sp", "requeue", "0x" + "02" * 32, "--config", str(config)])
    assert refused.exit_code == 1 and "invalid_transition" in refused.stderr
