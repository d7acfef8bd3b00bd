"""/healthz and /metrics of real service processes: served on the plain-HTTP ops listener (`metrics_port`) while the
service port keeps refusing callers without a member certificate, and the counters move with real traffic
(deposit -> issue -> uses -> upload -> settlement -> transfers paid).
"""

from __future__ import annotations

import dataclasses
import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from web3 import Web3

from offchain.operator.provision import Consortium, free_port
from offchain.transport.ops import HealthProbe

Flow = Any  # tests/services/conftest.py Flow (conftest modules are not importable by name)

SERVICES = ("bank", "cc", "sp")
USES = 2


@pytest.fixture(scope="module")
def ops_ports(consortium: Consortium) -> dict[str, int]:
    return {name: free_port() for name in SERVICES}


@pytest.fixture(scope="module")
def ops_flow(consortium: Consortium, services: Any, ops_ports: dict[str, int], w3: Web3) -> Iterator[Flow]:
    conftest = type(services).close.__globals__  # the module's namespace (conftest modules share one name)
    paths = dict(consortium.settings_paths)
    for name in SERVICES:  # the same settings plus the ops listener
        data = json.loads(paths[name].read_text())
        data["metrics_port"] = ops_ports[name]
        paths[name] = paths[name].with_name(f"{name}-ops.json")
        paths[name].write_text(json.dumps(data))
    ops_services = conftest["Services"](dataclasses.replace(consortium, settings_paths=paths))
    try:
        for name in SERVICES:
            ops_services.start(name)
        yield conftest["Flow"](ops_services, w3)
    finally:
        ops_services.close()


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, text = get(port, "/metrics")
    assert status == 200
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_healthz_is_ready_with_chain_and_database_checks(ops_flow: Flow, ops_ports: dict[str, int]) -> None:
    for name in SERVICES:
        status, body = get(ops_ports[name], "/healthz")
        report = json.loads(body)
        assert status == 200, report
        assert (report["ready"], report["live"]) == (True, True)
        assert report["checks"]["chain"]["ok"] and report["checks"]["chain"]["contract_code"] is True
        assert report["checks"]["chain"]["head"] >= 1
        assert report["checks"]["database"] == {"ok": True, "dialect": "sqlite"}
        assert get(ops_ports[name], "/livez")[0] == 200


def test_service_port_still_requires_a_member_certificate(ops_flow: Flow, ops_ports: dict[str, int]) -> None:
    assert get(ops_ports["bank"], "/healthz")[0] == 200  # positive control: the ops listener answers anonymously
    context = ssl.create_default_context(cafile=str(ops_flow.consortium.root_path))
    context.check_hostname = False
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(ops_flow.consortium.urls["bank"] + "/openapi.json", timeout=10, context=context).read()


def test_counters_move_with_real_traffic(ops_flow: Flow, ops_ports: dict[str, int]) -> None:
    from offchain.content_provider.publisher import content_id_for

    before = {name: scrape(ops_ports[name]) for name in SERVICES}
    ops_flow.deposit("ops-dep-1", "alice", 10_000)
    policy_id = ops_flow.publish("ops-film")
    device = ops_flow.device()
    device.request_issue_log(2_000)
    device.download(content_id_for("ops-film"), 1)
    for _ in range(USES):
        device.use(content_id_for("ops-film"), 1)
    device.upload()
    chain = ops_flow.chain()
    ops_flow.wait_for(lambda: chain.policy(policy_id).requested == USES * 250, what="transfer requests")
    ops_flow.wait_for(lambda: value(scrape(ops_ports["bank"]), "clearhouse_transfer_requests_paid_total") >= 2,
                      what="both payees paid")
    # the CC records the bank's receipts a moment after the bank paid (its transfer worker's next delivery)
    cc_paid_before = value(before["cc"], "clearhouse_transfer_requests_paid_total")
    ops_flow.wait_for(lambda: value(scrape(ops_ports["cc"]), "clearhouse_transfer_requests_paid_total")
                      >= cc_paid_before + 2, what="the CC recorded both receipts")
    after = {name: scrape(ops_ports[name]) for name in SERVICES}

    def moved(name: str, metric: str, **labels: str) -> float:
        return value(after[name], metric, **labels) - value(before[name], metric, **labels)

    assert moved("bank", "clearhouse_http_requests_total", route="/v1/deposits", method="POST", status="200") == 1
    assert moved("bank", "clearhouse_deposits_total") == 1
    assert moved("bank", "clearhouse_transfer_requests_paid_total") == 2  # the 70/30 split: two payees
    assert moved("sp", "clearhouse_logs_received_total", kind="usage") == USES
    assert moved("sp", "clearhouse_http_requests_total", route="/v1/usage", method="POST", status="200") >= 1
    assert moved("cc", "clearhouse_logs_received_total", kind="receive") == 1
    assert moved("cc", "clearhouse_settlement_batches", status="confirmed") >= 1
    assert moved("cc", "clearhouse_transfer_requests_paid_total") == 2
    assert value(after["cc"], "clearhouse_settlement_round_seconds_count") > 0
    assert value(after["cc"], "clearhouse_outbox_depth", outbox="settlement") == 0
    assert value(after["sp"], "clearhouse_sp_batches", status="rejected") == 0
    for name in SERVICES:
        assert value(after[name], "clearhouse_chain_up") == 1
        assert value(after[name], "clearhouse_chain_head_block") > value(before[name], "clearhouse_chain_head_block")


def test_probe_reports_an_unreachable_chain_as_not_ready(tmp_path: Path) -> None:
    from offchain.storage import make_engine

    engine = make_engine(f"sqlite:///{tmp_path / 'probe.db'}")
    up = HealthProbe("http://127.0.0.1:1", None, engine, timeout_s=1).report(role="bank")
    assert up["checks"]["database"]["ok"] is True  # positive control: the database half passes
    assert (up["ready"], up["status"], up["checks"]["chain"]["ok"]) == (False, "unavailable", False)


def test_bank_deposit_command_credits_through_the_running_bank(ops_flow: Flow, ops_ports: dict[str, int]) -> None:
    from click.testing import CliRunner

    from offchain.cli import main

    config = ops_flow.services.consortium.settings_paths["bank"]
    before = value(scrape(ops_ports["bank"]), "clearhouse_deposits_total")
    args = ["bank", "deposit", "--config", str(config), "--user", "bob", "--amount", "1000", "--deposit-id", "cli-1"]
    first = CliRunner(mix_stderr=False).invoke(main, args)
    assert first.exit_code == 0, first.stderr
    answer = json.loads(first.stdout)
    assert answer["idempotency_key"] == "cli-1" and answer["cc_notified"] is True
    again = json.loads(CliRunner(mix_stderr=False).invoke(main, args).stdout)
    assert again["bank_ref"] == answer["bank_ref"]  # the deposit id is the idempotency key
    assert value(scrape(ops_ports["bank"]), "clearhouse_deposits_total") == before + 1
