"""The service provider as its own process: publish, download, verified usage intake, idempotent uploads, and
durability (an acked upload survives kill -9 and is forwarded once a clearing center answers).

The clearing center here is a stub (same mTLS, same route) that opens every receive-log Envelope and records
it, so these tests do not depend on the real CC; test_end_to_end.py runs the real one.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from aiohttp import web
from web3 import Web3

from offchain.trust import tls
from offchain.trust.certs import CertificateVerifier, Envelope
from offchain.content_provider.publisher import ContentProvider, content_id_for
from offchain.device.client import DeviceClient
from offchain.transport.client import JsonTransport, SyncJsonClient
from offchain.core.errors import (DuplicateMessage, FeeMismatch, IdentityMismatch, InvalidRequest, SequenceError,
                             WrongRole)
from offchain.core.messages import IssueLog, ReceiveLog, Role, UsageBatch, UsageLog, keccak, sign
from offchain.device.secure_module import cc_verify_fn
from offchain.core.settings import DeviceSettings, load_settings

Services = Any  # tests/services/conftest.py Services (conftest modules are not importable by name)

PRICE = 250


class StubClearingCenter:
    """Accepts POST /v1/receive-logs over mTLS like the CC: opens each Envelope(ReceiveLog), records it. A receive
    log id in `refuse` is answered in `rejected` with that (error code, message) instead; `posted` counts posts."""

    def __init__(self, services: Services) -> None:
        consortium = services.consortium
        cc = consortium.of_role(Role.CLEARING_CENTER)[0]
        self._paths = (cc.cert_path, cc.key_path, consortium.root_path)
        self._verifier = CertificateVerifier(consortium.root_path.read_bytes())
        self._domain = consortium.domain
        self._port = int(consortium.urls["cc"].rsplit(":", 1)[1])
        self.received: dict[str, dict[str, Any]] = {}
        self.refuse: dict[str, tuple[str, str]] = {}
        self.posted: Counter[str] = Counter()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    async def _receive(self, request: web.Request) -> web.Response:
        peer = tls.peer_identity(request, self._verifier)
        body = await request.json()
        accepted: list[str] = []
        rejected: list[dict[str, Any]] = []
        for index, item in enumerate(body["items"]):
            receive_log, _sp = Envelope.from_json(item["receive_log"]).open(
                self._verifier, self._domain, Role.SERVICE_PROVIDER, peer=peer)
            assert isinstance(receive_log, ReceiveLog)
            assert receive_log.usage_batch == UsageBatch.from_json(item["usage_batch"]).struct_hash()
            receive_id = "0x" + receive_log.id(self._domain).hex()
            self.posted[receive_id] += 1
            if receive_id in self.refuse:
                code, message = self.refuse[receive_id]
                rejected.append({"index": index, "error": code, "message": message, "fields": {}})
                continue
            self.received[receive_id] = item
            accepted.append(receive_id)
        return web.json_response({"accepted": accepted, "rejected": rejected})

    def start(self) -> None:
        async def boot() -> None:
            app = web.Application()
            app.router.add_post("/v1/receive-logs", self._receive)
            self._runner = web.AppRunner(app)
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", self._port,
                              ssl_context=tls.server_ssl_context(*self._paths)).start()

        self._thread.start()
        asyncio.run_coroutine_threadsafe(boot(), self._loop).result(10)

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


@pytest.fixture(scope="module")
def sp_running(services: Services) -> Services:
    services.start("sp")
    return services


@pytest.fixture(scope="module")
def published(sp_running: Services, w3: Web3) -> dict[str, Any]:
    consortium = sp_running.consortium
    studio = consortium.member("studio")
    provider = ContentProvider(studio.credentials(), sp_running.chain("studio", w3), sp_running.client("studio", "sp"))
    content_id = content_id_for("film-sp-test")
    result = provider.publish(b"a film" * 1000, content_id=content_id, version=1, price=PRICE,
                              payees=[(studio.eth_address, 10_000)], title="Film")
    return {"content_id": content_id, "policy_id": result.policy_id}


def open_device(services: Services, member_id: str,
                wrap_sp: Callable[[SyncJsonClient], JsonTransport] | None = None) -> DeviceClient:
    """The member's device; `wrap_sp` puts a test double between it and the SP (constructor-injected)."""
    consortium = services.consortium
    settings = load_settings(DeviceSettings, consortium.settings_paths[member_id])
    sp = None
    if wrap_sp is not None:
        sp = wrap_sp(SyncJsonClient(settings.sp_url, str(settings.cert_path), str(settings.key_path),
                                    str(settings.ca_path)))
    return DeviceClient.from_settings(settings, consortium.passphrase, consortium.member(member_id).user_id, sp=sp)


class SpRelay:
    """The device's SP transport in these tests: the real SP client, or `rogue` in front of it while set."""

    def __init__(self) -> None:
        self.real: JsonTransport | None = None
        self.rogue: JsonTransport | None = None

    def attach(self, real: JsonTransport) -> SpRelay:
        self.real = real
        return self

    def _target(self) -> JsonTransport:
        target = self.rogue or self.real
        assert target is not None, "attach the real SP client first"
        return target

    def get(self, path: str) -> Any:
        return self._target().get(path)

    def post(self, path: str, body: Any) -> Any:
        return self._target().post(path, body)

    def server_identity(self, verifier: Any, expected_role: Role | None = None) -> Any:
        return self._target().server_identity(verifier, expected_role)

    def close(self) -> None:
        if self.real is not None:
            self.real.close()


def install_test_issue_log(services: Services, device: DeviceClient, cap: int, w3: Web3) -> None:
    """The test plays the CC: records the issue log on chain (the SP refuses usage of serials not on chain) and
    installs the CC-signed issue log."""
    cc = services.consortium.of_role(Role.CLEARING_CENTER)[0]
    issue_log = IssueLog(serial=keccak(device.module.eth_address.encode() + b"sp-test"), device=device.module.eth_address,
                         user_id_hash=keccak(device.user_id.encode()), cap=cap, expires_at=int(time.time()) + 86400,
                         previous_serial=bytes(32), carried=0)
    services.chain("bank", w3).record_deposit(keccak(issue_log.serial + b"deposit"), issue_log.user_id_hash, cap,
                                              keccak(b"sp-test-ref"))
    services.chain("cc", w3).issue(issue_log.serial, issue_log.device, issue_log.user_id_hash, cap,
                                   issue_log.expires_at)
    signature = sign(issue_log, device.domain, cc.eth_private_key())
    device.module.install_issue_log(issue_log, signature, cc_verify_fn(device.domain, cc.eth_address))


@pytest.fixture(scope="module")
def alice_sp() -> SpRelay:
    """What alice's device talks to as its SP (a test may put a rogue SP in front of the real one)."""
    return SpRelay()


@pytest.fixture(scope="module")
def alice(sp_running: Services, published: dict[str, Any], alice_sp: SpRelay, w3: Web3) -> Iterator[DeviceClient]:
    device = open_device(sp_running, "alice-phone", wrap_sp=alice_sp.attach)
    install_test_issue_log(sp_running, device, cap=100 * PRICE, w3=w3)
    device.download(published["content_id"], 1)
    yield device
    device.close()


def upload_body(device: DeviceClient) -> dict[str, Any]:
    batch, signature, run = device.module.pending_batch(device.domain)
    return {"batch": batch.to_json(), "batch_signature": "0x" + signature.hex(),
            "logs": [{"log": i.log.to_json(), "signature": "0x" + i.signature.hex()} for i in run],
            "certificate": device._cert_pem.decode()}


def test_catalog_lists_published_content_with_price(sp_running: Services, published: dict[str, Any]) -> None:
    items = sp_running.client("alice-phone", "sp").get("/v1/catalog")["items"]
    assert [(i["content_id"], i["price"], i["title"]) for i in items] == [
        ("0x" + published["content_id"].hex(), PRICE, "Film")]


def test_use_is_offline_and_decrypts_downloaded_content(alice: DeviceClient, published: dict[str, Any]) -> None:
    before = alice.balance().spent
    assert alice.use(published["content_id"], 1) == b"a film" * 1000
    assert alice.balance().spent == before + PRICE


def test_upload_replay_returns_same_receipt(sp_running: Services, alice: DeviceClient,
                                            published: dict[str, Any]) -> None:
    alice.use(published["content_id"], 1)
    body = upload_body(alice)
    client = sp_running.client("alice-phone", "sp")
    first, again = client.post("/v1/usage", body), client.post("/v1/usage", body)
    assert first == again
    assert first["acked_through_seq"] == body["batch"]["firstSeq"] + len(body["logs"]) - 1
    alice.module.mark_uploaded(bytes.fromhex(body["batch"]["serial"][2:]), first["acked_through_seq"])


def test_upload_from_another_device_certificate_is_refused(sp_running: Services, alice: DeviceClient,
                                                           published: dict[str, Any]) -> None:
    alice.use(published["content_id"], 1)
    body = upload_body(alice)
    with pytest.raises(IdentityMismatch):
        sp_running.client("bob-tablet", "sp").post("/v1/usage", body)


def signed_upload(services: Services, device: DeviceClient, policy: bytes, seq: int, fee: int,
                  used_at: int) -> dict[str, Any]:
    """A well-signed upload of one usage log built outside the secure module (a misbehaving device)."""
    key = services.consortium.member("alice-phone").eth_private_key()
    serial = device.balance().serial
    receiver = services.client("alice-phone", "sp").get("/v1/status")["address"]
    usage = UsageLog(serial=serial, seq=seq, policy_id=policy, fee=fee, receiver=receiver, used_at=used_at)
    batch = UsageBatch.from_logs([usage])
    return {"batch": batch.to_json(), "batch_signature": "0x" + sign(batch, device.domain, key).hex(),
            "logs": [{"log": usage.to_json(), "signature": "0x" + sign(usage, device.domain, key).hex()}],
            "certificate": device._cert_pem.decode()}


def test_upload_with_fee_below_price_is_refused(sp_running: Services, alice: DeviceClient,
                                                published: dict[str, Any]) -> None:
    alice.upload()
    body = signed_upload(sp_running, alice, published["policy_id"], alice.balance().next_seq, PRICE - 1,
                         int(time.time()))
    with pytest.raises(FeeMismatch) as info:
        sp_running.client("alice-phone", "sp").post("/v1/usage", body)
    assert info.value.fields["expected"] == PRICE and info.value.fields["got"] == PRICE - 1


def test_upload_with_edited_log_is_refused(sp_running: Services, alice: DeviceClient,
                                           published: dict[str, Any]) -> None:
    alice.use(published["content_id"], 1)
    body = upload_body(alice)
    body["logs"][0]["log"]["usedAt"] += 1  # no longer the log the batch packs, nor the one the device signed
    with pytest.raises(InvalidRequest):
        sp_running.client("alice-phone", "sp").post("/v1/usage", body)
    alice.upload()


def test_reused_seq_with_other_payload_is_duplicate(sp_running: Services, alice: DeviceClient,
                                                    published: dict[str, Any]) -> None:
    alice.use(published["content_id"], 1)
    alice.upload()
    last_seq = alice.balance().next_seq - 1
    body = signed_upload(sp_running, alice, published["policy_id"], last_seq, PRICE, 1)
    with pytest.raises(DuplicateMessage):
        sp_running.client("alice-phone", "sp").post("/v1/usage", body)


def test_batch_leaving_a_gap_is_refused(sp_running: Services, alice: DeviceClient, published: dict[str, Any]) -> None:
    body = signed_upload(sp_running, alice, published["policy_id"], alice.balance().next_seq + 5, PRICE,
                         int(time.time()))
    with pytest.raises(SequenceError) as info:
        sp_running.client("alice-phone", "sp").post("/v1/usage", body)
    assert info.value.fields["expected"] == alice.balance().next_seq


def test_acked_upload_survives_kill9_and_is_forwarded(sp_running: Services, alice: DeviceClient,
                                                      published: dict[str, Any]) -> None:
    for _ in range(3):
        alice.use(published["content_id"], 1)
    result = alice.upload()
    assert result.logs >= 3
    sp_running.kill9("sp")
    sp_running.start("sp")
    stub = StubClearingCenter(sp_running)
    stub.start()
    try:
        deadline = time.monotonic() + 20
        while not set(result.receive_log_ids) <= set(stub.received) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert set(result.receive_log_ids) <= set(stub.received)
        status = sp_running.client("studio", "sp").get("/v1/status")["batches"]
        deadline = time.monotonic() + 10
        while status["pending"] + status["forwarded"] and time.monotonic() < deadline:
            time.sleep(0.2)
            status = sp_running.client("studio", "sp").get("/v1/status")["batches"]
        assert status["pending"] == status["forwarded"] == 0 and status["acked"] >= result.batches
    finally:
        stub.stop()


class RogueServiceProvider:
    """Answers like the SP but serves a container whose provider-signed policy is not the one on chain."""

    def __init__(self, real: Any, blob: bytes) -> None:
        self._real, self._blob = real, blob

    def get(self, path: str) -> Any:
        return self._real.get(path)

    def server_identity(self, verifier: Any, expected_role: Role | None = None) -> Any:
        return self._real.server_identity(verifier, expected_role)

    def post(self, path: str, body: dict[str, Any]) -> Any:
        import base64

        answer = dict(self._real.post(path, body))
        if path == "/v1/downloads":
            answer["container_b64"] = base64.b64encode(self._blob).decode()
        return answer

    def close(self) -> None:
        self._real.close()


def test_device_refuses_container_whose_policy_is_not_on_chain(sp_running: Services,
                                                                published: dict[str, Any]) -> None:
    from offchain.trust import container
    from offchain.core.errors import PolicyMismatch

    studio = sp_running.consortium.member("studio")
    cheaper = container.Policy(content_id=published["content_id"], version=1, price=PRICE - 1,
                               payees=(container.Payee(studio.eth_address, 10_000),), provider=studio.eth_address)
    blob, _key = container.package(b"a film" * 1000, published["content_id"], cheaper, studio.credentials())
    device = open_device(sp_running, "bob-tablet", wrap_sp=lambda real: RogueServiceProvider(real, blob))
    try:
        with pytest.raises(PolicyMismatch):
            device.download(published["content_id"], 1)
        assert not device._content_path(published["content_id"], 1).exists()  # nothing stored
    finally:
        device.close()


def wait_until(predicate: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_batch_rejected_for_good_is_parked_and_not_reposted(sp_running: Services, alice: DeviceClient,
                                                            published: dict[str, Any]) -> None:
    alice.use(published["content_id"], 1)
    doomed = alice.upload().receive_log_ids
    alice.use(published["content_id"], 1)
    flaky = alice.upload().receive_log_ids
    assert len(doomed) == len(flaky) == 1
    stub = StubClearingCenter(sp_running)
    stub.refuse = {doomed[0]: ("signature_invalid", "the device signature does not verify"),
                   flaky[0]: ("chain_unreachable", "the CC's chain node did not answer")}
    status = sp_running.client("studio", "sp")
    stub.start()
    try:
        wait_until(lambda: stub.posted[flaky[0]] >= 3, "the transiently refused batch to be retried")
        assert stub.posted[doomed[0]] == 1  # refused for good: posted once, never again
        answer = status.get("/v1/status")
        assert answer["batches"]["rejected"] >= 1
        parked = {r["receive_log_id"]: r for r in answer["rejected"]}
        assert parked[doomed[0]]["error"] == "signature_invalid"
        assert parked[doomed[0]]["message"] == "the device signature does not verify"
        assert flaky[0] not in parked
        stub.refuse.pop(flaky[0])  # the CC's chain node is back
        wait_until(lambda: flaky[0] in stub.received, "the transiently refused batch to be accepted")
        wait_until(lambda: status.get("/v1/status")["batches"]["pending"] == 0, "nothing left to forward")
        assert stub.posted[doomed[0]] == 1 and doomed[0] not in stub.received
    finally:
        stub.stop()


# --- usage signature check (pure, no service) -----------------------------------------------------------------------
def signed_run(count: int = 3) -> tuple[Any, str, dict[str, Any], list[tuple[dict[str, Any], str]]]:
    """(domain, device address, batch JSON + signature, [(log JSON, signature)]) of one device's run."""
    import coincurve

    from offchain.core.messages import Domain, address_from_public_key

    domain = Domain(chain_id=31337, verifying_contract="0x" + "11" * 20)
    key = keccak(b"test device key")
    device = address_from_public_key(coincurve.PrivateKey(key).public_key.format(compressed=False))
    logs = [UsageLog(serial=keccak(b"serial"), seq=seq, policy_id=keccak(b"policy"), fee=PRICE,
                     receiver="0x" + "22" * 20, used_at=1_700_000_000) for seq in range(count)]
    batch = UsageBatch.from_logs(logs)
    signed = {"batch": batch.to_json(), "batch_signature": "0x" + sign(batch, domain, key).hex()}
    return domain, device, signed, [(item.to_json(), "0x" + sign(item, domain, key).hex()) for item in logs]


def test_usage_check_accepts_equal_log_in_other_spelling() -> None:
    from offchain.service_provider.agent import check_usage_signatures

    domain, device, signed, logs = signed_run()
    logs[1][0]["receiver"] = logs[1][0]["receiver"].lower()  # same log, not the canonical JSON
    checked = check_usage_signatures(signed["batch"], signed["batch_signature"], logs, domain, device)
    assert [item["receiver"] for item in checked.log_json] == ["0x" + "22" * 20] * 3  # rows store canonical JSON
    assert len(checked.payload_hashes) == 3


def test_usage_check_refuses_log_signed_for_another_log() -> None:
    from offchain.core.errors import SignerMismatch
    from offchain.service_provider.agent import check_usage_signatures

    domain, device, signed, logs = signed_run()
    logs[0], logs[1] = (logs[0][0], logs[1][1]), (logs[1][0], logs[0][1])  # each log carries the other's signature
    with pytest.raises(SignerMismatch) as info:
        check_usage_signatures(signed["batch"], signed["batch_signature"], logs, domain, device)
    assert info.value.fields["index"] == 0


def test_usage_check_refuses_missing_log() -> None:
    from offchain.service_provider.agent import check_usage_signatures

    domain, device, signed, logs = signed_run()
    with pytest.raises(InvalidRequest):
        check_usage_signatures(signed["batch"], signed["batch_signature"], logs[:-1], domain, device)


def test_usage_check_in_worker_process_equals_in_thread() -> None:
    from offchain.service_provider.agent import check_usage_signatures
    from offchain.service_provider.api import usage_verify_pool

    domain, device, signed, logs = signed_run()
    args = (signed["batch"], signed["batch_signature"], logs, domain, device)
    pool = usage_verify_pool(1)
    try:
        assert pool.submit(check_usage_signatures, *args).result(60) == check_usage_signatures(*args)
    finally:
        pool.shutdown()


def test_upload_for_a_serial_of_another_device_is_refused_when_serial_is_on_chain(
        sp_running: Services, published: dict[str, Any], w3: Web3) -> None:
    """bob's device must not squat alice's serial at the SP (its rows would block alice's real upload)."""
    alice_address = sp_running.consortium.member("alice-phone").eth_address
    serial, user_hash = keccak(b"alice-serial-on-chain"), keccak(b"alice")
    sp_running.chain("bank", w3).record_deposit(keccak(b"squat-deposit"), user_hash, 10 * PRICE, keccak(b"ref"))
    sp_running.chain("cc", w3).issue(serial, alice_address, user_hash, 10 * PRICE, int(time.time()) + 86400)
    bob = sp_running.consortium.member("bob-tablet")
    receiver = sp_running.client("bob-tablet", "sp").get("/v1/status")["address"]
    usage = UsageLog(serial=serial, seq=0, policy_id=published["policy_id"], fee=PRICE, receiver=receiver,
                     used_at=int(time.time()))
    batch = UsageBatch.from_logs([usage])
    domain, key = sp_running.consortium.domain, bob.eth_private_key()
    body = {"batch": batch.to_json(), "batch_signature": "0x" + sign(batch, domain, key).hex(),
            "logs": [{"log": usage.to_json(), "signature": "0x" + sign(usage, domain, key).hex()}],
            "certificate": bob.cert_path.read_text()}
    with pytest.raises(IdentityMismatch) as info:
        sp_running.client("bob-tablet", "sp").post("/v1/usage", body)
    assert info.value.fields["expected"] == alice_address


def test_upload_for_a_serial_another_device_already_uploaded_is_refused(
        sp_running: Services, alice: DeviceClient, published: dict[str, Any]) -> None:
    alice.use(published["content_id"], 1)
    alice.upload()
    bob = sp_running.consortium.member("bob-tablet")
    receiver = sp_running.client("bob-tablet", "sp").get("/v1/status")["address"]
    usage = UsageLog(serial=alice.balance().serial, seq=alice.balance().next_seq, policy_id=published["policy_id"],
                     fee=PRICE, receiver=receiver, used_at=int(time.time()))
    batch = UsageBatch.from_logs([usage])
    domain, key = sp_running.consortium.domain, bob.eth_private_key()
    body = {"batch": batch.to_json(), "batch_signature": "0x" + sign(batch, domain, key).hex(),
            "logs": [{"log": usage.to_json(), "signature": "0x" + sign(usage, domain, key).hex()}],
            "certificate": bob.cert_path.read_text()}
    with pytest.raises(IdentityMismatch):
        sp_running.client("bob-tablet", "sp").post("/v1/usage", body)


class OverAckingServiceProvider(RogueServiceProvider):
    """Answers usage uploads with an acked_through_seq beyond the batch it was sent."""

    def __init__(self, real: Any, extra: int) -> None:
        super().__init__(real, b"")
        self._extra = extra

    def post(self, path: str, body: dict[str, Any]) -> Any:
        answer = dict(self._real.post(path, body))
        if path == "/v1/usage":
            answer["acked_through_seq"] = int(answer["acked_through_seq"]) + self._extra
        return answer


def test_upload_ack_beyond_the_sent_batch_does_not_mark_unsent_logs(sp_running: Services, alice: DeviceClient,
                                                                     alice_sp: SpRelay,
                                                                     published: dict[str, Any]) -> None:
    """An SP acking seqs it never received must not make the device drop them (they may be another SP's)."""
    alice.upload()
    for _ in range(3):
        alice.use(published["content_id"], 1)
    alice_sp.rogue = OverAckingServiceProvider(alice_sp.real, extra=2)
    try:
        with pytest.raises(SequenceError):
            alice.upload(max_logs=1)
    finally:
        alice_sp.rogue = None
    assert alice.balance().pending_count == 3  # nothing marked: the answer did not match the batch
    assert alice.upload(max_logs=1).logs == 3  # the same one-log batch again first: the SP's same answer


class AckLosingServiceProvider(RogueServiceProvider):
    """Delivers the first usage upload to the SP, then loses its answer (the connection dropped)."""

    def __init__(self, real: Any) -> None:
        super().__init__(real, b"")
        self.lost = 0

    def post(self, path: str, body: dict[str, Any]) -> Any:
        answer = self._real.post(path, body)
        if path == "/v1/usage" and not self.lost:
            self.lost += 1
            from offchain.core.errors import ServiceUnavailable

            raise ServiceUnavailable("connection dropped before the answer", url=path, reason="test")
        return answer


def test_upload_after_lost_ack_and_further_use_is_not_stuck(sp_running: Services, alice: DeviceClient,
                                                            alice_sp: SpRelay, published: dict[str, Any]) -> None:
    """The SP kept a batch whose ack was lost; the device, having used content since, re-batches from the same
    seq: that must not block its uploads for good."""
    from offchain.core.errors import ServiceUnavailable

    alice.upload()
    alice.use(published["content_id"], 1)
    alice_sp.rogue = AckLosingServiceProvider(alice_sp.real)
    try:
        with pytest.raises(ServiceUnavailable):
            alice.upload()
    finally:
        alice_sp.rogue = None
    alice.use(published["content_id"], 1)
    assert alice.upload().logs >= 1
    assert alice.balance().pending_count == 0


class ImpostorServer:
    """An mTLS server of our CA presenting another member's certificate (alice's phone) on the URL a device uses
    for its SP or CC; it answers like a compliant peer would and records every request that reaches it."""

    def __init__(self, services: Services, member_id: str, answers: dict[str, Any]) -> None:
        from offchain.operator.provision import free_port

        member = services.consortium.member(member_id)
        self._paths = (member.cert_path, member.key_path, services.consortium.root_path)
        self._answers = answers
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.requests: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    async def _answer(self, request: web.Request) -> web.Response:
        self.requests.append(f"{request.method} {request.path}")
        return web.json_response(self._answers.get(request.path, {}))

    def __enter__(self) -> ImpostorServer:
        async def boot() -> None:
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", self._answer)
            self._runner = web.AppRunner(app)
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", self.port,
                              ssl_context=tls.server_ssl_context(*self._paths)).start()

        self._thread.start()
        asyncio.run_coroutine_threadsafe(boot(), self._loop).result(10)
        return self

    def __exit__(self, *_exc: Any) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


def device_pointed_at(services: Services, member_id: str, **urls: str) -> DeviceClient:
    consortium = services.consortium
    settings = load_settings(DeviceSettings, consortium.settings_paths[member_id]).model_copy(update=urls)
    return DeviceClient.from_settings(settings, consortium.passphrase, consortium.member(member_id).user_id)


def test_download_refused_when_sp_url_serves_another_members_certificate(sp_running: Services,
                                                                         published: dict[str, Any]) -> None:
    sp_address = sp_running.consortium.of_role(Role.SERVICE_PROVIDER)[0].eth_address
    with ImpostorServer(sp_running, "alice-phone", {"/v1/status": {"address": sp_address}}) as impostor:
        device = device_pointed_at(sp_running, "bob-tablet", sp_url=impostor.url)
        try:
            with pytest.raises(WrongRole) as info:
                device.download(published["content_id"], 1)
            with pytest.raises(WrongRole):
                device.upload()
        finally:
            device.close()
    assert info.value.fields["expected_role"] == "SERVICE_PROVIDER"
    assert impostor.requests == []  # refused at the handshake's certificate, before any request


def test_issue_log_refused_when_cc_url_serves_another_members_certificate(sp_running: Services) -> None:
    with ImpostorServer(sp_running, "alice-phone", {}) as impostor:
        device = device_pointed_at(sp_running, "bob-tablet", cc_url=impostor.url)
        try:
            with pytest.raises(WrongRole) as info:
                device.request_issue_log(10)
            with pytest.raises(WrongRole):
                device.renew(10)
        finally:
            device.close()
    assert info.value.fields["expected_role"] == "CLEARING_CENTER"
    assert impostor.requests == []


def test_download_takes_receiver_from_sp_certificate(sp_running: Services, alice: DeviceClient,
                                                     published: dict[str, Any]) -> None:
    sp_address = sp_running.consortium.of_role(Role.SERVICE_PROVIDER)[0].eth_address
    alice.download(published["content_id"], 1)
    meta = json.loads(alice._key_path(published["content_id"], 1).read_text())
    assert meta["receiver"] == sp_address
