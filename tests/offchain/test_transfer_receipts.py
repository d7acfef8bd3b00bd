"""The CC transfer worker's side of a bank transfer, in-process: the bank's signed TransferReceipt is accepted only
for the very request (id and amount) it answers, `deliver` counts one receipt per request receipted, and a failing
request backs off exponentially (0.5 s, 1 s, 2 s, ...) by its own attempt count.

Doubles: a chain with a deployment and a domain (nothing is sent), a bank client that answers from a script, a
finality watch that calls everything final, a recording log. Store (SQLite), certificates and signatures are real.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import pytest

from offchain import storage
from offchain.clearing_center.store import CcStore
from offchain.clearing_center.transfers import TransferWorker
from offchain.core.errors import ClearhouseError, DuplicateMessage, ServiceUnavailable
from offchain.core.messages import Domain, Role, TransferReceipt, TransferRequest
from offchain.trust.certs import CertificateVerifier, Envelope

Member = Any  # tests/offchain/conftest.py Member
DOMAIN = Domain(chain_id=31337, verifying_contract="0x" + "ce" * 20)
REQ_A = bytes.fromhex("a1" * 32)
REQ_B = bytes.fromhex("b2" * 32)
REF_1 = bytes.fromhex("f1" * 32)
REF_2 = bytes.fromhex("f2" * 32)
PAYEE = "0x" + "ab" * 20
AMOUNT = 4_200


class Clock:
    def __init__(self) -> None:
        self.now = 10_000.0

    def __call__(self) -> float:
        return self.now


class DeploymentChain:
    """ChainWriter double: the worker reads the deployment block and the EIP-712 domain; nothing is sent."""

    def __init__(self) -> None:
        self.deployment = SimpleNamespace(deploy_block=1)
        self.domain = DOMAIN
        self.w3 = None


class AllFinal:
    def is_final(self, tx_hash: str) -> bool:
        return True


class RecordingLog:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def info(self, event: str, **kw: Any) -> None:
        self.events.append((event, kw))

    def warning(self, event: str, **kw: Any) -> None:
        self.events.append((event, kw))

    def of(self, event: str) -> list[dict[str, Any]]:
        return [kw for name, kw in self.events if name == event]


class ScriptedBank:
    """JsonClient double: `answer(request)` gives the JSON body (or raises); records every request it got."""

    def __init__(self, verifier: CertificateVerifier, answer: Callable[[TransferRequest], Any]) -> None:
        self.verifier = verifier
        self.answer = answer
        self.got: list[TransferRequest] = []

    async def post(self, path: str, body: dict[str, Any]) -> Any:
        assert path == "/v1/transfers"
        request, sender = Envelope.from_json(body["request"]).open(self.verifier, DOMAIN, Role.CLEARING_CENTER)
        assert isinstance(request, TransferRequest) and sender.member_id == "cc-1"
        self.got.append(request)
        return self.answer(request)


def receipt_answer(bank: Member, request_id: bytes, amount: int, bank_ref: bytes = REF_1) -> dict[str, Any]:
    receipt = TransferReceipt(request_id=request_id, bank_ref=bank_ref, amount=amount, confirmed_at=9_999)
    return {"receipt": Envelope.seal(receipt, DOMAIN, bank.eth_key, bank.cert_pem).to_json()}


@pytest.fixture
def store(tmp_path: Path) -> CcStore:
    cc = CcStore(storage.make_engine(f"sqlite:///{tmp_path / 'cc.db'}"), lambda: 1_000)
    cc.create_schema()
    return cc


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def log() -> RecordingLog:
    return RecordingLog()


@pytest.fixture
def worker(store: CcStore, clearing_center_member: Member, verifier: CertificateVerifier, clock: Clock,
           log: RecordingLog) -> TransferWorker:
    return TransferWorker(store, DeploymentChain(), verifier, clearing_center_member.eth_key,  # type: ignore[arg-type]
                          clearing_center_member.cert_pem, interval_s=3600.0, threshold_minor=0, clock=clock,
                          max_backoff_s=60.0, log=log, finality=AllFinal())  # type: ignore[arg-type]


def request(request_id: bytes = REQ_A, amount: int = AMOUNT) -> TransferRequest:
    return TransferRequest(request_id=request_id, payee=PAYEE, amount=amount)


# --- verify_receipt -----------------------------------------------------------------------------------------------
def test_matching_receipt_is_accepted_with_the_banks_reference(worker: TransferWorker, bank_member: Member,
                                                                clock: Clock) -> None:
    row = worker.verify_receipt(receipt_answer(bank_member, REQ_A, AMOUNT), request())
    assert (row.request_id, row.bank_ref, row.amount, row.confirmed_at) == (REQ_A, REF_1, AMOUNT, 9_999)
    assert (row.bank_member_id, row.received_at) == (bank_member.credentials.member_id, int(clock.now))


@pytest.mark.parametrize("what", ["another request id", "another amount", "not a receipt"])
def test_receipt_for_another_request_is_refused_naming_the_request(what: str, worker: TransferWorker,
                                                                    bank_member: Member) -> None:
    if what == "another request id":
        answer = receipt_answer(bank_member, REQ_B, AMOUNT)
    elif what == "another amount":
        answer = receipt_answer(bank_member, REQ_A, AMOUNT - 1)
    else:  # the bank signed the request itself back: a valid envelope, not a receipt
        answer = {"receipt": Envelope.seal(request(), DOMAIN, bank_member.eth_key, bank_member.cert_pem).to_json()}
    with pytest.raises(DuplicateMessage) as caught:
        worker.verify_receipt(answer, request())
    assert (caught.value.kind, caught.value.key) == ("transfer_receipt", "0x" + REQ_A.hex())


def test_a_second_receipt_with_another_bank_ref_is_refused_by_the_store(worker: TransferWorker, store: CcStore,
                                                                        bank_member: Member) -> None:
    store.record_transfer_requests([(REQ_A, PAYEE, AMOUNT, "0x" + "01" * 32)])
    store.record_transfer_receipt(worker.verify_receipt(receipt_answer(bank_member, REQ_A, AMOUNT), request()))
    # verify_receipt cannot know the bank's reference in advance; binding the request to one is the store's job
    other = worker.verify_receipt(receipt_answer(bank_member, REQ_A, AMOUNT, bank_ref=REF_2), request())
    with pytest.raises(DuplicateMessage) as caught:
        store.record_transfer_receipt(other)
    assert (caught.value.kind, caught.value.stored_ref, caught.value.got_ref) == ("transfer_request", REF_1, REF_2)
    store.record_transfer_receipt(worker.verify_receipt(receipt_answer(bank_member, REQ_A, AMOUNT), request()))
    assert store.open_transfer_requests() == []


# --- deliver ------------------------------------------------------------------------------------------------------
def test_deliver_counts_one_receipt_per_receipted_request(worker: TransferWorker, store: CcStore,
                                                          bank_member: Member, verifier: CertificateVerifier) -> None:
    bank = ScriptedBank(verifier, lambda r: receipt_answer(bank_member, r.request_id, r.amount))
    assert asyncio.run(worker.deliver(bank)) == 0  # nothing open: nothing counted
    store.record_transfer_requests([(REQ_A, PAYEE, AMOUNT, "0x" + "01" * 32),
                                    (REQ_B, PAYEE, AMOUNT + 1, "0x" + "02" * 32)])
    assert asyncio.run(worker.deliver(bank)) == 2
    assert sorted((r.request_id, r.amount) for r in bank.got) == [(REQ_A, AMOUNT), (REQ_B, AMOUNT + 1)]
    assert store.open_transfer_requests() == []
    assert asyncio.run(worker.deliver(bank)) == 0 and len(bank.got) == 2  # receipted: never sent again


def test_deliver_refuses_a_mismatched_receipt_and_keeps_the_request_open(worker: TransferWorker, store: CcStore,
                                                                         bank_member: Member, log: RecordingLog,
                                                                         verifier: CertificateVerifier) -> None:
    bank = ScriptedBank(verifier, lambda r: receipt_answer(bank_member, r.request_id, r.amount - 1))
    store.record_transfer_requests([(REQ_A, PAYEE, AMOUNT, "0x" + "01" * 32)])
    assert asyncio.run(worker.deliver(bank)) == 0
    assert [(r.request_id, r.status) for r in store.open_transfer_requests()] == [(REQ_A, "sent_to_bank")]
    assert [(f["request_id"], f["error"]) for f in log.of("transfers.delivery_failed")] == [
        ("0x" + REQ_A.hex(), DuplicateMessage.code)]


def test_failing_request_backs_off_by_its_own_attempt_count(worker: TransferWorker, store: CcStore, clock: Clock,
                                                            bank_member: Member, log: RecordingLog,
                                                            verifier: CertificateVerifier) -> None:
    down = {"bank": True}

    def answer(r: TransferRequest) -> Any:
        if down["bank"]:
            raise ServiceUnavailable("bank down", url="https://bank.test")
        return receipt_answer(bank_member, r.request_id, r.amount)

    bank = ScriptedBank(verifier, answer)
    store.record_transfer_requests([(REQ_A, PAYEE, AMOUNT, "0x" + "01" * 32)])
    start = clock.now
    attempts_at: list[float] = []
    # attempt n (n = 0, 1, ...) fails and waits 0.5 * 2**n s; look just before and exactly at each due time
    for due in (0.0, 0.5, 1.5, 3.5, 7.5):
        if due:
            clock.now = start + due - 0.01
            assert asyncio.run(worker.deliver(bank)) == 0
        clock.now = start + due
        before = len(bank.got)
        assert asyncio.run(worker.deliver(bank)) == 0
        if len(bank.got) > before:
            attempts_at.append(due)
    assert attempts_at == [0.0, 0.5, 1.5, 3.5, 7.5] and len(bank.got) == 5
    assert [f["retry_in_s"] for f in log.of("transfers.delivery_failed")] == [0.5, 1.0, 2.0, 4.0, 8.0]
    assert all(f["error"] == ServiceUnavailable.code for f in log.of("transfers.delivery_failed"))
    down["bank"] = False
    clock.now = start + 15.5
    assert asyncio.run(worker.deliver(bank)) == 1  # due again: receipted, counted once
    assert store.open_transfer_requests() == []
    assert issubclass(ServiceUnavailable, ClearhouseError)
