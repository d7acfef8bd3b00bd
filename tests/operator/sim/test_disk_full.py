"""A full disk is named: SQLite's SQLITE_FULL (and PostgreSQL's disk_full, ENOSPC) become `storage_full` (HTTP
507) at the services' HTTP edge, and the simulator's `disk fill` fault really fills the filesystem a service's
database lives on; the service answers storage_full meanwhile and loses or double-pays nothing once space is back.
"""

from __future__ import annotations

import asyncio
import errno
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from offchain.core.errors import StorageFull
from offchain.operator.sim.plan import Fault, Plan, Step
from offchain.operator.sim.runner import Disk, run_seed
from offchain.transport.server import error_middleware, storage_full


def _sqlite_full(tmp_path: Path) -> OperationalError:
    """A real SQLITE_FULL through SQLAlchemy: the database may not grow past its page count."""
    engine = create_engine(f"sqlite:///{tmp_path / 'quota.db'}")
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE t (x BLOB)"))
    with pytest.raises(OperationalError) as caught:
        with engine.begin() as connection:
            connection.execute(text("PRAGMA max_page_count = 3"))
            for _ in range(20):
                connection.execute(text("INSERT INTO t VALUES (randomblob(4000))"))
    engine.dispose()
    return caught.value


def test_sqlite_full_is_named(tmp_path: Path) -> None:
    error = storage_full(_sqlite_full(tmp_path))
    assert isinstance(error, StorageFull)
    assert (error.code, error.http_status, error.backend) == ("storage_full", 507, "sqlite")
    assert "database or disk is full" in (error.detail or "")


def test_postgres_disk_full_and_enospc_are_named_and_other_errors_are_not() -> None:
    class PgError(Exception):
        pgcode = "53100"

    wrapped = OperationalError("INSERT ...", {}, PgError("could not extend file: No space left on device"))
    assert storage_full(wrapped).backend == "postgresql"  # type: ignore[union-attr]
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as exc:
            raise RuntimeError("while writing a container") from exc
    except RuntimeError as chained:
        assert storage_full(chained).backend == "filesystem"  # type: ignore[union-attr]
    assert storage_full(OperationalError("SELECT", {}, Exception("database is locked"))) is None
    assert storage_full(OSError(errno.EACCES, "Permission denied")) is None
    assert storage_full(ValueError("no")) is None


def test_the_http_edge_answers_507_storage_full(tmp_path: Path) -> None:
    asyncio.run(_edge(_sqlite_full(tmp_path)))


async def _edge(full: OperationalError) -> None:

    async def write(_request: web.Request) -> web.Response:
        raise full

    async def broken(_request: web.Request) -> web.Response:
        raise OperationalError("SELECT", {}, Exception("database is locked"))

    app = web.Application(middlewares=[error_middleware])
    app.router.add_post("/write", write)
    app.router.add_post("/broken", broken)
    async with TestClient(TestServer(app)) as client:
        answer = await client.post("/write")
        body = await answer.json()
        assert answer.status == 507 and body["error"] == "storage_full" and body["fields"]["backend"] == "sqlite"
        other = await client.post("/broken")  # the control: another database error stays an opaque 500
        assert other.status == 500 and (await other.json())["error"] == "internal_error"


needs_mount = pytest.mark.skipif(not Disk.available(), reason="cannot mount a size-limited tmpfs here (needs root)")


@needs_mount
def test_disk_fill_fills_the_filesystem_and_frees_it(tmp_path: Path) -> None:
    disk = Disk(tmp_path / "disk")
    assert disk.mount()
    try:
        (disk.path / "service.db").write_bytes(b"x" * 4096)
        assert disk.fill() > 0 and disk.free_bytes() == 0
        with pytest.raises(OSError) as caught:
            with open(disk.path / "more", "wb") as handle:
                handle.write(b"y" * 65536)
                handle.flush()
        assert caught.value.errno == errno.ENOSPC
        disk.free()
        assert disk.free_bytes() > 0
    finally:
        disk.unmount()
    assert (disk.path / "service.db").read_bytes() == b"x" * 4096  # the files survive the unmount


def _plan() -> Plan:
    """Deposits, then the CC's disk is full while both devices ask for issue logs and one uploads; the heal
    frees it. The devices' kept requests and the drain must then finish everything exactly once."""
    steps = (Step(0, "deposit", "alice", amount=1_000), Step(1, "deposit", "bob", amount=600),
             Step(2, "issue", "alice-phone", amount=300), Step(3, "use", "alice-phone", content="song"),
             Step(4, "issue", "bob-tablet", amount=400), Step(5, "upload", "alice-phone"),
             Step(6, "deposit", "bob", amount=100), Step(7, "use", "alice-phone", content="article"),
             Step(8, "upload", "alice-phone"), Step(9, "issue", "bob-tablet", amount=400),
             Step(10, "use", "bob-tablet", content="song"), Step(11, "upload", "bob-tablet"))
    return Plan(9_001, steps, (Fault("disk", "cc", 4, 7, "fill"),), ("disk",))


@needs_mount
def test_a_full_cc_disk_is_named_and_nothing_is_lost_or_paid_twice(tmp_path: Path) -> None:
    result = run_seed(_plan(), tmp_path / "seed", quiesce_s=120.0, keep=True)
    assert result.violations == [], "\n".join(map(str, result.violations))
    timeline = json.loads((tmp_path / "seed" / "timeline.json").read_text())
    opened = next(e for e in timeline if e["what"].startswith("open disk"))
    assert opened["detail"].endswith(" 0 bytes free")
    during = [e for e in timeline if e["kind"] == "step" and e["what"].startswith(("#04", "#05", "#06"))]
    assert any("StorageFull: storage_full" in e["outcome"] for e in during), during
    events: list[Any] = json.loads((tmp_path / "seed" / "proxy.json").read_text())["events"]
    assert ["bob-tablet->cc", "answer 507", "POST /v1/issue-logs HTTP/1.1 -> storage_full"] in events
