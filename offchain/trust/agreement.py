"""A device's content-key agreement key and the CA's attestation of it (docs/container.md, "Agreement key").

Content keys are wrapped to a dedicated P-256 agreement key that is generated at provisioning and lives only in
the device's encrypted keystore, never to the TLS key (a plaintext key.pem beside the keystore). The CA signs an
`AgreementAttestation` binding that key's public half to the device's member certificate (its SHA-256
fingerprint), member id and Ethereum address; the SP wraps only to an attested key whose certificate is the
authenticated TLS peer's. It does not revoke anything itself: the attestation lives and dies with the member
certificate it names (the SP checks that certificate against the CRL on every handshake).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from offchain.core.errors import IdentityMismatch, MalformedMessage, UntrustedCertificate
from offchain.core.messages import to_checksum_address
from offchain.trust.certs import MemberIdentity, load_certificate
from offchain.trust.container import canonical_json, key_fingerprint

ATTESTATION_FORMAT = "CHAK/1"  # Clearhouse agreement key attestation, version 1
_FIELDS = ("format", "member_id", "eth_address", "certificate_fingerprint", "agreement_public_key", "issued_at")


@dataclass(frozen=True)
class AgreementAttestation:
    """The CA's signed statement "this P-256 public key receives content keys for this member certificate"."""

    member_id: str
    eth_address: str
    certificate_fingerprint: bytes  # SHA-256 of the member certificate's DER (what MemberIdentity.fingerprint is)
    agreement_public_key: bytes  # X9.62 uncompressed P-256 point (65 bytes)
    issued_at: int
    signature: bytes  # ECDSA-SHA384 by the CA root key over `payload()`

    def payload(self) -> bytes:
        return canonical_json({
            "format": ATTESTATION_FORMAT, "member_id": self.member_id, "eth_address": self.eth_address,
            "certificate_fingerprint": "0x" + self.certificate_fingerprint.hex(),
            "agreement_public_key": "0x" + self.agreement_public_key.hex(), "issued_at": self.issued_at})

    def public_key(self) -> ec.EllipticCurvePublicKey:
        try:
            return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), self.agreement_public_key)
        except ValueError:
            raise MalformedMessage("the attested agreement key is not a P-256 point", type="AgreementAttestation",
                                   field="agreement_public_key", reason="not a P-256 point") from None

    def public_key_pem(self) -> bytes:
        return self.public_key().public_bytes(serialization.Encoding.PEM,
                                              serialization.PublicFormat.SubjectPublicKeyInfo)

    def to_json(self) -> dict[str, Any]:
        return {**_decoded(self.payload()), "signature": "0x" + self.signature.hex()}

    @classmethod
    def from_json(cls, data: Any) -> AgreementAttestation:
        """Parse; MalformedMessage(field=...) for anything that is not exactly an attestation of this format."""
        if not isinstance(data, dict) or set(data) != {*_FIELDS, "signature"}:
            raise MalformedMessage("an agreement attestation needs exactly the fields " + ", ".join(_FIELDS)
                                   + " and signature", type="AgreementAttestation", field="agreement",
                                   reason="fields")
        if data["format"] != ATTESTATION_FORMAT:
            raise MalformedMessage(f"agreement attestation format must be {ATTESTATION_FORMAT}",
                                   type="AgreementAttestation", field="format", value=str(data["format"]),
                                   reason="format")
        try:
            return cls(member_id=str(data["member_id"]), eth_address=to_checksum_address(data["eth_address"]),
                       certificate_fingerprint=_hex(data["certificate_fingerprint"], 32),
                       agreement_public_key=_hex(data["agreement_public_key"], 65), issued_at=int(data["issued_at"]),
                       signature=_hex(data["signature"], None))
        except (TypeError, ValueError):
            raise MalformedMessage("agreement attestation has a malformed field", type="AgreementAttestation",
                                   field="agreement", reason="malformed") from None


def new_agreement_key() -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    """A fresh P-256 agreement key and its unencrypted PKCS#8 PEM (for the keystore's encrypted part only)."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return key, pem


def attest_agreement_key(ca: Any, member_cert_pem: bytes, public_key: ec.EllipticCurvePublicKey,
                         now: int) -> AgreementAttestation:
    """The CA (`CertificateAuthority.sign_statement`) attests `public_key` for the member certificate."""
    cert = load_certificate(member_cert_pem)
    identity = _identity_of(cert)
    point = public_key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    unsigned = AgreementAttestation(identity[0], identity[1], _fingerprint(cert), point, int(now), b"")
    return AgreementAttestation(unsigned.member_id, unsigned.eth_address, unsigned.certificate_fingerprint,
                                point, unsigned.issued_at, ca.sign_statement(unsigned.payload()))


def verify_attestation(data: Any, root: x509.Certificate, peer: MemberIdentity) -> AgreementAttestation:
    """The attestation is signed by `root` (UntrustedCertificate) and names `peer`'s very certificate, member id
    and address (IdentityMismatch): another device's attestation, or one for a replaced certificate, is refused."""
    attestation = AgreementAttestation.from_json(data)
    root_key = root.public_key()
    try:
        if not isinstance(root_key, ec.EllipticCurvePublicKey):
            raise InvalidSignature
        root_key.verify(attestation.signature, attestation.payload(), ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise UntrustedCertificate(f"the agreement key attestation of {attestation.member_id!r} is not signed by the "
                                   "Clearhouse root", subject=attestation.member_id,
                                   reason="agreement attestation signature") from None
    if (attestation.certificate_fingerprint, attestation.member_id, attestation.eth_address) != (
            peer.fingerprint, peer.member_id, peer.eth_address):
        raise IdentityMismatch("the agreement key attestation names another certificate than the caller's",
                               member_id=peer.member_id, expected="0x" + peer.fingerprint.hex(),
                               got="0x" + attestation.certificate_fingerprint.hex())
    attestation.public_key()  # a point off the curve: MalformedMessage
    return attestation


def agreement_fingerprint(attestation: AgreementAttestation) -> bytes:
    """The fingerprint a WrappedKey names (SHA-256 of the agreement key's SubjectPublicKeyInfo)."""
    return key_fingerprint(attestation.public_key())


def _identity_of(cert: x509.Certificate) -> tuple[str, str]:
    from offchain.trust.certs import ETH_URN, MEMBER_URN

    uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier)
    member = [u.removeprefix(MEMBER_URN) for u in uris if u.startswith(MEMBER_URN)]
    eth = [u.removeprefix(ETH_URN) for u in uris if u.startswith(ETH_URN)]
    if len(member) != 1 or len(eth) != 1:
        raise MalformedMessage("the member certificate must name one member id and one address",
                               type="Certificate", field="subjectAltName", reason="member or address")
    return member[0], to_checksum_address(eth[0])


def _fingerprint(cert: x509.Certificate) -> bytes:
    from hashlib import sha256

    return sha256(cert.public_bytes(serialization.Encoding.DER)).digest()


def _hex(value: Any, length: int | None) -> bytes:
    if not isinstance(value, str) or not value.startswith("0x"):
        raise ValueError("not 0x-hex")
    raw = bytes.fromhex(value[2:])
    if length is not None and len(raw) != length:
        raise ValueError("wrong length")
    return raw


def _decoded(payload: bytes) -> dict[str, Any]:
    import json

    return dict(json.loads(payload))


__all__ = ["ATTESTATION_FORMAT", "AgreementAttestation", "agreement_fingerprint", "attest_agreement_key",
           "new_agreement_key", "verify_attestation"]
