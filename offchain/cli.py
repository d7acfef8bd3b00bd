"""The `clearhouse` command line: the one edge where broad exceptions are caught and turned into readable errors.

Each command is a thin wrapper over a role or operator module; nothing here holds business logic. Imports are
lazy so that `clearhouse --help` stays fast and a broken optional part does not take the whole CLI down.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Any, Callable

import click

from offchain.errors import ClearhouseError


def _edge(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run a command; print named errors and unexpected failures as one readable message, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = bool(click.get_current_context().find_root().params.get("debug"))
        try:
            return fn(*args, **kwargs)
        except ClearhouseError as exc:
            if debug:
                raise
            click.secho(f"error [{exc.code}]: {exc.message}", fg="red", err=True)
            for key, value in exc.to_dict()["fields"].items():
                click.echo(f"  {key}: {value}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.secho("interrupted", fg="yellow", err=True)
            sys.exit(130)
        except Exception as exc:  # the CLI edge: anything unexpected becomes one line plus a hint
            if debug:
                raise
            click.secho(f"unexpected failure: {type(exc).__name__}: {exc}", fg="red", err=True)
            click.echo("  run again with `clearhouse --debug ...` for the traceback", err=True)
            sys.exit(2)

    return wrapper


@click.group()
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
def main(debug: bool) -> None:
    """Clearhouse: a permissioned clearing house for content usage fees."""


# --- services --------------------------------------------------------------------------------------------------
_SERVICES = {"cc": "offchain.clearing_center", "sp": "offchain.service_provider", "bank": "offchain.bank"}


@main.command()
@click.argument("role", type=click.Choice(sorted(_SERVICES)))
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True)
@_edge
def serve(role: str, config_path: Path) -> None:
    """Run one service (cc, sp or bank) until SIGTERM, with mutual TLS."""
    import importlib

    module = importlib.import_module(_SERVICES[role])
    module.serve(module.load_settings(config_path))


# --- benchmarks ------------------------------------------------------------------------------------------------
@main.group()
def bench() -> None:
    """Benchmarks: print figures and write bench/results/*.json."""


@bench.command("gas")
@click.option("--out", default="bench/results/gas.json", show_default=True)
@_edge
def bench_gas(out: str) -> None:
    """Gas per settled usage log on anvil, N = 1/16/256 logs per transaction, D = 1/4/16 contents."""
    from offchain.bench import gas

    gas.run(out_path=out)


@bench.command("verify")
@click.option("--out", default="bench/results/verify.json", show_default=True)
@click.option("-n", "count", default=20000, show_default=True, help="Usage logs to verify on the fast path.")
@_edge
def bench_verify(out: str, count: int) -> None:
    """Usage-log signature verifications per second: fast path vs eth-account's generic EIP-712 path."""
    from offchain.bench import verify

    verify.run(out_path=out, n=count)


def _print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str))


if __name__ == "__main__":
    main()
