"""The `clearhouse network` commands: up, status, down, stop-node, start-node of the local Clique network.

Thin wrappers over `offchain.chain.network.CliqueNetwork`; the network file in the workdir is the state shared
between commands (the nodes keep running after `up` returns). Dev networks only: see that module's caveats.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable

import click


def _default_workdir() -> Path:
    from offchain.core.types import project_root

    return project_root() / "var" / "clique"


def _echo(message: str) -> None:
    click.echo(f"[network] {message}", err=True)


def _edge(fn: Callable[..., Any]) -> Callable[..., Any]:
    from offchain.cli import _edge as cli_edge  # the CLI's one edge for named errors

    return cli_edge(fn)


_workdir_option = click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
                               help="Network folder (keys, chain data, logs, network.json; default var/clique).")


@click.group("network")
def network() -> None:
    """A local Clique network of geth signer nodes on loopback (dev and tests; see docs/network.md)."""


@network.command("up")
@click.option("--signers", default=4, show_default=True, help="Signer nodes (3 of 4 must stay online).")
@click.option("--period", "period_s", default=1, show_default=True, help="Block period in seconds.")
@click.option("--chain-id", default=4242, show_default=True, help="Chain id (ape-config.yaml says 4242).")
@click.option("--prefund", multiple=True, help="An address to prefund in the genesis (repeatable).")
@click.option("--free-ports", is_flag=True,
              help="Pick free ports instead of HTTP 18545+i (ape-config.yaml's clearhouse-clique points at 18545).")
@click.option("--seed", default=None, help="Derive the signer keys from this text (reproducible addresses).")
@click.option("--timeout-s", default=120.0, show_default=True, help="How long to wait for peers and blocks.")
@_workdir_option
@_edge
def network_up(signers: int, period_s: int, chain_id: int, prefund: tuple[str, ...], free_ports: bool,
               seed: str | None, timeout_s: float, workdir: Path | None) -> None:
    """Generate keys and a Clique genesis, start the signer nodes, wait until they peer and seal."""
    from offchain.chain.network import CliqueNetwork

    net = CliqueNetwork(workdir or _default_workdir(), signers=signers, period_s=period_s, chain_id=chain_id,
                        prefund=prefund, fixed_ports=not free_ports, seed=seed.encode() if seed else None,
                        progress=_echo)
    try:
        net.up(ready_timeout_s=timeout_s)
    except BaseException:
        net.down()
        raise
    explorer = explorer_command(net.rpc_urls[0], net.network_file)
    click.echo(json.dumps({"network_file": str(net.network_file), "chain_id": net.chain_id,
                           "rpc_urls": net.rpc_urls, "signers": net.signers, "faucet": net.faucet[0],
                           "explorer": explorer}, indent=2))
    _echo(f"explorer (after `{DEPLOY_COMMAND}`; serves http://127.0.0.1:8780): {explorer}")


DEPLOY_COMMAND = "ape run deploy --network ethereum:clearhouse-clique:node"
DEPLOYMENT_FILE = "deployments/clearhouse-clique.json"  # what DEPLOY_COMMAND writes (docs/network.md)


def explorer_command(rpc_url: str, network_file: Path, deployment: str = DEPLOYMENT_FILE) -> str:
    """`clearhouse explorer` for this network: its first node, the deployment, and every node's status from the
    network file (head, peers, signers on the overview)."""
    import shlex

    return (f"clearhouse explorer --rpc {shlex.quote(rpc_url)} --deployment {shlex.quote(deployment)} "
            f"--network-file {shlex.quote(str(network_file))}")


@network.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@_workdir_option
@_edge
def network_status(as_json: bool, workdir: Path | None) -> None:
    """Per node: head number and hash, peers, lag behind the highest head, the last block each signer sealed."""
    from dataclasses import asdict

    from offchain.chain.network import CliqueNetwork

    net = CliqueNetwork.load(workdir or _default_workdir())
    rows = net.status()
    if as_json:
        click.echo(json.dumps([asdict(r) for r in rows], indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    index_of = {s: i for i, s in enumerate(net.signers)}
    table = Table(title=f"Clique chain {net.chain_id}, period {net.period_s} s, {len(rows)} signers "
                        "(last sealed: signer index -> block)")
    for column in ("node", "signer", "rpc", "head", "hash", "peers", "lag", "last sealed"):
        table.add_column(column, no_wrap=True)
    for r in rows:
        sealed = " ".join(f"s{index_of.get(s, '?')}:{n}" for s, n in sorted(r.last_sealed.items(),
                                                                           key=lambda kv: index_of.get(kv[0], -1)))
        table.add_row(str(r.index), r.signer[:8], r.rpc_url.rsplit(":", 1)[-1],
                      str(r.head_number) if r.up else "DOWN", (r.head_hash or "")[:10],
                      str(r.peers) if r.up else "-", str(r.lag) if r.up else "-", sealed)
    Console(width=None if sys.stdout.isatty() else 140).print(table)
    if not any(r.up for r in rows):
        sys.exit(1)


@network.command("down")
@_workdir_option
@_edge
def network_down(workdir: Path | None) -> None:
    """Stop every node (the workdir stays: keys, chain data, logs)."""
    from offchain.chain.network import CliqueNetwork

    net = CliqueNetwork.load(workdir or _default_workdir(), progress=_echo)
    net.down()
    _echo(f"stopped {len(net.nodes)} nodes of {net.workdir}")


@network.command("stop-node")
@click.argument("index", type=int)
@_workdir_option
@_edge
def network_stop_node(index: int, workdir: Path | None) -> None:
    """Stop node INDEX (0-based)."""
    from offchain.chain.network import CliqueNetwork

    net = CliqueNetwork.load(workdir or _default_workdir(), progress=_echo)
    _check_index(net, index)
    net.stop_node(index)
    _echo(f"node {index} stopped")


@network.command("start-node")
@click.argument("index", type=int)
@_workdir_option
@_edge
def network_start_node(index: int, workdir: Path | None) -> None:
    """Start node INDEX again (same keys, ports and data) and wait until it has a peer."""
    from offchain.chain.network import CliqueNetwork

    net = CliqueNetwork.load(workdir or _default_workdir(), progress=_echo)
    _check_index(net, index)
    net.start_node(index)
    _echo(f"node {index} running (pid {net.pids[index]}), head {net.head(index)[0]}")


def _check_index(net: Any, index: int) -> None:
    if not 0 <= index < len(net.nodes):
        raise click.BadParameter(f"node index must be 0..{len(net.nodes) - 1}", param_hint="INDEX")
