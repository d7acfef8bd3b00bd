"""A `requestTransfers` reorged out, on anvil (`anvil_reorg`): the CC re-derives its transfer rows from the chain,
the bank pays exactly the request ids the canonical chain holds at depth, each once, and no CC row stays open.

Request ids are keccak(chainid, contract, counter, payee): a request that lands again after a reorg, in another
transaction or with other policies, can reuse an id for another payee or amount, or give a payee another id.
Three stories: (1) the dropped block is replaced by a request of other policies signed at the same nonce (one id
reassigned, one new, one void); (2) the same signed bytes are re-broadcast and land again (same ids, paid once,
nothing requested twice meanwhile); (3) the replacement takes only part of the accruals, the worker requests the
rest anew once the old request is void.

Own anvil per module (anvil_reorg would upset the session chain). Confirmations 3 at the CC and the bank, so
included and final differ. Real TransferWorker and FinalityWatch (CC store on SQLite) and real Bank agent (ledger
on SQLite), reached in-process through `InProcessBank` (what the bank's HTTP route calls). The oracle is
independent of both: request ids computed here from the contract's formula, payee totals from the policy splits.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from eth_abi import encode
from eth_account import Account
from eth_utils import keccak
from web3 import Web3

from offchain import storage
from offchain.bank import store as bank_store
from offchain.bank.agent import Bank
from offchain.bank.ledger import Ledger
from offchain.chain import AnvilProcess, ClearhouseChain, Deployment, deploy
from offchain.clearing_center.records import note_settled_policies
from offchain.clearing_center.store import CcStore
from offchain.clearing_center.tables import TransferRequestRow
from offchain.clearing_center.transfers import TransferWorker
from offchain.core.messages import Role
from offchain.storage.session import session_scope
from offchain.trust.ca import CertificateAuthority
from offchain.trust.certs import CertificateVerifier, Envelope

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "contracts"))
from chainkit import Actor, Env, World  # noqa: E402 - the contract tests' state builder (signed usage, settlements)
from recording_log import RecordingLog  # noqa: E402 - tests/network/recording_log.py

ROOT = Path(__file__).resolve().parents[2]
CONTRACTS_ROOT = Path(os.environ.get("CLEARHOUSE_CONTRACTS_ROOT", ROOT))
CONFIRMATIONS = 3
VALID_UNTIL_MAX = 2**40 - 1
ROLES = {"clearing_center": 1, "provider": 2, "content_provider": 3, "bank": 4, "device": 5}
PRICE = 100
MAX_ROUNDS = 12  # each round mines CONFIRMATIONS blocks: a request is paid and receipted within three


class Clock:
    """The CC worker's clock: advanced by the test, so a retry backoff never needs a wait."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class InProcessBank:
    """The CC's bank client: what the bank's POST /v1/transfers route does, without HTTP (named errors raise)."""

    def __init__(self, bank: Bank, verifier: CertificateVerifier, cc_cert_pem: bytes) -> None:
        self.bank, self.peer = bank, verifier.verify(cc_cert_pem)

    async def post(self, path: str, body: dict[str, Any]) -> Any:
        assert path == "/v1/transfers"
        receipt = await asyncio.to_thread(self.bank.transfer, Envelope.from_json(body["request"]), self.peer)
        return {"receipt": receipt.to_json()}


@dataclass
class Story:
    w3: Web3
    deployment: Deployment
    world: World
    cc_key: bytes
    store: CcStore
    worker: TransferWorker
    ledger: Ledger
    bank_client: InProcessBank
    clock: Clock
    log: RecordingLog
    payees: dict[str, str]
    policies: dict[str, bytes]

    def mine(self, blocks: int = CONFIRMATIONS) -> None:
        self.w3.provider.make_request("anvil_mine", [hex(blocks)])  # type: ignore[arg-type]

    def request_id(self, counter: int, payee: str) -> bytes:
        """The contract's formula, computed here: keccak256(abi.encode(chainid, this, nonce, payee))."""
        return keccak(encode(["uint256", "address", "uint256", "address"],
                             [self.deployment.chain_id, self.deployment.address, counter, self.payees[payee]]))

    def rows(self) -> dict[bytes, tuple[str, str, int, str | None]]:
        with session_scope(self.store.engine) as session:
            return {r.request_id: (r.status, r.payee, r.amount, r.tx_hash)
                    for r in session.query(TransferRequestRow)}

    def canonical_requests(self) -> dict[bytes, tuple[str, int, str]]:
        """Every TransferRequested event on the canonical chain: id -> (payee, amount, tx hash)."""
        events = self.world.c("clearing_center").contract.events.TransferRequested().get_logs(
            from_block=self.deployment.deploy_block)
        return {bytes(e["args"]["requestId"]): (e["args"]["payee"], int(e["args"]["amount"]),
                                                "0x" + bytes(e["transactionHash"]).hex()) for e in events}

    def paid(self) -> dict[bytes, tuple[str, int]]:
        """The bank ledger's transfers: request id -> (payee account, amount), one entry per id."""
        out: dict[bytes, tuple[str, int]] = {}
        for entry in self.ledger.entries(kind="transfer", limit=10_000):
            request_id = bytes.fromhex(entry.key.removeprefix("transfer:0x"))
            assert request_id not in out, f"{entry.key} booked twice"
            [(account, amount)] = [(a, n) for a, n in entry.postings if n > 0]
            out[request_id] = (account.removeprefix("payee:"), amount)
        return out

    def round(self) -> None:
        self.worker.finality.tick()
        self.worker.request_round()
        asyncio.run(self.worker.deliver(self.bank_client))  # type: ignore[arg-type]

    def drive_until_quiet(self) -> int:
        """Rounds of (finality tick, request round, delivery, mine to depth) until no CC row is open."""
        for rounds in range(1, MAX_ROUNDS + 1):
            self.round()
            if not self.store.open_transfer_requests() and not self.store.transfer_request_txs_in_flight():
                return rounds
            self.mine()
            self.clock.now += 600  # past every retry backoff (max 60 s)
        raise AssertionError(f"CC rows still open after {MAX_ROUNDS} rounds: {self.rows()}; "
                             f"log {self.log.events[-10:]}")

    def signed_request_at_nonce(self, nonce: int, policy_ids: list[bytes]) -> tuple[str, bytes]:
        """A CC-signed requestTransfers of `policy_ids` at `nonce` (what a CC that lost track of its nonce, e.g.
        after failing over to a node that never saw its transaction, would send)."""
        contract = self.world.c("clearing_center").contract
        base_fee = int(self.w3.eth.get_block("latest")["baseFeePerGas"])
        tx = {"to": self.deployment.address, "data": contract.encode_abi("requestTransfers", args=[policy_ids]),
              "value": 0, "gas": 1_500_000, "nonce": nonce, "chainId": self.deployment.chain_id,
              "maxFeePerGas": 3 * base_fee + 10**9, "maxPriorityFeePerGas": 10**9}
        signed = Account.sign_transaction(tx, self.cc_key)
        return "0x" + bytes(signed.hash).hex(), bytes(signed.raw_transaction)

    def cc_nonce(self) -> int:
        return int(self.w3.eth.get_transaction_count(Account.from_key(self.cc_key).address, "latest"))


@pytest.fixture(scope="module")
def anvil_node() -> Iterator[AnvilProcess]:
    with AnvilProcess(hardfork="paris") as node:
        yield node


@pytest.fixture()
def story(anvil_node: AnvilProcess, tmp_path: Path) -> Story:
    """A fresh deployment; policies P (A 60 %, B 40 %) and Q (A 50 %, C 50 %); 3 uses of P and 2 of Q settled
    (accrued 300 and 200); the CC knows P as settled (Q only where a story says so); the bank holds 10,000."""
    w3 = anvil_node.web3()
    actors = {name: _actor(name) for name in (*ROLES, "deployer", "authority")}
    for actor in actors.values():
        w3.provider.make_request("anvil_setBalance", [actor.address, hex(10**24)])  # type: ignore[arg-type]
    deployment = deploy(w3, actors["deployer"].key, actors["authority"].address, root=CONTRACTS_ROOT)
    authority = ClearhouseChain(w3, deployment, actors["authority"].key)
    for name, role in ROLES.items():
        user = keccak(text="alice") if name == "device" else bytes(32)
        authority.register_member(actors[name].address, role, keccak(text=name), keccak(text=f"cert:{name}"), 0,
                                  VALID_UNTIL_MAX, user_id_hash=user)
    world = World(Env(w3, deployment, actors))
    payees = {p: Account.create().address for p in "ABC"}
    policies = {"P": world.policy(PRICE, [(payees["A"], 6000), (payees["B"], 4000)]),
                "Q": world.policy(PRICE, [(payees["A"], 5000), (payees["C"], 5000)])}
    serial = world.issue(keccak(text="serial-1"), 10_000)
    world.settle(world.use(serial, policies["P"], 3))
    world.settle(world.use(serial, policies["Q"], 2))

    ca = CertificateAuthority.create(tmp_path / "ca")
    verifier = CertificateVerifier(ca.root_path.read_bytes())
    cc_creds = ca.issue_member("cc", Role.CLEARING_CENTER, actors["clearing_center"].address)
    bank_creds = ca.issue_member("bank", Role.BANK, actors["bank"].address)
    clock, log = Clock(1_000_000.0), RecordingLog()
    store = CcStore(storage.make_engine(f"sqlite:///{tmp_path / 'cc.db'}"), lambda: int(clock.now))
    store.create_schema()
    _know_settled(store, policies["P"])
    cc_chain = ClearhouseChain(w3, deployment, actors["clearing_center"].key, receipt_timeout_s=10.0)
    worker = TransferWorker(store, cc_chain, verifier, actors["clearing_center"].key, cc_creds.cert_pem,
                            interval_s=1.0, threshold_minor=0, clock=clock, log=log, confirmations=CONFIRMATIONS)
    bank_engine = storage.make_engine(f"sqlite:///{tmp_path / 'bank.db'}")
    bank_store.create_schema(bank_engine)
    ledger = Ledger(bank_engine)
    ledger.deposit(b"\x01" * 32, "alice", 10_000)
    bank = Bank(ledger=ledger, chain=ClearhouseChain(w3, deployment, actors["bank"].key), domain=deployment.domain,
                private_key=actors["bank"].key, cert_pem=bank_creds.cert_pem, verifier=verifier,
                confirmations=CONFIRMATIONS)
    clock.now += 10  # the first round finds the interval passed
    return Story(w3, deployment, world, actors["clearing_center"].key, store, worker, ledger,
                 InProcessBank(bank, verifier, cc_creds.cert_pem), clock, log, payees, policies)


def _actor(name: str) -> Actor:
    account = Account.create()
    return Actor(name, bytes(account.key), account.address)


def _know_settled(store: CcStore, policy_id: bytes) -> None:
    """What the CC records when a receive log of this policy settles (cc_settled_policies), through the function
    the settling transaction calls."""
    with session_scope(store.engine) as session:
        note_settled_policies(session, [{"policyIds": ["0x" + policy_id.hex()]}], int(store.now()))


def _first_request(story: Story) -> tuple[str, int]:
    """The worker requests P (its only known policy): T1, included, not final; nothing is delivered yet."""
    nonce = story.cc_nonce()
    assert story.worker.request_round() == 2
    story.round()
    rows = story.rows()
    assert {rid: row[0] for rid, row in rows.items()} == {story.request_id(0, "A"): "requested",
                                                         story.request_id(1, "B"): "requested"}
    assert story.paid() == {}  # included at depth 1 of 3: not delivered
    [tx1] = {row[3] for row in rows.values()}
    assert tx1 is not None and story.store.chain_tx(tx1).state == "included"  # type: ignore[union-attr]
    return tx1, nonce


def _assert_paid_exactly_the_canonical_ids(story: Story, totals: dict[str, int]) -> dict[bytes, tuple[str, int,
                                                                                                        str]]:
    canonical = story.canonical_requests()
    assert story.paid() == {rid: (payee, amount) for rid, (payee, amount, _tx) in canonical.items()}
    by_payee: dict[str, int] = {}
    for payee, amount, _tx in canonical.values():
        by_payee[payee] = by_payee.get(payee, 0) + amount
    assert by_payee == {story.payees[p]: amount for p, amount in totals.items()}
    rows = story.rows()
    assert {rid for rid, row in rows.items() if row[0] == "confirmed"} == set(canonical)
    assert not [rid for rid, row in rows.items() if row[0] in ("requested", "sent_to_bank")]
    return canonical


# --- the stories ---------------------------------------------------------------------------------------------------
def test_request_landing_again_with_other_ids_is_rederived_and_each_id_paid_once(story: Story) -> None:
    tx1, nonce = _first_request(story)
    # the block holding T1 is replaced by one holding T2: the same nonce, requesting Q then P
    tx2, raw2 = story.signed_request_at_nonce(nonce, [story.policies["Q"], story.policies["P"]])
    story.w3.provider.make_request("anvil_reorg", [1, [["0x" + raw2.hex(), 0]]])  # type: ignore[arg-type]
    story.drive_until_quiet()

    a0, b1, c1, b2 = (story.request_id(0, "A"), story.request_id(1, "B"), story.request_id(1, "C"),
                      story.request_id(2, "B"))
    canonical = _assert_paid_exactly_the_canonical_ids(story, {"A": 180 + 100, "B": 120, "C": 100})
    assert {rid: (amount, tx) for rid, (_p, amount, tx) in canonical.items()} == {
        a0: (280, tx2), c1: (100, tx2), b2: (120, tx2)}  # A's id kept, with another amount
    rows = story.rows()
    assert rows[b1][0] == "void" and b1 not in story.paid()  # T1's id for B is gone from the chain
    assert rows[a0][2:] == (280, tx2)
    assert story.store.chain_tx(tx1).state == "dropped"  # type: ignore[union-attr]  # its nonce went to T2
    assert [e["outcome"] for e in story.log.of("transfers.rederived")] == ["reassigned"]
    assert [e["requests"] for e in story.log.of("transfers.voided")] == [["0x" + b1.hex()]]


def test_request_reorged_out_is_rebroadcast_same_ids_paid_once_nothing_requested_twice(story: Story) -> None:
    tx1, nonce = _first_request(story)
    story.w3.provider.make_request("anvil_reorg", [1, []])  # type: ignore[arg-type]  # T1's block is gone
    assert story.cc_nonce() == nonce and story.world.c("bank").policy(story.policies["P"]).accrued == 300
    # P is accrued again on chain, but T1 may still land: the worker must not request P a second time
    story.clock.now += 600  # the request interval has passed
    story.worker.request_round()
    assert story.cc_nonce() == nonce
    story.drive_until_quiet()

    canonical = _assert_paid_exactly_the_canonical_ids(story, {"A": 180, "B": 120})
    assert {rid: tx for rid, (_p, _a, tx) in canonical.items()} == {story.request_id(0, "A"): tx1,
                                                                    story.request_id(1, "B"): tx1}
    followed = story.store.chain_tx(tx1)
    assert followed is not None and (followed.state, followed.reorgs >= 1) == ("final", True)
    assert story.cc_nonce() == nonce + 1  # T1 alone: the same signed bytes landed again, no second request
    assert story.log.of("finality.rebroadcast")
    # while T1 was out its ids were void (not delivered); the same ids in the same transaction revived them
    assert [sorted(e["requests"]) for e in story.log.of("transfers.voided")] == [sorted("0x" + rid.hex()
                                                                                      for rid in canonical)]
    assert [e["outcome"] for e in story.log.of("transfers.rederived")] == ["revived", "revived"]


def test_replacement_taking_part_of_the_accruals_leaves_the_rest_requested_anew(story: Story) -> None:
    tx1, nonce = _first_request(story)  # T1 requested P only: Q was not yet known as settled when it was sent
    _know_settled(story.store, story.policies["Q"])
    tx2, raw2 = story.signed_request_at_nonce(nonce, [story.policies["Q"]])  # T2 takes Q's accrual only
    story.w3.provider.make_request("anvil_reorg", [1, [["0x" + raw2.hex(), 0]]])  # type: ignore[arg-type]
    story.drive_until_quiet()

    canonical = _assert_paid_exactly_the_canonical_ids(story, {"A": 100 + 180, "B": 120, "C": 100})
    by_tx: dict[str, set[bytes]] = {}
    for rid, (_p, _a, tx) in canonical.items():
        by_tx.setdefault(tx, set()).add(rid)
    assert by_tx.pop(tx2) == {story.request_id(0, "A"), story.request_id(1, "C")}
    [(tx3, again)] = by_tx.items()  # P requested anew by the worker once T1's rows were void
    assert again == {story.request_id(2, "A"), story.request_id(3, "B")} and tx3 != tx1
    assert story.rows()[story.request_id(1, "B")][0] == "void"
    assert story.world.c("bank").policy(story.policies["P"]).accrued == 0
