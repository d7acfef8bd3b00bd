"""Schema migrations with Alembic: one script directory per role (`offchain/<role>/migrations`), one version table
per role (`alembic_version_<role>`), so a role's database, or one database shared by several roles, is versioned
per role.

What a service does at start (`ensure_current`, through `storage.create_schema`): a database without any of the
role's tables is created from the models and stamped at head; a database at head is used as it is; anything else
(an older revision, or tables from before migrations) is refused with `SchemaOutdated` naming the command to run.
Nothing here upgrades a database behind the operator's back.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, MetaData, inspect

from offchain.core.errors import ClearhouseError

PACKAGE_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class RoleSchema:
    role: str  # the settings' ROLE_NAME
    cli_name: str  # `clearhouse serve <cli_name>`
    base: str  # "module:Class" of the role's abstract table base (its MetaData)

    @property
    def script_location(self) -> Path:
        return PACKAGE_ROOT / self.role / "migrations"

    @property
    def version_table(self) -> str:
        return f"alembic_version_{self.role}"

    def metadata(self) -> MetaData:
        module, name = self.base.split(":")
        return getattr(importlib.import_module(module), name).metadata


ROLES: dict[str, RoleSchema] = {schema.role: schema for schema in (
    RoleSchema("clearing_center", "cc", "offchain.clearing_center.tables:CcTable"),
    RoleSchema("service_provider", "sp", "offchain.service_provider.store:SpTable"),
    RoleSchema("bank", "bank", "offchain.bank.store:BankTable"),
)}
BY_CLI_NAME = {schema.cli_name: schema for schema in ROLES.values()}


class SchemaOutdated(ClearhouseError):
    """The database's schema is not the one this code expects; the message names the command that fixes it."""

    code = "schema_outdated"
    http_status = 500

    def __init__(self, message: str, *, role: str | None = None, current: str | None = None,
                 expected: str | None = None, command: str | None = None) -> None:
        super().__init__(message)
        self.role = role
        self.current = current
        self.expected = expected
        self.command = command


class UnknownRevision(ClearhouseError):
    """A migration target Alembic cannot reach from the database's revision: a name no script has, or a relative
    step (`-1`, `+2`) past the base or the head. Nothing was changed."""

    code = "unknown_revision"
    http_status = 400

    def __init__(self, message: str, *, role: str | None = None, revision: str | None = None,
                 current: str | None = None, head: str | None = None) -> None:
        super().__init__(message)
        self.role = role
        self.revision = revision
        self.current = current
        self.head = head


def role_for(metadata: MetaData) -> RoleSchema | None:
    """The role whose tables `metadata` holds (None for a MetaData without migrations, e.g. a test's own)."""
    return next((schema for schema in ROLES.values() if schema.metadata() is metadata), None)


def alembic_config(schema: RoleSchema, connection: Connection | None = None) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(schema.script_location))
    config.attributes["role_schema"] = schema
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head(schema: RoleSchema) -> str:
    from alembic.script import ScriptDirectory

    found = ScriptDirectory.from_config(alembic_config(schema)).get_current_head()
    if found is None:
        raise ClearhouseError(f"no migration revision for {schema.role}")
    return found


def current(engine: Engine, schema: RoleSchema) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": schema.version_table})
        return context.get_current_revision()


def _has_role_tables(engine: Engine, schema: RoleSchema) -> bool:
    existing = set(inspect(engine).get_table_names())
    return bool(existing & set(schema.metadata().tables))


def ensure_current(engine: Engine, schema: RoleSchema, *, config_hint: str = "FILE") -> None:
    """Create a fresh role schema at head, accept one at head, refuse anything else (see the module docstring)."""
    expected = head(schema)
    if not _has_role_tables(engine, schema):
        schema.metadata().create_all(engine)
        stamp(engine, schema, expected)
        return
    found = current(engine, schema)
    if found == expected:
        return
    command = f"clearhouse db upgrade {schema.cli_name} --config {config_hint}"
    state = f"is at revision {found}" if found else "has tables from before migrations (no version)"
    raise SchemaOutdated(f"the {schema.role} database {state}; this code expects {expected}: run `{command}`",
                         role=schema.role, current=found, expected=expected, command=command)


@contextmanager
def _connection(engine: Engine, schema: RoleSchema, revision: str) -> Iterator[Connection]:
    """A connection for one Alembic command towards `revision`; Alembic's refusal of the target becomes
    `UnknownRevision` naming the database's revision and the code's head."""
    from alembic.util.exc import CommandError

    found = current(engine, schema)
    try:
        with engine.connect() as connection:
            yield connection
    except CommandError as exc:
        raise UnknownRevision(f"the {schema.role} database at {found or 'base'} cannot move to {revision!r}: {exc}",
                              role=schema.role, revision=revision, current=found, head=head(schema)) from exc


def upgrade(engine: Engine, schema: RoleSchema, revision: str = "head") -> tuple[str | None, str | None]:
    """Upgrade to `revision`; a database from before migrations is adopted at the baseline first. Returns
    (before, after)."""
    from alembic import command

    before = current(engine, schema)
    if before is None and _has_role_tables(engine, schema):
        stamp(engine, schema, baseline(schema))
        before = baseline(schema)
    with _connection(engine, schema, revision) as connection:
        command.upgrade(alembic_config(schema, connection), revision)
    return before, current(engine, schema)


def downgrade(engine: Engine, schema: RoleSchema, revision: str) -> tuple[str | None, str | None]:
    from alembic import command

    before = current(engine, schema)
    with _connection(engine, schema, revision) as connection:
        command.downgrade(alembic_config(schema, connection), revision)
    return before, current(engine, schema)


def stamp(engine: Engine, schema: RoleSchema, revision: str) -> None:
    from alembic import command

    with _connection(engine, schema, revision) as connection:
        command.stamp(alembic_config(schema, connection), revision)


def baseline(schema: RoleSchema) -> str:
    from alembic.script import ScriptDirectory

    bases = ScriptDirectory.from_config(alembic_config(schema)).get_bases()
    return bases[0]


def revisions(schema: RoleSchema) -> list[str]:
    """Every revision from the baseline to head, in upgrade order."""
    from alembic.script import ScriptDirectory

    return [script.revision for script in reversed(list(ScriptDirectory.from_config(alembic_config(schema))
                                                         .walk_revisions()))]


def drift(engine: Engine, schema: RoleSchema) -> list[Any]:
    """What `alembic check` reports: the differences between the database (at head) and the models."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={
            "version_table": schema.version_table, "compare_type": True, "render_as_batch": True,
            "include_name": include_name})
        return list(compare_metadata(context, schema.metadata()))


def new_revision(schema: RoleSchema, message: str, *, rev_id: str | None = None) -> list[Path]:
    """Autogenerate the next revision of `schema` from the models (against a scratch SQLite at the current head);
    returns the new files. Review them: autogenerate sees columns, tables, indexes and constraints, not renames."""
    import tempfile

    from alembic import command
    from alembic.script import ScriptDirectory

    from offchain.storage.engine import make_engine

    with tempfile.TemporaryDirectory() as scratch:
        engine = make_engine(f"sqlite:///{scratch}/scratch.db")
        if ScriptDirectory.from_config(alembic_config(schema)).get_current_head() is not None:
            upgrade(engine, schema)
        with _connection(engine, schema, "head") as connection:
            scripts = command.revision(alembic_config(schema, connection), message=message, autogenerate=True,
                                       rev_id=rev_id)
        engine.dispose()
    scripts = scripts if isinstance(scripts, list) else [scripts]
    return [Path(script.path) for script in scripts if script is not None]


def include_name(name: str | None, type_: str, _parent: Any) -> bool:
    """Autogenerate looks at a role's own tables only (another role may share the database)."""
    if type_ == "table":
        return name is not None and not name.startswith("alembic_version")
    return True


def run_env() -> None:
    """The body of every role's `migrations/env.py` (online mode only: a service always has its database)."""
    from alembic import context

    config = context.config
    schema: RoleSchema = config.attributes["role_schema"]
    connection: Connection | None = config.attributes.get("connection")
    if connection is None:  # the `alembic` command line: -x url=...
        from offchain.storage.engine import make_engine

        url = context.get_x_argument(as_dictionary=True).get("url")
        if not url:
            raise SystemExit("give the database: alembic -x url=sqlite:///var/clearing_center.db ...")
        with make_engine(url).connect() as own:
            _run(context, own, schema)
        return
    _run(context, connection, schema)


def _run(context: Any, connection: Connection, schema: RoleSchema) -> None:
    sqlite = connection.dialect.name == "sqlite"
    if sqlite:  # table rebuilds in batch mode must not cascade: foreign keys off outside any transaction
        connection.connection.driver_connection.execute("PRAGMA foreign_keys=OFF")  # type: ignore[union-attr]
    metadata = schema.metadata()
    context.configure(connection=connection, target_metadata=metadata, version_table=schema.version_table,
                      render_as_batch=True, compare_type=True, include_name=include_name,
                      user_module_prefix="columns.")
    try:
        with context.begin_transaction():
            context.run_migrations()
        if connection.in_transaction():
            connection.commit()
    finally:
        if sqlite:
            connection.connection.driver_connection.execute("PRAGMA foreign_keys=ON")  # type: ignore[union-attr]


__all__ = ["RoleSchema", "ROLES", "BY_CLI_NAME", "SchemaOutdated", "UnknownRevision", "role_for", "ensure_current",
           "upgrade", "downgrade", "stamp", "current", "head", "baseline", "revisions", "drift", "new_revision", "run_env"]
