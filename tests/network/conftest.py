"""One four-signer Clique network (geth v1.13.15, period 1 s) per test module, restored before every test.

Fixtures: `clique` (module): a running `CliqueNetwork`; `network` (function): the same network with every node
running, connected and on one chain; `w3`: a failover Web3 over all its nodes. Skips when geth is not built
(`bin/setup` builds it).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from web3 import Web3

from offchain.chain.failover import connect
from offchain.chain.network import CliqueNetwork, geth_binary
from offchain.core.errors import ConfigError

SIGNERS = 4
PERIOD_S = 1


def _progress(message: str) -> None:
    if os.environ.get("CLEARHOUSE_NETWORK_VERBOSE"):
        print(f"[network] {message}", flush=True)


@pytest.fixture(scope="module")
def clique(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliqueNetwork]:
    try:
        geth_binary()
    except ConfigError as exc:
        pytest.skip(f"{exc.message}")
    workdir: Path = tmp_path_factory.mktemp("clique")
    net = CliqueNetwork(workdir, signers=SIGNERS, period_s=PERIOD_S, seed=b"clearhouse-tests", progress=_progress)
    try:
        net.up()
        yield net
    finally:
        net.down()


@pytest.fixture()
def network(clique: CliqueNetwork) -> CliqueNetwork:
    clique.restore()
    return clique


@pytest.fixture()
def w3(network: CliqueNetwork) -> Web3:
    return connect(network.rpc_urls)
