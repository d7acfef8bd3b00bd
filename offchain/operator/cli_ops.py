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


@db.command("downgrade", context_settings={"ignore_unknown_options": True})  # REVISION may be "-1"
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


# --- output helpers ----------------------------------------------------------------------------------------------
def iso(ts: int | float | None) -> str:
    """ISO 8601 UTC of a Unix time (tables; --json keeps the raw seconds)."""
    import datetime as dt

    if ts is None or ts == "":
        return ""
    return dt.datetime.fromtimestamp(int(ts), dt.timezone.utc).isoformat().replace("+00:00", "Z")


def print_table(title: str, rows: list[dict[str, Any]], columns: list[str],
                formats: dict[str, Callable[[Any], str]] | None = None) -> None:
    """A rich table at the terminal's real width (rich reads COLUMNS or the tty; 80 when piped)."""
    from rich.console import Console
    from rich.table import Table

    formats = formats or {}
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(formats.get(c, str)(row.get(c, "")) for c in columns))
    Console().print(table)


def print_json(value: Any) -> None:
    import json

    click.echo(json.dumps(value, indent=2, default=str))


def parse_payees(payees: tuple[str, ...] | list[str]) -> list[tuple[str, int]]:
    """`ADDRESS:BPS` options as (address, basis points); ConfigError naming the bad one and the expected form."""
    from eth_utils import is_address

    from offchain.core.errors import SettingError

    split = []
    for text in payees:
        address, sep, bps = text.partition(":")
        if not sep or not bps.strip().isdigit() or not is_address(address.strip()):
            raise SettingError(f"--payee {text!r} is not ADDRESS:BPS (e.g. 0xAbC...:7000; the basis points of all "
                               "payees add up to 10000)", field="payee", got=text)
        split.append((address.strip(), int(bps)))
    return split


def passphrase_from_env(variable: str = "CLEARHOUSE_PASSPHRASE", *, confirm: bool = True) -> str:
    """The passphrase from `variable`, else a hidden prompt on a terminal, else a ConfigError naming the variable."""
    import os
    import sys

    from offchain.core.errors import SettingError

    value = os.environ.get(variable)
    if value:
        return value
    if sys.stdin.isatty():
        return str(click.prompt("keystore passphrase", hide_input=True, confirmation_prompt=confirm))
    raise SettingError(f"no passphrase: set {variable} (there is no terminal to ask on)", env=variable)


# --- ca init -----------------------------------------------------------------------------------------------------
@click.command("init")
@click.option("--dir", "ca_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Directory for the root key and certificate, the CRL and the authority key (created).")
@_edge
def ca_init(ca_dir: Path) -> None:
    """Create a CA and an authority Ethereum key; deploy the contract with the printed authority address."""
    from offchain.operator.lifecycle import init_ca

    result = init_ca(ca_dir)
    print_json(result)
    click.echo(f"next: deploy with CLEARHOUSE_AUTHORITY={result['authority_address']} `ape run deploy`, then "
               f"`clearhouse member add <id> --role ... --ca-dir {ca_dir}`", err=True)


# --- member add / list -------------------------------------------------------------------------------------------
def _chain_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--deployment", "deployment_path", type=click.Path(dir_okay=False, path_type=Path),
                      default=Path("deployments/local.json"), show_default=True, envvar="CLEARHOUSE_DEPLOYMENT",
                      help="Deployment file (env CLEARHOUSE_DEPLOYMENT).")(fn)
    return click.option("--rpc", "rpc_url", default="http://127.0.0.1:8545", show_default=True,
                        envvar="CLEARHOUSE_RPC_URL", help="Chain JSON-RPC URL (env CLEARHOUSE_RPC_URL).")(fn)


def _chain(rpc_url: str, deployment_path: Path, key: bytes) -> Any:
    from web3 import Web3

    from offchain.chain import ClearhouseChain, Deployment

    return ClearhouseChain(Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": 30})),
                           Deployment.load(deployment_path), key)


@click.command("add")
@click.argument("member_id")
@click.option("--role", required=True, type=click.Choice(["clearing_center", "service_provider", "bank",
                                                          "content_provider", "device"]))
@click.option("--user", "user_id", default="", help="device: the user it belongs to.")
@click.option("--ca-dir", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True)
@click.option("--authority-key-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The authority's hex key (default: CA_DIR/authority-eth.key).")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where members/<id>/ is written (default: the CA directory's parent).")
@click.option("--valid-days", type=int, default=365, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Only JSON on stdout.")
@_chain_options
@_edge
def member_add(member_id: str, role: str, user_id: str, ca_dir: Path, authority_key_file: Path | None,
               workdir: Path | None, valid_days: int, as_json: bool, rpc_url: str, deployment_path: Path) -> None:
    """Issue MEMBER_ID's keys and certificate, register it on chain, and give it gas on a dev chain (elsewhere it
    says when the member has none). A device needs --user and a keystore passphrase (CLEARHOUSE_PASSPHRASE)."""
    from offchain.operator.lifecycle import add_member

    key_file = authority_key_file or ca_dir / "authority-eth.key"
    key = bytes.fromhex(key_file.read_text().strip().removeprefix("0x"))
    passphrase = passphrase_from_env() if role == "device" else None
    echo = (lambda _line: None) if as_json else (lambda line: click.echo(f"[member add] {line}", err=True))
    added = add_member(ca_dir, workdir or ca_dir.parent, member_id, role, _chain(rpc_url, deployment_path, key),
                       user_id=user_id, valid_days=valid_days, passphrase=passphrase, echo=echo)
    print_json(added.to_json())


@click.command("list")
@click.option("--ca-dir", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True)
@click.option("--no-chain", is_flag=True, help="Only the CA's view (no RPC).")
@click.option("--json", "as_json", is_flag=True, help="JSON for tools (raw Unix seconds).")
@_chain_options
@_edge
def member_list(ca_dir: Path, no_chain: bool, as_json: bool, rpc_url: str, deployment_path: Path) -> None:
    """Every member the CA issued: certificate, CRL and on-chain status side by side."""
    import os

    from offchain.operator.lifecycle import member_rows
    from offchain.trust import keys

    if not (ca_dir / "index.json").is_file():
        from offchain.core.errors import PathError

        raise PathError(f"no CA in {ca_dir}: give the directory `clearhouse ca init --dir` created",
                        directory=str(ca_dir))
    chain = None if no_chain else _chain(rpc_url, deployment_path, os.urandom(32))  # eth_call only
    rows = member_rows(keys.load_ca(ca_dir), chain)
    if as_json:
        print_json(rows)
        return
    columns = ["member_id", "role", "user_id", "eth_address", "not_after", "crl_revoked"]
    if chain is not None:
        columns += ["chain_role", "chain_revoked", "chain_fingerprint_matches", "balance_wei"]
    print_table(f"members of {ca_dir}", rows, columns, {"not_after": iso})


# --- config init ---------------------------------------------------------------------------------------------------
@click.group("config")
def config_group() -> None:
    """Settings files."""


@config_group.command("init")
@click.argument("role", type=click.Choice(["cc", "sp", "bank", "device"]))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write here (refuses to overwrite); default stdout.")
@click.option("--member-dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Fill member_id and the key, certificate and database paths from what `member add` wrote.")
@click.option("--ca-dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Fill ca_path and crl_path from what `ca init` wrote.")
@click.option("--rpc", "rpc_url", default=None, envvar="CLEARHOUSE_RPC_URL", help="Fill rpc_url.")
@click.option("--deployment", "deployment_path", default=None, envvar="CLEARHOUSE_DEPLOYMENT",
              help="Fill deployment_path.")
@_edge
def config_init(role: str, out: Path | None, member_dir: Path | None, ca_dir: Path | None, rpc_url: str | None,
                deployment_path: str | None) -> None:
    """A commented TOML settings template for ROLE: every setting, its meaning and its default; with
    --member-dir/--ca-dir (and CLEARHOUSE_RPC_URL/CLEARHOUSE_DEPLOYMENT) the member's own values filled in."""
    from offchain.core.errors import PathError
    from offchain.operator.lifecycle import member_values, settings_template

    deployment = str(Path(deployment_path).resolve()) if deployment_path else None
    text = settings_template(role, member_values(role, member_dir, ca_dir, rpc_url=rpc_url,
                                                 deployment_path=deployment))
    if out is None:
        click.echo(text)
        return
    if out.exists():
        raise PathError(f"{out} exists; remove it or choose another --out", path=str(out))
    out.write_text(text)
    click.echo(f"wrote {out}", err=True)


# --- bank deposit --------------------------------------------------------------------------------------------------
@click.group("bank")
def bank_group() -> None:
    """The bank's operator commands."""


@bank_group.command("deposit")
@click.option("--config", "config_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The bank's settings file (its certificate, key, CA and port are used).")
@click.option("--user", "user_id", required=True)
@click.option("--amount", type=int, required=True, help="Minor units.")
@click.option("--deposit-id", default=None, help="Idempotency key (default: a new one; give it to retry safely).")
@_edge
def bank_deposit(config_path: Path, user_id: str, amount: int, deposit_id: str | None) -> None:
    """Record a user's deposit at the bank: ledger, on chain, and the CC notified."""
    from offchain.core.settings import BankSettings, load_settings
    from offchain.operator.lifecycle import bank_deposit as deposit

    print_json(deposit(load_settings(BankSettings, config_path), user_id, amount, deposit_id))


# --- sp requeue / parked -----------------------------------------------------------------------------------------
@click.group("sp")
def sp_group() -> None:
    """The service provider's operator commands (on its database; a running SP picks the changes up)."""


_sp_config = click.option("--config", "config_path", required=True,
                          type=click.Path(exists=True, dir_okay=False, path_type=Path),
                          help="The SP's settings file (its database_url is used).")


@sp_group.command("parked")
@_sp_config
@click.option("--json", "as_json", is_flag=True, help="JSON for tools (raw Unix seconds).")
@_edge
def sp_parked(config_path: Path, as_json: bool) -> None:
    """Usage batches the CC refused for good, with its reason (requeue them once the cause is fixed)."""
    from offchain.service_provider.requeue import parked

    engine, _schema = _engine_and_schema("sp", config_path)
    rows = parked(engine)
    if as_json:
        print_json(rows)
    else:
        print_table("parked usage batches", rows, ["batch_id", "serial", "first_seq", "count", "error", "message",
                                                    "updated_at"], {"updated_at": iso})


@sp_group.command("requeue")
@click.argument("batch_id")
@_sp_config
@_edge
def sp_requeue(batch_id: str, config_path: Path) -> None:
    """Put parked batch BATCH_ID back in the forwarding queue (pending)."""
    import time

    from offchain.service_provider.requeue import requeue

    engine, _schema = _engine_and_schema("sp", config_path)
    print_json(requeue(engine, batch_id, int(time.time())).to_json())


# --- demo status / stop / logs ---------------------------------------------------------------------------------
_demo_workdir = click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
                             help="The kept demo's work directory (default: the latest kept demo).")


@click.command("status")
@_demo_workdir
@click.option("--json", "as_json", is_flag=True)
@_edge
def demo_status(workdir: Path | None, as_json: bool) -> None:
    """Is the kept demo running: its process, each service's pid and port, URLs and logs."""
    from offchain.operator import demo_state

    data = demo_state.read_state(workdir)
    rows = demo_state.status(data)
    ops = {name: {k: s[k] for k in ("healthz", "metrics") if k in s} for name, s in sorted(data["services"].items())}
    if as_json:
        print_json({"workdir": data["workdir"], "try_it": data["try_it"], "env": data["env"], "processes": rows,
                    "ops": ops, "explorer": data.get("explorer", "")})
        return
    print_table(f"demo in {data['workdir']} (started {iso(data['started_at'])})", rows,
                ["name", "pid", "alive", "listening", "url", "log"])
    for name, urls in ops.items():
        if urls:
            click.echo(f"{name:<5} health {urls['healthz']}  metrics {urls['metrics']}")
    if data.get("explorer"):
        click.echo(f"explorer: {data['explorer']}")
    click.echo(f"try-it commands: {data['try_it']}")


@click.command("stop")
@_demo_workdir
@_edge
def demo_stop(workdir: Path | None) -> None:
    """Stop the kept demo (SIGTERM to the demo process; it stops its services and chain)."""
    from offchain.core.errors import SettingError
    from offchain.operator import demo_state

    data = demo_state.read_state(workdir)
    if not demo_state.stop(data):
        raise SettingError(f"the demo (pid {data['demo_pid']}) did not stop within 30 s", field="demo")
    click.echo(f"stopped the demo in {data['workdir']}")


@click.command("logs")
@click.argument("service", required=False)
@_demo_workdir
@click.option("-n", "--lines", type=int, default=40, show_default=True)
@_edge
def demo_logs(service: str | None, workdir: Path | None, lines: int) -> None:
    """The last lines of a service's log (cc, sp, bank), or of every service without SERVICE."""
    from offchain.operator import demo_state

    data = demo_state.read_state(workdir)
    for name in [service] if service else sorted(data["services"]):
        click.echo(f"==> {data['services'].get(name, {}).get('log', name)} <==")
        for line in demo_state.log_tail(data, name, lines):
            click.echo(line)


def _demo_group(original: click.Command) -> click.Group:
    """`clearhouse demo [OPTIONS]` runs the demo as before; `demo status | stop | logs` act on a kept one."""

    def callback(**kwargs: Any) -> Any:
        if click.get_current_context().invoked_subcommand is None:
            assert original.callback is not None
            return original.callback(**kwargs)
        return None

    group = click.Group("demo", params=list(original.params), callback=callback, invoke_without_command=True,
                        help=original.help, short_help=original.short_help)
    for command in (demo_status, demo_stop, demo_logs):
        group.add_command(command)
    return group


def _version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("clearhouse")
    except PackageNotFoundError:
        found = "0+unknown (not installed: pip install -e .)"
    click.echo(f"clearhouse {found}")
    ctx.exit()


def register(main: click.Group) -> None:
    """Add the operator groups to the `clearhouse` command (and to its `ca` and `member` groups when present)."""
    main.add_command(db)
    main.add_command(config_group)
    main.add_command(bank_group)
    main.add_command(sp_group)
    main.params.append(click.Option(["--version"], is_flag=True, expose_value=False, is_eager=True,
                                    callback=_version, help="Print the version and exit."))
    ca = main.commands.get("ca")
    if isinstance(ca, click.Group):
        ca.add_command(ca_init)
    demo = main.commands.get("demo")
    if demo is not None and not isinstance(demo, click.Group):
        main.add_command(_demo_group(demo))
    member = main.commands.get("member")
    if isinstance(member, click.Group):
        member.add_command(member_add)
        member.add_command(member_list)


__all__ = ["db", "register", "iso", "print_table", "print_json", "passphrase_from_env", "parse_payees"]
