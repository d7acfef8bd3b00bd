"""The one error hierarchy of Clearhouse: `ClearhouseError` and one subclass per domain.

Every error carries the fields that explain it and a message that says what happened and what the caller can
do. Code catches these by class; only the CLI and HTTP edges catch broad exceptions. HTTP edges map `code`
(stable, snake_case) and `http_status` onto the wire.
"""

from __future__ import annotations

from typing import Any


class ClearhouseError(Exception):
    """Root of every error Clearhouse raises on purpose."""

    code: str = "clearhouse_error"
    http_status: int = 400

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields
        for name, value in fields.items():
            setattr(self, name, value)

    def to_dict(self) -> dict[str, Any]:
        def plain(v: Any) -> Any:
            if isinstance(v, (bytes, bytearray)):
                return "0x" + bytes(v).hex()
            if isinstance(v, (str, int, float, bool)) or v is None:
                return v
            return str(v)

        return {"error": self.code, "message": self.message, "fields": {k: plain(v) for k, v in self.fields.items()}}


# --- signatures -------------------------------------------------------------------------------------------
class SignatureError(ClearhouseError):
    code = "signature_invalid"
    http_status = 401


class InvalidSignatureLength(SignatureError):
    code = "signature_length"


class InvalidSignatureS(SignatureError):
    """High-s (malleated) signature."""

    code = "signature_high_s"


class InvalidSignatureV(SignatureError):
    code = "signature_bad_v"


class SignerMismatch(SignatureError):
    """A valid signature, but by someone other than the expected signer (forgery, wrong domain or wrong type)."""

    code = "signer_mismatch"


class MalformedMessage(ClearhouseError):
    """A typed log field is out of range or of the wrong type (fields: type, field, value, reason)."""

    code = "message_malformed"
    http_status = 422


# --- certificates -------------------------------------------------------------------------------------------
class CertificateError(ClearhouseError):
    code = "certificate_invalid"
    http_status = 401


class CertificateExpired(CertificateError):
    code = "certificate_expired"


class CertificateNotYetValid(CertificateError):
    code = "certificate_not_yet_valid"


class CertificateRevoked(CertificateError):
    code = "certificate_revoked"


class UntrustedCertificate(CertificateError):
    """Self-signed, issued by another CA, or otherwise failing path validation."""

    code = "certificate_untrusted"


class WrongRole(CertificateError):
    code = "wrong_role"
    http_status = 403


class IdentityMismatch(CertificateError):
    """The TLS peer, the attached certificate and the log's signer do not all name the same member."""

    code = "identity_mismatch"
    http_status = 403


class CrlUnavailable(CertificateError):
    """The CRL is missing, not signed by our root, or past its next_update: revocation cannot be checked."""

    code = "crl_unavailable"
    http_status = 503


class CrlExpired(CrlUnavailable):
    """The CRL is past its next_update (fields: next_update, now): every caller is refused until the CA re-signs
    it with `clearhouse ca refresh-crl`."""

    code = "crl_expired"


# --- replay and idempotency ---------------------------------------------------------------------------------
class ReplayError(ClearhouseError):
    code = "replay"
    http_status = 409


class DuplicateMessage(ReplayError):
    """Same id, different payload: an error, never a second effect."""

    code = "duplicate_id_different_payload"


class SequenceError(ReplayError):
    code = "sequence_error"


# --- limits (money) -----------------------------------------------------------------------------------------
class LimitError(ClearhouseError):
    code = "limit"
    http_status = 422


class AllowanceExceeded(LimitError):
    code = "allowance_exceeded"


class IssueLogExpired(LimitError):
    code = "issue_log_expired"


class InvalidAmount(LimitError):
    """Negative, zero where forbidden, or overflowing its field."""

    code = "invalid_amount"


class InsufficientFunds(LimitError):
    code = "insufficient_funds"


class StatementRejected(LimitError):
    """A balance statement the CC cannot renew against (fields: serial, reason, and the values compared)."""

    code = "statement_rejected"


class DepositNotProven(LimitError):
    """A deposit notice whose transaction does not carry the matching DepositRecorded event (fields: deposit_id,
    tx_hash, reason): nothing is credited."""

    code = "deposit_not_proven"


class FeeMismatch(LimitError):
    """A usage log's fee is not the price of its policy (fields: policy_id, expected, got, seq)."""

    code = "fee_mismatch"


# --- secure containers --------------------------------------------------------------------------------------
class ContainerError(ClearhouseError):
    code = "container_invalid"
    http_status = 422


class ContainerTampered(ContainerError):
    code = "container_tampered"


class ContainerTruncated(ContainerError):
    code = "container_truncated"


class WrongDevice(ContainerError):
    """The content key was wrapped for another device."""

    code = "container_wrong_device"


class PolicyMismatch(ContainerError):
    """The container's policy hash does not match the one registered on chain."""

    code = "policy_mismatch"


class InvalidPolicy(ContainerError):
    """A content policy breaks the registration rules (payees, bps split, version); fields: field, reason."""

    code = "policy_invalid"


class SecureModuleError(ContainerError):
    """The device's secure module (encryption processing unit) refused an operation."""

    code = "secure_module_error"


class WrongPassphrase(SecureModuleError):
    """The keystore did not decrypt: wrong passphrase or a tampered keystore file."""

    code = "keystore_wrong_passphrase"
    http_status = 401


class IssueLogRejected(SecureModuleError):
    """An issue log cannot be installed on this device (fields: serial, reason)."""

    code = "issue_log_rejected"


class NoIssueLog(SecureModuleError):
    """No open issue log is installed: request one from the clearing center first."""

    code = "no_issue_log"


class RenewalPending(SecureModuleError):
    """A balance statement was attested: the log is frozen until the renewed issue log is installed."""

    code = "renewal_pending"
    http_status = 409


# --- chain ----------------------------------------------------------------------------------------------------
class ChainError(ClearhouseError):
    code = "chain_error"
    http_status = 502


class ChainUnreachable(ChainError):
    code = "chain_unreachable"


class ContractReverted(ChainError):
    """A transaction or call reverted with a decoded custom error: `error_name` and `args` say which."""

    code = "contract_reverted"
    http_status = 422

    def __str__(self) -> str:  # BaseException.args was overwritten by the `args` field (a tuple of its keys)
        return self.message

    @property
    def error_args(self) -> dict[str, Any]:
        """The decoded custom-error arguments by name (read this, not `.args`)."""
        return dict(self.fields.get("args") or {})


class TransactionPending(ChainError):
    """A broadcast transaction has no receipt after `waited_s` (fields: tx_hash, waited_s): retry the request
    later; it resumes this very transaction, so nothing is sent twice."""

    code = "transaction_pending"


class RebroadcastRefused(ChainError):
    """The node refused to re-broadcast a recorded raw transaction, e.g. another pending transaction holds its
    nonce (fields: tx_hash, nonce, request_id, node_message): retry later, the pending one decides."""

    code = "rebroadcast_refused"


# --- bank -----------------------------------------------------------------------------------------------------
class BankError(ClearhouseError):
    code = "bank_error"


class UnknownAccount(BankError):
    code = "unknown_account"
    http_status = 404


class TransferMismatch(BankError):
    """A transfer request disagrees with the chain's record of it (fields: request_id, field, on_chain, got)."""

    code = "transfer_mismatch"
    http_status = 409


# --- transport and configuration ------------------------------------------------------------------------------
class TransportError(ClearhouseError):
    code = "transport_error"
    http_status = 502


class TlsHandshakeFailed(TransportError):
    """The mutual TLS handshake failed: wrong CA, no/expired client certificate, hostname mismatch."""

    code = "tls_handshake_failed"


class RemoteError(TransportError):
    """The peer answered non-2xx (fields: url, status, remote_code, remote_message, remote_fields)."""

    code = "remote_error"


class InvalidRequest(TransportError):
    """An HTTP body that is not JSON or does not match the route's schema (fields: errors)."""

    code = "invalid_request"
    http_status = 422


class ServiceUnavailable(TransportError):
    """A peer service did not answer (connection refused, timeout): retry later (fields: url, reason)."""

    code = "service_unavailable"
    http_status = 503


class ConfigError(ClearhouseError):
    code = "config_error"
    http_status = 500


class HsmError(ConfigError):
    """A PKCS#11 token refused or failed an operation (fields: token_label, label, ...)."""

    code = "hsm_error"


class NotFound(ClearhouseError):
    code = "not_found"
    http_status = 404


# --- persistence ------------------------------------------------------------------------------------------------
class InvalidTransition(ClearhouseError):
    """A stored record was asked to move to a status it cannot reach from its current one (fields: kind,
    current, wanted)."""

    code = "invalid_transition"
    http_status = 409


class UnbalancedEntry(BankError):
    """A ledger entry whose legs do not sum to zero was about to be posted (fields: key, total); a bug."""

    code = "ledger_unbalanced"
    http_status = 500
