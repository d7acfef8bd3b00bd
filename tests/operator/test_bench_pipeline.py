"""`clearhouse bench pipeline` at tiny sizes: real anvil and service processes; asserts what settled, never timing."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from rich.console import Console

from offchain.operator.bench import pipeline
from offchain.operator.demo import DemoError

TinyRun = tuple[pipeline.PipelineResult, dict, Path]
KEYS = {"logs", "devices", "sp_intake_per_s", "end_to_end_per_s", "settle_txs", "gas_per_log"}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> TinyRun:
    workdir = tmp_path_factory.mktemp("bench-pipeline")
    out = workdir / "pipeline.json"
    with open(workdir / "table.txt", "w") as table:
        result = pipeline.run(out_path=str(out), logs=80, devices=2, batch_size=16, workdir=workdir,
                              console=Console(file=table, width=120))
    return result, json.loads(out.read_text()), workdir


def test_pipeline_json_has_every_key_when_run_tiny(tiny_run: TinyRun) -> None:
    _, data, _ = tiny_run
    assert KEYS <= set(data)
    assert data["logs"] == 80 and data["devices"] == 2
    assert data["settle_txs"] >= 1 and data["gas_per_log"] > 0


def test_pipeline_settles_every_log_sent_on_chain(tiny_run: TinyRun) -> None:
    result, data, _ = tiny_run
    assert result.settled_logs == result.logs == 80
    assert data["settled_logs"] == 80
    assert result.uploads == 2 * 3  # 40 logs per device in batches of 16: 16 + 16 + 8


def test_pipeline_stops_every_service_it_started(tiny_run: TinyRun) -> None:
    _, _, workdir = tiny_run
    for name in ("cc", "sp", "bank"):
        port = json.loads((workdir / "consortium" / f"{name}.json").read_text())["port"]
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0, f"{name} still listens on {port}"


def test_split_logs_spreads_evenly_and_refuses_fewer_logs_than_devices() -> None:
    assert pipeline.split_logs(10, 4) == [3, 3, 2, 2]
    with pytest.raises(DemoError):
        pipeline.split_logs(3, 4)
