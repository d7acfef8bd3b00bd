"""The operator's `clearhouse` command groups that are not a service: `db` (schema migrations) and the lifecycle
commands registered by `register(main)`.

Thin wrappers: the migrations are offchain/storage/migrate.py, the lifecycle steps offchain/operator/lifecycle.py.
Nothing here changes a database or the chain without the operator naming the settings file or workdir.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import click


def _edge(fn: Callable[..., Any]) -> Callable[..., Any]:
    from offchain.cli import _edge as cli_edge  # the CLI's one edge for named errors

    return cli_edge(fn)


_SETTINGS = {"cc": "ClearingCenterSettings", "sp": "ServiceProviderSettings", "bank": "BankSettings"}
_role_argument = click.argument("role", type=click.Choice(sorted(_SETTINGS)))
_config_option = click.option("--config", "config_path", required=True,
                              type=click.Path(exists=True, dir_okay=False, path_type=Path),
                              help="The service's settings file (its database_url is migrated).")


def _engine_and_schema(role: str, config_path: Path) -> tuple[Any, Any]:
    from offchain.core import settings as settings_module
    from offchain.storage import make_engine, migrate

    settings = settings_module.load_settings(getattr(settings_module, _SETTINGS[role]), config_path)
    return make_engine(settings.database_url), migrate.BY_CLI_NAME[role]


# --- db ----------------------------------------------------------------------------------------------------------------
@click.group("db")
def db() -> None:
    """Schema migrations (Alembic) of a service's database: upgrade, downgrade, current, check, revision."""


@db.command("upgrade")
@_role_argument
@_config_option
@click.option("--revision", default="head", show_default=True, help="Target revision.")
@_edge
def db_upgrade(role: str, config_path: Path, revision: str) -> None:
    """Upgrade the database of ROLE's settings to REVISION (a database from before migrations is adopted at the
    baseline first). Stop the service first."""
    from offchain.storage import migrate

    engine, schema = _engine_and_schema(role, config_path)
    before, after = migrate.upgrade(engine, schema, revision)
    click.echo(f"{schema.role}: {before or 'empty'} -> {after}")


@db.command("downgrade")
@_role_argument
@click.argument("revision")
@_config_option
@_edge
def db_downgrade(role: str, revision: str, config_path: Path) -> None:
    """Downgrade to REVISION ("-1" one step, "base" nothing). Drops what later revisions added: back up first."""
    from offchain.storage import migrate

    engine, schema = _engine_and_schema(role, config_path)
    before, after = migrate.downgrade(engine, schema, revision)
    click.echo(f"{schema.role}: {before} -> {after or 'base'}")


@db.command("current")
@_role_argument
@_config_option
@_edge
def db_current(role: str, config_path: Path) -> None:
    """Print the database's revision and the code's head."""
    from offchain.storage import migrate

    engine, schema = _engine_and_schema(role, config_path)
    click.echo(f"{schema.role}: database {migrate.current(engine, schema) or 'none'}, code {migrate.head(schema)}")


@db.command("check")
@_role_argument
@_config_option
@_edge
def db_check(role: str, config_path: Path) -> None:
    """Exit 0 when the database is at head (what `serve` requires), 1 with the command to run otherwise."""
    from offchain.storage import migrate

    engine, schema = _engine_and_schema(role, config_path)
    migrate.ensure_current(engine, schema, config_hint=str(config_path))
    click.echo(f"{schema.role}: up to date at {migrate.head(schema)}")


@db.command("revision")
@_role_argument
@click.option("-m", "--message", required=True, help="What the revision changes (becomes its file name).")
@_edge
def db_revision(role: str, message: str) -> None:
    """Autogenerate ROLE's next revision from its models (developers: after changing a store.py table)."""
    from offchain.storage import migrate

    for path in migrate.new_revision(migrate.BY_CLI_NAME[role], message):
        click.echo(f"wrote {path}: review it (renames show as drop + add), then commit it")


def register(main: click.Group) -> None:
    """Add the operator groups to the `clearhouse` command."""
    main.add_command(db)


__all__ = ["db", "register"]
