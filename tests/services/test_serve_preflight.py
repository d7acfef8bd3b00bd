"""`clearhouse serve` checks the chain before it listens: the node answers in time, it is the deployment's chain,
the contract has code, the member is active with the service's role, and it has gas. Each refusal names its check.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from web3 import Web3

from offchain.cli import main
from offchain.core.settings import BankSettings, ClearingCenterSettings, load_settings
from offchain.operator.preflight import PreflightFailed, member_address, preflight
from offchain.operator.provision import Consortium


def settings_with(consortium: Consortium, tmp_path: Path, name: str, **changes: Any) -> Path:
    data = {**json.loads(consortium.settings_paths[name].read_text()), **changes}
    path = tmp_path / f"{name}-changed.json"
    path.write_text(json.dumps(data))
    return path


def test_every_check_passes_for_a_provisioned_member(consortium: Consortium) -> None:
    lines: list[str] = []
    settings = load_settings(ClearingCenterSettings, consortium.settings_paths["cc"])
    checks = preflight(settings, echo=lines.append)
    assert [c.name for c in checks] == ["rpc", "chain_id", "contract", "member", "gas"]
    assert len(lines) == 5 and all(line.startswith("ok") for line in lines)


def test_a_node_that_never_answers_fails_within_the_timeout(consortium: Consortium, tmp_path: Path,
                                                            silent_node: str) -> None:
    settings = load_settings(BankSettings, settings_with(consortium, tmp_path, "bank", rpc_url=silent_node))
    with pytest.raises(PreflightFailed) as refused:
        preflight(settings, timeout_s=0.5)
    assert (refused.value.check, refused.value.rpc_url) == ("rpc", silent_node)
    assert "did not answer within 0.5 s" in refused.value.message


def test_a_closed_port_is_refused(consortium: Consortium, tmp_path: Path) -> None:
    settings = load_settings(BankSettings, settings_with(consortium, tmp_path, "bank", rpc_url="http://127.0.0.1:1"))
    with pytest.raises(PreflightFailed) as refused:
        preflight(settings, timeout_s=2)
    assert refused.value.check == "rpc"


def test_a_deployment_without_code_is_refused(consortium: Consortium, tmp_path: Path) -> None:
    deployment = json.loads(consortium.deployment_path.read_text())
    deployment["contracts"]["Clearhouse"]["address"] = "0x" + "42" * 20
    (tmp_path / "gone.json").write_text(json.dumps(deployment))
    settings = load_settings(BankSettings, settings_with(consortium, tmp_path, "bank",
                                                         deployment_path=str(tmp_path / "gone.json")))
    with pytest.raises(PreflightFailed) as refused:
        preflight(settings)
    assert (refused.value.check, refused.value.address) == ("contract_code", Web3.to_checksum_address("0x" + "42" * 20))


def test_an_unregistered_member_is_refused(consortium: Consortium, tmp_path: Path) -> None:
    settings = load_settings(BankSettings, settings_with(consortium, tmp_path, "bank", eth_key_path=None,
                                                         eth_private_key="11" * 32))
    with pytest.raises(PreflightFailed) as refused:
        preflight(settings)
    assert refused.value.check == "member" and "not registered" in refused.value.message


def test_a_member_with_the_wrong_role_is_refused(consortium: Consortium, tmp_path: Path) -> None:
    bank_key = consortium.member("bank").eth_key_path
    settings = load_settings(ClearingCenterSettings, settings_with(consortium, tmp_path, "cc",
                                                                   eth_key_path=str(bank_key)))
    with pytest.raises(PreflightFailed) as refused:
        preflight(settings)
    assert refused.value.check == "member" and "registered as bank" in refused.value.message


def test_a_member_without_gas_is_refused(consortium: Consortium, w3: Web3) -> None:
    settings = load_settings(BankSettings, consortium.settings_paths["bank"])
    address = member_address(settings)
    balance = w3.eth.get_balance(address)
    w3.provider.make_request("anvil_setBalance", [address, "0x0"])  # type: ignore[arg-type]
    try:
        with pytest.raises(PreflightFailed) as refused:
            preflight(settings)
        assert (refused.value.check, refused.value.address) == ("gas", address)
    finally:
        w3.provider.make_request("anvil_setBalance", [address, hex(balance)])  # type: ignore[arg-type]
    assert [c.name for c in preflight(settings)][-1] == "gas"  # positive control once funded again


def test_serve_exits_with_the_named_check_and_no_traceback(consortium: Consortium, tmp_path: Path,
                                                           silent_node: str) -> None:
    config = settings_with(consortium, tmp_path, "bank", rpc_url=silent_node)
    result = CliRunner().invoke(main, ["serve", "bank", "--config", str(config), "--chain-timeout-s", "0.5"])
    assert result.exit_code == 1, result.output
    assert "error [preflight_failed]" in result.output and "check: rpc" in result.output
    assert "Traceback" not in result.output
