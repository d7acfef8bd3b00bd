"""`clearhouse sim --db postgres`: the services on fresh PostgreSQL databases of their own (one per service and
seed), and the checker reading those databases itself with psycopg2 (plain SQL, not the agents' code).

Marked postgres: `bin/test tests/operator/sim/test_sim_postgres.py` starts the server and sets
CLEARHOUSE_TEST_PG_URL. Seed 30 kills the CC armed at a crash point, cuts an SP->CC answer and locks the CC's
database (every table, ACCESS EXCLUSIVE) for two steps.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import psycopg2
import pytest

from offchain.operator.sim.checker import World, count, rows
from offchain.operator.sim.plan import FAULT_KINDS, make_plan
from offchain.operator.sim.runner import run_seed

pytestmark = pytest.mark.postgres
PG_URL = os.environ.get("CLEARHOUSE_TEST_PG_URL", "")
needs_pg = pytest.mark.skipif(not PG_URL, reason="CLEARHOUSE_TEST_PG_URL not set (bin/test sets it)")


def _databases() -> set[str]:
    connection = psycopg2.connect("postgresql://" + PG_URL.split("://", 1)[1])
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT datname FROM pg_database WHERE datname LIKE 'clearhouse_sim_%'")
            return {row[0] for row in cursor.fetchall()}
    finally:
        connection.close()


@needs_pg
def test_the_checker_reads_postgres_itself(tmp_path: Path) -> None:
    plan = make_plan(30, FAULT_KINDS)
    assert any(f.kind == "disk" for f in plan.faults), plan.describe()
    result = run_seed(plan, tmp_path / "seed", quiesce_s=120.0, keep=True, pg_url=PG_URL)
    assert result.violations == [], "\n".join(map(str, result.violations)) + "\n" + plan.describe()
    urls = json.loads((tmp_path / "seed" / "databases.json").read_text())
    assert set(urls) == {"cc", "sp", "bank"} and all(u.startswith("postgresql+psycopg2://") for u in urls.values())
    settings = json.loads((tmp_path / "seed" / "consortium" / "cc.json").read_text())
    assert settings["database_url"] == urls["cc"]  # the CC really ran on PostgreSQL
    assert count(urls["cc"], "SELECT COUNT(*) FROM receive_logs WHERE status = 'settled'") > 0
    assert count(urls["bank"], "SELECT COUNT(*) FROM journal_entries WHERE kind = 'deposit'") >= 2
    # the checker's reader on a database without the table, and on one that does not exist: no rows
    assert rows(urls["sp"], "SELECT * FROM no_such_table") == []
    missing = urls["cc"].rsplit("/", 1)[0] + "/clearhouse_sim_does_not_exist"
    assert rows(missing, "SELECT 1") == []
    assert World(rpc_url="", deployment_path=tmp_path, cc_db=urls["cc"], sp_db=urls["sp"], bank_db=urls["bank"],
                 wallets={}).cc_db == urls["cc"]


@needs_pg
def test_a_passing_seed_drops_its_databases(tmp_path: Path) -> None:
    before = _databases()
    result = run_seed(make_plan(3, ()), tmp_path / "seed", quiesce_s=120.0, pg_url=PG_URL)
    assert result.violations == []
    assert _databases() == before
