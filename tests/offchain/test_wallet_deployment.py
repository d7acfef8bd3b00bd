"""A device's wallet is bound to one deployment (issue 10 item 7): the first open ties it to the settings' chain id
and contract; settings pointed at another deployment with the same wallet are refused with
WalletDeploymentMismatch(expected, got) before anything is signed, through the client and the CLI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from devicekit import DOMAIN, PASSPHRASE, DeviceHome, device_home, wallet_state, write_deployment

from offchain.cli import main
from offchain.core.errors import WalletDeploymentMismatch
from offchain.core.messages import Domain, to_checksum_address
from offchain.core.settings import DeviceSettings, load_settings
from offchain.device.client import DeviceClient

OTHER = Domain(chain_id=DOMAIN.chain_id, verifying_contract="0x" + "ee" * 20)  # same chain, another contract
Member = Any


@pytest.fixture
def home(tmp_path: Path, authority: Any, device_member: Member, clearing_center_member: Member,
         content_provider_member: Member, service_provider_member: Member) -> DeviceHome:
    return device_home(tmp_path / "device", authority, device_member, clearing_center_member,
                       content_provider_member, service_provider_member, cap=1_000, price=100)


def client(home: DeviceHome) -> DeviceClient:
    return DeviceClient.from_settings(load_settings(DeviceSettings, home.settings_path), PASSPHRASE, "alice")


def test_wallet_opens_for_its_own_deployment(home: DeviceHome) -> None:
    for _ in range(2):  # bound on the first open, accepted again on the next
        device = client(home)
        assert device.balance().cap == 1_000
        device.close()


@pytest.mark.parametrize("other", [OTHER, Domain(chain_id=1, verifying_contract=DOMAIN.verifying_contract)],
                         ids=["another contract", "another chain"])
def test_wallet_of_another_deployment_is_refused(home: DeviceHome, other: Domain) -> None:
    client(home).close()  # bound to DOMAIN
    write_deployment(home.deployment_path, other)
    with pytest.raises(WalletDeploymentMismatch) as info:
        client(home)
    assert info.value.expected == f"{DOMAIN.chain_id}:{to_checksum_address(DOMAIN.verifying_contract)}"
    assert info.value.got == f"{other.chain_id}:{to_checksum_address(other.verifying_contract)}"
    assert info.value.path == str(home.wallet_path)
    result = CliRunner().invoke(main, ["device", "--config", str(home.settings_path), "balance"],
                                env={"CLEARHOUSE_DEVICE_PASSPHRASE": PASSPHRASE})
    assert result.exit_code == 1 and f"[{WalletDeploymentMismatch.code}]" in result.output
    write_deployment(home.deployment_path, DOMAIN)
    assert wallet_state(home) == (0, 0, 0)  # nothing was signed meanwhile
    client(home).close()
