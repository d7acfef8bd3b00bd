"""`clearhouse network services` / `network status --consortium`: which chain node each running service uses,
read from the service itself (its ops listener's /livez reports its chain client's provider), and the log line a
service writes when it switches node.

The bank runs over two endpoints, the first refusing (`rpc_urls` = [port 1, anvil]): it starts (the start checks
skip the dead node), fails over at its first chain call and says so; the network file here maps the two URLs to
node indexes 0 and 1, so every service must report node 1.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner

from offchain.cli import main
from offchain.operator.provision import Consortium

CLOSED = "http://127.0.0.1:1"


@pytest.fixture(scope="module")
def bank_on_two_endpoints(consortium: Consortium) -> str:
    """Rewrites the bank's settings before the services start; returns the live endpoint (the session anvil)."""
    path = consortium.settings_paths["bank"]
    data = json.loads(path.read_text())
    data["rpc_urls"] = [CLOSED, data["rpc_url"]]
    path.write_text(json.dumps(data, indent=2))
    return str(data["rpc_url"])


@pytest.fixture(scope="module")
def running(bank_on_two_endpoints: str, services: Any, consortium: Consortium) -> str:
    """bank, cc and sp running (ready on mTLS, and their ops listeners answer); returns the live endpoint."""
    for name in ("bank", "cc", "sp"):
        services.start(name)
    for name, url in consortium.metrics_urls.items():
        deadline = time.monotonic() + 30.0
        while True:
            try:
                requests.get(f"{url}/livez", timeout=2).raise_for_status()
                break
            except requests.RequestException:
                if time.monotonic() > deadline:
                    raise AssertionError(f"{name}'s ops listener {url} does not answer: {services.log(name)[-2000:]}")
                time.sleep(0.1)
    return bank_on_two_endpoints


def network_workdir(tmp_path: Path, urls: list[str]) -> Path:
    """A network file naming `urls` as nodes 0, 1, ... (only what the commands read to map URLs to nodes)."""
    nodes = [{"index": i, "signer": "0x" + f"{i + 1:040x}", "nodekey_hex": f"{i + 1:064x}", "p2p_port": 0,
              "http_port": int(url.rsplit(":", 1)[1]), "authrpc_port": 0, "datadir": str(tmp_path / f"node{i}"),
              "pid": None} for i, url in enumerate(urls)]
    (tmp_path / "network.json").write_text(json.dumps({"workdir": str(tmp_path), "period_s": 1, "chain_id": 1,
                                                       "rpc_urls": urls, "nodes": nodes}))
    return tmp_path


def run(*args: str) -> Any:
    return CliRunner(mix_stderr=False).invoke(main, list(args))


def test_each_service_reports_the_node_it_uses_and_the_bank_logs_its_switch(
        running: str, consortium: Consortium, tmp_path: Path) -> None:
    live = running
    workdir = network_workdir(tmp_path, [CLOSED, live])
    result = run("network", "services", "--json", "--consortium", str(consortium.workdir), "--workdir", str(workdir))
    assert result.exit_code == 0, result.output + result.stderr
    rows = {r["service"]: r for r in json.loads(result.stdout)}
    assert set(rows) == {"cc", "sp", "bank"} and all(r["up"] and r["current"] == live and r["node"] == 1
                                                     for r in rows.values()), rows
    bank = rows["bank"]
    assert (bank["endpoints"], bank["source"]) == ([CLOSED, live], "service") and bank["switches"] >= 1
    assert rows["cc"]["source"] == "service" and rows["cc"]["endpoints"] == [live]
    log = (consortium.workdir / "bank.log").read_text(errors="replace")
    assert f"rpc failover: {CLOSED} did not answer" in log and f"now using {live}" in log
    scrape = requests.get(f"{consortium.metrics_urls['bank']}/metrics", timeout=10).text
    assert f'clearhouse_chain_rpc_endpoint{{url="{live}"}} 1.0' in scrape

    table = run("network", "services", "--consortium", str(consortium.workdir), "--workdir", str(workdir))
    assert table.exit_code == 0 and "bank" in table.stdout and live in table.stdout


def test_status_carries_the_services_even_when_no_node_is_a_signer(
        running: str, consortium: Consortium, tmp_path: Path) -> None:
    from offchain.chain.network import geth_binary
    from offchain.core.errors import ConfigError

    try:
        geth_binary()  # CliqueNetwork.load wants it, though nothing here runs it
    except ConfigError as exc:
        pytest.skip(exc.message)
    workdir = network_workdir(tmp_path, [CLOSED, running])
    result = run("network", "status", "--json", "--workdir", str(workdir),
                 "--service", f"bank={consortium.metrics_urls['bank']}")
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert [n["up"] for n in out["nodes"]] == [False, False]  # anvil answers no clique_getSigner
    assert [(s["service"], s["node"]) for s in out["services"]] == [("bank", 1)]


def test_a_service_that_does_not_answer_is_down_and_a_bad_option_is_refused(tmp_path: Path) -> None:
    result = run("network", "services", "--json", "--service", f"cc={CLOSED}", "--workdir", str(tmp_path))
    assert result.exit_code == 1
    [row] = json.loads(result.stdout)
    assert (row["service"], row["up"], row["error"]) == ("cc", False, "ConnectionError")
    refused = run("network", "services", "--service", "cc-without-url")
    assert refused.exit_code == 2 and "NAME=URL" in refused.stderr
