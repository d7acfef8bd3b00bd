"""Running a consortium by hand: `ca init`, deploy with its authority, `member add` (certificate, registration, dev
gas), `member list` (certificate, CRL and chain side by side), `config init`, `--version`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from web3 import Web3

from offchain.chain import ClearhouseChain, deploy
from offchain.cli import main
from offchain.core.messages import Role
from offchain.core.settings import BankSettings, load_settings

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, env: dict[str, str] | None = None) -> Any:
    """stdout and stderr apart (`.stdout` must be pure JSON with --json); `.output` is both for messages."""
    result = CliRunner(mix_stderr=False).invoke(main, list(args), env=env)
    result.output_both = result.stdout + result.stderr
    return result


@pytest.fixture(scope="module")
def by_hand(w3: Web3, actors: dict, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    workdir = tmp_path_factory.mktemp("by-hand")
    created = run("ca", "init", "--dir", str(workdir / "ca"))
    assert created.exit_code == 0, created.output_both
    ca = json.loads(created.stdout)
    deployment = deploy(w3, actors["deployer"].key, ca["authority_address"], root=ROOT)
    path = deployment.write(workdir / "deployment.json")
    return {"workdir": workdir, "ca": ca, "deployment": deployment, "deployment_path": path,
            "chain": ["--rpc", str(w3.provider.endpoint_uri), "--deployment", str(path)]}


def test_ca_init_refuses_to_overwrite_a_ca(by_hand: dict[str, Any]) -> None:
    again = run("ca", "init", "--dir", by_hand["ca"]["ca_dir"])
    assert again.exit_code == 1 and "already holds a CA" in again.output_both


def test_ca_init_names_an_uncreatable_directory(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = run("ca", "init", "--dir", str(blocker / "ca"))
    assert result.exit_code == 1 and "cannot create the directory" in result.output_both
    assert "Traceback" not in result.output_both


def test_member_add_registers_and_funds_on_a_dev_chain(by_hand: dict[str, Any], w3: Web3) -> None:
    result = run("member", "add", "cc", "--role", "clearing_center", "--ca-dir", by_hand["ca"]["ca_dir"], "--json",
                 *by_hand["chain"])
    assert result.exit_code == 0, result.output
    added = json.loads(result.stdout)
    chain = ClearhouseChain(w3, by_hand["deployment"], os.urandom(32))  # reads only
    assert chain.is_active(added["eth_address"], int(Role.CLEARING_CENTER))
    assert added["funded"] is True and w3.eth.get_balance(added["eth_address"]) > 0
    assert Path(added["cert_path"]).is_file() and Path(added["eth_key_path"]).stat().st_mode & 0o077 == 0


def test_member_add_refuses_a_second_certificate_for_the_same_id(by_hand: dict[str, Any]) -> None:
    run("member", "add", "bank", "--role", "bank", "--ca-dir", by_hand["ca"]["ca_dir"], *by_hand["chain"])
    again = run("member", "add", "bank", "--role", "bank", "--ca-dir", by_hand["ca"]["ca_dir"], *by_hand["chain"])
    assert again.exit_code == 1 and "already issued a certificate to 'bank'" in again.output_both


def test_device_without_a_passphrase_and_no_terminal_names_the_variable(by_hand: dict[str, Any]) -> None:
    result = run("member", "add", "alice-phone", "--role", "device", "--user", "alice", "--ca-dir",
                 by_hand["ca"]["ca_dir"], *by_hand["chain"], env={"CLEARHOUSE_PASSPHRASE": ""})
    assert result.exit_code == 1
    assert "set CLEARHOUSE_PASSPHRASE" in result.output_both and "env: CLEARHOUSE_PASSPHRASE" in result.output_both
    done = run("member", "add", "alice-phone", "--role", "device", "--user", "alice", "--ca-dir",
               by_hand["ca"]["ca_dir"], "--json", *by_hand["chain"], env={"CLEARHOUSE_PASSPHRASE": "pw"})
    assert done.exit_code == 0, done.output  # positive control: the variable is what was missing
    assert Path(json.loads(done.stdout)["keystore_path"]).is_file()


def test_member_list_shows_certificate_crl_and_chain_side_by_side(by_hand: dict[str, Any]) -> None:
    run("member", "add", "sp", "--role", "service_provider", "--ca-dir", by_hand["ca"]["ca_dir"], *by_hand["chain"])
    listed = run("member", "list", "--ca-dir", by_hand["ca"]["ca_dir"], "--json", *by_hand["chain"])
    assert listed.exit_code == 0, listed.output
    rows = {row["member_id"]: row for row in json.loads(listed.stdout)}
    sp = rows["sp"]
    assert (sp["role"], sp["chain_role"], sp["crl_revoked"], sp["chain_revoked"]) == \
        ("service_provider", "service_provider", False, False)
    assert sp["chain_fingerprint_matches"] is True and isinstance(sp["not_after"], int)
    table = run("member", "list", "--ca-dir", by_hand["ca"]["ca_dir"], *by_hand["chain"], env={"COLUMNS": "240"})
    assert table.exit_code == 0 and "sp" in table.output_both and "Z" in table.output_both  # ISO 8601 UTC in tables


def test_config_init_template_loads_once_filled(tmp_path: Path) -> None:
    out = tmp_path / "bank.toml"
    assert run("config", "init", "bank", "--out", str(out)).exit_code == 0
    text = out.read_text()
    assert "# Ledger account the users pay into" in text
    out.write_text(text.replace('member_id = ""  # required', 'member_id = "bank"'))
    settings = load_settings(BankSettings, out)
    assert (settings.member_id, settings.port, settings.cc_management_account) == ("bank", 8443, "cc:management")
    assert run("config", "init", "bank", "--out", str(out)).exit_code == 1  # never overwrites


def test_version_prints_the_package_version() -> None:
    result = run("--version")
    assert result.exit_code == 0 and result.output.startswith("clearhouse ")
