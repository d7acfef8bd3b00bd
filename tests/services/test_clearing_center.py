"""Clearing center agent on a real chain (anvil + deployed Clearhouse): deposits, issue logs, renewals (claims
12-14), receive-log idempotency and exactly-once settlement; plus one round trip over real mutual TLS.

Peers are CA-issued certificates for the chain actors of tests/conftest.py; the agent is called the way the HTTP
handlers call it, with the verified peer identity.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from offchain import storage
from offchain.clearing_center.records import ReceiveLogRecord
from offchain.core import messages
from offchain.trust.ca import CertificateAuthority, MemberCredentials
from offchain.clearing_center.store import CcStore
from offchain.clearing_center.tables import CcTable
from offchain.core.types import user_id_hash
from offchain.trust.certs import CertificateVerifier, Envelope, MemberIdentity
from offchain.chain import ClearhouseChain
from offchain.clearing_center.agent import ClearingCenter
from offchain.clearing_center.api import DepositNotice, IssueBody, ReceiveItem, RenewBody, build_app
from offchain.core.errors import (AllowanceExceeded, ContractReverted, DepositNotProven, DuplicateMessage, IdentityMismatch,
                             StatementRejected, TransactionPending)
from offchain.transport.client import JsonClient
from offchain.core.messages import BalanceStatement, IssueLog, ReceiveLog, Role, UsageBatch, UsageLog
from offchain.core.settings import ClearingCenterSettings
from offchain.clearing_center.settlement import SettlementWorker

PRICE = 25
ROLES = {"clearing_center": Role.CLEARING_CENTER, "provider": Role.SERVICE_PROVIDER, "bank": Role.BANK,
         "device": Role.DEVICE, "device2": Role.DEVICE}
USERS = {"device": "alice", "device2": "bob"}  # the user the CA names in each device certificate


@dataclass
class CcWorld:
    """One CC on the test chain with its CA, member certificates, store and helpers for each actor's part."""

    env: Any
    ca: CertificateAuthority
    creds: dict[str, MemberCredentials]
    peers: dict[str, MemberIdentity]
    store: CcStore
    cc: ClearingCenter
    policy_id: bytes
    tmp: Path

    @property
    def domain(self) -> messages.Domain:
        return self.env.deployment.domain

    def deposit(self, user_id: str, amount: int, tag: str = "d1") -> DepositNotice:
        """The bank records the deposit on chain and notifies the CC; returns the notice."""
        deposit_id, bank_ref = messages.keccak(f"dep:{user_id}:{tag}".encode()), messages.keccak(tag.encode())
        receipt = self.env.client("bank").record_deposit(deposit_id, user_id_hash(user_id), amount, bank_ref)
        notice = DepositNotice(deposit_id="0x" + deposit_id.hex(), user_id=user_id, amount=amount,
                               bank_ref="0x" + bank_ref.hex(), tx_hash="0x" + bytes(receipt["transactionHash"]).hex())
        self.cc.credit_deposit(notice, self.peers["bank"])
        return notice

    def issue(self, request_id: str, user_id: str = "alice", amount: int | None = None,
              device: str = "device") -> tuple[IssueLog, dict[str, Any]]:
        answer = self.cc.issue(IssueBody(request_id=request_id, user_id=user_id, amount=amount), self.peers[device])
        log, _cc = Envelope.from_json(answer["issue_log"]).open(self.verifier(), self.domain, Role.CLEARING_CENTER)
        return log, answer

    def verifier(self) -> CertificateVerifier:
        return CertificateVerifier(self.ca.root_pem, self.ca.crl_pem())

    def batch(self, serial: bytes, first_seq: int, count: int, device: str = "device") -> tuple[UsageBatch, bytes]:
        now = int(time.time())
        logs = [UsageLog(serial=serial, seq=first_seq + i, policy_id=self.policy_id, fee=PRICE,
                         receiver=self.peers["provider"].eth_address, used_at=now) for i in range(count)]
        batch = UsageBatch.from_logs(logs)
        return batch, messages.sign(batch, self.domain, self.env.actors[device].key)

    def receive_item(self, batch: UsageBatch, device_sig: bytes, device: str = "device",
                     received_at: int | None = None) -> ReceiveItem:
        receive_log = ReceiveLog(usage_batch=batch.struct_hash(), payer=self.peers[device].eth_address,
                                 received_at=received_at or int(time.time()))
        envelope = Envelope.seal(receive_log, self.domain, self.env.actors["provider"].key,
                                 self.creds["provider"].cert_pem)
        return ReceiveItem(receive_log=envelope.to_json(), usage_batch=batch.to_json(),
                           device_signature="0x" + device_sig.hex(),
                           device_certificate=self.creds[device].cert_pem.decode())

    def receive(self, *items: ReceiveItem) -> dict[str, Any]:
        return self.cc.receive_logs(list(items), self.peers["provider"])

    def statement(self, serial: bytes, next_seq: int, spent: int, device: str = "device") -> dict[str, Any]:
        statement = BalanceStatement(serial=serial, next_seq=next_seq, spent=spent, attested_at=int(time.time()))
        return Envelope.seal(statement, self.domain, self.env.actors[device].key,
                             self.creds[device].cert_pem).to_json()


def make_world(chain_env: Any, tmp: Path, database_url: str | None = None) -> CcWorld:
    ca = CertificateAuthority.create(tmp / "ca")
    creds = {name: ca.issue_member(name, role, chain_env.actors[name].address, user_id=USERS.get(name))
             for name, role in ROLES.items()}
    verifier = CertificateVerifier(ca.root_pem, ca.crl_pem())
    peers = {name: verifier.verify(c.cert_pem) for name, c in creds.items()}
    store = CcStore(storage.make_engine(database_url or f"sqlite:///{tmp}/cc.db"), time.time)
    store.create_schema()
    cc = ClearingCenter(store, chain_env.client("clearing_center"), verifier, chain_env.actors["clearing_center"].key,
                        creds["clearing_center"].cert_pem, issue_expiry_s=3600)
    content_id = messages.keccak(b"content:song")
    chain_env.client("content_provider").register_policy(
        content_id, 1, PRICE, [(chain_env.actors["content_provider"].address, 10_000)], bytes(32))
    return CcWorld(chain_env, ca, creds, peers, store, cc, messages.policy_id(content_id, 1), tmp)


@pytest.fixture()
def world(chain_env: Any, tmp_path: Path, db_url: str) -> Iterator[CcWorld]:
    """The CC on SQLite and on PostgreSQL (the `db_url` parameters); tables are dropped afterwards."""
    made = make_world(chain_env, tmp_path, db_url)
    yield made
    CcTable.metadata.drop_all(made.store.engine)
    made.store.engine.dispose()


# --- deposits (claim 4) --------------------------------------------------------------------------------------------
def test_deposit_credited_once_after_event_check(world: CcWorld) -> None:
    notice = world.deposit("alice", 1_000)
    first = world.cc.credit_deposit(notice, world.peers["bank"])
    assert world.cc.credit_deposit(notice, world.peers["bank"]) == first  # same notice: same answer, one credit
    assert world.store.balance("alice").deposited == 1_000


def test_deposit_rejected_when_event_disagrees(world: CcWorld) -> None:
    deposit_id, bank_ref = messages.keccak(b"dep:x"), messages.keccak(b"ref:x")
    receipt = world.env.client("bank").record_deposit(deposit_id, user_id_hash("alice"), 500, bank_ref)
    notice = DepositNotice(deposit_id="0x" + deposit_id.hex(), user_id="alice", amount=5_000,
                           bank_ref="0x" + bank_ref.hex(), tx_hash="0x" + bytes(receipt["transactionHash"]).hex())
    with pytest.raises(DepositNotProven) as caught:
        world.cc.credit_deposit(notice, world.peers["bank"])
    assert caught.value.fields["reason"] == "amount mismatch"
    with pytest.raises(DepositNotProven):  # a real event, but the notifying bank is not the one that recorded it
        world.cc.credit_deposit(notice.model_copy(update={"amount": 500}), world.peers["provider"])
    assert world.store.balance("alice").deposited == 0


# --- issue logs (claim 12) -----------------------------------------------------------------------------------------
def test_issue_anchored_on_chain_and_idempotent(world: CcWorld) -> None:
    world.deposit("alice", 1_000)
    log, answer = world.issue("r1", amount=600)
    on_chain = world.env.client("clearing_center").issue_log(log.serial)
    assert (on_chain.device, on_chain.cap, on_chain.expires_at) == (world.peers["device"].eth_address, 600,
                                                                     log.expires_at)
    assert world.cc.issue(IssueBody(request_id="r1", user_id="alice", amount=600), world.peers["device"]) == answer
    with pytest.raises(DuplicateMessage):
        world.cc.issue(IssueBody(request_id="r1", user_id="alice", amount=500), world.peers["device"])
    with pytest.raises(AllowanceExceeded):
        world.issue("r2", amount=401)
    rest, _ = world.issue("r3")  # default: everything still unallocated
    assert rest.cap == 400 and world.store.balance("alice").available == 0


def test_issue_refused_when_body_names_another_user(world: CcWorld) -> None:
    world.deposit("alice", 100)
    world.deposit("bob", 100, tag="d2")
    allocated_on_chain = world.env.client("clearing_center").user_funds(user_id_hash("alice")).allocated
    with pytest.raises(IdentityMismatch) as info:  # bob's device (its certificate names bob) asks for alice's money
        world.issue("r1", user_id="alice", amount=10, device="device2")
    assert (info.value.fields["expected_user"], info.value.fields["got_user"]) == ("bob", "alice")
    assert world.store.balance("alice").available == 100  # nothing allocated
    assert world.store.issue_request(world.peers["device2"].eth_address, "r1") is None
    assert world.store.device_user(world.peers["device2"].eth_address) is None  # and the device is not bound
    assert world.env.client("clearing_center").user_funds(user_id_hash("alice")).allocated == allocated_on_chain
    world.issue("r2", user_id="alice", amount=10)  # alice's own device still can


def test_issue_user_comes_from_the_device_certificate(world: CcWorld) -> None:
    world.deposit("bob", 100, tag="d2")
    log, _ = world.issue("r1", user_id="bob", amount=10, device="device2")
    assert log.user_id_hash == user_id_hash("bob")
    assert world.store.device_user(world.peers["device2"].eth_address) == "bob"


def test_user_view_refused_when_device_asks_for_another_user(world: CcWorld) -> None:
    world.deposit("alice", 100)
    with pytest.raises(IdentityMismatch):
        world.cc.user_view("alice", world.peers["device2"])
    assert world.cc.user_view("alice", world.peers["device"])["user_id"] == "alice"


# --- renewal (claims 13, 14) ---------------------------------------------------------------------------------------
def test_renew_tops_up_in_place_when_everything_settled(world: CcWorld) -> None:
    world.deposit("alice", 1_000)
    log, _ = world.issue("r1", amount=500)
    world.deposit("alice", 300, tag="d2")
    answer = world.cc.renew(RenewBody(request_id="n1", statement=world.statement(log.serial, 0, 0), amount=300),
                            world.peers["device"])
    renewed, _ = Envelope.from_json(answer["issue_log"]).open(world.verifier(), world.domain, Role.CLEARING_CENTER)
    assert answer["mode"] == "top_up" and renewed.serial == log.serial
    assert (renewed.cap, renewed.carried) == (800, 500)  # cap = attested spent 0 + carried 500 + new money 300
    assert world.env.client("clearing_center").issue_log(log.serial).cap == 800
    assert world.store.balance("alice").available == 1_300 - 800


def test_renew_issues_new_serial_while_spending_unsettled(world: CcWorld) -> None:
    world.deposit("alice", 1_000)
    log, _ = world.issue("r1", amount=500)
    body = RenewBody(request_id="n1", statement=world.statement(log.serial, 2, 2 * PRICE), amount=200)
    answer = world.cc.renew(body, world.peers["device"])
    renewed, _ = Envelope.from_json(answer["issue_log"]).open(world.verifier(), world.domain, Role.CLEARING_CENTER)
    assert answer["mode"] == "new_serial" and renewed.serial != log.serial
    assert renewed.previous_serial == log.serial and renewed.carried == 500 - 2 * PRICE
    assert renewed.cap == 200 + 500 - 2 * PRICE
    old = world.env.client("clearing_center").issue_log(log.serial)
    assert old.closed and old.seq_limit == 2
    assert world.cc.renew(body, world.peers["device"]) == answer  # the same request: the same answer
    with pytest.raises(StatementRejected):  # the old log is closed now
        world.cc.renew(RenewBody(request_id="n2", statement=world.statement(log.serial, 2, 2 * PRICE)),
                       world.peers["device"])


def test_renew_refuses_statement_signed_by_another_device(world: CcWorld) -> None:
    world.deposit("alice", 1_000)
    log, _ = world.issue("r1", amount=500)
    forged = world.statement(log.serial, 0, 0, device="device2")
    with pytest.raises(IdentityMismatch):
        world.cc.renew(RenewBody(request_id="n1", statement=forged), world.peers["device"])


# --- crash-safe renewals: the plan row is the outbox -------------------------------------------------------------
class SimulatedCrash(Exception):
    """The CC dies after broadcasting its transaction and before it records the receipt."""


def crash_before_receipt(_tx_hash: str) -> Any:
    raise SimulatedCrash()


@contextmanager
def manual_mining(w3: Any) -> Iterator[None]:
    """Transactions stay pending until `evm_mine`; automine is back on afterwards (pending ones mined first)."""
    w3.provider.make_request("evm_setAutomine", [False])
    try:
        yield
    finally:
        w3.provider.make_request("evm_mine", [])
        w3.provider.make_request("evm_setAutomine", [True])


def top_up_request(world: CcWorld) -> tuple[IssueLog, RenewBody]:
    """Alice holds a 500 cap and 300 new deposits; the request tops the log up by 300."""
    world.deposit("alice", 1_000)
    log, _ = world.issue("r1", amount=500)
    world.deposit("alice", 300, tag="d2")
    return log, RenewBody(request_id="n1", statement=world.statement(log.serial, 0, 0), amount=300)


def cc_instance(world: CcWorld, chain: ClearhouseChain | None = None, **options: Any) -> ClearingCenter:
    """Another CC process on the same database and key: `chain` defaults to the shared chain client."""
    return ClearingCenter(world.store, chain or world.env.client("clearing_center"), world.cc.verifier,
                          world.env.actors["clearing_center"].key, world.creds["clearing_center"].cert_pem,
                          issue_expiry_s=3600, **options)


def crashed_top_up(world: CcWorld, body: RenewBody) -> Any:
    """The top-up is broadcast, then the CC crashes while it is pending (call inside `manual_mining`); returns
    the stored plan."""
    crashing = cc_instance(world, wait_receipt=crash_before_receipt)
    with pytest.raises(SimulatedCrash):
        crashing.renew(body, world.peers["device"])
    plan = world.store.issue_request(world.peers["device"].eth_address, "n1")
    assert plan is not None and plan.status == "planned" and plan.tx_hash is not None and plan.raw_tx
    return plan


def assert_topped_up_once(world: CcWorld, serial: bytes) -> None:
    chain = world.env.client("clearing_center")
    assert chain.issue_log(serial).cap == 800  # 500 + the 300 new money, once
    assert chain.user_funds(user_id_hash("alice")).allocated == 800
    renewals = chain.contract.events.IssueLogRenewed().get_logs(from_block=world.env.deployment.deploy_block)
    assert len(renewals) == 1
    allocations = [e["amount"] for e in world.store.user_view("alice")["entries"] if e["kind"] == "allocation"]
    assert sorted(allocations) == [300, 500] and world.store.balance("alice").available == 500


def test_renew_top_up_replayed_while_pending_waits_for_the_recorded_tx(world: CcWorld) -> None:
    w3 = world.env.w3
    log, body = top_up_request(world)
    with manual_mining(w3):
        plan = crashed_top_up(world, body)
        world.cc.receipt_timeout_s = 0.3
        with pytest.raises(TransactionPending) as pending:  # the cap still reads 500: the CC must not send again
            world.cc.renew(body, world.peers["device"])
        assert pending.value.tx_hash == plan.tx_hash and pending.value.waited_s == 0.3
        assert w3.provider.make_request("txpool_status", [])["result"]["pending"] in (1, "0x1")
        w3.provider.make_request("evm_mine", [])
    answer = world.cc.renew(body, world.peers["device"])
    assert answer["mode"] == "top_up" and answer["tx_hash"] == plan.tx_hash
    assert world.cc.renew(body, world.peers["device"]) == answer
    assert_topped_up_once(world, log.serial)


def test_renew_top_up_dropped_after_crash_rebroadcasts_same_tx(world: CcWorld) -> None:
    log, body = top_up_request(world)
    with manual_mining(world.env.w3):
        plan = crashed_top_up(world, body)
        world.env.w3.provider.make_request("anvil_dropTransaction", [plan.tx_hash])
    answer = world.cc.renew(body, world.peers["device"])
    assert answer["tx_hash"] == plan.tx_hash  # the same signed bytes, same nonce
    assert_topped_up_once(world, log.serial)


def test_renew_top_up_superseded_nonce_sends_anew_once(world: CcWorld) -> None:
    log, body = top_up_request(world)
    with manual_mining(world.env.w3):
        plan = crashed_top_up(world, body)
        world.env.w3.provider.make_request("anvil_dropTransaction", [plan.tx_hash])
    fresh_chain = ClearhouseChain(world.env.w3, world.env.deployment, world.env.actors["clearing_center"].key)
    world.cc = cc_instance(world, fresh_chain)  # a restarted CC: its chain client reads the nonce from the node
    world.issue("r2", amount=100)  # another transaction takes the dropped one's nonce
    answer = world.cc.renew(body, world.peers["device"])
    assert answer["tx_hash"] != plan.tx_hash
    chain = world.env.client("clearing_center")
    assert chain.issue_log(log.serial).cap == 800 and chain.user_funds(user_id_hash("alice")).allocated == 900
    assert len(chain.contract.events.IssueLogRenewed().get_logs(from_block=world.env.deployment.deploy_block)) == 1


def test_renew_recorded_tx_reverted_drops_plan_with_decoded_error(world: CcWorld) -> None:
    _log, body = top_up_request(world)
    with manual_mining(world.env.w3):
        plan = crashed_top_up(world, body)
        world.env.w3.provider.make_request("anvil_dropTransaction", [plan.tx_hash])
    world.env.client("authority").revoke_member(world.peers["device"].eth_address)
    with pytest.raises(ContractReverted) as reverted:  # re-broadcast as signed, mined, reverted
        world.cc.renew(body, world.peers["device"])
    assert reverted.value.fields["error_name"] == "NotActiveMember"
    assert world.env.w3.eth.get_transaction_receipt(plan.tx_hash)["status"] == 0
    assert world.store.issue_request(world.peers["device"].eth_address, "n1") is None
    assert world.store.reserved("alice") == 0


# --- receive logs and settlement -----------------------------------------------------------------------------------
def test_receive_log_same_twice_same_answer_other_payload_duplicate(world: CcWorld) -> None:
    world.deposit("alice", 1_000)
    log, _ = world.issue("r1", amount=500)
    batch, sig = world.batch(log.serial, 0, 3)
    item = world.receive_item(batch, sig, received_at=1_700_000_000)
    first = world.receive(item)
    assert len(first["accepted"]) == 1 and first["rejected"] == []
    assert world.receive(item) == first
    row = world.store.receive_log(bytes.fromhex(first["accepted"][0][2:]))
    tampered = ReceiveLogRecord(row.id, row.sp_address, row.payer, row.serial, row.first_seq, row.count,
                                   row.total + 1, row.usage_batch_json, row.device_sig, row.receiver_sig,
                                   row.received_at)
    with pytest.raises(DuplicateMessage):
        world.cc._admit(tampered)
    overlapping, sig2 = world.batch(log.serial, 2, 2)
    answer = world.receive(world.receive_item(overlapping, sig2))
    assert answer["accepted"] == [] and answer["rejected"][0]["error"] == "sequence_error"


def test_receive_log_with_wrong_fee_or_forged_batch_rejected(world: CcWorld) -> None:
    world.deposit("alice", 1_000)
    log, _ = world.issue("r1", amount=500)
    cheap = UsageBatch.from_logs([UsageLog(serial=log.serial, seq=0, policy_id=world.policy_id, fee=PRICE - 1,
                                           receiver=world.peers["provider"].eth_address, used_at=int(time.time()))])
    cheap_sig = messages.sign(cheap, world.domain, world.env.actors["device"].key)
    batch, _sig = world.batch(log.serial, 0, 1)
    forged_sig = messages.sign(batch, world.domain, world.env.actors["attacker"].key)
    answer = world.receive(world.receive_item(cheap, cheap_sig), world.receive_item(batch, forged_sig))
    assert answer["accepted"] == []
    assert [r["error"] for r in answer["rejected"]] == ["fee_mismatch", "identity_mismatch"]


def test_settlement_settles_each_receive_log_exactly_once(world: CcWorld) -> None:
    world.deposit("alice", 1_000)
    log, _ = world.issue("r1", amount=500)
    items = [world.receive_item(*world.batch(log.serial, seq, 2)) for seq in (0, 2, 4)]
    accepted = world.receive(*items)["accepted"]
    worker = SettlementWorker(world.store, world.env.client("clearing_center"), max_items=2)
    report = worker.tick()
    assert report.settled == 3 and report.rejected == {}
    assert worker.tick().settled == 0  # nothing left: no second transaction
    on_chain = world.env.client("clearing_center").issue_log(log.serial)
    assert (on_chain.next_seq, on_chain.spent) == (6, 6 * PRICE)
    events = world.env.client("clearing_center").contract.events.UsageSettled().get_logs(
        from_block=world.env.deployment.deploy_block)
    assert sorted("0x" + bytes(e["args"]["receiveLogDigest"]).hex() for e in events) == sorted(accepted)
    assert world.store.settlement_counts() == {"settled": 3}


def test_settlement_rejects_offender_with_error_name_and_settles_others(world: CcWorld) -> None:
    world.deposit("alice", 1_000)
    world.deposit("bob", 1_000, tag="d2")
    log, _ = world.issue("r1", amount=500)
    log2, _ = world.issue("r2", user_id="bob", amount=500, device="device2")
    good = world.receive_item(*world.batch(log.serial, 0, 2))
    bad = world.receive_item(*world.batch(log2.serial, 0, 2, device="device2"), device="device2")
    ids = world.receive(bad, good)["accepted"]
    world.env.client("authority").revoke_member(world.peers["device2"].eth_address)  # device2's batch now reverts
    report = SettlementWorker(world.store, world.env.client("clearing_center")).tick()
    assert report.settled == 1
    assert list(report.rejected) == [ids[0]] and report.rejected[ids[0]].startswith("NotActiveMember(")
    assert world.env.client("clearing_center").issue_log(log.serial).next_seq == 2


# --- over mutual TLS --------------------------------------------------------------------------------------------------
def test_issue_over_mutual_tls(world: CcWorld, chain_env: Any) -> None:
    from offchain.trust import tls
    world.deposit("alice", 1_000)
    paths = {name: c.write(world.tmp / "members" / name) for name, c in world.creds.items()}
    (world.tmp / "deployment.json").write_text("{}")
    chain_env.deployment.write(world.tmp / "deployment.json")
    settings = ClearingCenterSettings(
        member_id="clearing_center", cert_path=paths["clearing_center"][0], key_path=paths["clearing_center"][1],
        ca_path=world.ca.root_path, eth_private_key="0x" + chain_env.actors["clearing_center"].key.hex(),
        deployment_path=world.tmp / "deployment.json", port=0,
        database_url=world.store.engine.url.render_as_string(hide_password=False))

    async def scenario() -> tuple[dict[str, Any], str]:
        app = build_app(settings, chain=chain_env.client("clearing_center"), workers=False)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls.server_ssl_context(
            settings.cert_path, settings.key_path, settings.ca_path))
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        device = JsonClient(f"https://127.0.0.1:{port}", tls.client_ssl_context(*paths["device"], world.ca.root_path))
        provider = JsonClient(f"https://127.0.0.1:{port}",
                              tls.client_ssl_context(*paths["provider"], world.ca.root_path))
        try:
            answer = await device.post("/v1/issue-logs", {"request_id": "t1", "user_id": "alice", "amount": 100})
            try:
                await provider.post("/v1/issue-logs", {"request_id": "t2", "user_id": "alice"})
                wrong = "accepted"
            except Exception as exc:  # noqa: BLE001 - we assert on the error code below
                wrong = getattr(exc, "code", type(exc).__name__)
            return answer, wrong
        finally:
            await device.close()
            await provider.close()
            await runner.cleanup()

    answer, wrong_role = asyncio.run(scenario())
    log, _ = Envelope.from_json(answer["issue_log"]).open(world.verifier(), world.domain, Role.CLEARING_CENTER)
    assert log.cap == 100 and answer["tx_hash"].startswith("0x")
    assert wrong_role == "wrong_role"


def test_issue_revert_releases_reservation(world: CcWorld) -> None:
    world.deposit("alice", 100)
    world.env.client("authority").revoke_member(world.peers["device"].eth_address)
    with pytest.raises(ContractReverted):
        world.issue("r1", amount=50)
    assert world.store.reserved("alice") == 0 and world.store.issue_request(
        world.peers["device"].eth_address, "r1") is None
