"""The one error hierarchy of Clearhouse: `ClearhouseError` and one subclass per domain.

Every error declares its fields, typed, in its `__init__` (stripe-python's `CardError(message, param, code)`
style) and carries a message that says what happened and what the caller can do. Code catches these by class;
only the CLI and HTTP edges catch broad exceptions. HTTP edges send `to_payload()`; a client rebuilds a peer's
error with `from_payload`, which accepts only the codes of this module and each class's declared fields, so a
peer's body can neither crash the client nor relabel the error's `code` or `http_status`.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Union

Hex = Union[bytes, str]
"""An id (serial, digest, tx hash) as raw bytes or as its 0x-hex."""
Scalar = Union[str, int, float, bool, bytes, None]
"""A compared value (expected / got): an amount, an address, an id or a status name."""

RESERVED_NAMES = frozenset({"message", "code", "http_status", "fields", "args", "remote_status", "remote_url",
                            "with_traceback", "add_note", "to_payload", "to_dict", "from_payload", "field_names"})
MAX_REMOTE_TEXT = 2_000  # characters kept of one string a peer sends (message or field)


class ClearhouseError(Exception):
    """Root of every error Clearhouse raises on purpose."""

    code: ClassVar[str] = "clearhouse_error"
    http_status: ClassVar[int] = 400
    _field_names: ClassVar[tuple[str, ...]] = ()
    remote_status: int | None = None
    """The HTTP status the peer answered with, when this error was rebuilt from a peer's body."""
    remote_url: str | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        params = inspect.signature(cls.__init__).parameters.values()
        names = tuple(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)
        clash = RESERVED_NAMES.intersection(names)
        if clash:
            raise TypeError(f"{cls.__name__} declares reserved field names {sorted(clash)}")
        required = [p.name for p in params if p.default is inspect.Parameter.empty
                    and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]
        if required != ["self", "message"]:
            raise TypeError(f"{cls.__name__}.__init__ may require only the message, not {required[2:]}")
        cls._field_names = names

    def __str__(self) -> str:
        return self.message

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The fields this class declares in its `__init__` (keyword-only), in order."""
        return cls._field_names

    @property
    def fields(self) -> dict[str, Any]:
        """The declared fields that are set (not None), plus `remote_status` for an error rebuilt from a peer."""
        found = {name: getattr(self, name) for name in self._field_names if getattr(self, name) is not None}
        if self.remote_status is not None:
            found["remote_status"] = self.remote_status
        return found

    def to_payload(self) -> dict[str, Any]:
        """The JSON body an HTTP edge answers with: {"error": code, "message", "fields": {declared, set}}."""
        values = {name: getattr(self, name) for name in self._field_names}
        return {"error": self.code, "message": self.message,
                "fields": {k: _plain(v) for k, v in values.items() if v is not None}}

    to_dict = to_payload  # the name the HTTP edges and the CLI used first

    @staticmethod
    def from_payload(status: int, payload: Any, url: str) -> ClearhouseError:
        """Rebuild the error a peer answered with; see the module-level `from_payload`."""
        return from_payload(status, payload, url)


def _plain(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return "0x" + bytes(value).hex()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value)


# --- signatures -------------------------------------------------------------------------------------------
class SignatureError(ClearhouseError):
    code = "signature_invalid"
    http_status = 401

    def __init__(self, message: str, *, digest: Hex | None = None, signature: Hex | None = None) -> None:
        super().__init__(message)
        self.digest = digest
        self.signature = signature


class InvalidSignatureLength(SignatureError):
    code = "signature_length"

    def __init__(self, message: str, *, length: int | None = None) -> None:
        super().__init__(message)
        self.length = length


class InvalidSignatureS(SignatureError):
    """High-s (malleated) signature."""

    code = "signature_high_s"

    def __init__(self, message: str, *, s: Hex | None = None) -> None:
        super().__init__(message)
        self.s = s


class InvalidSignatureV(SignatureError):
    code = "signature_bad_v"

    def __init__(self, message: str, *, v: int | None = None) -> None:
        super().__init__(message)
        self.v = v


class SignerMismatch(SignatureError):
    """A valid signature, but by someone other than the expected signer (forgery, wrong domain or wrong type)."""

    code = "signer_mismatch"

    def __init__(self, message: str, *, expected: Scalar = None, got: Scalar = None,
                 index: int | None = None) -> None:
        super().__init__(message)
        self.expected = expected
        self.got = got
        self.index = index


class MalformedMessage(ClearhouseError):
    """A typed log field is out of range or of the wrong type (fields: type, field, value, reason)."""

    code = "message_malformed"
    http_status = 422

    def __init__(self, message: str, *, field: str | None = None, reason: str | None = None, type: str | None = None,
                 value: Scalar = None) -> None:
        super().__init__(message)
        self.field = field
        self.reason = reason
        self.type = type
        self.value = value


# --- certificates -------------------------------------------------------------------------------------------
class CertificateError(ClearhouseError):
    code = "certificate_invalid"
    http_status = 401


class CertificateExpired(CertificateError):
    code = "certificate_expired"

    def __init__(self, message: str, *, not_after: int | None = None, now: int | None = None,
                 subject: str | None = None) -> None:
        super().__init__(message)
        self.not_after = not_after
        self.now = now
        self.subject = subject


class CertificateNotYetValid(CertificateError):
    code = "certificate_not_yet_valid"

    def __init__(self, message: str, *, not_before: int | None = None, now: int | None = None,
                 subject: str | None = None) -> None:
        super().__init__(message)
        self.not_before = not_before
        self.now = now
        self.subject = subject


class CertificateRevoked(CertificateError):
    code = "certificate_revoked"

    def __init__(self, message: str, *, eth_address: str | None = None, member_id: str | None = None,
                 serial_number: int | None = None, source: str | None = None) -> None:
        super().__init__(message)
        self.eth_address = eth_address
        self.member_id = member_id
        self.serial_number = serial_number
        self.source = source


class UntrustedCertificate(CertificateError):
    """Self-signed, issued by another CA, or otherwise failing path validation."""

    code = "certificate_untrusted"

    def __init__(self, message: str, *, issuer: str | None = None, reason: str | None = None,
                 subject: str | None = None) -> None:
        super().__init__(message)
        self.issuer = issuer
        self.reason = reason
        self.subject = subject


class WrongRole(CertificateError):
    code = "wrong_role"
    http_status = 403

    def __init__(self, message: str, *, expected_role: str | None = None, member_id: str | None = None,
                 role: str | None = None) -> None:
        super().__init__(message)
        self.expected_role = expected_role
        self.member_id = member_id
        self.role = role


class IdentityMismatch(CertificateError):
    """The TLS peer, the attached certificate and the log's signer do not all name the same member."""

    code = "identity_mismatch"
    http_status = 403

    def __init__(self, message: str, *, cert_member_id: str | None = None, certificate_address: str | None = None,
                 expected: Scalar = None, expected_address: str | None = None, expected_member: str | None = None,
                 expected_user: str | None = None, got: Scalar = None, got_address: str | None = None,
                 got_member: str | None = None, got_user: str | None = None, header_member_id: str | None = None,
                 kind: str | None = None, member_id: str | None = None, serial: Hex | None = None,
                 signer: str | None = None) -> None:
        super().__init__(message)
        self.cert_member_id = cert_member_id
        self.certificate_address = certificate_address
        self.expected = expected
        self.expected_address = expected_address
        self.expected_member = expected_member
        self.expected_user = expected_user
        self.got = got
        self.got_address = got_address
        self.got_member = got_member
        self.got_user = got_user
        self.header_member_id = header_member_id
        self.kind = kind
        self.member_id = member_id
        self.serial = serial
        self.signer = signer


class CrlUnavailable(CertificateError):
    """The CRL is missing, not signed by our root, or past its next_update: revocation cannot be checked."""

    code = "crl_unavailable"
    http_status = 503

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason


class CrlExpired(CrlUnavailable):
    """The CRL is past its next_update (fields: next_update, now): every caller is refused until the CA re-signs
it with `clearhouse ca refresh-crl`."""

    code = "crl_expired"

    def __init__(self, message: str, *, crl_number: int | None = None, hint: str | None = None,
                 next_update: int | None = None, now: int | None = None) -> None:
        super().__init__(message)
        self.crl_number = crl_number
        self.hint = hint
        self.next_update = next_update
        self.now = now


# --- replay and idempotency ---------------------------------------------------------------------------------
class ReplayError(ClearhouseError):
    code = "replay"
    http_status = 409


class DuplicateMessage(ReplayError):
    """Same id, different payload: an error, never a second effect."""

    code = "duplicate_id_different_payload"

    def __init__(self, message: str, *, bank_ref: Hex | None = None, content_id: Hex | None = None,
                 first_seq: int | None = None, got_amount: int | None = None, got_hash: Hex | None = None,
                 got_ref: Hex | None = None, highest_received: int | None = None, key: str | None = None,
                 kind: str | None = None, serial: Hex | None = None, stored_amount: int | None = None,
                 stored_hash: Hex | None = None, stored_ref: Hex | None = None, version: int | None = None) -> None:
        super().__init__(message)
        self.bank_ref = bank_ref
        self.content_id = content_id
        self.first_seq = first_seq
        self.got_amount = got_amount
        self.got_hash = got_hash
        self.got_ref = got_ref
        self.highest_received = highest_received
        self.key = key
        self.kind = kind
        self.serial = serial
        self.stored_amount = stored_amount
        self.stored_hash = stored_hash
        self.stored_ref = stored_ref
        self.version = version


class SequenceError(ReplayError):
    code = "sequence_error"

    def __init__(self, message: str, *, expected: Scalar = None, first_seq: int | None = None, got: Scalar = None,
                 held_receive_log_id: Hex | None = None, serial: Hex | None = None) -> None:
        super().__init__(message)
        self.expected = expected
        self.first_seq = first_seq
        self.got = got
        self.held_receive_log_id = held_receive_log_id
        self.serial = serial


# --- limits (money) -----------------------------------------------------------------------------------------
class LimitError(ClearhouseError):
    code = "limit"
    http_status = 422


class AllowanceExceeded(LimitError):
    code = "allowance_exceeded"

    def __init__(self, message: str, *, available: int | None = None, cap: int | None = None, fee: int | None = None,
                 serial: Hex | None = None, spent: int | None = None, user_id: str | None = None,
                 wanted: Scalar = None) -> None:
        super().__init__(message)
        self.available = available
        self.cap = cap
        self.fee = fee
        self.serial = serial
        self.spent = spent
        self.user_id = user_id
        self.wanted = wanted


class IssueLogExpired(LimitError):
    code = "issue_log_expired"

    def __init__(self, message: str, *, expires_at: int | None = None, now: int | None = None,
                 seq: int | None = None, serial: Hex | None = None, used_at: int | None = None) -> None:
        super().__init__(message)
        self.expires_at = expires_at
        self.now = now
        self.seq = seq
        self.serial = serial
        self.used_at = used_at


class BatchTooLarge(LimitError):
    """A usage batch that one `settle` transaction cannot carry at the configured gas budget (fields: count,
    maximum, policies, gas_budget): split it into batches of at most `maximum` logs and upload them in order."""

    code = "batch_too_large"

    def __init__(self, message: str, *, count: int | None = None, maximum: int | None = None,
                 policies: int | None = None, gas_budget: int | None = None) -> None:
        super().__init__(message)
        self.count = count
        self.maximum = maximum
        self.policies = policies
        self.gas_budget = gas_budget


class ContainerTooLarge(LimitError):
    """A published container over the SP's `max_container_bytes` (field: maximum); nothing is stored."""

    code = "container_too_large"
    http_status = 413

    def __init__(self, message: str, *, maximum: int | None = None) -> None:
        super().__init__(message)
        self.maximum = maximum


class InvalidAmount(LimitError):
    """Negative, zero where forbidden, or overflowing its field."""

    code = "invalid_amount"

    def __init__(self, message: str, *, field: str | None = None, kind: str | None = None, limit: int | None = None,
                 maximum: int | None = None, type: str | None = None, value: Scalar = None) -> None:
        super().__init__(message)
        self.field = field
        self.kind = kind
        self.limit = limit
        self.maximum = maximum
        self.type = type
        self.value = value


class InsufficientFunds(LimitError):
    code = "insufficient_funds"

    def __init__(self, message: str, *, account: str | None = None, available: int | None = None,
                 balance: int | None = None, request_id: Hex | None = None, user_id: str | None = None,
                 wanted: Scalar = None) -> None:
        super().__init__(message)
        self.account = account
        self.available = available
        self.balance = balance
        self.request_id = request_id
        self.user_id = user_id
        self.wanted = wanted


class StatementRejected(LimitError):
    """A balance statement the CC cannot renew against (fields: serial, reason, and the values compared)."""

    code = "statement_rejected"

    def __init__(self, message: str, *, attested_next_seq: int | None = None, attested_spent: int | None = None,
                 cap: int | None = None, reason: str | None = None, serial: Hex | None = None,
                 settled_next_seq: int | None = None, settled_spent: int | None = None) -> None:
        super().__init__(message)
        self.attested_next_seq = attested_next_seq
        self.attested_spent = attested_spent
        self.cap = cap
        self.reason = reason
        self.serial = serial
        self.settled_next_seq = settled_next_seq
        self.settled_spent = settled_spent


class DepositNotProven(LimitError):
    """A deposit notice whose transaction does not carry the matching DepositRecorded event (fields: deposit_id,
tx_hash, reason): nothing is credited."""

    code = "deposit_not_proven"

    def __init__(self, message: str, *, deposit_id: Hex | None = None, expected: Scalar = None, got: Scalar = None,
                 reason: str | None = None, tx_hash: Hex | None = None) -> None:
        super().__init__(message)
        self.deposit_id = deposit_id
        self.expected = expected
        self.got = got
        self.reason = reason
        self.tx_hash = tx_hash


class FeeMismatch(LimitError):
    """A usage log's fee is not the price of its policy (fields: policy_id, expected, got, seq)."""

    code = "fee_mismatch"

    def __init__(self, message: str, *, expected: Scalar = None, got: Scalar = None, policy_id: Hex | None = None,
                 seq: int | None = None) -> None:
        super().__init__(message)
        self.expected = expected
        self.got = got
        self.policy_id = policy_id
        self.seq = seq


# --- secure containers --------------------------------------------------------------------------------------
class ContainerError(ClearhouseError):
    code = "container_invalid"
    http_status = 422


class ContainerTampered(ContainerError):
    code = "container_tampered"

    def __init__(self, message: str, *, cert_len: int | None = None, ciphertext_len: int | None = None,
                 header_len: int | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.cert_len = cert_len
        self.ciphertext_len = ciphertext_len
        self.header_len = header_len
        self.reason = reason


class ContainerTruncated(ContainerError):
    code = "container_truncated"

    def __init__(self, message: str, *, expected: Scalar = None, length: int | None = None) -> None:
        super().__init__(message)
        self.expected = expected
        self.length = length


class WrongDevice(ContainerError):
    """The content key was wrapped for another device."""

    code = "container_wrong_device"

    def __init__(self, message: str, *, device: str | None = None, reason: str | None = None,
                 wrapped_for: str | None = None) -> None:
        super().__init__(message)
        self.device = device
        self.reason = reason
        self.wrapped_for = wrapped_for


class PolicyMismatch(ContainerError):
    """The container's policy hash does not match the one registered on chain."""

    code = "policy_mismatch"

    def __init__(self, message: str, *, expected: Scalar = None, got: Scalar = None,
                 policy_id: Hex | None = None) -> None:
        super().__init__(message)
        self.expected = expected
        self.got = got
        self.policy_id = policy_id


class ContentOwnerMismatch(ContainerError):
    """A container for a content id is signed by another provider than the id's on-chain owner (fields:
    content_id, owner, signer): a copied policy with someone else's bytes. Publish under your own content id."""

    code = "content_owner_mismatch"
    http_status = 403

    def __init__(self, message: str, *, content_id: Hex | None = None, owner: str | None = None,
                 signer: str | None = None) -> None:
        super().__init__(message)
        self.content_id = content_id
        self.owner = owner
        self.signer = signer


class InvalidPolicy(ContainerError):
    """A content policy breaks the registration rules (payees, bps split, version); fields: field, reason."""

    code = "policy_invalid"

    def __init__(self, message: str, *, field: str | None = None, index: int | None = None,
                 reason: str | None = None, sum_bps: int | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.index = index
        self.reason = reason
        self.sum_bps = sum_bps


# --- the device's secure module ------------------------------------------------------------------------------
class SecureModuleError(ClearhouseError):
    """The device's secure module (encryption processing unit) refused an operation (its own domain: it is not a
    container error)."""

    code = "secure_module_error"
    http_status = 422


class WrongPassphrase(SecureModuleError):
    """The keystore did not decrypt: wrong passphrase or a tampered keystore file."""

    code = "keystore_wrong_passphrase"
    http_status = 401

    def __init__(self, message: str, *, path: str | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.reason = reason


class IssueLogRejected(SecureModuleError):
    """An issue log cannot be installed on this device (fields: serial, reason)."""

    code = "issue_log_rejected"

    def __init__(self, message: str, *, current: Scalar = None, expected: Scalar = None, got: Scalar = None,
                 minimum: int | None = None, reason: str | None = None, serial: Hex | None = None) -> None:
        super().__init__(message)
        self.current = current
        self.expected = expected
        self.got = got
        self.minimum = minimum
        self.reason = reason
        self.serial = serial


class NoIssueLog(SecureModuleError):
    """No open issue log is installed: request one from the clearing center first."""

    code = "no_issue_log"


class RenewalPending(SecureModuleError):
    """A balance statement was attested: the log is frozen until the renewed issue log is installed."""

    code = "renewal_pending"
    http_status = 409

    def __init__(self, message: str, *, attested_at: int | None = None, serial: Hex | None = None) -> None:
        super().__init__(message)
        self.attested_at = attested_at
        self.serial = serial


# --- chain ----------------------------------------------------------------------------------------------------
class ChainError(ClearhouseError):
    code = "chain_error"
    http_status = 502

    def __init__(self, message: str, *, confirmations: int | None = None, deposit_id: Hex | None = None,
                 function: str | None = None, method: str | None = None, quorum: int | None = None,
                 tx_hash: Hex | None = None) -> None:
        super().__init__(message)
        self.confirmations = confirmations
        self.deposit_id = deposit_id
        self.function = function
        self.method = method
        self.quorum = quorum
        self.tx_hash = tx_hash


class ChainUnreachable(ChainError):
    code = "chain_unreachable"

    def __init__(self, message: str, *, function: str | None = None, method: str | None = None,
                 reason: str | None = None, rpc_urls: Sequence[str] | None = None, url: str | None = None) -> None:
        super().__init__(message)
        self.function = function
        self.method = method
        self.reason = reason
        self.rpc_urls = rpc_urls
        self.url = url


class CallRefused(ChainError):
    """The node answered a call or gas estimate with a JSON-RPC error and no revert data (out of gas, memory
    limit, request too large): a deterministic refusal of this call, unlike ChainUnreachable (no answer at all).
    Retrying the same call changes nothing; split or drop what was asked."""

    code = "call_refused"
    http_status = 422

    def __init__(self, message: str, *, function: str | None = None, reason: str | None = None,
                 rpc_code: int | None = None) -> None:
        super().__init__(message)
        self.function = function
        self.reason = reason
        self.rpc_code = rpc_code


class ContractReverted(ChainError):
    """A transaction or call reverted with a decoded custom error: `error_name` and `error_args` (the decoded
    arguments by name) say which; `data` is the raw revert data when it did not decode."""

    code = "contract_reverted"
    http_status = 422

    def __init__(self, message: str, *, data: Hex | None = None, error_args: Mapping[str, Any] | None = None,
                 error_name: str | None = None, function: str | None = None, tx_hash: Hex | None = None) -> None:
        super().__init__(message)
        self.data = data
        self.error_args = error_args
        self.error_name = error_name
        self.function = function
        self.tx_hash = tx_hash


class TransactionPending(ChainError):
    """A broadcast transaction has no receipt after `waited_s` (fields: tx_hash, waited_s): retry the request
later; it resumes this very transaction, so nothing is sent twice."""

    code = "transaction_pending"

    def __init__(self, message: str, *, tx_hash: Hex | None = None, waited_s: float | None = None) -> None:
        super().__init__(message)
        self.tx_hash = tx_hash
        self.waited_s = waited_s


class RebroadcastRefused(ChainError):
    """The node refused to re-broadcast a recorded raw transaction, e.g. another pending transaction holds its
nonce (fields: tx_hash, nonce, request_id, node_message): retry later, the pending one decides."""

    code = "rebroadcast_refused"

    def __init__(self, message: str, *, node_message: str | None = None, nonce: int | None = None,
                 request_id: Hex | None = None, tx_hash: Hex | None = None) -> None:
        super().__init__(message)
        self.node_message = node_message
        self.nonce = nonce
        self.request_id = request_id
        self.tx_hash = tx_hash


class NotFinal(ChainError):
    """A fact a decision rests on is on chain but not yet at the finality depth (fields: fact, subject, head,
final_block, confirmations): retry later; nothing was refused for good and nothing was recorded."""

    code = "not_final"
    http_status = 503

    def __init__(self, message: str, *, confirmations: int | None = None, fact: str | None = None,
                 final_block: int | None = None, head: int | None = None, subject: Hex | None = None) -> None:
        super().__init__(message)
        self.confirmations = confirmations
        self.fact = fact
        self.final_block = final_block
        self.head = head
        self.subject = subject


# --- bank -----------------------------------------------------------------------------------------------------
class BankError(ClearhouseError):
    code = "bank_error"


class UnknownAccount(BankError):
    code = "unknown_account"
    http_status = 404

    def __init__(self, message: str, *, account: str | None = None) -> None:
        super().__init__(message)
        self.account = account


class TransferMismatch(BankError):
    """A transfer request disagrees with the chain's record of it (fields: request_id, field, on_chain, got)."""

    code = "transfer_mismatch"
    http_status = 409

    def __init__(self, message: str, *, field: str | None = None, got: Scalar = None, on_chain: Scalar = None,
                 request_id: Hex | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.got = got
        self.on_chain = on_chain
        self.request_id = request_id


# --- transport and configuration ------------------------------------------------------------------------------
class TransportError(ClearhouseError):
    code = "transport_error"
    http_status = 502

    def __init__(self, message: str, *, status: int | None = None, url: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.url = url


class TlsHandshakeFailed(TransportError):
    """The mutual TLS handshake failed: wrong CA, no/expired client certificate, hostname mismatch."""

    code = "tls_handshake_failed"

    def __init__(self, message: str, *, reason: str | None = None, url: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.url = url


class RemoteError(TransportError):
    """A peer answered non-2xx with a body that is not one of our errors (an unknown code, or no error body):
    `remote_code` and `remote_message` are what it said, as text."""

    code = "remote_error"

    def __init__(self, message: str, *, remote_code: str | None = None, remote_message: str | None = None,
                 status: int | None = None, url: str | None = None) -> None:
        super().__init__(message)
        self.remote_code = remote_code
        self.remote_message = remote_message
        self.status = status
        self.url = url


class InvalidRequest(TransportError):
    """An HTTP body that is not JSON or does not match the route's schema (fields: errors)."""

    code = "invalid_request"
    http_status = 422

    def __init__(self, message: str, *, errors: Scalar | Sequence[Scalar] = None, model: str | None = None) -> None:
        super().__init__(message)
        self.errors = errors
        self.model = model


class ServiceUnavailable(TransportError):
    """A peer service did not answer (connection refused, timeout): retry later (fields: url, reason)."""

    code = "service_unavailable"
    http_status = 503

    def __init__(self, message: str, *, reason: str | None = None, url: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.url = url


class ConfigError(ClearhouseError):
    """Clearhouse is set up wrongly for what was asked: a setting, a file, a tool or a member does not fit. Raise
    one of the subclasses, which say which and carry its fields; catch this one. They all answer `config_error`."""

    code = "config_error"
    http_status = 500


class SettingError(ConfigError):
    """A setting, option or argument is missing, malformed or out of range (fields: field, the setting or option;
    expected / got; candidates, the values to choose from; length; source, where a value came from or the node
    call that refused it; env, the environment variable to set; group_by, output, mtls, missing, confirmations,
    the option's bad value): fix the setting or the option."""

    def __init__(self, message: str, *, candidates: Sequence[str] | None = None, confirmations: int | None = None,
                 env: str | None = None, expected: Scalar = None, field: str | None = None, got: Scalar = None,
                 group_by: str | None = None, length: int | None = None, missing: str | None = None,
                 mtls: bool | None = None, output: str | None = None, source: str | None = None) -> None:
        super().__init__(message)
        self.candidates = candidates
        self.confirmations = confirmations
        self.env = env
        self.expected = expected
        self.field = field
        self.got = got
        self.group_by = group_by
        self.length = length
        self.missing = missing
        self.mtls = mtls
        self.output = output
        self.source = source


class PathError(ConfigError):
    """A file or folder is missing, unreadable, malformed or in the way (fields: path or directory; field, the
    option or entry that names it or is bad in it; suffix, a file type not accepted; settings, the settings class
    a settings file failed; env, the environment variable the file needs): fix the file or choose another path."""

    def __init__(self, message: str, *, directory: str | None = None, env: str | None = None,
                 field: str | None = None, path: str | None = None, settings: str | None = None,
                 suffix: str | None = None) -> None:
        super().__init__(message)
        self.directory = directory
        self.env = env
        self.field = field
        self.path = path
        self.settings = settings
        self.suffix = suffix


class ToolMissing(ConfigError):
    """A program, library or compiler step that Clearhouse runs is not installed or failed (fields: binary, a
    program looked up on PATH; tool, a helper or utility; candidates, the places looked in; stage, the build step
    that failed): install it (bin/setup) or fix what it reported."""

    def __init__(self, message: str, *, binary: str | None = None, candidates: Sequence[str] | None = None,
                 stage: str | None = None, tool: str | None = None) -> None:
        super().__init__(message)
        self.binary = binary
        self.candidates = candidates
        self.stage = stage
        self.tool = tool


class MemberSetupError(ConfigError):
    """The member, role, user or content a command names does not fit (fields: member_id, role, user_id;
    field, the missing option; env, the environment variable to set; cert_path, the certificate that lacks it;
    content_id, version, the catalog entry the catalog key cannot open): name a fitting one."""

    def __init__(self, message: str, *, cert_path: str | None = None, content_id: Hex | None = None,
                 env: str | None = None, field: str | None = None, member_id: str | None = None,
                 role: int | str | None = None, user_id: str | None = None, version: int | None = None) -> None:
        super().__init__(message)
        self.cert_path = cert_path
        self.content_id = content_id
        self.env = env
        self.field = field
        self.member_id = member_id
        self.role = role
        self.user_id = user_id
        self.version = version


class WalletDeploymentMismatch(ConfigError):
    """The device's wallet holds issue logs and usage logs of another deployment (chain id and contract) than the
    one its settings name: nothing it signed there could settle here. `expected` is the wallet's deployment,
    `got` the settings' ("<chain id>:<contract address>")."""

    code = "wallet_deployment_mismatch"

    def __init__(self, message: str, *, expected: str | None = None, got: str | None = None,
                 path: str | None = None) -> None:
        super().__init__(message)
        self.expected = expected
        self.got = got
        self.path = path


class HsmError(ConfigError):
    """A PKCS#11 token refused or failed an operation (fields: token_label, label, ...)."""

    code = "hsm_error"

    def __init__(self, message: str, *, address: str | None = None, label: str | None = None,
                 length: int | None = None, member_id: str | None = None, module: str | None = None,
                 sender: str | None = None, token_label: str | None = None) -> None:
        super().__init__(message)
        self.address = address
        self.label = label
        self.length = length
        self.member_id = member_id
        self.module = module
        self.sender = sender
        self.token_label = token_label


class NotFound(ClearhouseError):
    code = "not_found"
    http_status = 404

    def __init__(self, message: str, *, account: str | None = None, block: int | None = None,
                 content_id: Hex | None = None, deposit_id: Hex | None = None, device: str | None = None,
                 error: str | None = None, format: str | None = None, id: Hex | None = None, kind: str | None = None,
                 list: str | None = None, member_id: str | None = None, path: str | None = None,
                 payee: str | None = None, policy_id: Hex | None = None, query: str | None = None,
                 request_id: Hex | None = None, seq: int | None = None, serial: Hex | None = None,
                 stage: str | None = None, title: str | None = None, tx_hash: Hex | None = None,
                 user_id: str | None = None, version: int | None = None) -> None:
        super().__init__(message)
        self.account = account
        self.block = block
        self.content_id = content_id
        self.deposit_id = deposit_id
        self.device = device
        self.error = error
        self.format = format
        self.id = id
        self.kind = kind
        self.list = list
        self.member_id = member_id
        self.path = path
        self.payee = payee
        self.policy_id = policy_id
        self.query = query
        self.request_id = request_id
        self.seq = seq
        self.serial = serial
        self.stage = stage
        self.title = title
        self.tx_hash = tx_hash
        self.user_id = user_id
        self.version = version


# --- persistence ------------------------------------------------------------------------------------------------
class StorageFull(ClearhouseError):
    """The service's database could not grow: its disk (or quota) is full (fields: backend, detail). Nothing of
the request was stored; retry once the operator has freed space."""

    code = "storage_full"
    http_status = 507

    def __init__(self, message: str, *, backend: str | None = None, detail: str | None = None) -> None:
        super().__init__(message)
        self.backend = backend
        self.detail = detail


class InvalidTransition(ClearhouseError):
    """A stored record was asked to move to a status it cannot reach from its current one (fields: kind,
current, wanted)."""

    code = "invalid_transition"
    http_status = 409

    def __init__(self, message: str, *, current: Scalar = None, kind: str | None = None,
                 wanted: Scalar = None) -> None:
        super().__init__(message)
        self.current = current
        self.kind = kind
        self.wanted = wanted


class UnbalancedEntry(BankError):
    """A ledger entry whose legs do not sum to zero was about to be posted (fields: key, total); a bug."""

    code = "ledger_unbalanced"
    http_status = 500

    def __init__(self, message: str, *, key: str | None = None, total: int | None = None) -> None:
        super().__init__(message)
        self.key = key
        self.total = total


# --- operator tools (audit, reconciliation, demo) ---------------------------------------------------------------
class AuditError(ClearhouseError):
    """The audit could not be produced (the fields say which input was wrong)."""

    code = "audit_error"

    def __init__(self, message: str, *, argument: str | None = None, deploy_block: int | None = None,
                 event: str | None = None, head: int | None = None) -> None:
        super().__init__(message)
        self.argument = argument
        self.deploy_block = deploy_block
        self.event = event
        self.head = head


class ReconciliationFailed(ClearhouseError):
    """Unexplained differences between chain, CC database and bank ledger."""

    code = "reconciliation_failed"
    http_status = 409

    def __init__(self, message: str, *, count: int | None = None, hint: str | None = None) -> None:
        super().__init__(message)
        self.count = count
        self.hint = hint


class DemoError(ClearhouseError):
    """A demo step failed; `hint` says what to do about it."""

    code = "demo_failed"
    http_status = 500

    def __init__(self, message: str, *, hint: str | None = None, port: int | None = None, service: str | None = None,
                 url: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint
        self.port = port
        self.service = service
        self.url = url


# --- rebuilding a peer's error ----------------------------------------------------------------------------------
def error_classes() -> dict[str, type[ClearhouseError]]:
    """Every error class by its code: the allow-list `from_payload` accepts (codes are unique, a test checks,
    except that a subclass which does not set its own `code`, like `SettingError`, shares its parent's: the
    code then gives the parent, here `ConfigError`)."""
    found: dict[str, type[ClearhouseError]] = {}
    pending: list[type[ClearhouseError]] = [ClearhouseError]
    while pending:
        cls = pending.pop()
        found.setdefault(cls.code, cls)
        pending.extend(cls.__subclasses__())
    return found


def _clip(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str, sort_keys=True)[:MAX_REMOTE_TEXT]
    return text[:MAX_REMOTE_TEXT]


def _remote_value(value: Any) -> Any:
    """A peer's field value as a JSON scalar: numbers and booleans kept, strings clipped, anything else as text."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return _clip(value)


def from_payload(status: int, payload: Any, url: str) -> ClearhouseError:
    """The error a peer at `url` answered with HTTP `status` and JSON `payload`, rebuilt from the allow-list.

    A known code gives its class, built from that class's declared fields only (unknown keys are dropped,
    nested values become text); its `code` and `http_status` are the class's, never the peer's. An unknown code
    or a body that is not a Clearhouse error gives RemoteError. Never raises.
    """
    if not isinstance(payload, Mapping) or not isinstance(payload.get("error"), str):
        error: ClearhouseError = RemoteError(f"{url} answered HTTP {status} without a Clearhouse error body",
                                             url=url, status=status)
        error.remote_status, error.remote_url = status, url
        return error
    remote_code = _clip(payload["error"])
    message = _clip(payload.get("message", ""))
    cls = error_classes().get(remote_code)
    if cls is None or cls is ClearhouseError:
        error = RemoteError(f"{url} answered HTTP {status} [{remote_code}]: {message}", url=url, status=status,
                            remote_code=remote_code, remote_message=message)
    else:
        raw = payload.get("fields")
        raw = raw if isinstance(raw, Mapping) else {}
        error = cls(message, **{name: _remote_value(raw[name]) for name in cls.field_names() if name in raw})
    error.remote_status, error.remote_url = status, url
    return error


__all__ = [name for name, value in list(globals().items())
           if isinstance(value, type) and issubclass(value, ClearhouseError)] + [
    "Hex", "Scalar", "error_classes", "from_payload"]
