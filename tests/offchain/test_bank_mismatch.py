"""The bank refuses a CC-signed transfer request that disagrees with the chain's record (payee, amount) and a
confirmation the chain holds under another bank reference (TransferMismatch), on anvil.

The transfer requests are real: a policy with two payees, a deposit, an issue log, one settled usage batch and
`requestTransfers`, all on the session anvil. The bank is the real `Bank` agent with a SQLite ledger and the
bank's chain client, called as the HTTP handler calls it (`transfer(envelope, peer)`) with envelopes the CC's key
signs. Each test first pays one request correctly (the positive control).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from offchain import storage
from offchain.bank import store as bank_store
from offchain.bank.agent import Bank
from offchain.bank.ledger import Ledger
from offchain.chain import ClearhouseChain
from offchain.chain.codec import SettlementItem
from offchain.core import messages
from offchain.core.errors import TransferMismatch
from offchain.core.messages import ReceiveLog, Role, TransferReceipt, TransferRequest, UsageBatch, UsageLog
from offchain.core.types import user_id_hash
from offchain.trust.ca import CertificateAuthority
from offchain.trust.certs import CertificateVerifier, Envelope, MemberIdentity

PRICE = 100
USES = 4  # fees 400: 280 to the content provider (70 %), 120 to payee2 (30 %)


@dataclass
class BankWorld:
    env: Any
    ledger: Ledger
    verifier: CertificateVerifier
    cc_peer: MemberIdentity
    cc_cert: bytes
    bank_cert: bytes
    requests: dict[str, tuple[bytes, int]]  # payee actor name -> (request id, amount) as the chain has them
    bank: Bank = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self.bank = self.bank_on(self.chain())

    def bank_on(self, chain: Any) -> Bank:
        """The bank agent on this ledger, with `chain` as its BankChain."""
        return Bank(ledger=self.ledger, chain=chain, domain=self.env.deployment.domain,
                    private_key=self.env.actors["bank"].key, cert_pem=self.bank_cert, verifier=self.verifier)

    def envelope(self, payee: str, *, request: str | None = None, amount: int | None = None) -> Envelope:
        """The CC-signed TransferRequest for `request`'s chain record (default `payee`'s), optionally tampered."""
        request_id, on_chain_amount = self.requests[request or payee]
        message = TransferRequest(request_id=request_id, payee=self.env.actors[payee].address,
                                  amount=on_chain_amount if amount is None else amount)
        return Envelope.seal(message, self.env.deployment.domain, self.env.actors["clearing_center"].key, self.cc_cert)

    def chain(self) -> ClearhouseChain:
        return self.env.client("bank")

    def pay_control(self) -> TransferReceipt:
        """The positive control: the content provider's true request is paid, confirmed and receipted."""
        sealed = self.bank.transfer(self.envelope("content_provider"), self.cc_peer)
        receipt, _bank = sealed.open(self.verifier, self.env.deployment.domain, Role.BANK)
        request_id, amount = self.requests["content_provider"]
        assert isinstance(receipt, TransferReceipt) and (receipt.request_id, receipt.amount) == (request_id, amount)
        assert self.chain().transfer_request(request_id).confirmed
        return receipt


def settle_fees(env: Any) -> bytes:
    """Policy (70/30), deposit, issue log and one settled batch of USES uses; returns the policy id."""
    actors, domain = env.actors, env.deployment.domain
    content_id = messages.keccak(b"content:bank-mismatch")
    env.client("content_provider").register_policy(
        content_id, 1, PRICE, [(actors["content_provider"].address, 7_000), (actors["payee2"].address, 3_000)],
        bytes(32))
    policy_id = messages.policy_id(content_id, 1)
    env.client("bank").record_deposit(messages.keccak(b"dep:bm"), user_id_hash("alice"), 1_000, b"\x01" * 32)
    serial, now = messages.keccak(b"serial:bank-mismatch"), int(time.time())
    env.client("clearing_center").issue(serial, actors["device"].address, user_id_hash("alice"), 1_000, now + 3600)
    batch = UsageBatch.from_logs([UsageLog(serial=serial, seq=i, policy_id=policy_id, fee=PRICE,
                                           receiver=actors["provider"].address, used_at=now) for i in range(USES)])
    receive_log = ReceiveLog(usage_batch=batch.struct_hash(), payer=actors["device"].address, received_at=now)
    env.client("clearing_center").settle([SettlementItem(
        batch, messages.sign(batch, domain, actors["device"].key), now,
        messages.sign(receive_log, domain, actors["provider"].key))])
    return policy_id


@pytest.fixture()
def world(chain_env: Any, tmp_path: Path) -> BankWorld:
    policy_id = settle_fees(chain_env)
    _receipt, request_ids = chain_env.client("clearing_center").request_transfers([policy_id])
    by_payee = {}
    for request_id in request_ids:
        info = chain_env.client("bank").transfer_request(request_id)
        name = next(n for n, a in chain_env.actors.items() if a.address == messages.to_checksum_address(info.payee))
        by_payee[name] = (request_id, info.amount)
    assert {name: amount for name, (_id, amount) in by_payee.items()} == {"content_provider": 280, "payee2": 120}
    ca = CertificateAuthority.create(tmp_path / "ca")
    cc_creds = ca.issue_member("cc", Role.CLEARING_CENTER, chain_env.actors["clearing_center"].address)
    bank_creds = ca.issue_member("bank", Role.BANK, chain_env.actors["bank"].address)
    verifier = CertificateVerifier(ca.root_pem, ca.crl_pem())
    engine = storage.make_engine(f"sqlite:///{tmp_path / 'bank.db'}")
    bank_store.create_schema(engine)
    ledger = Ledger(engine)
    ledger.deposit(messages.keccak(b"dep:bm"), "alice", 1_000)
    return BankWorld(chain_env, ledger, verifier, verifier.verify(cc_creds.cert_pem), cc_creds.cert_pem,
                     bank_creds.cert_pem, by_payee)


def assert_unpaid(world: BankWorld, payee: str) -> None:
    request_id, _amount = world.requests[payee]
    assert world.ledger.find_transfer(request_id) is None
    assert not world.chain().transfer_request(request_id).confirmed
    assert world.ledger.balance("cc:management") == 1_000 - 280  # only the control left the CC's account


def test_transfer_refused_when_payee_differs_from_the_chain(world: BankWorld) -> None:
    world.pay_control()
    tampered = world.envelope("attacker", request="payee2")  # payee2's request id, paid to the attacker
    with pytest.raises(TransferMismatch) as info:
        world.bank.transfer(tampered, world.cc_peer)
    assert info.value.code == "transfer_mismatch" and info.value.http_status == 409
    assert info.value.fields == {"request_id": world.requests["payee2"][0], "field": "payee",
                                 "on_chain": world.env.actors["payee2"].address,
                                 "got": world.env.actors["attacker"].address}
    assert_unpaid(world, "payee2")


@pytest.mark.parametrize("delta", [1, -1])
def test_transfer_refused_when_amount_differs_from_the_chain(world: BankWorld, delta: int) -> None:
    world.pay_control()
    with pytest.raises(TransferMismatch) as info:
        world.bank.transfer(world.envelope("payee2", amount=120 + delta), world.cc_peer)
    assert info.value.fields == {"request_id": world.requests["payee2"][0], "field": "amount", "on_chain": 120,
                                 "got": 120 + delta}
    assert_unpaid(world, "payee2")


def test_transfer_replay_refused_when_chain_confirmed_it_under_another_bank_ref(world: BankWorld) -> None:
    """The bank booked the payment and died before `confirmTransfer`; meanwhile another instance with the bank's
    key confirmed it under another reference. The retry must not answer with a receipt the chain contradicts."""
    control = world.pay_control()
    assert world.bank.transfer(world.envelope("content_provider"), world.cc_peer).decode() == control  # replay: same
    request_id, amount = world.requests["payee2"]
    booked = world.ledger.execute_transfer(request_id, world.env.actors["payee2"].address, amount,
                                           world.envelope("payee2").decode().digest(world.env.deployment.domain))
    other_ref = b"\xee" * 32
    world.chain().confirm_transfer(request_id, other_ref)
    with pytest.raises(TransferMismatch) as info:
        world.bank.transfer(world.envelope("payee2"), world.cc_peer)
    assert info.value.fields == {"request_id": request_id, "field": "bank_ref", "on_chain": other_ref,
                                 "got": booked.bank_ref}
    assert world.ledger.find_transfer(request_id).bank_ref == booked.bank_ref  # booked once, not twice
    assert world.ledger.balance("cc:management") == 1_000 - 280 - 120


@dataclass
class RacedChain:
    """The bank's chain, where another instance confirms (under `other_ref`) right after this bank read the
    request unconfirmed and before its own `confirmTransfer` is mined: a legitimate `BankChain`."""

    inner: ClearhouseChain
    other_ref: bytes
    raced: bool = False

    @property
    def contract(self) -> Any:
        return self.inner.contract

    def record_deposit(self, deposit_id: bytes, user_id_hash: bytes, amount: int, bank_ref: bytes) -> Any:
        return self.inner.record_deposit(deposit_id, user_id_hash, amount, bank_ref)

    def transfer_request(self, request_id: bytes) -> Any:
        return self.inner.transfer_request(request_id)

    def confirm_transfer(self, request_id: bytes, bank_ref: bytes) -> Any:
        if not self.raced:
            self.raced = True
            self.inner.confirm_transfer(request_id, self.other_ref)
        return self.inner.confirm_transfer(request_id, bank_ref)


def test_transfer_refused_when_another_instance_confirms_first_under_another_bank_ref(world: BankWorld) -> None:
    """Unconfirmed when the bank checks, confirmed under another reference when its own `confirmTransfer` runs:
    the contract's TransferAlreadyConfirmed is read back, and the other reference is a loud mismatch."""
    world.pay_control()
    raced = RacedChain(world.chain(), b"\xdd" * 32)
    request_id, _amount = world.requests["payee2"]
    with pytest.raises(TransferMismatch) as info:
        world.bank_on(raced).transfer(world.envelope("payee2"), world.cc_peer)
    assert raced.raced
    booked = world.ledger.find_transfer(request_id)
    assert booked is not None
    assert info.value.fields == {"request_id": request_id, "field": "bank_ref", "on_chain": b"\xdd" * 32,
                                 "got": booked.bank_ref}
    assert world.chain().transfer_request(request_id).bank_ref == b"\xdd" * 32


def test_transfer_confirmed_by_another_instance_under_the_same_bank_ref_is_answered(world: BankWorld) -> None:
    """The control of the two tests above: a confirmation under this bank's own reference is not a mismatch."""
    world.pay_control()
    request_id, amount = world.requests["payee2"]
    booked = world.ledger.execute_transfer(request_id, world.env.actors["payee2"].address, amount,
                                           world.envelope("payee2").decode().digest(world.env.deployment.domain))
    world.chain().confirm_transfer(request_id, booked.bank_ref)
    receipt = world.bank.transfer(world.envelope("payee2"), world.cc_peer).decode()
    assert isinstance(receipt, TransferReceipt) and receipt.bank_ref == booked.bank_ref
