"""The secure container: AES-256-GCM content, a signed header with the content policy, the
provider's certificate, and content keys wrapped to one device (ephemeral ECDH P-256 + HKDF + AES-GCM).

Format: docs/container.md. This module packages, wraps and verifies; it never unwraps a key (only the device's
`SecureModule.use` does) and never talks to the chain (callers pass the on-chain policy hash).
"""

from __future__ import annotations

import hmac
import json
import os
import struct
from dataclasses import dataclass
from hashlib import sha256
from typing import TYPE_CHECKING, Any, Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    Prehashed,
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from offchain.core.errors import (
    ContainerTampered,
    ContentOwnerMismatch,
    ContainerTruncated,
    IdentityMismatch,
    InvalidAmount,
    InvalidPolicy,
    MalformedMessage,
    PolicyMismatch,
    WrongDevice,
)
from offchain.core.messages import policy_id, to_checksum_address
from offchain.core.types import Role, keccak, to_hex

if TYPE_CHECKING:
    from offchain.trust.ca import MemberCredentials
    from offchain.trust.certs import MemberIdentity

__all__ = [
    "Payee", "Policy", "policy_hash", "canonical_json", "ContainerHeader", "Container", "Frame", "encode_frame",
    "decode_frame", "package", "seal", "verify_container", "WrappedKey", "wrap_content_key", "key_fingerprint",
    "key_commitment", "wrap_info", "FORMAT", "UINT88_MAX",
]

FORMAT = "CHSC/1"
WRAP_FORMAT = "CHWK/1"
MAGIC = b"CHSC"
FRAME_VERSION = 1
PREAMBLE = struct.Struct(">4sBIQI")  # magic, version, header_len, ciphertext_len, cert_len
SIGNATURE_SIZE = 64
MAX_HEADER = 65_536
MAX_CERT = 16_384
MAX_CIPHERTEXT = 1 << 40
TAG_SIZE = 16
KEY_SIZE = 32
NONCE_SIZE = 12
UINT88_MAX = (1 << 88) - 1
UINT32_MAX = (1 << 32) - 1
MAX_PAYEES = 8
TOTAL_BPS = 10_000
ZERO_ADDRESS = "0x" + "0" * 40
COMMITMENT_LABEL = b"clearhouse.container.key-commitment.v1"
WRAP_LABEL = b"clearhouse.container.wrap.v1"
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
HEADER_KEYS = frozenset({"format", "content_id", "provider_member_id", "provider_address", "provider_cert_sha256",
                         "policy", "title", "media_type", "cipher", "nonce", "content_length", "key_commitment"})
POLICY_KEYS = frozenset({"content_id", "version", "price", "payees", "remainder_payee", "provider"})


class CertVerifier(Protocol):
    def verify(self, cert_pem: bytes, expected_role: Role | None = None) -> MemberIdentity: ...


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, no whitespace, ASCII: the one byte encoding of a header, policy or key record."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


# --- policy -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Payee:
    account: str
    bps: int


@dataclass(frozen=True)
class Policy:
    """A content policy: what one use costs and how the fee splits. payees[0] is the remainder payee.

    `provider` is the content provider's address: the policy hash covers it, the container's signer must be it,
    and it must be the on-chain owner of the content id, so a copied policy cannot carry another provider's bytes.
    """

    content_id: bytes
    version: int
    price: int
    payees: tuple[Payee, ...]
    provider: str

    @property
    def remainder_payee(self) -> str:
        return self.payees[0].account

    @property
    def policy_id(self) -> bytes:
        return policy_id(self.content_id, self.version)

    def to_json(self) -> dict[str, Any]:
        return {"content_id": to_hex(self.content_id), "version": self.version, "price": self.price,
                "payees": [{"account": p.account, "bps": p.bps} for p in self.payees],
                "remainder_payee": self.payees[0].account if self.payees else None, "provider": self.provider}

    @classmethod
    def from_json(cls, data: Any) -> Policy:
        """Structural decode (types only); `validate` applies the registration rules."""
        if not isinstance(data, dict) or set(data) != POLICY_KEYS:
            raise ContainerTampered("policy is not an object with the documented keys", reason="policy keys")
        payees = data["payees"]
        if not isinstance(payees, list) or not all(_is_payee_json(p) for p in payees):
            raise ContainerTampered("policy payees are malformed", reason="payees")
        policy = cls(content_id=_bytes32(data["content_id"], "policy.content_id"),
                     version=_int(data["version"], "policy.version"), price=_int(data["price"], "policy.price"),
                     payees=tuple(Payee(p["account"], p["bps"]) for p in payees),
                     provider=_str(data["provider"], "policy.provider"))
        if not payees or data["remainder_payee"] != payees[0]["account"]:
            raise ContainerTampered("remainder payee is not payees[0]", reason="remainder_payee")
        return policy

    def validate(self) -> None:
        """The contract's `registerPolicy` rules; InvalidAmount for the price, InvalidPolicy for the rest."""
        check_fee(self.price, field="price")
        if self.price == 0:
            raise InvalidAmount("a policy price must be > 0", field="price", value=0, maximum=UINT88_MAX)
        if len(self.content_id) != 32:
            raise InvalidPolicy("content id must be 32 bytes", field="content_id", reason="length")
        if not 1 <= self.version <= UINT32_MAX:
            raise InvalidPolicy(f"version {self.version} outside 1..2**32-1", field="version", reason="range")
        _validate_payees(self.payees)
        try:
            provider = to_checksum_address(self.provider)
        except MalformedMessage:
            provider = ZERO_ADDRESS
        if provider != self.provider or provider == ZERO_ADDRESS:
            raise InvalidPolicy("policy provider must be a non-zero EIP-55 address", field="provider",
                                reason="address")


def _validate_payees(payees: tuple[Payee, ...]) -> None:
    if not 1 <= len(payees) <= MAX_PAYEES:
        raise InvalidPolicy(f"{len(payees)} payees: need 1..{MAX_PAYEES}", field="payees", reason="count")
    seen: set[str] = set()
    for index, payee in enumerate(payees):
        try:
            account = to_checksum_address(payee.account)
        except MalformedMessage:
            raise InvalidPolicy(f"payee {index} is not an address", field="payees", reason="address",
                                index=index) from None
        if account != payee.account or account == ZERO_ADDRESS or account in seen:
            raise InvalidPolicy(f"payee {index} is not a distinct non-zero EIP-55 address", field="payees",
                                reason="address", index=index)
        if type(payee.bps) is not int or payee.bps <= 0:
            raise InvalidPolicy(f"payee {index} bps {payee.bps!r} must be > 0", field="payees", reason="bps",
                                index=index)
        seen.add(account)
    total = sum(p.bps for p in payees)
    if total != TOTAL_BPS:
        raise InvalidPolicy(f"payee bps sum to {total}, need exactly {TOTAL_BPS}", field="payees", reason="sum",
                            sum_bps=total)


def check_fee(fee: Any, *, field: str = "fee") -> int:
    """A fee or price must be an int in 0..2**88-1 (the usage-batch entry width)."""
    if type(fee) is not int or not 0 <= fee <= UINT88_MAX:
        raise InvalidAmount(f"{field} {fee!r} is negative, not an int or overflows uint88", field=field, value=fee,
                            maximum=UINT88_MAX)
    return fee


def policy_hash(policy: Policy) -> bytes:
    """keccak256 of the canonical policy JSON: the `policyHash` registered on chain."""
    return keccak(canonical_json(policy.to_json()))


def _is_payee_json(item: Any) -> bool:
    return (isinstance(item, dict) and set(item) == {"account", "bps"} and isinstance(item["account"], str)
            and type(item["bps"]) is int)


def _int(value: Any, name: str) -> int:
    if type(value) is not int:
        raise ContainerTampered(f"{name} must be an integer", reason=name)
    return value


def _str(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise ContainerTampered(f"{name} must be a string", reason=name)
    return value


def _hex_bytes(value: Any, name: str, size: int | None = None) -> bytes:
    if not isinstance(value, str) or not value.startswith("0x") or value != value.lower():
        raise ContainerTampered(f"{name} must be lower-case 0x-hex", reason=name)
    try:
        data = bytes.fromhex(value[2:])
    except ValueError:
        raise ContainerTampered(f"{name} is not hex", reason=name) from None
    if size is not None and len(data) != size:
        raise ContainerTampered(f"{name} must be {size} bytes", reason=name)
    return data


def _bytes32(value: Any, name: str) -> bytes:
    return _hex_bytes(value, name, 32)


# --- header -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ContainerHeader:
    content_id: bytes
    provider_member_id: str
    provider_address: str
    provider_cert_sha256: bytes
    policy: Policy
    title: str
    media_type: str
    nonce: bytes
    content_length: int
    key_commitment: bytes

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "content_id": to_hex(self.content_id), "provider_member_id": self.provider_member_id,
                "provider_address": self.provider_address, "provider_cert_sha256": to_hex(self.provider_cert_sha256),
                "policy": self.policy.to_json(), "title": self.title, "media_type": self.media_type,
                "cipher": "AES-256-GCM", "nonce": to_hex(self.nonce), "content_length": self.content_length,
                "key_commitment": to_hex(self.key_commitment)}

    def encode(self) -> bytes:
        return canonical_json(self.to_json())

    @classmethod
    def decode(cls, header_bytes: bytes) -> ContainerHeader:
        """Structural decode; any deviation from the canonical documented form is tampering."""
        try:
            data = json.loads(header_bytes.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            raise ContainerTampered("container header is not JSON", reason="header json") from None
        if not isinstance(data, dict) or set(data) != HEADER_KEYS or canonical_json(data) != header_bytes:
            raise ContainerTampered("container header is not the canonical documented object", reason="header form")
        if data["format"] != FORMAT or data["cipher"] != "AES-256-GCM":
            raise ContainerTampered(f"unsupported container format {data['format']!r}", reason="format")
        return cls(content_id=_bytes32(data["content_id"], "content_id"),
                   provider_member_id=_str(data["provider_member_id"], "provider_member_id"),
                   provider_address=_str(data["provider_address"], "provider_address"),
                   provider_cert_sha256=_bytes32(data["provider_cert_sha256"], "provider_cert_sha256"),
                   policy=Policy.from_json(data["policy"]), title=_str(data["title"], "title"),
                   media_type=_str(data["media_type"], "media_type"),
                   nonce=_hex_bytes(data["nonce"], "nonce", NONCE_SIZE),
                   content_length=_int(data["content_length"], "content_length"),
                   key_commitment=_bytes32(data["key_commitment"], "key_commitment"))


def key_commitment(content_key: bytes, content_id: bytes) -> bytes:
    """HMAC-SHA256(content_key, label || content_id): proves a key opens this container without revealing it."""
    return hmac.new(content_key, COMMITMENT_LABEL + content_id, sha256).digest()


# --- framing ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Frame:
    header: bytes
    ciphertext: bytes
    cert_pem: bytes
    signature: bytes


def encode_frame(frame: Frame) -> bytes:
    """The CHSC binary framing (docs/container.md section 4); pure, no checks beyond sizes."""
    if len(frame.signature) != SIGNATURE_SIZE:
        raise ValueError(f"signature must be {SIGNATURE_SIZE} bytes")
    preamble = PREAMBLE.pack(MAGIC, FRAME_VERSION, len(frame.header), len(frame.ciphertext), len(frame.cert_pem))
    return preamble + frame.header + frame.ciphertext + frame.cert_pem + frame.signature


def decode_frame(blob: bytes) -> Frame:
    """Split a blob into its parts: ContainerTruncated if short, ContainerTampered if malformed or too long."""
    if len(blob) < PREAMBLE.size:
        raise ContainerTruncated(f"container of {len(blob)} bytes is shorter than its preamble",
                                 length=len(blob), expected=PREAMBLE.size)
    magic, version, header_len, ct_len, cert_len = PREAMBLE.unpack_from(blob)
    if magic != MAGIC or version != FRAME_VERSION:
        raise ContainerTampered("not a CHSC/1 container (bad magic or frame version)", reason="magic")
    if not (1 <= header_len <= MAX_HEADER and TAG_SIZE <= ct_len <= MAX_CIPHERTEXT and 1 <= cert_len <= MAX_CERT):
        raise ContainerTampered("container section length out of range", reason="lengths", header_len=header_len,
                                ciphertext_len=ct_len, cert_len=cert_len)
    total = PREAMBLE.size + header_len + ct_len + cert_len + SIGNATURE_SIZE
    if len(blob) < total:
        raise ContainerTruncated(f"container is {len(blob)} bytes, its preamble declares {total}",
                                 length=len(blob), expected=total)
    if len(blob) > total:
        raise ContainerTampered(f"{len(blob) - total} trailing bytes after the signature", reason="trailing bytes")
    view = memoryview(blob)
    a = PREAMBLE.size
    b = a + header_len
    c = b + ct_len
    d = c + cert_len
    return Frame(bytes(view[a:b]), bytes(view[b:c]), bytes(view[c:d]), bytes(view[d:total]))


def signed_digest(header: bytes, ciphertext: bytes) -> bytes:
    return sha256(header + sha256(ciphertext).digest()).digest()


# --- packaging (content provider) ---------------------------------------------------------------------------------
def package(content: bytes, content_id: bytes, policy: Policy, provider_creds: MemberCredentials, *,
            title: str = "", media_type: str = "application/octet-stream") -> tuple[bytes, bytes]:
    """Encrypt `content` under a fresh 256-bit key and sign; returns (container blob, content key).

    The content key goes to the service provider over mTLS; it never travels inside the container."""
    policy.validate()
    if content_id != policy.content_id:
        raise InvalidPolicy("content id differs from the policy's", field="content_id", reason="mismatch")
    content_key = AESGCM.generate_key(bit_length=256)
    header = ContainerHeader(
        content_id=content_id, provider_member_id=provider_creds.member_id,
        provider_address=to_checksum_address(provider_creds.eth_address),
        provider_cert_sha256=sha256(provider_creds.cert_pem).digest(), policy=policy, title=title,
        media_type=media_type, nonce=os.urandom(NONCE_SIZE), content_length=len(content),
        key_commitment=key_commitment(content_key, content_id))
    return seal(header.encode(), content, content_key, provider_creds), content_key


def seal(header_bytes: bytes, content: bytes, content_key: bytes, provider_creds: MemberCredentials) -> bytes:
    """Encrypt and sign already-encoded header bytes (no policy checks: `package` is the safe entry point)."""
    nonce = _hex_bytes(json.loads(header_bytes)["nonce"], "nonce", NONCE_SIZE)
    ciphertext = AESGCM(content_key).encrypt(nonce, content, header_bytes)
    key = serialization.load_pem_private_key(provider_creds.key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TypeError("the provider key must be an EC (P-256) key")
    der = key.sign(signed_digest(header_bytes, ciphertext), ec.ECDSA(Prehashed(hashes.SHA256())))
    r, s = decode_dss_signature(der)
    signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return encode_frame(Frame(header_bytes, ciphertext, provider_creds.cert_pem, signature))


# --- verification (device) ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Container:
    """A verified container: authentic header, ciphertext and provider identity. Decrypt needs the content key."""

    header: ContainerHeader
    header_bytes: bytes
    ciphertext: bytes
    provider: MemberIdentity

    @property
    def policy(self) -> Policy:
        return self.header.policy

    @property
    def content_id(self) -> bytes:
        return self.header.content_id

    def check_key(self, content_key: bytes) -> None:
        """ContainerTampered unless `content_key` matches the header's key commitment."""
        if len(content_key) != KEY_SIZE or not hmac.compare_digest(
                key_commitment(content_key, self.content_id), self.header.key_commitment):
            raise ContainerTampered("the content key does not open this container", reason="key commitment")

    def decrypt(self, content_key: bytes) -> bytes:
        self.check_key(content_key)
        try:
            return AESGCM(content_key).decrypt(self.header.nonce, self.ciphertext, self.header_bytes)
        except InvalidTag:
            raise ContainerTampered("content failed AES-GCM authentication", reason="gcm") from None


def verify_container(blob: bytes, verifier: CertVerifier, expected_policy_hash: bytes | None = None, *,
                     expected_owner: str | None = None) -> Container:
    """Check framing, header, provider certificate and role, signature, policy rules, the on-chain policy hash and
    the on-chain owner of the content id (docs/container.md section 5); returns the verified container (still
    encrypted). `expected_owner` is `policy(policyId).provider` on chain: a container signed by anyone else is
    ContentOwnerMismatch, whatever policy it copied."""
    frame = decode_frame(bytes(blob))
    header = ContainerHeader.decode(frame.header)
    if sha256(frame.cert_pem).digest() != header.provider_cert_sha256:
        raise ContainerTampered("attached certificate differs from the one the header names", reason="certificate")
    certificate = _load_certificate(frame.cert_pem)
    identity = verifier.verify(frame.cert_pem, Role.CONTENT_PROVIDER)
    if identity.member_id != header.provider_member_id or identity.eth_address != header.provider_address:
        raise IdentityMismatch("container header names another provider than its certificate",
                               header_member_id=header.provider_member_id, cert_member_id=identity.member_id)
    if expected_owner is not None and identity.eth_address != expected_owner:
        raise ContentOwnerMismatch("the container is signed by another provider than the content id's on-chain owner",
                                   content_id=header.content_id, owner=expected_owner, signer=identity.eth_address)
    _verify_signature(frame, certificate.public_key())
    header.policy.validate()
    if header.policy.provider != identity.eth_address:
        raise IdentityMismatch("the container's policy names another provider than its signer",
                               header_member_id=header.provider_member_id, cert_member_id=identity.member_id,
                               expected=header.policy.provider, got=identity.eth_address)
    if header.policy.content_id != header.content_id or len(frame.ciphertext) != header.content_length + TAG_SIZE:
        raise InvalidPolicy("header content id or length disagrees with the policy/ciphertext",
                            field="content_id", reason="mismatch")
    if expected_policy_hash is not None and policy_hash(header.policy) != expected_policy_hash:
        raise PolicyMismatch("container policy differs from the policy registered on chain",
                             policy_id=header.policy.policy_id, expected=expected_policy_hash,
                             got=policy_hash(header.policy))
    return Container(header, frame.header, frame.ciphertext, identity)


def _load_certificate(cert_pem: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise ContainerTampered("attached provider certificate does not parse", reason="certificate") from None


def _verify_signature(frame: Frame, public_key: Any) -> None:
    r = int.from_bytes(frame.signature[:32], "big")
    s = int.from_bytes(frame.signature[32:], "big")
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not (0 < r < P256_ORDER and 0 < s < P256_ORDER):
        raise ContainerTampered("provider signature is malformed", reason="signature")
    try:
        public_key.verify(encode_dss_signature(r, s), signed_digest(frame.header, frame.ciphertext),
                          ec.ECDSA(Prehashed(hashes.SHA256())))
    except InvalidSignature:
        raise ContainerTampered("provider signature does not cover this header and ciphertext",
                                reason="signature") from None


# --- key wrapping (service provider -> device) --------------------------------------------------------------------
@dataclass(frozen=True)
class WrappedKey:
    """A content key wrapped to one device's P-256 key (docs/container.md section 6)."""

    content_id: bytes
    device_member_id: str
    device_key_fingerprint: bytes
    ephemeral_public_key: bytes
    nonce: bytes
    ciphertext: bytes

    def to_json(self) -> dict[str, Any]:
        return {"format": WRAP_FORMAT, "content_id": to_hex(self.content_id), "device_member_id": self.device_member_id,
                "device_key_fingerprint": to_hex(self.device_key_fingerprint),
                "ephemeral_public_key": to_hex(self.ephemeral_public_key), "nonce": to_hex(self.nonce),
                "ciphertext": to_hex(self.ciphertext)}

    @classmethod
    def from_json(cls, data: Any) -> WrappedKey:
        keys = {"format", "content_id", "device_member_id", "device_key_fingerprint", "ephemeral_public_key",
                "nonce", "ciphertext"}
        if not isinstance(data, dict) or set(data) != keys or data["format"] != WRAP_FORMAT:
            raise ContainerTampered("wrapped key record is not a CHWK/1 object", reason="wrapped key form")
        return cls(content_id=_bytes32(data["content_id"], "content_id"),
                   device_member_id=_str(data["device_member_id"], "device_member_id"),
                   device_key_fingerprint=_bytes32(data["device_key_fingerprint"], "device_key_fingerprint"),
                   ephemeral_public_key=_hex_bytes(data["ephemeral_public_key"], "ephemeral_public_key", 65),
                   nonce=_hex_bytes(data["nonce"], "nonce", NONCE_SIZE),
                   ciphertext=_hex_bytes(data["ciphertext"], "ciphertext", KEY_SIZE + TAG_SIZE))

    def info(self) -> bytes:
        return wrap_info(self.content_id, self.device_key_fingerprint, self.device_member_id)


def key_fingerprint(public_key: ec.EllipticCurvePublicKey) -> bytes:
    """SHA-256 of the DER SubjectPublicKeyInfo: names the device key a content key is wrapped to."""
    return sha256(public_key.public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)).digest()


def wrap_info(content_id: bytes, fingerprint: bytes, member_id: str) -> bytes:
    """HKDF info (and GCM AAD) binding purpose, content, device key and device member id."""
    member = member_id.encode("utf-8")
    return WRAP_LABEL + content_id + fingerprint + len(member).to_bytes(2, "big") + member


def derive_kek(shared_secret: bytes, ephemeral_public_key: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=ephemeral_public_key, info=info).derive(shared_secret)


def _device_public_key(device_pem: bytes) -> ec.EllipticCurvePublicKey:
    if b"CERTIFICATE" in device_pem:
        key = x509.load_pem_x509_certificate(device_pem).public_key()
    else:
        key = serialization.load_pem_public_key(device_pem)
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise WrongDevice("the device key is not a P-256 key", reason="key type")
    return key


def wrap_content_key(content_key: bytes, content_id: bytes, device_pem: bytes, device_member_id: str, *,
                     verifier: CertVerifier | None = None) -> WrappedKey:
    """Wrap `content_key` to a device, given its certificate PEM (preferred) or public key PEM.

    With `verifier` the certificate must be an active Device naming `device_member_id` (the SP normally takes
    the certificate from the authenticated mTLS peer, so it already did this)."""
    if len(content_key) != KEY_SIZE or len(content_id) != 32:
        raise ValueError("content key and content id must be 32 bytes")
    if verifier is not None:
        identity = verifier.verify(device_pem, Role.DEVICE)
        if identity.member_id != device_member_id:
            raise IdentityMismatch("device certificate names another member", expected=device_member_id,
                                   got=identity.member_id)
    device_key = _device_public_key(device_pem)
    fingerprint = key_fingerprint(device_key)
    ephemeral = ec.generate_private_key(ec.SECP256R1())
    epk = ephemeral.public_key().public_bytes(serialization.Encoding.X962,
                                              serialization.PublicFormat.UncompressedPoint)
    info = wrap_info(content_id, fingerprint, device_member_id)
    kek = derive_kek(ephemeral.exchange(ec.ECDH(), device_key), epk, info)
    nonce = os.urandom(NONCE_SIZE)
    return WrappedKey(content_id, device_member_id, fingerprint, epk, nonce, AESGCM(kek).encrypt(nonce, content_key,
                                                                                                  info))
