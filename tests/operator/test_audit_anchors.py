"""`clearhouse audit` anchors every trail to the deployment file: chain id, code at the address, the deploy block's
hash; `audit verify` with nothing to verify fails; CLEARHOUSE_RPC_URL / CLEARHOUSE_DEPLOYMENT replace the options.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any as ChainWorld  # the `world` fixture of tests/operator/conftest.py

from click.testing import CliRunner

from offchain.chain import deploy
from offchain.cli import main
from offchain.operator import audit

ROOT = Path(__file__).resolve().parents[2]


def verify(world: ChainWorld, deployment_path: Path, tmp_path: Path) -> tuple[int, dict]:
    out = io.StringIO()
    code = audit.main_verify(rpc_url=world.w3.provider.endpoint_uri, deployment_path=deployment_path,
                             output="json", cache_dir=tmp_path / "cache", stream=out)
    return code, json.loads(out.getvalue())


def checks_by_name(report: dict) -> dict[str, dict]:
    return {check["what"]: check for check in report["checks"] if check["what"] in
            ("chain id", "contract code", "deploy block hash", "signatures re-verified")}


def edited_deployment(world: ChainWorld, tmp_path: Path, **changes: object) -> Path:
    data = json.loads(world.deployment_path.read_text())
    for key, value in changes.items():
        if key == "address":
            data["contracts"]["Clearhouse"]["address"] = value
        else:
            data[key] = value
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(data))
    return path


def test_verify_passes_with_the_deployment_anchors(world: ChainWorld, tmp_path: Path) -> None:
    code, report = verify(world, world.deployment_path, tmp_path)
    anchors = checks_by_name(report)
    assert code == 0
    assert [anchors[name]["ok"] for name in ("chain id", "contract code", "deploy block hash")] == [True] * 3
    assert "unchecked" not in anchors["deploy block hash"]["detail"]  # deploy() records the hash


def test_a_deploy_block_hash_from_another_chain_fails(world: ChainWorld, tmp_path: Path) -> None:
    code, report = verify(world, edited_deployment(world, tmp_path, deploy_block_hash="0x" + "ab" * 32), tmp_path)
    assert code == 1
    assert checks_by_name(report)["deploy block hash"]["ok"] is False


def test_an_address_without_code_fails(world: ChainWorld, tmp_path: Path) -> None:
    code, report = verify(world, edited_deployment(world, tmp_path, address="0x" + "42" * 20), tmp_path)
    assert code == 1
    assert checks_by_name(report)["contract code"]["ok"] is False


def test_verify_with_zero_checks_is_a_failure(world: ChainWorld, tmp_path: Path) -> None:
    actors = world.actors
    empty = deploy(world.w3, actors["authority"].key, actors["authority"].address, root=ROOT)
    path = empty.write(tmp_path / "empty.json")
    code, report = verify(world, path, tmp_path)
    assert code == 1
    assert checks_by_name(report)["signatures re-verified"]["ok"] is False


def test_audit_reads_rpc_and_deployment_from_the_environment(world: ChainWorld, tmp_path: Path) -> None:
    env = {"CLEARHOUSE_RPC_URL": world.w3.provider.endpoint_uri, "CLEARHOUSE_DEPLOYMENT": str(world.deployment_path)}
    result = CliRunner().invoke(main, ["audit", "verify", "--json", "--cache-dir", str(tmp_path)], env=env)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["failures"] == 0
    wrong = CliRunner().invoke(main, ["audit", "verify", "--json", "--cache-dir", str(tmp_path)],
                               env={**env, "CLEARHOUSE_RPC_URL": "http://127.0.0.1:1"})
    assert wrong.exit_code != 0  # positive control: the variable is what was used
