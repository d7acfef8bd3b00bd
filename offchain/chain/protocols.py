"""The seam between the roles and the chain: what the bank, SP, CC, content provider and device call on it.

`ChainReader` is the view side (a device and an SP only read), `ChainWriter` adds the transactions. The real
implementation is `offchain.chain.client.ClearhouseChain`; a test double that implements these methods is a
legitimate chain, so no test has to patch a private field. `w3` and `contract` are the web3 objects the CC and
the bank use to read receipts and events; they are part of the seam on purpose (typed loosely as web3's).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from web3 import Web3
from web3.types import TxReceipt

from offchain.chain.codec import SettlementItem
from offchain.chain.deploy import Deployment
from offchain.chain.views import IssueLogInfo, MemberInfo, PolicyInfo, TransferRequestInfo, UserFunds
from offchain.core.errors import ChainError
from offchain.core.messages import Domain


@runtime_checkable
class ChainReader(Protocol):
    """Read access to one deployed Clearhouse."""

    w3: Web3
    deployment: Deployment
    address: str
    domain: Domain
    contract: Any  # web3 Contract: `.events.<Name>()` for receipts and log scans

    def member(self, account: str) -> MemberInfo: ...

    def is_active(self, account: str, role: int) -> bool: ...

    def issue_log(self, serial: bytes) -> IssueLogInfo: ...

    def policy(self, policy_id: bytes) -> PolicyInfo: ...

    def latest_version(self, content_id: bytes) -> int: ...

    def user_funds(self, user_id_hash: bytes) -> UserFunds: ...

    def transfer_request(self, request_id: bytes) -> TransferRequestInfo: ...

    def domain_separator(self) -> bytes: ...

    def call(self, function: str, *args: Any) -> Any:
        """Simulate `function` (eth_call); a revert raises ContractReverted."""
        ...

    def revert_reason(self, receipt: TxReceipt, function: str) -> ChainError:
        """The decoded error of a mined, failed transaction."""
        ...


@runtime_checkable
class ChainWriter(ChainReader, Protocol):
    """Read and write access for one member key (`sender`)."""

    sender: str

    def send(self, function: str, *args: Any, gas: int | None = None) -> TxReceipt: ...

    def send_via_outbox(self, function: str, *args: Any, record: Callable[[str, int, bytes], None],
                        gas: int | None = None) -> str:
        """Sign, `record(tx_hash, nonce, raw_tx)` durably, then broadcast; returns the tx hash."""
        ...

    def estimate(self, function: str, *args: Any) -> int:
        """The gas a send of `function(*args)` gets (estimate plus margin); a revert raises ContractReverted, the
        node's own refusal CallRefused."""
        ...

    def rebroadcast_forgotten(self) -> list[str]:
        """Send again, unchanged, this sender's transactions the node forgot (a restart); returns their hashes."""
        ...

    def replace_stuck(self, raw_tx: bytes, *, record: Callable[[str, int, bytes], None] | None = None
                      ) -> str | None:
        """Re-sign an unmined transaction at its nonce with higher fees; None when the nonce is used on chain."""
        ...

    def register_member(self, account: str, role: int, member_id: bytes, cert_fingerprint: bytes,
                        valid_from: int, valid_until: int, *, user_id_hash: bytes = ...) -> TxReceipt: ...

    def revoke_member(self, account: str) -> TxReceipt: ...

    def record_deposit(self, deposit_id: bytes, user_id_hash: bytes, amount: int, bank_ref: bytes) -> TxReceipt: ...

    def issue(self, serial: bytes, device: str, user_id_hash: bytes, cap: int, expires_at: int) -> TxReceipt: ...

    def renew(self, old_serial: bytes, statement: Any, device_signature: bytes, new_serial: bytes,
              new_money: int, expires_at: int) -> TxReceipt: ...

    def register_policy(self, content_id: bytes, version: int, price: int, payees: Sequence[tuple[str, int]],
                        policy_hash: bytes) -> TxReceipt: ...

    def skip_range(self, skip: Any, device_signature: bytes, receiver_signature: bytes) -> TxReceipt: ...

    def settle(self, items: Sequence[SettlementItem], *, gas: int | None = None) -> TxReceipt: ...

    def request_transfers(self, policy_ids: Sequence[bytes]) -> tuple[TxReceipt, list[bytes]]: ...

    def confirm_transfer(self, request_id: bytes, bank_ref: bytes) -> TxReceipt: ...


__all__ = ["ChainReader", "ChainWriter"]
