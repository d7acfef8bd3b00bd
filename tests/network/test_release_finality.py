"""The CC credits a released issue log only at the finality depth (issue 13): a stolen phone's `releaseIssueLog`
is `included` while fewer than `confirmations` blocks deep and the user's available balance at the CC does not
move; at the depth it is `final` and the released rest is credited once. A reorg before the depth leaves no credit
(nothing to undo), the CC's finality loop re-broadcasts the same signed release, and it is credited once when it
is final again. With confirmations 0 (anvil's policy) the release is credited at once, as before.

Own anvil per module (`anvil_reorg` would upset the session chain), a fresh deployment and fresh accounts per
test. Real ClearingCenter agent (CC store on SQLite) and its FinalityWatch; the authority sends the release as
`member revoke --release-logs` does (`releaseIssueLog`). The oracle is independent of the CC: the amounts come
from the test's own figures (10,000 deposited, 10 uses of 100 settled), the release count from the chain's events.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from eth_account import Account
from eth_utils import keccak
from web3 import Web3

from offchain import storage
from offchain.chain import AnvilProcess, deploy
from offchain.chain.finality import FinalityPolicy, FinalityTracker, Web3Reader
from offchain.clearing_center.agent import ClearingCenter, derive_serial
from offchain.clearing_center.bodies import DepositNotice, IssueBody
from offchain.clearing_center.finality import FinalityWatch
from offchain.clearing_center.store import CcStore
from offchain.clearing_center.tables import UserBalanceEntry
from offchain.core import messages
from offchain.core.errors import InsufficientFunds
from offchain.core.messages import Role
from offchain.core.types import user_id_hash
from offchain.storage.session import session_scope
from offchain.trust.ca import CertificateAuthority
from offchain.trust.certs import CertificateVerifier, MemberIdentity

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "contracts"))
from chainkit import Actor, Env, World  # noqa: E402 - the contract tests' state builder (signed usage, settlements)
from recording_log import RecordingLog  # noqa: E402 - tests/network/recording_log.py

ROOT = Path(__file__).resolve().parents[2]
CONTRACTS_ROOT = Path(os.environ.get("CLEARHOUSE_CONTRACTS_ROOT", ROOT))
CONFIRMATIONS = 4
VALID_UNTIL_MAX = 2**40 - 1
ROLES = {"clearing_center": Role.CLEARING_CENTER, "provider": Role.SERVICE_PROVIDER, "bank": Role.BANK,
         "content_provider": Role.CONTENT_PROVIDER, "device": Role.DEVICE, "tablet": Role.DEVICE}
USERS = {"device": "alice", "tablet": "alice"}  # the stolen phone and alice's next device
DEPOSIT, PRICE, USES = 10_000, 100, 10
RELEASED = DEPOSIT - PRICE * USES  # what the stolen phone never spent: 9,000


@dataclass
class Story:
    """Alice deposited 10,000, her phone was issued all of it by the CC and spent 1,000 (settled); it is stolen."""

    w3: Web3
    world: World
    store: CcStore
    cc: ClearingCenter
    peers: dict[str, MemberIdentity]
    serial: bytes
    log: RecordingLog
    cc_cert_pem: bytes

    def mine(self, blocks: int) -> None:
        self.w3.provider.make_request("anvil_mine", [hex(blocks)])  # type: ignore[arg-type]

    def release(self) -> str:
        """The authority revokes the phone and releases its log (`member revoke --release-logs`)."""
        authority = self.world.c("authority")
        authority.revoke_member(self.world.addr("device"))
        receipt = authority.send("releaseIssueLog", self.serial)
        [event] = authority.contract.events.IssueLogReleased().process_receipt(receipt)
        assert int(event["args"]["released"]) == RELEASED
        return "0x" + bytes(receipt["transactionHash"]).hex()

    def available(self) -> int:
        """Alice's available balance as the bank's balance view shows it (the view credits final releases)."""
        view = self.cc.user_view("alice", self.peers["bank"])
        return int(view["available"])

    def release_entries(self) -> list[tuple[int, str | None]]:
        with session_scope(self.store.engine) as session:
            return [(e.amount, e.reference) for e in session.query(UserBalanceEntry)
                    .filter(UserBalanceEntry.kind == "release")]

    def releases_on_chain(self) -> list[str]:
        events = self.world.c("bank").contract.events.IssueLogReleased().get_logs(
            from_block=self.world.env.deployment.deploy_block)
        return ["0x" + bytes(e["transactionHash"]).hex() for e in events]

    def state(self, tx_hash: str) -> str | None:
        row = self.store.chain_tx(tx_hash)
        return None if row is None else row.state


@pytest.fixture(scope="module")
def anvil_node() -> Iterator[AnvilProcess]:
    with AnvilProcess(hardfork="paris") as node:
        yield node


def _story(anvil_node: AnvilProcess, tmp_path: Path, confirmations: int) -> Story:
    w3 = anvil_node.web3()
    actors = {name: _actor(name) for name in (*ROLES, "deployer", "authority")}
    for actor in actors.values():
        w3.provider.make_request("anvil_setBalance", [actor.address, hex(10**24)])  # type: ignore[arg-type]
    deployment = deploy(w3, actors["deployer"].key, actors["authority"].address, root=CONTRACTS_ROOT)
    env = Env(w3, deployment, actors)
    for name, role in ROLES.items():
        user = user_id_hash(USERS[name]) if name in USERS else bytes(32)
        env.client("authority").register_member(actors[name].address, int(role), keccak(text=name),
                                                keccak(text=f"cert:{name}"), 0, VALID_UNTIL_MAX, user_id_hash=user)
    world = World(env)
    ca = CertificateAuthority.create(tmp_path / "ca")
    creds = {name: ca.issue_member(name, role, actors[name].address, user_id=USERS.get(name))
             for name, role in ROLES.items()}
    verifier = CertificateVerifier(ca.root_pem, ca.crl_pem())
    peers = {name: verifier.verify(c.cert_pem) for name, c in creds.items()}
    store = CcStore(storage.make_engine(f"sqlite:///{tmp_path / 'cc.db'}"), lambda: 1_000_000)
    store.create_schema()
    log = RecordingLog()
    cc = ClearingCenter(store, env.client("clearing_center"), verifier,  # one nonce cache with World
                        actors["clearing_center"].key, creds["clearing_center"].cert_pem, issue_expiry_s=86_400,
                        log=log, confirmations=confirmations)
    _deposit(env, cc, peers["bank"])
    answer = cc.issue(IssueBody(request_id="phone-1", user_id="alice", amount=None), peers["device"])
    serial = derive_serial(actors["device"].address, "issue", "phone-1")
    assert answer["tx_hash"] and store.balance("alice").available == 0
    policy_id = world.policy(PRICE, [(actors["content_provider"].address, 10_000)])
    world.seq[serial] = 0
    world.settle(world.use(serial, policy_id, USES, price=PRICE))
    assert world.c("bank").issue_log(serial).spent == PRICE * USES
    return Story(w3, world, store, cc, peers, serial, log, creds["clearing_center"].cert_pem)


def _deposit(env: Env, cc: ClearingCenter, bank: MemberIdentity) -> None:
    deposit_id, bank_ref = messages.keccak(b"dep:alice"), messages.keccak(b"ref:alice")
    receipt = env.client("bank").record_deposit(deposit_id, user_id_hash("alice"), DEPOSIT, bank_ref)
    cc.credit_deposit(DepositNotice(deposit_id="0x" + deposit_id.hex(), user_id="alice", amount=DEPOSIT,
                                    bank_ref="0x" + bank_ref.hex(),
                                    tx_hash="0x" + bytes(receipt["transactionHash"]).hex()), bank)


def _actor(name: str) -> Actor:
    account = Account.create()
    return Actor(name, bytes(account.key), account.address)


@pytest.fixture()
def story(anvil_node: AnvilProcess, tmp_path: Path) -> Story:
    return _story(anvil_node, tmp_path, CONFIRMATIONS)


# --- the stories ---------------------------------------------------------------------------------------------------
def test_release_not_credited_while_k_below_depth_credited_at_depth(story: Story) -> None:
    tx = story.release()
    for depth in range(1, CONFIRMATIONS):  # the release block is `depth` blocks deep (inclusive count)
        assert story.available() == 0, f"credited at depth {depth} of {CONFIRMATIONS}"
        assert story.state(tx) == "included"
        with pytest.raises(InsufficientFunds) as refused:  # the next device cannot be issued it yet
            story.cc.issue(IssueBody(request_id=f"tablet-{depth}", user_id="alice", amount=None),
                           story.peers["tablet"])
        assert (refused.value.fields["user_id"], refused.value.fields["available"]) == ("alice", 0)
        story.mine(1)
    assert story.available() == RELEASED  # CONFIRMATIONS deep: final, credited
    assert story.state(tx) == "final"
    assert story.release_entries() == [(RELEASED, tx)]
    answer = story.cc.issue(IssueBody(request_id="tablet-final", user_id="alice", amount=None),
                            story.peers["tablet"])  # positive control: the same request shape now succeeds
    assert answer["tx_hash"] and story.store.balance("alice").available == 0
    assert story.release_entries() == [(RELEASED, tx)]  # read again: credited once
    assert [e["tx_hash"] for e in story.log.of("issue_log.release_credited")] == [tx]


def test_release_reorged_out_before_depth_leaves_no_credit_and_lands_again_once(story: Story) -> None:
    tx = story.release()
    story.mine(CONFIRMATIONS - 2)
    assert story.available() == 0 and story.state(tx) == "included"  # depth CONFIRMATIONS - 1: not yet
    # a reorg drops the release's block and those on top of it (the revocation, below it, stays)
    story.w3.provider.make_request("anvil_reorg", [CONFIRMATIONS - 1, []])  # type: ignore[arg-type]
    assert story.available() == 0 and story.release_entries() == []  # nothing was credited: nothing to undo
    for _ in range(3 * CONFIRMATIONS):  # the finality loop: reorged -> the same bytes re-broadcast -> final
        story.cc.finality.tick()
        if story.state(tx) == "final":
            break
        assert story.available() == 0 or story.state(tx) == "final"
        story.mine(1)
    assert story.state(tx) == "final"
    assert story.releases_on_chain() == [tx]  # the same signed release landed again, once
    assert story.available() == RELEASED
    assert story.release_entries() == [(RELEASED, tx)]
    row = story.store.chain_tx(tx)
    assert row is not None and row.kind == "release" and row.reorgs >= 1
    assert [e["tx_hash"] for e in story.log.of("finality.rebroadcast")] == [tx]  # the same bytes, by the CC
    assert [e["tx_hash"] for e in story.log.of("issue_log.release_credited")] == [tx]
    assert story.available() == RELEASED  # read again: no second credit


def test_release_credited_at_once_with_confirmations_zero(anvil_node: AnvilProcess, tmp_path: Path) -> None:
    story = _story(anvil_node, tmp_path, 0)  # anvil's own policy: a mined block is final
    tx = story.release()
    assert story.available() == RELEASED
    assert story.state(tx) == "final" and story.release_entries() == [(RELEASED, tx)]


def test_release_whose_nonce_went_to_another_transaction_is_dropped_and_a_new_release_credited_once(
        story: Story) -> None:
    tx = story.release()
    assert story.available() == 0 and story.state(tx) == "included"
    nonce = int(story.w3.eth.get_transaction(tx)["nonce"])  # type: ignore[arg-type]
    authority = story.world.env.actors["authority"]
    base_fee = int(story.w3.eth.get_block("latest")["baseFeePerGas"])
    other = Account.sign_transaction({"to": authority.address, "value": 0, "gas": 21_000, "nonce": nonce,
                                      "chainId": story.world.env.deployment.chain_id,
                                      "maxFeePerGas": 3 * base_fee + 10**9, "maxPriorityFeePerGas": 10**9},
                                     authority.key)
    # the release's block is replaced by one where the authority's nonce went to a plain transfer
    story.w3.provider.make_request("anvil_reorg",  # type: ignore[arg-type]
                                   [1, [["0x" + bytes(other.raw_transaction).hex(), 0]]])
    story.cc.finality.tick()
    assert story.state(tx) == "dropped" and story.releases_on_chain() == []
    assert story.available() == 0 and story.release_entries() == []
    assert not story.world.c("bank").issue_log(story.serial).closed  # the chain re-derives: still open
    # the operator runs `member revoke --release-logs` again: a new release transaction, credited once at depth
    receipt = story.world.c("authority").send("releaseIssueLog", story.serial)
    tx2 = "0x" + bytes(receipt["transactionHash"]).hex()
    assert tx2 != tx and story.available() == 0
    story.mine(CONFIRMATIONS - 1)
    assert story.available() == RELEASED and story.release_entries() == [(RELEASED, tx2)]
    assert story.releases_on_chain() == [tx2] and story.state(tx) == "dropped"


class MovedReader(Web3Reader):
    """The chain as read just after a reorg moved the release to the next block (its receipt and that block's hash
    agree: a consistent view, final at the depth), while the event the CC read still names the old block."""

    def __init__(self, w3: Web3, tx_hash: str) -> None:
        super().__init__(w3)
        self.tx_hash = tx_hash
        self.moved = False

    def receipt_block(self, tx_hash: str) -> tuple[int, str] | None:
        found = super().receipt_block(tx_hash)
        if not self.moved or tx_hash != self.tx_hash or found is None:
            return found
        return found[0] + 1, self.block_hash(found[0] + 1) or ""


def test_release_final_in_another_block_than_its_event_is_not_credited(story: Story) -> None:
    tx = story.release()
    reader = MovedReader(story.w3, tx)
    watch = FinalityWatch(story.store, story.w3, FinalityTracker(reader, FinalityPolicy("anvil", CONFIRMATIONS)))
    cc = ClearingCenter(story.store, story.cc.chain, story.cc.verifier, story.world.key("clearing_center"),
                        story.cc_cert_pem, issue_expiry_s=86_400, log=story.log, finality=watch)
    story.mine(CONFIRMATIONS)
    reader.moved = True
    assert cc.credit_releases("alice") == 0  # final, but not in the block the event came from: read again later
    assert story.state(tx) == "final" and story.release_entries() == []
    # positive control: the same CC over a consistent chain (the event's block is the receipt's) credits it;
    # the moved inclusion is forgotten (a consistent chain never shows it), so the check re-reads the receipt
    reader.moved = False
    story.store.set_chain_tx(tx, "included")
    assert cc.credit_releases("alice") == 1 and story.release_entries() == [(RELEASED, tx)]
