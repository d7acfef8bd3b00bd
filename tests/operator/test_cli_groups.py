"""Every `clearhouse` command group through the real CLI (click's CliRunner, in-process), without a chain: each
group's and command's help, the one error printer (`error [code]: message` plus its fields on stderr, exit 1;
the same failure as a JSON document on stdout with `--json`; `unexpected failure` exit 2; `--debug` re-raises),
and the cheap happy paths (schema migrations on SQLite, config files, a kept demo's state, a network file).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from offchain.cli import _edge, main
from offchain.core.errors import ConfigError, NotFound
from offchain.service_provider import store as sp_store
from offchain.storage import make_engine, session_scope


def run(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner(mix_stderr=False).invoke(main, list(args), env=env)


def flat(text: str) -> str:
    return " ".join(text.split()).replace("- ", "-")  # click wraps after a hyphen


def command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    found = []
    for name, command in sorted(group.commands.items()):
        found.append(((*prefix, name), command))
        if isinstance(command, click.Group):
            found += command_paths(command, (*prefix, name))
    return found


ALL_COMMANDS = command_paths(main)


def test_the_cli_registers_every_command_group() -> None:
    groups = {path[0] for path, command in ALL_COMMANDS if isinstance(command, click.Group)}
    assert groups >= {"audit", "bank", "bench", "ca", "config", "content", "db", "demo", "device", "member",
                      "network", "sp"}
    leaves = {" ".join(path) for path, command in ALL_COMMANDS if not isinstance(command, click.Group)}
    assert leaves >= {"serve", "reconcile", "explorer", "sim", "ca init", "ca refresh-crl", "member add",
                      "member list", "member revoke", "member status", "db upgrade", "db downgrade", "db current",
                      "db check", "db revision", "demo status", "demo stop", "demo logs", "network up",
                      "network status", "network down", "network stop-node", "network start-node",
                      "device balance", "device use", "content package", "audit verify", "bench pipeline"}


@pytest.mark.parametrize("path", [p for p, _ in ALL_COMMANDS], ids=[" ".join(p) for p, _ in ALL_COMMANDS])
def test_every_group_and_command_prints_its_help(path: tuple[str, ...]) -> None:
    command = dict(ALL_COMMANDS)[path]
    result = run(*path, "--help")
    assert result.exit_code == 0, result.stderr
    first_line = (command.help or "").strip().splitlines()[0]
    assert flat(first_line) in flat(result.stdout)
    assert f"Usage: main {' '.join(path)}" in result.stdout
    if isinstance(command, click.Group):
        assert all(name in result.stdout for name in command.commands)  # the group lists its commands


def test_top_level_help_and_version() -> None:
    result = run("--help")
    assert result.exit_code == 0 and "permissioned clearing house" in result.stdout and "--debug" in result.stdout
    version = run("--version")
    assert version.exit_code == 0 and version.stdout.startswith("clearhouse ")


# --- the error printer ------------------------------------------------------------------------------------------
def test_a_named_error_prints_code_message_and_fields_on_stderr_with_exit_1(tmp_path: Path) -> None:
    out = tmp_path / "cc.toml"
    out.write_text("taken")
    result = run("config", "init", "cc", "--out", str(out))
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.splitlines() == [f"error [config_error]: {out} exists; remove it or choose another --out",
                                          f"  path: {out}"]
    assert out.read_text() == "taken"  # refused, not overwritten


def test_json_makes_a_named_error_a_json_document_on_stdout(tmp_path: Path) -> None:
    result = run("demo", "status", "--json", "--workdir", str(tmp_path))
    assert result.exit_code == 1
    state = str(tmp_path / "demo-state.json")
    assert json.loads(result.stdout) == {
        "error": "not_found", "fields": {"kind": "demo", "path": state},
        "message": f"no kept demo state at {state}: the demo stopped, or it was not started with --keep"}
    assert result.stderr.startswith("error [not_found]: no kept demo state") and f"  path: {state}" in result.stderr
    plain = run("demo", "status", "--workdir", str(tmp_path))
    assert plain.exit_code == 1 and plain.stdout == "" and plain.stderr == result.stderr


def test_debug_reraises_the_named_error_instead_of_printing_it(tmp_path: Path) -> None:
    out = tmp_path / "cc.toml"
    out.write_text("taken")
    result = run("--debug", "config", "init", "cc", "--out", str(out))
    assert isinstance(result.exception, ConfigError) and result.exception.path == str(out)
    assert "error [" not in result.stderr


def _tool(exc: BaseException) -> click.Command:
    @click.group()
    @click.option("--debug", is_flag=True)
    def root(debug: bool) -> None:
        pass

    @root.command("tool")
    @click.option("--json", "as_json", is_flag=True)
    @_edge
    def tool(as_json: bool) -> None:
        raise exc

    return root


def test_an_unexpected_exception_is_one_line_with_a_hint_and_exit_2() -> None:
    runner = CliRunner(mix_stderr=False)
    result = runner.invoke(_tool(KeyError("gone")), ["tool"])
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.splitlines() == ["unexpected failure: KeyError: 'gone'",
                                          "  run again with `clearhouse --debug ...` for the traceback"]
    as_json = runner.invoke(_tool(KeyError("gone")), ["tool", "--json"])
    assert as_json.exit_code == 2
    assert json.loads(as_json.stdout) == {"error": "unexpected_failure", "message": "KeyError: 'gone'", "fields": {}}
    debug = runner.invoke(_tool(KeyError("gone")), ["--debug", "tool"])
    assert isinstance(debug.exception, KeyError) and debug.stderr == ""


def test_ctrl_c_prints_interrupted_and_exits_130() -> None:
    result = CliRunner(mix_stderr=False).invoke(_tool(KeyboardInterrupt()), ["tool"])
    assert result.exit_code == 130 and result.stderr == "interrupted\n"


def test_a_named_error_from_the_tool_helper_keeps_its_fields() -> None:  # positive control for _tool itself
    result = CliRunner(mix_stderr=False).invoke(_tool(NotFound("no such thing", kind="x")), ["tool", "--json"])
    assert result.exit_code == 1 and json.loads(result.stdout)["fields"] == {"kind": "x"}
    assert result.stderr.splitlines() == ["error [not_found]: no such thing", "  kind: x"]


def test_bad_arguments_are_usage_errors_with_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "cc.json"
    config.write_text("{}")
    bad_role = run("db", "current", "nobody", "--config", str(config))
    assert bad_role.exit_code == 2 and "Invalid value for '{bank|cc|sp}'" in bad_role.stderr
    missing = run("db", "current", "cc")
    assert missing.exit_code == 2 and "Missing option '--config'" in missing.stderr
    no_file = run("serve", "cc", "--config", str(tmp_path / "absent.toml"))
    assert no_file.exit_code == 2 and "does not exist" in no_file.stderr
    explorer = run("explorer", "--mtls")  # the default deployments/local.json is not there in a checkout
    assert explorer.exit_code == 2 and "'--deployment'" in explorer.stderr
    faults = run("sim", "--faults", "bogus")
    assert faults.exit_code == 2 and "Invalid value for --faults: unknown fault kinds ['bogus']" in faults.stderr


# --- db (SQLite) -------------------------------------------------------------------------------------------------
def test_db_upgrade_current_check_downgrade_on_sqlite(tmp_path: Path) -> None:
    config = tmp_path / "cc.json"
    config.write_text(json.dumps({"member_id": "cc", "database_url": f"sqlite:///{tmp_path / 'cc.db'}"}))
    args = ("cc", "--config", str(config))
    upgraded = run("db", "upgrade", *args)
    assert upgraded.exit_code == 0, upgraded.stderr
    head = upgraded.stdout.split(" -> ")[1].strip()
    assert head.startswith("cc_") and upgraded.stdout.startswith("clearing_center: ")
    assert run("db", "current", *args).stdout == f"clearing_center: database {head}, code {head}\n"
    assert run("db", "check", *args).stdout == f"clearing_center: up to date at {head}\n"
    down = run("db", "downgrade", "cc", "base", "--config", str(config))
    assert down.exit_code == 0 and down.stdout == f"clearing_center: {head} -> base\n"
    assert run("db", "current", *args).stdout == f"clearing_center: database none, code {head}\n"
    past_base = run("db", "downgrade", "cc", "-1", "--config", str(config))  # already at base: a named refusal
    assert past_base.exit_code == 1 and past_base.stderr.startswith("error [unknown_revision]: "), past_base.stderr
    assert "revision: -1" in past_base.stderr and f"head: {head}" in past_base.stderr
    no_such = run("db", "upgrade", *args, "--revision", "cc_9999")
    assert no_such.exit_code == 1 and "error [unknown_revision]" in no_such.stderr and "cc_9999" in no_such.stderr
    assert run("db", "current", *args).stdout == f"clearing_center: database none, code {head}\n"  # nothing moved


def test_db_check_refuses_a_database_behind_the_code(tmp_path: Path) -> None:
    config = tmp_path / "sp.json"
    config.write_text(json.dumps({"member_id": "sp", "database_url": f"sqlite:///{tmp_path / 'sp.db'}"}))
    assert run("db", "upgrade", "sp", "--config", str(config)).exit_code == 0
    assert run("db", "downgrade", "sp", "-1", "--config", str(config)).exit_code == 0
    behind = run("db", "check", "sp", "--config", str(config))
    assert behind.exit_code == 1 and behind.stderr.startswith("error [")
    assert "clearhouse db upgrade" in behind.stderr and str(config) in behind.stderr  # the command to run


def test_sp_parked_prints_a_table_with_the_refusal(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'sp.db'}"
    engine = make_engine(url)
    sp_store.create_schema(engine)
    with session_scope(engine) as session:
        session.add(sp_store.SpBatch(
            id=b"\x07" * 32, device="0x" + "d1" * 20, serial=b"\x01" * 32, first_seq=0, count=2, batch_json={},
            device_sig=b"\0" * 65, receive_log_json={}, receiver_sig=b"\0" * 65, status="rejected",
            payload_hash=b"\0" * 32, created_at=1, updated_at=1, reject_error="policy_unknown",
            reject_message="unknown policy"))
    config = tmp_path / "sp.json"
    config.write_text(json.dumps({"member_id": "sp", "database_url": url}))
    result = run("sp", "parked", "--config", str(config), env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.stderr
    assert "parked usage batches" in result.stdout and "policy_unknown" in result.stdout
    assert "0x" + "07" * 32 in result.stdout and "1970-01-01T00:00:01Z" in result.stdout  # ISO time in tables


# --- config / bank ------------------------------------------------------------------------------------------------
def test_config_init_writes_the_file_it_names_and_says_so(tmp_path: Path) -> None:
    out = tmp_path / "bank.toml"
    result = run("config", "init", "bank", "--out", str(out))
    assert result.exit_code == 0 and result.stderr == f"wrote {out}\n" and result.stdout == ""
    assert "cc_management_account" in out.read_text()
    printed = run("config", "init", "bank")
    assert printed.exit_code == 0 and printed.stdout.strip() == out.read_text().strip()


def test_bank_deposit_without_tls_material_names_the_setting(tmp_path: Path) -> None:
    config = tmp_path / "bank.json"
    config.write_text(json.dumps({"member_id": "bank"}))
    result = run("bank", "deposit", "--config", str(config), "--user", "alice", "--amount", "5")
    assert result.exit_code == 1, result.stderr
    assert result.stderr.splitlines() == ["error [config_error]: setting cert_path is required for this service",
                                          "  field: cert_path"]
    negative = run("bank", "deposit", "--config", str(config), "--user", "alice", "--amount", "0")
    assert negative.exit_code == 1 and "must be positive" in negative.stderr and "  got: 0" in negative.stderr


# --- demo status / logs / stop on a kept demo's state file ---------------------------------------------------------
@pytest.fixture
def kept_demo(tmp_path: Path) -> Any:
    """A state file as `demo --keep` writes it, naming a child process of this test as the demo process."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    log = tmp_path / "cc.log"
    log.write_text("".join(f"line {i}\n" for i in range(10)))
    state = {"demo_pid": child.pid, "started_at": 1, "workdir": str(tmp_path), "rpc_url": "",
             "services": {"cc": {"pid": child.pid, "url": "https://127.0.0.1:9", "log": str(log)}},
             "env": {"CLEARHOUSE_RPC_URL": "http://127.0.0.1:9"}, "try_it": str(tmp_path / "try-it.sh")}
    (tmp_path / "demo-state.json").write_text(json.dumps(state))
    yield tmp_path, child
    if child.poll() is None:
        child.kill()
    child.wait()


def test_demo_status_lists_the_demo_and_its_services(kept_demo: Any) -> None:
    workdir, child = kept_demo
    result = run("demo", "status", "--workdir", str(workdir), "--json")
    assert result.exit_code == 0, result.stderr
    body = json.loads(result.stdout)
    assert [(p["name"], p["pid"], p["alive"]) for p in body["processes"]] == [("demo", child.pid, True),
                                                                              ("cc", child.pid, True)]
    assert body["env"] == {"CLEARHOUSE_RPC_URL": "http://127.0.0.1:9"}
    table = run("demo", "status", "--workdir", str(workdir), env={"COLUMNS": "300"})
    assert table.exit_code == 0 and f"demo in {workdir}" in table.stdout
    assert f"try-it commands: {workdir / 'try-it.sh'}" in table.stdout


def test_demo_logs_tails_a_service_and_names_an_unknown_one(kept_demo: Any) -> None:
    workdir, _child = kept_demo
    result = run("demo", "logs", "cc", "-n", "2", "--workdir", str(workdir))
    assert result.exit_code == 0 and result.stdout == f"==> {workdir / 'cc.log'} <==\nline 8\nline 9\n"
    every = run("demo", "logs", "--workdir", str(workdir), "-n", "1")
    assert every.stdout.endswith("line 9\n")
    unknown = run("demo", "logs", "sp", "--workdir", str(workdir))
    assert unknown.exit_code == 1 and "error [config_error]: no service 'sp' in this demo; one of ['cc']" in \
        unknown.stderr


def test_demo_stop_terminates_the_demo_process(kept_demo: Any) -> None:
    workdir, child = kept_demo
    result = run("demo", "stop", "--workdir", str(workdir))
    assert result.exit_code == 0 and result.stdout == f"stopped the demo in {workdir}\n"
    assert child.wait(timeout=30) == -15  # SIGTERM, to this process only
    again = run("demo", "stop", "--workdir", str(workdir))  # no longer alive: the state file goes
    assert again.exit_code == 0 and not (workdir / "demo-state.json").exists()


# --- network (a network file whose nodes are down; no geth is started) --------------------------------------------
def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def dead_network(tmp_path: Path) -> Path:
    nodes = [{"index": i, "signer": "0x" + f"{i + 1:02x}" * 20, "nodekey_hex": "11" * 32, "p2p_port": _closed_port(),
              "http_port": _closed_port(), "authrpc_port": _closed_port(), "datadir": str(tmp_path / f"node{i}"),
              "pid": None} for i in range(2)]
    (tmp_path / "network.json").write_text(json.dumps({"kind": "clique", "workdir": str(tmp_path), "chain_id": 4242,
                                                       "period_s": 1, "signers": [n["signer"] for n in nodes],
                                                       "nodes": nodes}))
    return tmp_path


def test_network_status_of_a_down_network_exits_1(dead_network: Path) -> None:
    as_json = run("network", "status", "--json", "--workdir", str(dead_network))
    assert as_json.exit_code == 0
    assert [(r["index"], r["up"]) for r in json.loads(as_json.stdout)] == [(0, False), (1, False)]
    table = run("network", "status", "--workdir", str(dead_network))
    assert table.exit_code == 1 and table.stdout.count("DOWN") == 2 and "Clique chain 4242, period 1 s" in table.stdout


def test_network_node_commands_check_the_index(dead_network: Path) -> None:
    bad = run("network", "stop-node", "5", "--workdir", str(dead_network))
    assert bad.exit_code == 2 and "node index must be 0..1" in bad.stderr
    bad_start = run("network", "start-node", "2", "--workdir", str(dead_network))
    assert bad_start.exit_code == 2 and "node index must be 0..1" in bad_start.stderr
    stopped = run("network", "stop-node", "1", "--workdir", str(dead_network))
    assert stopped.exit_code == 0 and stopped.stderr.endswith("[network] node 1 stopped\n")
    down = run("network", "down", "--workdir", str(dead_network))
    assert down.exit_code == 0 and f"[network] stopped 2 nodes of {dead_network}" in down.stderr


def test_network_commands_without_a_network_file_name_it(tmp_path: Path) -> None:
    for command in (("status",), ("down",), ("stop-node", "0"), ("start-node", "0")):
        result = run("network", *command, "--workdir", str(tmp_path))
        assert result.exit_code == 1, command
        assert result.stderr.splitlines()[0] == f"error [network_failed]: no network file at {tmp_path}/network.json"
    refused = run("network", "up", "--signers", "0", "--workdir", str(tmp_path / "net"))
    assert refused.exit_code == 1 and "needs at least one signer" in refused.stderr
    assert not (tmp_path / "net" / "network.json").exists()


# --- bench: the options reach the benchmark (the benchmarks themselves are not run here) ---------------------------
def test_bench_commands_pass_their_options_through(monkeypatch: pytest.MonkeyPatch) -> None:
    from offchain.operator.bench import explorer, gas, hsm, pipeline, verify

    calls: list[tuple[str, dict[str, Any]]] = []
    for name, module, fn in (("gas", gas, "run"), ("hsm", hsm, "run"), ("verify", verify, "run"),
                             ("explorer", explorer, "run"), ("pipeline", pipeline, "run"),
                             ("clique", pipeline, "run_clique")):
        monkeypatch.setattr(module, fn, lambda _name=name, **kw: calls.append((_name, kw)))
    for args in (["gas", "--out", "g.json"], ["hsm", "-n", "3"], ["verify", "-n", "7"],
                 ["explorer", "--logs", "10", "--batch", "5"], ["pipeline", "--logs", "64", "--history-logs", "0"],
                 ["pipeline", "--network", "clique", "--period", "2"]):
        assert run("bench", *args).exit_code == 0, args
    assert calls == [
        ("gas", {"out_path": "g.json"}),
        ("hsm", {"out_path": "bench/results/hsm.json", "n": 3}),
        ("verify", {"out_path": "bench/results/verify.json", "n": 7}),
        ("explorer", {"out_path": "bench/results/explorer.json", "logs": 10, "batch": 5}),
        ("pipeline", {"out_path": "bench/results/pipeline.json", "logs": 64, "devices": 8, "history_logs": 0,
                      "catalog_items": 200}),
        ("clique", {"out_path": "bench/results/pipeline-clique.json", "logs": 65_536, "devices": 8, "periods": (2,)}),
    ]
