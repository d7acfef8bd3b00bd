"""The `clearhouse network` commands: up, status, down, stop-node, start-node of the local Clique network.

Thin wrappers over `offchain.chain.network.CliqueNetwork`; the network file in the workdir is the state shared
between commands (the nodes keep running after `up` returns). Dev networks only: see that module's caveats.
`status --consortium DIR` (and `services`) also ask each running service which node it uses (its ops
listener's /livez, which reads the service's own RPC provider).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import click

SERVICE_NAMES = ("cc", "sp", "bank")
LIVEZ_TIMEOUT_S = 2.0


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


# --- which node each service uses ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ServiceNode:
    """One service's answer: the RPC endpoint its chain client uses now (`node`: its index in the network file,
    None when it is none of the network's nodes), the configured endpoints and the failover switches so far."""

    service: str
    ops_url: str
    up: bool
    current: str | None = None
    node: int | None = None
    endpoints: tuple[str, ...] = ()
    switches: int = 0
    source: str | None = None
    error: str | None = None


def consortium_services(consortium_dir: Path) -> dict[str, str]:
    """{service: ops listener URL} of a provisioned consortium (its cc.json, sp.json, bank.json settings files;
    a service without `metrics_port` has no ops listener and is left out)."""
    found = {}
    for name in SERVICE_NAMES:
        path = Path(consortium_dir) / f"{name}.json"
        if path.exists():
            data = json.loads(path.read_text())
            if data.get("metrics_port"):
                found[name] = f"http://{data.get('metrics_host') or '127.0.0.1'}:{int(data['metrics_port'])}"
    return found


def service_nodes(services: dict[str, str], rpc_urls: Sequence[str], *,
                  timeout_s: float = LIVEZ_TIMEOUT_S) -> list[ServiceNode]:
    """Ask each service's /livez (no chain call on its side) which endpoint it uses; a silent one is `up` False."""
    import requests

    rows = []
    for name, url in services.items():
        try:
            rpc = requests.get(f"{url.rstrip('/')}/livez", timeout=timeout_s).json().get("rpc") or {}
        except (requests.RequestException, ValueError) as exc:
            rows.append(ServiceNode(name, url, False, error=f"{type(exc).__name__}"))
            continue
        current = rpc.get("current")
        node = list(rpc_urls).index(current) if current in rpc_urls else None
        rows.append(ServiceNode(name, url, True, current, node, tuple(rpc.get("endpoints") or ()),
                                int(rpc.get("switches") or 0), rpc.get("source")))
    return rows


def _services_of(consortium: Path | None, service: tuple[str, ...]) -> dict[str, str]:
    services = consortium_services(consortium) if consortium is not None else {}
    for item in service:
        name, sep, url = item.partition("=")
        if not sep or not url:
            raise click.BadParameter(f"{item!r} is not NAME=URL (e.g. cc=http://127.0.0.1:9101)",
                                     param_hint="--service")
        services[name] = url
    return services


def _print_services(rows: list[ServiceNode]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Services: the chain node each one uses now")
    for column in ("service", "ops", "node", "rpc", "switches", "endpoints"):
        table.add_column(column, no_wrap=True)
    for r in rows:
        node = "DOWN" if not r.up else "-" if r.node is None else str(r.node)
        table.add_row(r.service, r.ops_url, node, r.current or (r.error or ""), str(r.switches) if r.up else "-",
                      str(len(r.endpoints)) if r.up else "-")
    Console(width=None if sys.stdout.isatty() else 140).print(table)


_consortium_option = click.option("--consortium", type=click.Path(file_okay=False, path_type=Path), default=None,
                                  help="A provisioned consortium folder (cc.json, sp.json, bank.json): ask each "
                                       "running service which node it uses (`clearhouse demo --network clique` "
                                       "keeps it in <workdir>/consortium).")
_service_option = click.option("--service", multiple=True, metavar="NAME=URL",
                               help="A service's ops listener (metrics_port), e.g. cc=http://127.0.0.1:9101 "
                                    "(repeatable; adds to --consortium).")


@network.command("services")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@_consortium_option
@_service_option
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Network folder whose network.json maps endpoints to node indexes (default var/clique; "
                   "without one, only URLs are shown).")
@_edge
def network_services(as_json: bool, consortium: Path | None, service: tuple[str, ...], workdir: Path | None) -> None:
    """Per running service: the chain node its client uses now, its endpoints and failover switches."""
    from dataclasses import asdict

    services = _services_of(consortium, service)
    if not services:
        raise click.UsageError("give --consortium DIR or --service NAME=URL")
    network_file = (workdir or _default_workdir()) / "network.json"
    rpc_urls = json.loads(network_file.read_text())["rpc_urls"] if network_file.exists() else []
    rows = service_nodes(services, rpc_urls)
    if as_json:
        click.echo(json.dumps([asdict(r) for r in rows], indent=2))
    else:
        _print_services(rows)
    if not any(r.up for r in rows):
        sys.exit(1)


@network.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@_consortium_option
@_service_option
@_workdir_option
@_edge
def network_status(as_json: bool, consortium: Path | None, service: tuple[str, ...], workdir: Path | None) -> None:
    """Per node: head number and hash, peers, lag behind the highest head, the last block each signer sealed;
    with --consortium or --service also the node each running service uses."""
    from dataclasses import asdict

    from offchain.chain.network import CliqueNetwork

    net = CliqueNetwork.load(workdir or _default_workdir())
    rows = net.status()
    services = _services_of(consortium, service)
    used = service_nodes(services, net.rpc_urls) if services else []
    if as_json:
        nodes = [asdict(r) for r in rows]
        click.echo(json.dumps({"nodes": nodes, "services": [asdict(u) for u in used]} if services else nodes,
                              indent=2))
        return  # JSON is data: the table's exit code (1 when no node is up) is for eyes and scripts
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
    if used:
        _print_services(used)
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
