"""The links an operator is handed: distinct free ports for the services and their ops listeners, the explorer
command of a kept demo and of `clearhouse network up` (with --network-file), and the /healthz and /metrics URLs a
kept demo records. The kept demo itself is exercised in test_demo_lifecycle.py."""

from __future__ import annotations

import shlex
from pathlib import Path
from types import SimpleNamespace

from click.testing import CliRunner

import pytest

from offchain.chain import devnode
from offchain.cli import main
from offchain.core.errors import ToolMissing
from offchain.operator import demo_state
from offchain.operator.network_cli import DEPLOYMENT_FILE, explorer_command
from offchain.operator.provision import free_ports


def test_free_ports_are_distinct() -> None:
    ports = free_ports(12)
    assert len(set(ports)) == 12 and all(1024 < p < 65536 for p in ports)


class _ScriptedSocket:
    """A probe socket whose OS picks the ports of `picks` in turn (the real OS may pick a closed port again)."""

    picks: list[int] = []

    def __init__(self, *_: object) -> None:
        self.port = self.picks.pop(0)

    def __enter__(self) -> _ScriptedSocket:
        return self

    def __exit__(self, *_: object) -> None:
        return None

    def bind(self, _: object) -> None:
        return None

    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)


def test_a_port_the_os_picks_again_is_not_handed_out_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two geth nodes (or services) given one port: one cannot listen. The OS picking 41001 twice gives 41002."""
    monkeypatch.setattr(devnode, "_handed_out", set())
    monkeypatch.setattr(_ScriptedSocket, "picks", [41001, 41001, 41002, 41001, 41002, 41003])
    monkeypatch.setattr(devnode.socket, "socket", _ScriptedSocket)
    assert [devnode.free_port(), devnode.free_port(), devnode.free_port()] == [41001, 41002, 41003]
    monkeypatch.setattr(_ScriptedSocket, "picks", [41001] * devnode.FREE_PORT_TRIES)
    with pytest.raises(ToolMissing, match="no free TCP port") as err:
        devnode.free_port()
    assert err.value.tool == "free_port"


def test_network_explorer_command_names_the_network_file(tmp_path: Path) -> None:
    file = tmp_path / "my net" / "network.json"
    command = shlex.split(explorer_command("http://127.0.0.1:18545", file))
    assert command == ["clearhouse", "explorer", "--rpc", "http://127.0.0.1:18545", "--deployment", DEPLOYMENT_FILE,
                       "--network-file", str(file)]
    parsed = main.commands["explorer"].make_context("explorer", command[2:] + ["--port", "0"], resilient_parsing=True)
    assert parsed.params["rpc_url"] == "http://127.0.0.1:18545"  # the options exist as printed


def test_demo_explorer_command_and_ops_urls(tmp_path: Path) -> None:
    consortium = SimpleNamespace(deployment_path=tmp_path / "deployment.json",
                                 settings_paths={"cc": tmp_path / "cc.json", "bank": tmp_path / "bank.json"},
                                 metrics_urls={"cc": "http://127.0.0.1:4001", "bank": "http://127.0.0.1:4003"})
    state = SimpleNamespace(rpc_url="http://127.0.0.1:8545")
    assert shlex.split(demo_state.explorer_command(consortium, state)) == [
        "clearhouse", "explorer", "--rpc", "http://127.0.0.1:8545", "--deployment", str(tmp_path / "deployment.json"),
        "--cc-config", str(tmp_path / "cc.json"), "--bank-config", str(tmp_path / "bank.json")]
    assert demo_state.ops_urls(consortium) == {
        "bank": {"healthz": "http://127.0.0.1:4003/healthz", "metrics": "http://127.0.0.1:4003/metrics"},
        "cc": {"healthz": "http://127.0.0.1:4001/healthz", "metrics": "http://127.0.0.1:4001/metrics"}}


def test_network_up_help_still_parses() -> None:
    assert CliRunner().invoke(main, ["network", "up", "--help"]).exit_code == 0
