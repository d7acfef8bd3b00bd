"""Alembic migrations of every role on SQLite and PostgreSQL: each revision upgrades and downgrades, head matches the
models (`alembic check`), and a database behind head is refused with the command that fixes it.

When this fails with drift after a model change: add a revision with
`clearhouse db revision <cc|sp|bank> -m "what changed"`, review the generated file, and run this module again.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, inspect, text

from offchain.storage import make_engine, migrate

ROLES = sorted(migrate.ROLES)


@pytest.fixture
def fresh(db_url: str) -> Iterator[Engine]:
    """An engine on a database with none of the role tables; everything it created is dropped afterwards."""
    engine = make_engine(db_url)
    yield engine
    with engine.begin() as conn:
        for schema in migrate.ROLES.values():
            schema.metadata().drop_all(conn)
            conn.execute(text(f"DROP TABLE IF EXISTS {schema.version_table}"))
    engine.dispose()


def role_tables(engine: Engine, schema: migrate.RoleSchema) -> set[str]:
    return set(inspect(engine).get_table_names()) & set(schema.metadata().tables)


@pytest.mark.parametrize("role", ROLES)
def test_every_revision_upgrades_and_downgrades(fresh: Engine, role: str) -> None:
    schema = migrate.ROLES[role]
    chain = migrate.revisions(schema)
    assert chain[0] == migrate.baseline(schema) and chain[-1] == migrate.head(schema)
    for revision in chain:  # one step at a time, so every upgrade() runs on the schema before it
        migrate.upgrade(fresh, schema, revision)
        assert migrate.current(fresh, schema) == revision
    assert role_tables(fresh, schema) == set(schema.metadata().tables)
    for previous in [*reversed(chain[:-1]), "base"]:
        migrate.downgrade(fresh, schema, "-1")
        assert migrate.current(fresh, schema) == (None if previous == "base" else previous)
    assert role_tables(fresh, schema) == set()


@pytest.mark.parametrize("role", ROLES)
def test_head_matches_the_models(fresh: Engine, role: str) -> None:
    from alembic import command

    schema = migrate.ROLES[role]
    migrate.upgrade(fresh, schema)
    differences = migrate.drift(fresh, schema)
    assert differences == [], (
        f"the {role} models differ from its migrations' head: {differences}. Add a revision: "
        f"`clearhouse db revision {schema.cli_name} -m \"what changed\"`, review it, commit it.")
    with fresh.connect() as connection:
        command.check(migrate.alembic_config(schema, connection))  # `alembic check`: raises on drift


def test_drift_check_sees_a_missing_index(fresh: Engine) -> None:
    schema = migrate.ROLES["bank"]
    migrate.upgrade(fresh, schema)
    assert migrate.drift(fresh, schema) == []  # positive control
    with fresh.begin() as conn:
        conn.execute(text("DROP INDEX ix_postings_entry_id"))
    assert [d[0] for d in migrate.drift(fresh, schema)] == ["add_index"]


def test_fresh_database_is_created_at_head_and_reused(fresh: Engine) -> None:
    schema = migrate.ROLES["clearing_center"]
    migrate.ensure_current(fresh, schema)
    assert migrate.current(fresh, schema) == migrate.head(schema)
    migrate.ensure_current(fresh, schema)  # at head: used as it is
    assert role_tables(fresh, schema) == set(schema.metadata().tables)


def test_database_from_before_migrations_is_refused_then_adopted(fresh: Engine) -> None:
    schema = migrate.ROLES["service_provider"]
    migrate.upgrade(fresh, schema, migrate.baseline(schema))  # what create_schema did before migrations: the
    with fresh.begin() as conn:  # baseline's tables (the models as they were then), and no version
        conn.execute(text(f"DROP TABLE {schema.version_table}"))
    with pytest.raises(migrate.SchemaOutdated) as refused:
        migrate.ensure_current(fresh, schema, config_hint="sp.json")
    assert refused.value.fields == {"role": "service_provider", "expected": migrate.head(schema),
                                    "command": "clearhouse db upgrade sp --config sp.json"}
    assert migrate.upgrade(fresh, schema) == (migrate.baseline(schema), migrate.head(schema))
    migrate.ensure_current(fresh, schema)


def test_database_at_another_revision_is_refused(fresh: Engine) -> None:
    schema = migrate.ROLES["bank"]
    migrate.ensure_current(fresh, schema)
    with fresh.begin() as conn:
        conn.execute(text(f"UPDATE {schema.version_table} SET version_num = 'bank_0000'"))
    with pytest.raises(migrate.SchemaOutdated) as refused:
        migrate.ensure_current(fresh, schema)
    assert (refused.value.current, refused.value.expected) == ("bank_0000", migrate.head(schema))
    assert "clearhouse db upgrade bank --config" in refused.value.message


def test_db_upgrade_command_upgrades_the_configured_database(tmp_path: Path) -> None:
    import json

    from click.testing import CliRunner

    from offchain.cli import main

    url = f"sqlite:///{tmp_path / 'bank.db'}"
    engine = make_engine(url)
    schema = migrate.ROLES["bank"]
    schema.metadata().create_all(engine)
    config = tmp_path / "bank.json"
    config.write_text(json.dumps({"member_id": "bank", "database_url": url}))
    runner = CliRunner()
    refused = runner.invoke(main, ["db", "check", "bank", "--config", str(config)])
    assert refused.exit_code == 1 and "schema_outdated" in refused.output
    result = runner.invoke(main, ["db", "upgrade", "bank", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert f"-> {migrate.head(schema)}" in result.output
    assert migrate.current(engine, schema) == migrate.head(schema)
    checked = runner.invoke(main, ["db", "check", "bank", "--config", str(config)])
    assert checked.exit_code == 0 and "up to date" in checked.output
