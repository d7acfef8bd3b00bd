"""The "running the parts by hand" path, outside any demo work directory: `ca init`, deploy with its authority,
`member add bank`, `config init bank --member-dir --ca-dir` (a settings file `serve` accepts as written),
`serve bank` (its start checks pass), then `bank deposit` lands on chain."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from web3 import Web3

from offchain.chain import ClearhouseChain, Deployment, deploy
from offchain.cli import main
from offchain.core.errors import ClearhouseError
from offchain.core.types import user_id_hash
from offchain.operator.provision import free_port
from offchain.transport.client import SyncJsonClient

ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 60


def cli(*args: str, env: dict[str, str]) -> Any:
    result = CliRunner(mix_stderr=False).invoke(main, list(args), env=env)
    assert result.exit_code == 0, result.stdout + result.stderr
    return result


def test_a_bank_set_up_by_hand_serves_and_takes_a_deposit(w3: Web3, actors: dict[str, Any], tmp_path: Path) -> None:
    ca = json.loads(cli("ca", "init", "--dir", str(tmp_path / "ca"), env={}).stdout)
    deployment_path = deploy(w3, actors["deployer"].key, ca["authority_address"], root=ROOT).write(
        tmp_path / "deployment.json")
    port = free_port()
    env = {"CLEARHOUSE_RPC_URL": str(w3.provider.endpoint_uri), "CLEARHOUSE_DEPLOYMENT": str(deployment_path)}
    cli("member", "add", "bank", "--role", "bank", "--ca-dir", str(tmp_path / "ca"), env=env)
    cli("config", "init", "bank", "--member-dir", str(tmp_path / "members" / "bank"), "--ca-dir",
        str(tmp_path / "ca"), "--out", str(tmp_path / "bank.toml"), env=env)
    log = tmp_path / "bank.log"
    with open(log, "wb") as out:
        server = subprocess.Popen([sys.executable, "-m", "offchain.cli", "serve", "bank", "--config",
                                   str(tmp_path / "bank.toml")], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                  env={**os.environ, "CLEARHOUSE_PORT": str(port)})
    try:
        member = tmp_path / "members" / "bank"
        probe = SyncJsonClient(f"https://127.0.0.1:{port}", str(member / "cert.pem"), str(member / "key.pem"),
                               str(tmp_path / "ca" / "root.cert.pem"), timeout_s=5)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            assert server.poll() is None, log.read_text()[-3000:]
            try:
                probe.get("/openapi.json")
                break
            except ClearhouseError:
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.2)
        assert "ok  gas" in log.read_text()  # the start checks ran and passed
        answer = json.loads(cli("bank", "deposit", "--config", str(tmp_path / "bank.toml"), "--user", "alice",
                                "--amount", "1000", "--deposit-id", "by-hand-1",
                                env={"CLEARHOUSE_PORT": str(port)}).stdout)
        assert answer["idempotency_key"] == "by-hand-1"
        reader = ClearhouseChain(w3, Deployment.load(deployment_path), os.urandom(32))
        assert reader.user_funds(user_id_hash("alice")).deposited == 1000
    finally:
        server.terminate()
        server.wait(30)
