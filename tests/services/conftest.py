"""Fixtures that run the services as separate processes on the session anvil (tests/conftest.py).

- `consortium` (module): a fresh Clearhouse deployment plus `offchain.operator.provision.provision` under a tmp dir.
- `services` (module): a `Services` handle starting `python -m offchain.cli serve <name> --config FILE` per
  service, waiting for mTLS readiness, with `kill9(name)`, `restart(name)`, `stop(name)`; everything is
  stopped (SIGTERM, then SIGKILL) at teardown. `client(member_id, name)` -> SyncJsonClient as that member.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from web3 import Web3

from offchain.chain import ClearhouseChain, deploy
from offchain.core.errors import ClearhouseError
from offchain.transport.client import SyncJsonClient
from offchain.core.messages import Role
from offchain.operator.provision import DEFAULT_MEMBERS, Consortium, MemberSpec, provision

ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0

MEMBERS = (*DEFAULT_MEMBERS, MemberSpec("bob-tablet", Role.DEVICE, user_id="bob"),
           MemberSpec("studio2", Role.CONTENT_PROVIDER))


@pytest.fixture(scope="module")
def consortium(w3: Web3, compiled: dict, actors: dict, tmp_path_factory: pytest.TempPathFactory) -> Consortium:
    deployment = deploy(w3, actors["deployer"].key, actors["authority"].address, root=ROOT)
    return provision(tmp_path_factory.mktemp("consortium"), w3, deployment, actors["authority"].key,
                     members=MEMBERS, rpc_url=str(w3.provider.endpoint_uri), fast_kdf=True)


@dataclass
class Services:
    """Service processes of one consortium; `names` are "cc", "sp", "bank"."""

    consortium: Consortium
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    clients: list[SyncJsonClient] = field(default_factory=list)

    def start(self, name: str) -> None:
        log_path = self.consortium.workdir / f"{name}.log"
        command = [sys.executable, "-m", "offchain.cli", "serve", name, "--config",
                   str(self.consortium.settings_paths[name])]
        with open(log_path, "ab") as log_file:
            self.processes[name] = subprocess.Popen(command, cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT,
                                                    env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.wait_ready(name)

    def wait_ready(self, name: str) -> None:
        probe = self.client(self._any_member(), name)
        deadline = time.monotonic() + READY_TIMEOUT_S
        last_error: ClearhouseError | None = None
        while time.monotonic() < deadline:
            if self.processes[name].poll() is not None:
                raise RuntimeError(f"{name} exited with {self.processes[name].returncode}: {self.log(name)[-3000:]}")
            try:
                probe.get("/openapi.json")
                return
            except ClearhouseError as exc:
                last_error = exc
                time.sleep(0.1)
        raise RuntimeError(f"{name} not ready after {READY_TIMEOUT_S}s ({last_error!r}: "
                           f"{getattr(last_error, 'fields', '')}): {self.log(name)[-3000:]}")

    def _any_member(self) -> str:
        return self.consortium.of_role(Role.BANK)[0].member_id

    def log(self, name: str) -> str:
        path = self.consortium.workdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self, name: str) -> None:
        process = self.processes.pop(name, None)
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def kill9(self, name: str) -> None:
        process = self.processes.pop(name)
        process.kill()
        process.wait()

    def restart(self, name: str) -> None:
        self.stop(name)
        self.start(name)

    def client(self, member_id: str, name: str, *, timeout_s: float = 30.0) -> SyncJsonClient:
        member = self.consortium.member(member_id)
        client = SyncJsonClient(self.consortium.urls[name], str(member.cert_path), str(member.key_path),
                                str(self.consortium.root_path), timeout_s=timeout_s)
        self.clients.append(client)
        return client

    def chain(self, member_id: str, w3: Web3) -> ClearhouseChain:
        from offchain.chain import Deployment

        member = self.consortium.member(member_id)
        return ClearhouseChain(w3, Deployment.load(self.consortium.deployment_path), member.eth_private_key())

    def close(self) -> None:
        for client in self.clients:
            client.close()
        for name in list(self.processes):
            self.stop(name)


@pytest.fixture(scope="module")
def services(consortium: Consortium) -> Iterator[Services]:
    handle = Services(consortium)
    try:
        yield handle
    finally:
        handle.close()


def have_clearing_center() -> bool:
    return (ROOT / "offchain" / "clearing_center.py").exists()


# --- the settlement story, step by step (shared by the end-to-end and bank tests) -----------------------------------
PRICE = 250
SPLIT = (("studio", 7000), ("studio2", 3000))


def wait_for(predicate, *, timeout_s: float = 40.0, what: str = "condition"):  # type: ignore[no-untyped-def]
    """Poll `predicate` until it returns a truthy value; returns it, or fails the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout_s}s waiting for {what}")


@dataclass
class Flow:
    """Drives one consortium through deposit -> issue -> use -> upload, and reads every party's books."""

    services: Services
    w3: Web3

    @property
    def consortium(self) -> Consortium:
        return self.services.consortium

    wait_for = staticmethod(wait_for)

    def deposit(self, deposit_id: str, user_id: str, amount: int) -> dict:
        return self.services.client("bank", "bank").post(
            "/v1/deposits", {"deposit_id": deposit_id, "user_id": user_id, "amount": amount})

    def publish(self, name: str, price: int = PRICE) -> bytes:
        from offchain.content_provider.publisher import ContentProvider, content_id_for

        studio = self.consortium.member("studio")
        payees = [(self.consortium.member(member_id).eth_address, bps) for member_id, bps in SPLIT]
        tool = ContentProvider(studio.credentials(), self.services.chain("studio", self.w3),
                               self.services.client("studio", "sp"))
        return tool.publish(name.encode() * 100, content_id=content_id_for(name), version=1, price=price,
                            payees=payees, title=name).policy_id

    def device(self, member_id: str = "alice-phone", *, cc: Any = None):  # type: ignore[no-untyped-def]
        """The member's device from its settings; `cc` replaces its CC transport (a JsonTransport double)."""
        from offchain.device.client import DeviceClient
        from offchain.core.settings import DeviceSettings, load_settings

        settings = load_settings(DeviceSettings, self.consortium.settings_paths[member_id])
        return DeviceClient.from_settings(settings, self.consortium.passphrase,
                                          self.consortium.member(member_id).user_id, cc=cc)

    def chain(self) -> ClearhouseChain:
        return self.services.chain("cc", self.w3)

    def transfer_requests(self) -> list[tuple[bytes, str, int]]:
        events = self.chain().contract.events.TransferRequested().get_logs(from_block=0)
        return [(bytes(e["args"]["requestId"]), e["args"]["payee"], int(e["args"]["amount"])) for e in events]

    def ledger(self) -> dict:
        return self.services.client("bank", "bank").get("/v1/ledger")


@pytest.fixture(scope="module")
def flow(services: Services, w3: Web3) -> Flow:
    for name in ("bank", "cc", "sp"):
        services.start(name)
    return Flow(services, w3)


@pytest.fixture
def silent_node() -> Iterator[str]:
    """A TCP port that accepts connections (the kernel's backlog) and never answers a byte: a node that hangs."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
