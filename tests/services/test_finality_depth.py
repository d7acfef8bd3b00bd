"""The SP as its own process and a device from its settings file, both with `confirmations` set (SP 3, device 5)
and `finality_wait_s = 0`, on the session anvil whose blocks the test mines (`anvil_mine`): a chain fact included
fewer than N blocks ago is refused with the named, retryable `not_final`, and accepted once N blocks deep.

- publish: the SP checks the policy (hash and owner) at its depth;
- download: the device checks the policy at its depth, reading through its second rpc_url (the first is dead);
- usage: the SP refuses usage of a serial issued k < N blocks ago; the device keeps the logs (used offline with the
  issue log it just installed) and uploads them once the serial is final.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from web3 import Web3

from offchain.content_provider.publisher import ContentProvider, content_id_for
from offchain.core.errors import NotFinal
from offchain.core.messages import IssueLog, Role, keccak, sign
from offchain.core.settings import DeviceSettings, load_settings
from offchain.device.client import DeviceClient
from offchain.device.secure_module import cc_verify_fn

Services = Any  # tests/services/conftest.py Services
SP_DEPTH, DEVICE_DEPTH = 3, 5
PRICE = 40


def _mine(w3: Web3, blocks: int) -> None:
    w3.provider.make_request("anvil_mine", [hex(blocks)])  # type: ignore[arg-type]


def _dead_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _set(path: Path, **values: Any) -> None:
    data = json.loads(path.read_text())
    data.update(values)
    path.write_text(json.dumps(data))


@pytest.fixture(scope="module")
def deep(services: Services, w3: Web3) -> Services:
    """The SP at depth 3 and alice's device at depth 5 (its first rpc_url dead); every provisioning fact final."""
    paths = services.consortium.settings_paths
    _set(paths["sp"], confirmations=SP_DEPTH, finality_wait_s=0)
    live = json.loads(paths["alice-phone"].read_text())["rpc_url"]
    _set(paths["alice-phone"], confirmations=DEVICE_DEPTH, finality_wait_s=0, rpc_urls=[_dead_url(), live])
    _mine(w3, DEVICE_DEPTH)
    services.start("sp")
    return services


def _studio(services: Services, w3: Web3) -> ContentProvider:
    studio = services.consortium.member("studio")
    return ContentProvider(studio.credentials(), services.chain("studio", w3), services.client("studio", "sp"))


def _publish(services: Services, w3: Web3, name: str) -> Any:
    studio = services.consortium.member("studio")
    return _studio(services, w3).publish(name.encode() * 50, content_id=content_id_for(name), version=1,
                                         price=PRICE, payees=[(studio.eth_address, 10_000)], title=name)


def _published_final(services: Services, w3: Web3, name: str) -> Any:
    """Publish `name`, mining until the SP accepts it, then until it is DEVICE_DEPTH deep."""
    with pytest.raises(NotFinal):
        _publish(services, w3, name)
    _mine(w3, SP_DEPTH - 1)
    result = _publish(services, w3, name)
    _mine(w3, DEVICE_DEPTH - SP_DEPTH)
    return result


def _device(services: Services) -> DeviceClient:
    consortium = services.consortium
    settings = load_settings(DeviceSettings, consortium.settings_paths["alice-phone"])
    assert settings.confirmations == DEVICE_DEPTH and len(settings.chain_urls()) == 2
    return DeviceClient.from_settings(settings, consortium.passphrase, consortium.member("alice-phone").user_id)


def test_publish_of_a_policy_fewer_than_n_blocks_deep_is_not_final_then_accepted(deep: Services, w3: Web3) -> None:
    name = "depth: publish"
    for depth in range(1, SP_DEPTH):  # the registering block counts: depth 1, then 2
        with pytest.raises(NotFinal) as info:
            _publish(deep, w3, name)
        error = info.value
        assert (error.code, error.fact, error.confirmations, error.remote_status) == ("not_final", "policy",
                                                                                      SP_DEPTH, 503)
        assert error.subject == "0x" + _policy_id(name).hex()
        _mine(w3, 1)
    _publish(deep, w3, name)  # SP_DEPTH deep: accepted
    titles = [item["title"] for item in deep.client("studio", "sp").get("/v1/catalog")["items"]]
    assert name in titles


def test_device_download_checks_the_policy_at_its_depth_through_its_second_rpc_url(deep: Services,
                                                                                   w3: Web3) -> None:
    name = "depth: download"
    with pytest.raises(NotFinal):
        _publish(deep, w3, name)
    _mine(w3, SP_DEPTH - 1)
    published = _publish(deep, w3, name)  # final for the SP (3), not for the device (5)
    device = _device(deep)
    try:
        for _ in range(DEVICE_DEPTH - SP_DEPTH):
            with pytest.raises(NotFinal) as info:
                device.download(published.content_id, 1)
            assert (info.value.fact, info.value.subject, info.value.confirmations) == (
                "policy", published.policy_id, DEVICE_DEPTH)
            _mine(w3, 1)
        path = device.download(published.content_id, 1)  # read through the second rpc_url: the first is dead
        assert path.exists()
    finally:
        device.close()


def test_usage_of_a_serial_fewer_than_n_blocks_deep_is_not_final_kept_then_accepted(deep: Services,
                                                                                    w3: Web3) -> None:
    published = _published_final(deep, w3, "depth: usage")
    device = _device(deep)
    try:
        device.download(published.content_id, 1)
        _issue_now(deep, device, cap=10 * PRICE, w3=w3)
        assert device.use(published.content_id, 1)  # offline, with the issue log installed a block ago
        for _ in range(SP_DEPTH - 1):
            with pytest.raises(NotFinal) as info:
                device.upload()
            assert (info.value.fact, info.value.subject, info.value.confirmations) == (
                "issue_log", "0x" + device.balance().serial.hex(), SP_DEPTH)
            assert device.balance().pending_count == 1  # kept: nothing was refused for good
            _mine(w3, 1)
        result = device.upload()
        assert (result.batches, result.logs) == (1, 1) and device.balance().pending_count == 0
    finally:
        device.close()


def _policy_id(name: str) -> bytes:
    from offchain.core.messages import policy_id

    return policy_id(content_id_for(name), 1)


def _issue_now(services: Services, device: DeviceClient, *, cap: int, w3: Web3) -> None:
    """The test plays the CC: records a deposit and the issue log on chain (the issue in the head block) and
    installs the CC-signed issue log on the device."""
    cc = services.consortium.of_role(Role.CLEARING_CENTER)[0]
    issue_log = IssueLog(serial=keccak(device.module.eth_address.encode() + b"depth-test"),
                         device=device.module.eth_address, user_id_hash=keccak(device.user_id.encode()), cap=cap,
                         expires_at=int(time.time()) + 86_400, previous_serial=bytes(32), carried=0)
    services.chain("bank", w3).record_deposit(keccak(issue_log.serial + b"deposit"), issue_log.user_id_hash, cap,
                                              keccak(b"depth-test-ref"))
    services.chain("cc", w3).issue(issue_log.serial, issue_log.device, issue_log.user_id_hash, cap,
                                   issue_log.expires_at)
    signature = sign(issue_log, device.domain, cc.eth_private_key())
    device.module.install_issue_log(issue_log, signature, cc_verify_fn(device.domain, cc.eth_address))
