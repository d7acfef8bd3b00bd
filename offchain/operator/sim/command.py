"""The `clearhouse sim` command (registered in offchain/cli.py); also `python -m offchain.operator.sim`."""

from __future__ import annotations

import sys
from pathlib import Path

import click


@click.command("sim")
@click.option("--seeds", default="1-5", show_default=True, help="Seeds to run: `7`, `1-20` or `1,4,9-12`.")
@click.option("--budget-s", type=float, default=None, help="Stop starting new seeds after this many seconds.")
@click.option("--faults", default="all", show_default=True,
              help="Fault kinds: kill,pause,stall,restart-node,link,disk,dup on anvil; kill,pause,link,disk,dup,"
                   "stop-signer,partition on clique (or all, or none).")
@click.option("--network", type=click.Choice(["anvil", "clique"]), default="anvil", show_default=True,
              help="clique: a fresh four-signer geth Clique network per seed, with stop-signer and partition faults.")
@click.option("--steps", type=int, default=24, show_default=True, help="Workload steps per seed.")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where seed folders go (default var/sim/).")
@click.option("--keep", is_flag=True, help="Keep the folder of passing seeds too.")
@click.option("--db", type=click.Choice(["sqlite", "postgres"]), default="sqlite", show_default=True,
              help="postgres: every service on a fresh database of its own on the --pg-url server, per seed.")
@click.option("--pg-url", envvar="CLEARHOUSE_SIM_PG_URL", default=None,
              help="--db postgres: a URL of the server whose role may CREATE/DROP DATABASE, e.g. "
                   "postgresql+psycopg2://clearhouse@127.0.0.1:5432/postgres.")
@click.option("--jobs", type=click.IntRange(1, 16), default=1, show_default=True,
              help="Seeds side by side: N sim processes, each every N-th seed in job-K/ of the workdir.")
def sim(seeds: str, budget_s: float | None, faults: str, network: str, steps: int, workdir: Path | None,
        keep: bool, db: str, pg_url: str | None, jobs: int) -> None:
    """Fault simulation: per seed a fresh consortium, the seed's workload and faults, heal, then the checker."""
    from offchain.operator.sim.plan import parse_faults, parse_seeds
    from offchain.operator.sim.runner import main_sim

    try:
        kinds = parse_faults(faults, network)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--faults") from exc
    if db == "postgres" and not pg_url:
        raise click.BadParameter("--db postgres needs --pg-url (or CLEARHOUSE_SIM_PG_URL)", param_hint="--pg-url")
    if jobs > 1:
        from offchain.operator.sim.runner import main_sim_jobs

        sys.exit(main_sim_jobs(parse_seeds(seeds), kinds, jobs=jobs, budget_s=budget_s, workdir=workdir, keep=keep,
                               steps=steps, network=network, pg_url=pg_url if db == "postgres" else None,
                               echo=click.echo))
    sys.exit(main_sim(parse_seeds(seeds), kinds, budget_s=budget_s, workdir=workdir, keep=keep,
                      steps=steps, network=network, pg_url=pg_url if db == "postgres" else None, echo=click.echo))
