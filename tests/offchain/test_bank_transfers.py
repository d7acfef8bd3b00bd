"""The bank's transfer decision without processes: a CC-signed request is paid only if the chain has it, unpaid.

The chain is a stub holding one TransferRequestInfo; the ledger is a real one on SQLite.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from offchain import storage
from offchain.bank import store as bank_store
from offchain.bank.agent import Bank
from offchain.trust.certs import CertificateVerifier, Envelope
from offchain.chain import TransferRequestInfo
from offchain.core.errors import DuplicateMessage
from offchain.bank.ledger import Ledger
from offchain.core.messages import Domain, Role, TransferRequest

DOMAIN = Domain(chain_id=31337, verifying_contract="0x" + "ab" * 20)
REQUEST_ID = b"\x07" * 32


@dataclass
class StubChain:
    """A `BankChain` holding one transfer request; deposits are not part of these tests."""

    info: TransferRequestInfo
    confirmations: int = 0
    contract: Any = None

    def record_deposit(self, deposit_id: bytes, user_id_hash: bytes, amount: int, bank_ref: bytes) -> Any:
        raise AssertionError("no deposit is recorded in these tests")

    def transfer_request(self, request_id: bytes) -> TransferRequestInfo:
        return self.info

    def confirm_transfer(self, request_id: bytes, bank_ref: bytes) -> None:
        self.confirmations += 1
        self.info = replace(self.info, confirmed=True, bank_ref=bank_ref)


def test_transfer_already_confirmed_on_chain_is_not_paid_again(tmp_path: Path, verifier: CertificateVerifier,
                                                               member, clearing_center_member,
                                                               bank_member) -> None:
    """A request some bank already paid and confirmed (ledger restored from a backup, or a second bank) must not
    be paid a second time just because this ledger has no entry for it."""
    payee = member(Role.CONTENT_PROVIDER).address
    engine = storage.make_engine(f"sqlite:///{tmp_path / 'bank.db'}")
    bank_store.create_schema(engine)
    ledger = Ledger(engine)
    ledger.deposit(b"\x01" * 32, "alice", 1_000)
    chain = StubChain(TransferRequestInfo(REQUEST_ID, payee, 400, confirmed=True, bank_ref=b"\x09" * 32))
    bank = Bank(ledger=ledger, chain=chain, domain=DOMAIN, private_key=bank_member.eth_key,
                cert_pem=bank_member.cert_pem, verifier=verifier)
    cc = clearing_center_member
    envelope = Envelope.seal(TransferRequest(request_id=REQUEST_ID, payee=payee, amount=400), DOMAIN, cc.eth_key,
                             cc.cert_pem)
    with pytest.raises(DuplicateMessage):
        bank.transfer(envelope, verifier.verify(cc.cert_pem))
    assert ledger.find_transfer(REQUEST_ID) is None
    assert ledger.balance("cc:management") == 1_000 and chain.confirmations == 0


def test_transfer_refused_when_envelope_holds_another_kind(tmp_path: Path, verifier: CertificateVerifier,
                                                           member, clearing_center_member, bank_member) -> None:
    """A CC-signed log of another type is a malformed request (4xx), not an assertion failure (500)."""
    from offchain.core.errors import MalformedMessage
    from offchain.core.messages import TransferReceipt

    payee = member(Role.CONTENT_PROVIDER).address
    engine = storage.make_engine(f"sqlite:///{tmp_path / 'bank.db'}")
    bank_store.create_schema(engine)
    ledger = Ledger(engine)
    ledger.deposit(b"\x01" * 32, "alice", 1_000)
    chain = StubChain(TransferRequestInfo(REQUEST_ID, payee, 400, confirmed=False, bank_ref=bytes(32)))
    bank = Bank(ledger=ledger, chain=chain, domain=DOMAIN, private_key=bank_member.eth_key,
                cert_pem=bank_member.cert_pem, verifier=verifier)
    cc = clearing_center_member
    other = TransferReceipt(request_id=REQUEST_ID, bank_ref=b"\x09" * 32, amount=400, confirmed_at=1)
    envelope = Envelope.seal(other, DOMAIN, cc.eth_key, cc.cert_pem)
    with pytest.raises(MalformedMessage) as info:
        bank.transfer(envelope, verifier.verify(cc.cert_pem))
    assert info.value.http_status == 422 and info.value.fields["value"] == "TransferReceipt"
    assert ledger.find_transfer(REQUEST_ID) is None and chain.confirmations == 0
