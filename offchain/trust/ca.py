"""Clearhouse certificate authority: a P-384 root, P-256 member certificates, the CRL and the issuance index.

It does not touch the chain: registering or revoking a member on chain is the caller's job (chain client).
Security caveat: the root key is stored unencrypted (file mode 0600) in the CA directory; protect that directory.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from hashlib import sha256
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from offchain.trust.certs import ETH_URN, MEMBER_URN, ROLE_URN, USER_URN, MemberIdentity, role_urn_name
from offchain.core.errors import MemberSetupError, NotFound, PathError
from offchain.core.files import write_atomically
from offchain.core.messages import to_checksum_address
from offchain.core.types import Clock, Role

__all__ = ["CertificateAuthority", "MemberCredentials", "MemberIdentity"]

ROOT_KEY_FILE = "root.key.pem"
ROOT_CERT_FILE = "root.cert.pem"
CRL_FILE = "crl.pem"
INDEX_FILE = "index.json"
ROOT_VALID_DAYS = 3650
CRL_VALID_S = 7 * 24 * 3600
MAX_USER_ID_LEN = 128  # the CC's HTTP bodies accept user ids of this length
BACKDATE_S = 300  # tolerate small clock skew between the CA and the verifiers


def _utc(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(int(ts), tz=dt.timezone.utc)


def _write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path` with mode 0600 from the start (no window where the key is world-readable)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@dataclass(frozen=True)
class MemberCredentials:
    """A member's TLS/identity material as issued by the CA: certificate and P-256 private key (PEM)."""

    member_id: str
    role: Role
    eth_address: str
    cert_pem: bytes
    key_pem: bytes

    @cached_property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)

    @property
    def fingerprint(self) -> bytes:
        """SHA-256 of the DER certificate: the `certFingerprint` registered on chain."""
        return sha256(self.certificate.public_bytes(serialization.Encoding.DER)).digest()

    @property
    def serial_number(self) -> int:
        return self.certificate.serial_number

    @property
    def valid_from(self) -> int:
        return int(self.certificate.not_valid_before_utc.timestamp())

    @property
    def valid_until(self) -> int:
        return int(self.certificate.not_valid_after_utc.timestamp())

    def write(self, directory: Path) -> tuple[Path, Path]:
        """Write cert.pem and key.pem (0600) into `directory`; returns (cert_path, key_path)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        cert_path, key_path = directory / "cert.pem", directory / "key.pem"
        cert_path.write_bytes(self.cert_pem)
        _write_private(key_path, self.key_pem)
        return cert_path, key_path


class CertificateAuthority:
    """The consortium root: issues member certificates, keeps an index of them and signs the CRL."""

    def __init__(self, directory: Path, key: ec.EllipticCurvePrivateKey, root: x509.Certificate,
                 index: dict[str, Any], clock: Clock = time.time) -> None:
        self.directory = Path(directory)
        self._key = key
        self._root = root
        self._index = index
        self._clock = clock

    # --- construction -------------------------------------------------------------------------------------
    @classmethod
    def create(cls, directory: Path, name: str = "Clearhouse Root CA", clock: Clock = time.time,
               key: ec.EllipticCurvePrivateKey | None = None) -> CertificateAuthority:
        """Create a new root in `directory` (which must not already hold a CA). With `key` (a token key from
        offchain.trust.keys) the root key is not written: the caller records where it lives."""
        directory = Path(directory)
        if (directory / ROOT_KEY_FILE).exists() or (directory / ROOT_CERT_FILE).exists():
            raise PathError(f"a CA already exists in {directory}; load it instead", directory=str(directory))
        directory.mkdir(parents=True, exist_ok=True)
        if key is None:
            key = ec.generate_private_key(ec.SECP384R1())
            _write_private(directory / ROOT_KEY_FILE, _key_pem(key))
        root = _build_root(key, name, clock())
        (directory / ROOT_CERT_FILE).write_bytes(root.public_bytes(serialization.Encoding.PEM))
        ca = cls(directory, key, root, {"issued": [], "revoked": []}, clock)
        ca._save_index()
        ca._write_crl()
        return ca

    @classmethod
    def load(cls, directory: Path, clock: Clock = time.time,
             key: ec.EllipticCurvePrivateKey | None = None) -> CertificateAuthority:
        """Load a CA created by `create` from `directory` (`key`: the root key when it lives in a token)."""
        directory = Path(directory)
        try:
            if key is None:
                key = serialization.load_pem_private_key((directory / ROOT_KEY_FILE).read_bytes(), password=None)
            root = x509.load_pem_x509_certificate((directory / ROOT_CERT_FILE).read_bytes())
            index = json.loads((directory / INDEX_FILE).read_text())
        except (OSError, ValueError) as exc:
            raise PathError(f"cannot load the CA from {directory}: {exc}", directory=str(directory)) from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise PathError("the CA root key is not an EC key", directory=str(directory))
        return cls(directory, key, root, index, clock)

    @property
    def root_pem(self) -> bytes:
        return self._root.public_bytes(serialization.Encoding.PEM)

    @property
    def root_path(self) -> Path:
        return self.directory / ROOT_CERT_FILE

    @property
    def issued(self) -> list[dict[str, Any]]:
        """Copy of the issuance index (member_id, serial, role, eth_address, not_before, not_after, fingerprint)."""
        return [dict(entry) for entry in self._index["issued"]]

    # --- issuing -------------------------------------------------------------------------------------------
    def issue_member(self, member_id: str, role: Role, eth_address: str, *, valid_days: int = 365,
                     not_before: int | None = None, hostnames: Sequence[str] = ("localhost",),
                     ips: Sequence[str] = ("127.0.0.1",), user_id: str | None = None) -> MemberCredentials:
        """Issue a fresh P-256 key and certificate naming member id, role and Ethereum address in its SAN, and for
        a device the user it belongs to (`user_id`, required for devices, refused for every other role): the CC
        spends only that user's deposits for the device."""
        role = Role(role)
        if role == Role.NONE or not member_id or ":" in member_id:
            raise MemberSetupError(f"cannot issue a certificate for member {member_id!r} with role {role.name}",
                                   member_id=member_id, role=int(role))
        _check_user_id(member_id, role, user_id)
        eth_address = to_checksum_address(eth_address)
        start = int(self._clock()) - BACKDATE_S if not_before is None else int(not_before)
        key = ec.generate_private_key(ec.SECP256R1())
        san = _member_san(member_id, role, eth_address, hostnames, ips, user_id)
        cert = _build_member(self._key, self._root, key.public_key(), member_id, san, start,
                             start + valid_days * 86400)
        credentials = MemberCredentials(member_id, role, eth_address,
                                        cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))
        self._index["issued"].append({
            "member_id": member_id, "serial": hex(cert.serial_number), "role": role.name,
            "eth_address": eth_address, "not_before": credentials.valid_from,
            "not_after": credentials.valid_until, "fingerprint": "0x" + credentials.fingerprint.hex(),
            "user_id": user_id,
        })
        self._save_index()
        return credentials

    def sign_statement(self, payload: bytes) -> bytes:
        """ECDSA-SHA384 by the root key over `payload`: the CA's attestations that are not certificates (a device's
        content-key agreement key, offchain.trust.agreement, whose payload is canonical JSON and so can never be a
        certificate's or CRL's DER). Verified with the root certificate's public key."""
        return self._key.sign(payload, ec.ECDSA(hashes.SHA384()))

    # --- revocation ----------------------------------------------------------------------------------------
    def revoke(self, member_id: str) -> None:
        """Put every certificate issued to `member_id` on the CRL (idempotent); raises NotFound if none exists."""
        serials = [e["serial"] for e in self._index["issued"] if e["member_id"] == member_id]
        if not serials:
            raise NotFound(f"no certificate was ever issued to member {member_id!r}", member_id=member_id)
        already = {r["serial"] for r in self._index["revoked"]}
        now = int(self._clock())
        for serial in serials:
            if serial not in already:
                self._index["revoked"].append({"serial": serial, "member_id": member_id, "revoked_at": now})
        self._save_index()
        self._write_crl()

    def is_revoked(self, member_id: str) -> bool:
        return any(r["member_id"] == member_id for r in self._index["revoked"])

    def crl_pem(self) -> bytes:
        """The current CRL (PEM), re-signed when it is older than half its validity."""
        path = self.directory / CRL_FILE
        crl = x509.load_pem_x509_crl(path.read_bytes())
        last_update = crl.last_update_utc.timestamp()
        if self._clock() - last_update > CRL_VALID_S / 2:
            self._write_crl()
        return path.read_bytes()

    def refresh_crl(self) -> x509.CertificateRevocationList:
        """Re-sign the CRL now (same revoked entries, next CRL number, next_update = now + CRL_VALID_S)."""
        self._write_crl()
        return x509.load_pem_x509_crl((self.directory / CRL_FILE).read_bytes())

    # --- internal ------------------------------------------------------------------------------------------
    def _write_crl(self) -> None:
        now = int(self._clock())
        builder = (x509.CertificateRevocationListBuilder()
                   .issuer_name(self._root.subject)
                   .last_update(_utc(now - BACKDATE_S))
                   .next_update(_utc(now + CRL_VALID_S))
                   .add_extension(_aki(self._root), critical=False)
                   .add_extension(x509.CRLNumber(self._next_crl_number()), critical=False))
        for entry in self._index["revoked"]:
            revoked = (x509.RevokedCertificateBuilder()
                       .serial_number(int(entry["serial"], 16))
                       .revocation_date(_utc(entry["revoked_at"]))
                       .build())
            builder = builder.add_revoked_certificate(revoked)
        crl = builder.sign(self._key, hashes.SHA384())
        (self.directory / CRL_FILE).write_bytes(crl.public_bytes(serialization.Encoding.PEM))

    def _next_crl_number(self) -> int:
        number = int(self._index.get("crl_number", 0)) + 1
        self._index["crl_number"] = number
        self._save_index()
        return number

    def _save_index(self) -> None:
        write_atomically(self.directory / INDEX_FILE, json.dumps(self._index, indent=1, sort_keys=True))


def _aki(root: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    ski = root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _build_root(key: ec.EllipticCurvePrivateKey, name: str, now: float) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Clearhouse")])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    start = int(now) - BACKDATE_S
    return (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_utc(start))
            .not_valid_after(_utc(start + ROOT_VALID_DAYS * 86400))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                                         key_cert_sign=True, crl_sign=True, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA384()))


def _check_user_id(member_id: str, role: Role, user_id: str | None) -> None:
    """A device names exactly one user (1..128 printable ASCII characters, no ':' or space); no other role does."""
    if role != Role.DEVICE:
        if user_id is not None:
            raise MemberSetupError(f"only a device certificate names a user; {member_id!r} is a {role.name}",
                                   member_id=member_id, role=int(role), user_id=user_id)
        return
    if user_id is None:
        raise MemberSetupError(f"device {member_id!r} needs the user it belongs to (user_id)", member_id=member_id,
                               role=int(role), user_id=None)
    if not 1 <= len(user_id) <= MAX_USER_ID_LEN or not user_id.isascii() or not user_id.isprintable() \
            or ":" in user_id or " " in user_id:
        raise MemberSetupError(f"device {member_id!r}: user id {user_id!r} must be 1..{MAX_USER_ID_LEN} printable "
                               "ASCII characters without ':' or spaces", member_id=member_id, role=int(role),
                               user_id=user_id)


def _member_san(member_id: str, role: Role, eth_address: str, hostnames: Sequence[str],
                ips: Sequence[str], user_id: str | None) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(MEMBER_URN + member_id),
        x509.UniformResourceIdentifier(ROLE_URN + role_urn_name(role)),
        x509.UniformResourceIdentifier(ETH_URN + eth_address),
    ]
    if user_id is not None:
        names.append(x509.UniformResourceIdentifier(USER_URN + user_id))
    names += [x509.DNSName(h) for h in hostnames]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    return x509.SubjectAlternativeName(names)


def _build_member(ca_key: ec.EllipticCurvePrivateKey, root: x509.Certificate, public_key: ec.EllipticCurvePublicKey,
                  member_id: str, san: x509.SubjectAlternativeName, start: int, end: int) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, member_id),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Clearhouse")])
    return (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(root.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(_utc(start))
            .not_valid_after(_utc(end))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False, key_agreement=True,
                                         key_cert_sign=False, crl_sign=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(san, critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(_aki(root), critical=False)
            .sign(ca_key, hashes.SHA384()))
