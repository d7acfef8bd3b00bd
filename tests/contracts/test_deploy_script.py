"""`ape run deploy` against a real anvil: it deploys, writes deployments/<network>.json and wires the roles."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from eth_account import Account
from eth_utils import keccak
from web3 import Web3

from offchain.chain import ClearhouseChain, Deployment, start_anvil
from offchain.core.messages import Role

ROOT = Path(__file__).resolve().parents[2]
ANVIL_FIRST_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"  # anvil's dev account 0


def test_ape_run_deploy_writes_deployment_and_registers_members(tmp_path: Path) -> None:
    device = Account.create()
    members = [{"address": device.address, "role": "device", "member_id": "alice-phone",
                "cert_fingerprint": "0x" + "11" * 32, "valid_from": 0, "valid_until": 4_000_000_000,
                "user_id": "alice"}]
    (tmp_path / "members.json").write_text(json.dumps(members))
    ape = str(Path(sys.executable).with_name("ape"))
    with start_anvil(hardfork="paris") as anvil:
        env = {**os.environ, "CLEARHOUSE_DEPLOYMENTS_DIR": str(tmp_path), "CLEARHOUSE_DEPLOYER_KEY": ANVIL_FIRST_KEY,
               "CLEARHOUSE_MEMBERS": str(tmp_path / "members.json")}
        run = subprocess.run([ape, "run", "deploy", "--network", f"ethereum:local:{anvil.url}"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=180)
        assert run.returncode == 0, run.stdout + run.stderr
        assert "registered 1 members" in run.stdout

        written = json.loads((tmp_path / "local.json").read_text())
        w3 = Web3(Web3.HTTPProvider(anvil.url))
        assert written["chain_id"] == w3.eth.chain_id == 31337
        assert written["compiler"]["evm_version"] == "paris"
        assert written["deploy_block"] >= 1 and written["authority"] == Account.from_key(ANVIL_FIRST_KEY).address
        deployment = Deployment.load(tmp_path / "local.json")
        assert len(w3.eth.get_code(deployment.address)) > 0
        reader = ClearhouseChain(w3, deployment, bytes.fromhex(ANVIL_FIRST_KEY[2:]))
        assert reader.is_active(device.address, int(Role.DEVICE))
        assert not reader.is_active(device.address, int(Role.CLEARING_CENTER))
        assert reader.member(device.address).user_id_hash == keccak(b"alice")
