"""Member certificate verification, identity extraction, and the `Envelope` (a signed log + its sender's certificate).

Path validation is cryptography's RFC 5280 / webpki verifier against our single root; on top of it we check the
validity window, the root-signed CRL and (optionally) the member's on-chain status. It trusts nothing but the root
it is given: no system trust store, no intermediates, no AIA fetching.
"""

from __future__ import annotations

import copy
import datetime as dt
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from hashlib import sha256
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from offchain.core import messages
from offchain.trust.crl import CrlFreshness
from offchain.core.errors import (CertificateExpired, CertificateNotYetValid, CertificateRevoked, CrlUnavailable,
                             IdentityMismatch, MalformedMessage, SignatureError, UntrustedCertificate, WrongRole)
from offchain.core.messages import Domain, Message, to_checksum_address
from offchain.core.types import Clock, Role

__all__ = ["CertificateVerifier", "Envelope", "MemberIdentity", "MEMBER_URN", "ROLE_URN", "ETH_URN", "USER_URN",
           "role_urn_name", "require_same_member", "load_certificate"]

MEMBER_URN = "urn:clearhouse:member:"
ROLE_URN = "urn:clearhouse:role:"
ETH_URN = "urn:clearhouse:eth:"
USER_URN = "urn:clearhouse:user:"  # devices only: the user whose deposits the device spends
PATH_CACHE_SIZE = 4096
ChainStatus = Callable[[str, Role], bool]


def role_urn_name(role: Role) -> str:
    """`Role.CLEARING_CENTER` -> "clearing_center" (the SAN URI spelling)."""
    return Role(role).name.lower()


@dataclass(frozen=True)
class MemberIdentity:
    """Who a verified certificate names: member id, role, Ethereum address, and the certificate's own facts."""

    member_id: str
    role: Role
    eth_address: str
    fingerprint: bytes  # SHA-256 of the certificate DER (the on-chain certFingerprint)
    serial_number: int
    not_after: int
    user_id: str | None = None  # devices: the user named by the CA; None for every other role

    def to_json(self) -> dict[str, Any]:
        return {"member_id": self.member_id, "role": self.role.name, "eth_address": self.eth_address,
                "fingerprint": "0x" + self.fingerprint.hex(), "serial_number": hex(self.serial_number),
                "not_after": self.not_after, "user_id": self.user_id}


def load_certificate(cert_pem: bytes | str) -> x509.Certificate:
    """Parse one PEM certificate; anything unparseable is an UntrustedCertificate."""
    data = cert_pem.encode() if isinstance(cert_pem, str) else bytes(cert_pem)
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise UntrustedCertificate(f"not a PEM certificate: {exc}", reason="unparseable") from None


def require_same_member(first: MemberIdentity, second: MemberIdentity) -> None:
    """Raise IdentityMismatch unless both identities are the same certificate's (e.g. TLS peer vs envelope)."""
    if first.fingerprint != second.fingerprint:
        raise IdentityMismatch(
            f"certificate of {second.member_id} does not match the authenticated peer {first.member_id}",
            expected_member=first.member_id, got_member=second.member_id,
            expected_address=first.eth_address, got_address=second.eth_address)


class CertificateVerifier:
    """Verifies member certificates against one root, the CRL, and optionally the chain's member registry."""

    def __init__(self, root_pem: bytes, crl_pem: bytes | Callable[[], bytes] | None = None,
                 chain_status: ChainStatus | None = None, clock: Clock = time.time) -> None:
        self._root = load_certificate(root_pem)
        self._store = Store([self._root])
        self._crl_source = crl_pem
        self._chain_status = chain_status
        self._clock = clock
        self._path_ok: OrderedDict[bytes, None] = OrderedDict()
        self._lock = threading.Lock()  # services call verify from worker threads (asyncio.to_thread)
        self._crl_cache: tuple[bytes, x509.CertificateRevocationList] | None = None
        self._freshness = CrlFreshness()

    @property
    def root(self) -> x509.Certificate:
        """The trust anchor (what the CA's non-certificate attestations are verified against)."""
        return self._root

    def for_one_request(self) -> CertificateVerifier:
        """This verifier for the messages of one request: the same root, CRL source, clock and path cache, but
        each member's on-chain status is read once, by the first check that needs it, and reused by the rest of
        the request (a CC intake request carries many items signed by the same SP and devices). Every other step
        runs on every call. A revocation mined while the request runs counts from the next request on, as for
        the TLS peer, whose status is checked once per request; a read that fails is not kept. Use one per
        request and drop it: nothing here expires."""
        scoped = copy.copy(self)  # shares _path_ok and its lock on purpose
        if self._chain_status is not None:
            scoped._chain_status = _status_once(self._chain_status)
        return scoped

    def verify(self, cert_pem: bytes | str, expected_role: Role | None = None) -> MemberIdentity:
        """Full check of a member certificate; returns its identity or raises a CertificateError subclass."""
        cert = load_certificate(cert_pem)
        der = cert.public_bytes(serialization.Encoding.DER)
        now = int(self._clock())
        if now > self._root.not_valid_after_utc.timestamp():  # cached path results must not outlive the root
            raise UntrustedCertificate("the Clearhouse root certificate itself has expired: re-key the consortium",
                                       subject=_cn(cert), reason="root expired")
        path_time = _inside_window(cert, self._root, now)
        if path_time is None:  # the cert's window lies outside the root's: its dates are the precise failure
            _check_window(cert, now)
        self._check_path(cert, der, now if path_time is None else path_time)
        _check_window(cert, now)  # after path validation so a foreign certificate is untrusted whatever its dates
        identity = _identity(cert, der)
        self._check_crl(identity, now)
        if expected_role is not None and identity.role != Role(expected_role):
            raise WrongRole(f"{identity.member_id} is a {identity.role.name}, this needs a {Role(expected_role).name}",
                            member_id=identity.member_id, role=identity.role.name,
                            expected_role=Role(expected_role).name)
        if self._chain_status is not None and not self._chain_status(identity.eth_address, identity.role):
            raise CertificateRevoked(f"{identity.member_id} ({identity.eth_address}) is not an active "
                                     f"{identity.role.name} on chain", member_id=identity.member_id,
                                     eth_address=identity.eth_address, serial_number=hex(identity.serial_number),
                                     source="chain")
        return identity

    def verify_signer(self, cert_pem: bytes | str, signer: str, expected_role: Role | None = None) -> MemberIdentity:
        """`verify`, and the certificate's Ethereum address must be `signer` (IdentityMismatch otherwise)."""
        identity = self.verify(cert_pem, expected_role)
        signer = to_checksum_address(signer)
        if identity.eth_address != signer:
            raise IdentityMismatch(f"log signed by {signer} but the attached certificate names "
                                   f"{identity.member_id} at {identity.eth_address}",
                                   member_id=identity.member_id, certificate_address=identity.eth_address,
                                   signer=signer)
        return identity

    # --- steps ---------------------------------------------------------------------------------------------
    def _check_path(self, cert: x509.Certificate, der: bytes, now: int) -> None:
        """Chain to our root (signature, extensions, EKU clientAuth); successes are cached by DER hash."""
        key = sha256(der).digest()
        with self._lock:
            if key in self._path_ok:
                self._path_ok.move_to_end(key)
                return
        verifier = (PolicyBuilder().store(self._store)
                    .time(dt.datetime.fromtimestamp(now, tz=dt.timezone.utc))
                    .build_client_verifier())
        try:
            verifier.verify(cert, [])
        except VerificationError as exc:
            raise UntrustedCertificate(f"certificate of {_cn(cert)!r} does not chain to the Clearhouse root: {exc}",
                                       subject=_cn(cert), issuer=cert.issuer.rfc4514_string(),
                                       reason=str(exc)) from None
        with self._lock:
            self._path_ok[key] = None
            if len(self._path_ok) > PATH_CACHE_SIZE:
                self._path_ok.popitem(last=False)

    def _check_crl(self, identity: MemberIdentity, now: int) -> None:
        if self._crl_source is None:
            return
        crl = self._load_crl(now)
        if crl.get_revoked_certificate_by_serial_number(identity.serial_number) is not None:
            raise CertificateRevoked(f"certificate of {identity.member_id} (serial {identity.serial_number:#x}) "
                                     "is on the CRL", member_id=identity.member_id, eth_address=identity.eth_address,
                                     serial_number=hex(identity.serial_number), source="crl")

    def _load_crl(self, now: int) -> x509.CertificateRevocationList:
        source = self._crl_source
        try:
            data = source() if callable(source) else source
        except OSError as exc:
            raise CrlUnavailable(f"cannot read the CRL: {exc}", reason="unreadable") from None
        if not data:
            raise CrlUnavailable("the CRL source returned nothing", reason="empty")
        if self._crl_cache is not None and self._crl_cache[0] == data:
            crl = self._crl_cache[1]
        else:
            crl = self._parse_crl(data)
            self._crl_cache = (data, crl)
        self._freshness.check(crl, now)  # CrlExpired past next_update, a rate-limited warning shortly before
        return crl

    def _parse_crl(self, data: bytes) -> x509.CertificateRevocationList:
        try:
            crl = x509.load_pem_x509_crl(bytes(data))
        except ValueError as exc:
            raise CrlUnavailable(f"the CRL is not valid PEM: {exc}", reason="unparseable") from None
        public_key = self._root.public_key()
        if crl.issuer != self._root.subject or not crl.is_signature_valid(public_key):  # type: ignore[arg-type]
            raise CrlUnavailable("the CRL is not signed by the Clearhouse root", reason="bad_signature")
        return crl


def _status_once(status: ChainStatus) -> ChainStatus:
    """`status`, asked at most once per (address, role); a read that raises is not kept (the next ask reads)."""
    answers: dict[tuple[str, Role], bool] = {}

    def once(address: str, role: Role) -> bool:
        key = (address, Role(role))
        if key not in answers:
            answers[key] = status(address, role)
        return answers[key]

    return once


def _cn(cert: x509.Certificate) -> str:
    attrs = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""


def _inside_window(cert: x509.Certificate, root: x509.Certificate, now: int) -> int | None:
    """`now` clamped into the time both cert and root are valid (None if never), for path validation."""
    low = int(max(cert.not_valid_before_utc, root.not_valid_before_utc).timestamp())
    high = int(min(cert.not_valid_after_utc, root.not_valid_after_utc).timestamp())
    return min(max(now, low), high) if low <= high else None


def _check_window(cert: x509.Certificate, now: int) -> None:
    not_before = int(cert.not_valid_before_utc.timestamp())
    not_after = int(cert.not_valid_after_utc.timestamp())
    if now < not_before:
        raise CertificateNotYetValid(f"certificate of {_cn(cert)!r} is valid from {not_before}, now is {now}",
                                     subject=_cn(cert), not_before=not_before, now=now)
    if now > not_after:
        raise CertificateExpired(f"certificate of {_cn(cert)!r} expired at {not_after}, now is {now}: renew it",
                                 subject=_cn(cert), not_after=not_after, now=now)


def _one_urn(uris: list[str], prefix: str, cert: x509.Certificate) -> str:
    found = [u[len(prefix):] for u in uris if u.startswith(prefix)]
    if len(found) != 1 or not found[0]:
        raise UntrustedCertificate(f"certificate of {_cn(cert)!r} must name exactly one {prefix}<value> URI",
                                   subject=_cn(cert), reason=f"{len(found)} {prefix} URIs")
    return found[0]


def _identity(cert: x509.Certificate, der: bytes) -> MemberIdentity:
    """Member id, role, Ethereum address and (devices) user id from the SAN URIs (only the CA can write them)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise UntrustedCertificate(f"certificate of {_cn(cert)!r} has no subjectAltName",
                                   subject=_cn(cert), reason="no SAN") from None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    member_id = _one_urn(uris, MEMBER_URN, cert)
    role_name = _one_urn(uris, ROLE_URN, cert)
    eth = _one_urn(uris, ETH_URN, cert)
    try:
        role = Role[role_name.upper()]
        eth_address = to_checksum_address(eth)
    except (KeyError, MalformedMessage):
        raise UntrustedCertificate(f"certificate of {member_id!r} names a bad role or address",
                                   subject=member_id, reason=f"role={role_name} eth={eth}") from None
    if role == Role.NONE:
        raise UntrustedCertificate(f"certificate of {member_id!r} names no role", subject=member_id, reason="role none")
    if role == Role.DEVICE:
        user_id: str | None = _one_urn(uris, USER_URN, cert)
    elif any(u.startswith(USER_URN) for u in uris):
        raise UntrustedCertificate(f"certificate of {member_id!r} names a user but is a {role.name}",
                                   subject=member_id, reason="user URI on a non-device")
    else:
        user_id = None
    return MemberIdentity(member_id=member_id, role=role, eth_address=eth_address, fingerprint=sha256(der).digest(),
                          serial_number=cert.serial_number, not_after=int(cert.not_valid_after_utc.timestamp()),
                          user_id=user_id)


# --- Envelope ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Envelope:
    """A signed log travelling with its sender's certificate (certificate-carrying logs): kind, message JSON, 0x signature, PEM."""

    kind: str
    message: dict[str, Any]
    signature: str
    certificate: str

    @classmethod
    def seal(cls, message: Message, domain: Domain, private_key: bytes, cert_pem: bytes | str) -> Envelope:
        """Sign `message` with the sender's Ethereum key and attach the sender's certificate."""
        signature = messages.sign(message, domain, private_key)
        cert = cert_pem.decode() if isinstance(cert_pem, bytes) else cert_pem
        return cls(kind=message.PRIMARY_TYPE, message=message.to_json(), signature="0x" + signature.hex(),
                   certificate=cert)

    def decode(self) -> Message:
        """The typed message, without any verification (MalformedMessage on bad fields or kind)."""
        return messages.message_from_json(self.kind, self.message)

    def signature_bytes(self) -> bytes:
        sig = self.signature[2:] if self.signature.startswith("0x") else self.signature
        try:
            return bytes.fromhex(sig)
        except ValueError:
            raise SignatureError("envelope signature is not hex", signature=self.signature) from None

    def open(self, verifier: CertificateVerifier, domain: Domain, expected_role: Role | None,
             peer: MemberIdentity | None = None) -> tuple[Message, MemberIdentity]:
        """Verify certificate, signature and signer == certificate (== TLS `peer` when given); returns both."""
        message = self.decode()
        identity = verifier.verify(self.certificate, expected_role)
        if peer is not None:
            require_same_member(peer, identity)
        signer = messages.recover(message, domain, self.signature_bytes())
        if signer != identity.eth_address:
            raise IdentityMismatch(f"{self.kind} signed by {signer} but the attached certificate names "
                                   f"{identity.member_id} at {identity.eth_address} (tampered or foreign log)",
                                   member_id=identity.member_id, certificate_address=identity.eth_address,
                                   signer=signer, kind=self.kind)
        return message, identity

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "message": self.message, "signature": self.signature,
                "certificate": self.certificate}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Envelope:
        """Parse the wire form; shape errors are MalformedMessage (HTTP 422)."""
        if not isinstance(data, dict):
            raise MalformedMessage("envelope must be a JSON object", type="Envelope", field="", value=str(data)[:80],
                                   reason="not an object")
        expected = {"kind": str, "message": dict, "signature": str, "certificate": str}
        for name, kind in expected.items():
            if not isinstance(data.get(name), kind):
                raise MalformedMessage(f"envelope field {name!r} must be a {kind.__name__}", type="Envelope",
                                       field=name, value=str(data.get(name))[:80], reason="missing or wrong type")
        return cls(kind=data["kind"], message=data["message"], signature=data["signature"],
                   certificate=data["certificate"])
