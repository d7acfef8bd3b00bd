"""The typed signed logs of Clearhouse (EIP-712), their hashing, signing and signature recovery.

One frozen dataclass per type string of docs/design.md; field layouts are parsed from TYPE_STRING itself so the
encoding cannot drift from it. `recover` is the fast path (precomputed type hashes, cached domain separator,
coincurve); `recover_generic` is eth-account's path. Both enforce the OpenZeppelin ECDSA rules (65 bytes, low s,
v in {27, 28}, non-zero signer). Neither checks membership or certificates: that is `offchain.trust.certs`' job.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar, NamedTuple, Protocol, TypeVar, Union

import coincurve

from offchain.core.errors import (
    InvalidAmount,
    InvalidSignatureLength,
    InvalidSignatureS,
    InvalidSignatureV,
    MalformedMessage,
    SequenceError,
    SignatureError,
    SignerMismatch,
)
from offchain.core.types import Role, keccak

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
SECP256K1_HALF_N = SECP256K1_N // 2
UINT88_MAX = (1 << 88) - 1
UINT96_MAX = (1 << 96) - 1
MAX_BATCH_ENTRIES = 65_535
MAX_BATCH_POLICIES = 255
ENTRY_SIZE = 16
DOMAIN_NAME = "Clearhouse"
DOMAIN_VERSION = "1"
DOMAIN_TYPE_STRING = "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
DOMAIN_TYPE_HASH = keccak(DOMAIN_TYPE_STRING.encode())
MONEY_FIELDS = frozenset({"cap", "carried", "spent", "fee", "amount", "total"})
_ZERO12 = bytes(12)
_ADDRESS_RE = re.compile(r"^0x[0-9a-fA-F]{40}$")


# --- addresses -------------------------------------------------------------------------------------------------
@lru_cache(maxsize=65_536)
def _checksum_lower(lower_hex40: str) -> str:
    hashed = keccak(lower_hex40.encode()).hex()
    return "0x" + "".join(c.upper() if int(h, 16) >= 8 else c for c, h in zip(lower_hex40, hashed))


def to_checksum_address(value: str) -> str:
    """EIP-55 form of `value`; accepts all-lower/all-upper hex, rejects a mixed case with a wrong checksum."""
    if not isinstance(value, str) or not _ADDRESS_RE.match(value):
        raise MalformedMessage(f"not an address: {value!r}", type="address", field="address", value=value,
                               reason="expected 0x followed by 40 hex digits")
    body = value[2:]
    checksummed = _checksum_lower(body.lower())
    if value != checksummed and body != body.lower() and body != body.upper():
        raise MalformedMessage(f"bad EIP-55 checksum: {value}", type="address", field="address", value=value,
                               reason="mixed-case address with a wrong checksum")
    return checksummed


def address_from_public_key(uncompressed: bytes) -> str:
    """Ethereum address of a 65-byte uncompressed secp256k1 public key (0x04 || X || Y)."""
    return _checksum_lower(keccak(uncompressed[1:])[12:].hex())


# --- domain -------------------------------------------------------------------------------------------------------
@lru_cache(maxsize=256)
def _domain_separator(chain_id: int, verifying_contract: str) -> bytes:
    return keccak(
        DOMAIN_TYPE_HASH
        + keccak(DOMAIN_NAME.encode())
        + keccak(DOMAIN_VERSION.encode())
        + chain_id.to_bytes(32, "big")
        + _ZERO12
        + bytes.fromhex(verifying_contract[2:])
    )


@dataclass(frozen=True)
class Domain:
    """EIP-712 domain: name "Clearhouse", version "1", the chain id and the deployed Clearhouse address."""

    chain_id: int
    verifying_contract: str
    name: ClassVar[str] = DOMAIN_NAME
    version: ClassVar[str] = DOMAIN_VERSION

    def __post_init__(self) -> None:
        if type(self.chain_id) is not int or not 0 < self.chain_id < 1 << 256:
            raise MalformedMessage(f"bad chain id {self.chain_id!r}", type="EIP712Domain", field="chainId",
                                   value=self.chain_id, reason="expected a positive uint256")
        object.__setattr__(self, "verifying_contract", to_checksum_address(self.verifying_contract))

    def separator(self) -> bytes:
        return _domain_separator(self.chain_id, self.verifying_contract)

    def to_json(self) -> dict[str, Any]:
        return {"name": DOMAIN_NAME, "version": DOMAIN_VERSION, "chainId": self.chain_id,
                "verifyingContract": self.verifying_contract}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Domain:
        """Parse {"name", "version", "chainId", "verifyingContract"}; name and version must be Clearhouse's."""
        if not isinstance(data, dict) or not {"chainId", "verifyingContract"} <= set(data):
            raise MalformedMessage("EIP-712 domain needs chainId and verifyingContract", type="EIP712Domain",
                                   field="chainId", value=data, reason="missing members")
        if data.get("name", DOMAIN_NAME) != DOMAIN_NAME or data.get("version", DOMAIN_VERSION) != DOMAIN_VERSION:
            raise MalformedMessage("foreign EIP-712 domain", type="EIP712Domain", field="name", value=data,
                                   reason=f"expected name {DOMAIN_NAME!r} version {DOMAIN_VERSION!r}")
        return cls(chain_id=data["chainId"], verifying_contract=data["verifyingContract"])


# --- field layouts parsed from the type strings ---------------------------------------------------------------------
class _Field(NamedTuple):
    attr: str  # python attribute (snake_case)
    name: str  # EIP-712 member name (camelCase, as in the type string)
    sol_type: str  # "bytes32", "address", "uint96", "bytes32[]", "bytes"
    bits: int  # width for uints, 0 otherwise


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _parse_type_string(type_string: str) -> tuple[str, tuple[_Field, ...]]:
    match = re.fullmatch(r"(\w+)\(([^()]*)\)", type_string)
    if match is None:
        raise ValueError(f"not a flat EIP-712 type string: {type_string}")
    parsed = []
    for member in match.group(2).split(","):
        sol_type, name = member.split(" ")
        bits = int(sol_type[4:]) if sol_type.startswith("uint") else 0
        parsed.append(_Field(_snake(name), name, sol_type, bits))
    return match.group(1), tuple(parsed)


def _malformed(cls_name: str, field: _Field, value: Any, reason: str) -> MalformedMessage:
    return MalformedMessage(f"{cls_name}.{field.name}: {reason} (got {value!r})", type=cls_name, field=field.name,
                            value=value, reason=reason)


def _check_uint(cls_name: str, field: _Field, value: Any) -> int:
    if type(value) is not int:
        raise _malformed(cls_name, field, value, f"expected an int for {field.sol_type}")
    if 0 <= value < 1 << field.bits:
        return value
    if field.name in MONEY_FIELDS:
        raise InvalidAmount(f"{cls_name}.{field.name} = {value} is outside {field.sol_type} (negative or overflowing)",
                            type=cls_name, field=field.name, value=value, maximum=(1 << field.bits) - 1)
    raise _malformed(cls_name, field, value, f"outside {field.sol_type}")


def _check_bytes32(cls_name: str, field: _Field, value: Any) -> bytes:
    if not isinstance(value, (bytes, bytearray)) or len(value) != 32:
        raise _malformed(cls_name, field, value, "expected 32 bytes")
    return bytes(value)


def _check_value(cls_name: str, field: _Field, value: Any) -> Any:
    """Validated (and normalized: bytes, tuple, checksummed address) value of one field."""
    if field.bits:
        return _check_uint(cls_name, field, value)
    if field.sol_type == "bytes32":
        return _check_bytes32(cls_name, field, value)
    if field.sol_type == "address":
        try:
            return to_checksum_address(value)
        except MalformedMessage:
            raise _malformed(cls_name, field, value, "expected a checksummed address") from None
    if field.sol_type == "bytes32[]":
        if not isinstance(value, (list, tuple)):
            raise _malformed(cls_name, field, value, "expected a sequence of bytes32")
        return tuple(_check_bytes32(cls_name, field, item) for item in value)
    if field.sol_type == "bytes":
        if not isinstance(value, (bytes, bytearray)):
            raise _malformed(cls_name, field, value, "expected bytes")
        return bytes(value)
    raise TypeError(f"unsupported EIP-712 member type {field.sol_type}")  # pragma: no cover - type strings are fixed


def _encode_value(field: _Field, value: Any) -> bytes:
    """One 32-byte EIP-712 `encodeData` word."""
    if field.bits:
        return value.to_bytes(32, "big")
    if field.sol_type == "bytes32":
        return value
    if field.sol_type == "address":
        return _ZERO12 + bytes.fromhex(value[2:])
    if field.sol_type == "bytes32[]":
        return keccak(b"".join(value))
    return keccak(value)  # bytes


def _json_value(field: _Field, value: Any) -> Any:
    if field.bits or field.sol_type == "address":
        return value
    if field.sol_type == "bytes32[]":
        return ["0x" + item.hex() for item in value]
    return "0x" + value.hex()


def _parse_hex(cls_name: str, field: _Field, value: Any) -> bytes:
    if not isinstance(value, str) or not value.startswith("0x"):
        raise _malformed(cls_name, field, value, "expected a 0x-prefixed hex string")
    try:
        return bytes.fromhex(value[2:])
    except ValueError:
        raise _malformed(cls_name, field, value, "not valid hex") from None


def _from_json_value(cls_name: str, field: _Field, value: Any) -> Any:
    if field.sol_type == "bytes32[]":
        if not isinstance(value, list):
            raise _malformed(cls_name, field, value, "expected a list of 0x-hex bytes32")
        return tuple(_parse_hex(cls_name, field, item) for item in value)
    if field.sol_type in ("bytes32", "bytes"):
        return _parse_hex(cls_name, field, value)
    return value  # ints and addresses are checked by __post_init__


# --- the message base ------------------------------------------------------------------------------------------------
M = TypeVar("M", bound="_Message")


class _Message:
    """Shared behaviour of every typed log; subclasses are frozen dataclasses with a TYPE_STRING."""

    TYPE_STRING: ClassVar[str]
    PRIMARY_TYPE: ClassVar[str]
    FIELDS: ClassVar[tuple[_Field, ...]]
    TYPE_HASH: ClassVar[bytes]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.PRIMARY_TYPE, cls.FIELDS = _parse_type_string(cls.TYPE_STRING)
        cls.TYPE_HASH = keccak(cls.TYPE_STRING.encode())

    def __post_init__(self) -> None:
        name = self.PRIMARY_TYPE
        for field in self.FIELDS:
            object.__setattr__(self, field.attr, _check_value(name, field, getattr(self, field.attr)))

    @classmethod
    def type_hash(cls) -> bytes:
        return cls.TYPE_HASH

    def struct_hash(self) -> bytes:
        words = [_encode_value(field, getattr(self, field.attr)) for field in self.FIELDS]
        return keccak(self.TYPE_HASH + b"".join(words))

    def digest(self, domain: Domain) -> bytes:
        return keccak(b"\x19\x01" + domain.separator() + self.struct_hash())

    def id(self, domain: Domain) -> bytes:
        """Idempotency key: the EIP-712 digest (IssueLog and TransferRequest override)."""
        return self.digest(domain)

    def eip712_message(self) -> dict[str, Any]:
        """Members keyed by their type-string names with python values (bytes, int, str), for eth-account."""
        return {field.name: list(v) if isinstance(v := getattr(self, field.attr), tuple) else v
                for field in self.FIELDS}

    def to_json(self) -> dict[str, Any]:
        return {field.name: _json_value(field, getattr(self, field.attr)) for field in self.FIELDS}

    @classmethod
    def from_json(cls: type[M], data: dict[str, Any]) -> M:
        if not isinstance(data, dict):
            raise MalformedMessage(f"{cls.PRIMARY_TYPE} JSON must be an object", type=cls.PRIMARY_TYPE,
                                   field="", value=data, reason="expected an object")
        names = {field.name for field in cls.FIELDS}
        if set(data) != names:
            raise MalformedMessage(f"{cls.PRIMARY_TYPE} JSON keys {sorted(data)} != {sorted(names)}",
                                   type=cls.PRIMARY_TYPE, field=",".join(sorted(set(data) ^ names)), value=data,
                                   reason="missing or unknown members")
        kwargs = {f.attr: _from_json_value(cls.PRIMARY_TYPE, f, data[f.name]) for f in cls.FIELDS}
        return cls(**kwargs)  # type: ignore[call-arg]


# --- the typed logs ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class IssueLog(_Message):
    TYPE_STRING: ClassVar[str] = (
        "IssueLog(bytes32 serial,address device,bytes32 userIdHash,uint96 cap,uint40 expiresAt,"
        "bytes32 previousSerial,uint96 carried)"
    )
    serial: bytes
    device: str
    user_id_hash: bytes
    cap: int
    expires_at: int
    previous_serial: bytes
    carried: int

    def id(self, domain: Domain) -> bytes:
        return self.serial


@dataclass(frozen=True)
class BalanceStatement(_Message):
    TYPE_STRING: ClassVar[str] = "BalanceStatement(bytes32 serial,uint64 nextSeq,uint96 spent,uint40 attestedAt)"
    serial: bytes
    next_seq: int
    spent: int
    attested_at: int


@dataclass(frozen=True)
class UsageLog(_Message):
    TYPE_STRING: ClassVar[str] = (
        "UsageLog(bytes32 serial,uint64 seq,bytes32 policyId,uint96 fee,address receiver,uint32 usedAt)"
    )
    serial: bytes
    seq: int
    policy_id: bytes
    fee: int
    receiver: str
    used_at: int

    def struct_hash(self) -> bytes:
        # Hot path (the SP verifies every usage log): the generic loop unrolled for this one type.
        return keccak(
            self.TYPE_HASH + self.serial + self.seq.to_bytes(32, "big") + self.policy_id
            + self.fee.to_bytes(32, "big") + _ZERO12 + bytes.fromhex(self.receiver[2:])
            + self.used_at.to_bytes(32, "big")
        )


@dataclass(frozen=True)
class UsageBatch(_Message):
    TYPE_STRING: ClassVar[str] = (
        "UsageBatch(bytes32 serial,uint64 firstSeq,address receiver,bytes32[] policyIds,bytes entries)"
    )
    serial: bytes
    first_seq: int
    receiver: str
    policy_ids: tuple[bytes, ...]
    entries: bytes

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_entries(self.first_seq, self.policy_ids, self.entries)

    @property
    def count(self) -> int:
        return len(self.entries) // ENTRY_SIZE

    @property
    def total(self) -> int:
        entries = self.entries
        return sum(int.from_bytes(entries[i + 1:i + 12], "big") for i in range(0, len(entries), ENTRY_SIZE))

    @classmethod
    def from_logs(cls, logs: Sequence[UsageLog]) -> UsageBatch:
        """Pack usage logs of one serial and receiver, contiguous in seq, into a batch (policies in first-seen order)."""
        if not logs:
            raise MalformedMessage("a usage batch needs at least one log", type="UsageBatch", field="entries",
                                   value=0, reason="empty batch")
        first = logs[0]
        policy_index: dict[bytes, int] = {}
        packed = bytearray()
        for i, log in enumerate(logs):
            _check_batch_member(first, log, i)
            index = policy_index.setdefault(log.policy_id, len(policy_index))
            if index >= MAX_BATCH_POLICIES:
                raise MalformedMessage(f"more than {MAX_BATCH_POLICIES} policies in one batch", type="UsageBatch",
                                       field="policyIds", value=index + 1, reason="too many policies")
            packed += bytes((index,)) + log.fee.to_bytes(11, "big") + log.used_at.to_bytes(4, "big")
        return cls(serial=first.serial, first_seq=first.seq, receiver=first.receiver,
                   policy_ids=tuple(policy_index), entries=bytes(packed))

    def logs(self) -> list[UsageLog]:
        """The usage logs this batch packs, in sequence order."""
        entries, policy_ids = self.entries, self.policy_ids
        return [
            UsageLog(serial=self.serial, seq=self.first_seq + i, policy_id=policy_ids[entries[off]],
                     fee=int.from_bytes(entries[off + 1:off + 12], "big"), receiver=self.receiver,
                     used_at=int.from_bytes(entries[off + 12:off + 16], "big"))
            for i, off in enumerate(range(0, len(entries), ENTRY_SIZE))
        ]


def _check_batch_member(first: UsageLog, log: UsageLog, i: int) -> None:
    if log.serial != first.serial or log.receiver != first.receiver:
        raise MalformedMessage(f"usage log {i} has another serial or receiver than log 0", type="UsageBatch",
                               field="serial" if log.serial != first.serial else "receiver", value=i,
                               reason="all logs of a batch share serial and receiver")
    if log.seq != first.seq + i:
        raise SequenceError(f"usage log {i} has seq {log.seq}, expected {first.seq + i} (batches are contiguous)",
                            serial=log.serial, expected=first.seq + i, got=log.seq)
    if log.fee > UINT88_MAX:
        raise InvalidAmount(f"usage log {i} fee {log.fee} overflows the uint88 entry fee", type="UsageBatch",
                            field="fee", value=log.fee, maximum=UINT88_MAX)


def _check_entries(first_seq: int, policy_ids: tuple[bytes, ...], entries: bytes) -> None:
    count, rest = divmod(len(entries), ENTRY_SIZE)
    if rest or not count or count > MAX_BATCH_ENTRIES:
        raise MalformedMessage(f"entries of {len(entries)} bytes: need 1..{MAX_BATCH_ENTRIES} 16-byte entries",
                               type="UsageBatch", field="entries", value=len(entries), reason="malformed entries")
    if not policy_ids or len(policy_ids) > MAX_BATCH_POLICIES:
        raise MalformedMessage(f"{len(policy_ids)} policy ids: need 1..{MAX_BATCH_POLICIES}", type="UsageBatch",
                               field="policyIds", value=len(policy_ids), reason="bad policy count")
    highest = max(entries[::ENTRY_SIZE])
    if highest >= len(policy_ids):
        raise MalformedMessage(f"policy index {highest} out of range for {len(policy_ids)} policies",
                               type="UsageBatch", field="entries", value=highest, reason="policy index out of range")
    if first_seq + count - 1 >= 1 << 64:
        raise MalformedMessage("last seq overflows uint64", type="UsageBatch", field="firstSeq", value=first_seq,
                               reason="seq overflow")


@dataclass(frozen=True)
class ReceiveLog(_Message):
    """Signed by the SP: `usage_batch` is the struct hash (not the digest) of the UsageBatch received."""

    TYPE_STRING: ClassVar[str] = "ReceiveLog(bytes32 usageBatch,address payer,uint64 receivedAt)"
    usage_batch: bytes
    payer: str
    received_at: int


@dataclass(frozen=True)
class SkipRange(_Message):
    """Signed by the device: its batch [first_seq, first_seq + count) worth `total`, which `receiver` acknowledged
    at `received_at` (its ReceiveLog over the batch's struct hash `usage_batch`) and never forwarded. After the
    withhold window the CC settles it with `skipRange`: nextSeq moves past it, the cap is charged and `total` is
    held for the receiver until the batch itself settles."""

    TYPE_STRING: ClassVar[str] = (
        "SkipRange(bytes32 serial,uint64 firstSeq,uint32 count,address receiver,uint96 total,bytes32 usageBatch,"
        "uint64 receivedAt)"
    )
    serial: bytes
    first_seq: int
    count: int
    receiver: str
    total: int
    usage_batch: bytes
    received_at: int


@dataclass(frozen=True)
class TransferRequest(_Message):
    TYPE_STRING: ClassVar[str] = "TransferRequest(bytes32 requestId,address payee,uint96 amount)"
    request_id: bytes
    payee: str
    amount: int

    def id(self, domain: Domain) -> bytes:
        return self.request_id


@dataclass(frozen=True)
class TransferReceipt(_Message):
    TYPE_STRING: ClassVar[str] = "TransferReceipt(bytes32 requestId,bytes32 bankRef,uint96 amount,uint64 confirmedAt)"
    request_id: bytes
    bank_ref: bytes
    amount: int
    confirmed_at: int


Message = Union[IssueLog, BalanceStatement, UsageLog, UsageBatch, ReceiveLog, SkipRange, TransferRequest,
                TransferReceipt]
MESSAGE_TYPES: dict[str, type[_Message]] = {
    cls.PRIMARY_TYPE: cls
    for cls in (IssueLog, BalanceStatement, UsageLog, UsageBatch, ReceiveLog, SkipRange, TransferRequest,
                TransferReceipt)
}


def message_from_json(kind: str, data: dict[str, Any]) -> Message:
    """Decode a message given its primary type name (e.g. an Envelope's `kind`)."""
    cls = MESSAGE_TYPES.get(kind)
    if cls is None:
        raise MalformedMessage(f"unknown message type {kind!r}", type=kind, field="", value=kind,
                               reason=f"expected one of {sorted(MESSAGE_TYPES)}")
    return cls.from_json(data)  # type: ignore[return-value]


def policy_id(content_id: bytes, version: int) -> bytes:
    """keccak256(abi.encode(bytes32 contentId, uint32 version))."""
    field = _Field("version", "version", "uint32", 32)
    _check_bytes32("policyId", _Field("content_id", "contentId", "bytes32", 0), content_id)
    _check_uint("policyId", field, version)
    return keccak(bytes(content_id) + version.to_bytes(32, "big"))


# --- signing and recovery ---------------------------------------------------------------------------------------------
class DigestSigner(Protocol):
    """A key that signs a 32-byte digest without revealing itself (offchain.trust.keys: file or PKCS#11)."""

    @property
    def address(self) -> str: ...

    def sign_digest(self, digest: bytes) -> bytes: ...


def sign(message: Message, domain: Domain, private_key: bytes | DigestSigner) -> bytes:
    """65-byte r || s || v signature (v in {27, 28}; libsecp256k1 always produces low s, a DigestSigner must)."""
    if not isinstance(private_key, (bytes, bytearray)):
        return private_key.sign_digest(message.digest(domain))
    signature = coincurve.PrivateKey(bytes(private_key)).sign_recoverable(message.digest(domain), hasher=None)
    return signature[:64] + bytes((signature[64] + 27,))


def check_signature_rules(signature: bytes) -> None:
    """OpenZeppelin ECDSA rules on the shape of a signature; raises the matching SignatureError subclass."""
    if not isinstance(signature, (bytes, bytearray)) or len(signature) != 65:
        length = len(signature) if isinstance(signature, (bytes, bytearray)) else -1
        raise InvalidSignatureLength(f"signature must be 65 bytes r||s||v, got {length}", length=length)
    s_value = int.from_bytes(signature[32:64], "big")
    if s_value > SECP256K1_HALF_N:
        raise InvalidSignatureS("high-s (malleable) signature: re-sign with a low-s signer",
                                s=bytes(signature[32:64]))
    if signature[64] not in (27, 28):
        raise InvalidSignatureV(f"signature v must be 27 or 28, got {signature[64]}", v=signature[64])


def recover_digest(digest: bytes, signature: bytes) -> str:
    """Signer of a 32-byte digest (fast path); enforces the OZ ECDSA rules."""
    check_signature_rules(signature)
    try:
        public_key = coincurve.PublicKey.from_signature_and_message(
            bytes(signature[:64]) + bytes((signature[64] - 27,)), digest, hasher=None)
    except ValueError as exc:  # coincurve: r or s out of range, or no curve point for r
        raise SignatureError(f"signature does not recover to a public key: {exc}", digest=digest) from None
    address = address_from_public_key(public_key.format(compressed=False))
    if address == "0x" + "0" * 40:  # pragma: no cover - keccak preimage of zero; kept to mirror OZ
        raise SignatureError("signature recovers to the zero address", digest=digest)
    return address


def recover(message: Message, domain: Domain, signature: bytes) -> str:
    """Fast path: precomputed type hash, cached domain separator, coincurve recovery."""
    return recover_digest(message.digest(domain), signature)


def full_typed_data(message: Message, domain: Domain) -> dict[str, Any]:
    """The eth-account `full_message` dict for `message` (for the generic path and golden vectors)."""
    return {
        "types": {
            "EIP712Domain": [{"name": "name", "type": "string"}, {"name": "version", "type": "string"},
                             {"name": "chainId", "type": "uint256"}, {"name": "verifyingContract", "type": "address"}],
            message.PRIMARY_TYPE: [{"name": f.name, "type": f.sol_type} for f in message.FIELDS],
        },
        "primaryType": message.PRIMARY_TYPE,
        "domain": domain.to_json(),
        "message": message.eip712_message(),
    }


def recover_generic(message: Message, domain: Domain, signature: bytes) -> str:
    """eth-account's generic path (encode_typed_data + Account.recover_message), same OZ rules."""
    from eth_account import Account
    from eth_account.messages import encode_typed_data
    from eth_keys.exceptions import BadSignature
    from eth_utils import ValidationError

    check_signature_rules(signature)
    signable = encode_typed_data(full_message=full_typed_data(message, domain))
    try:
        address = Account.recover_message(signable, signature=bytes(signature))
    except (BadSignature, ValidationError, ValueError) as exc:  # eth-keys: unrecoverable r/s
        raise SignatureError(f"signature does not recover to a public key: {exc}") from None
    return to_checksum_address(address)


def verify(message: Message, domain: Domain, signature: bytes, expected_signer: str) -> None:
    """Raise unless `signature` is `expected_signer`'s over `message` in `domain` (SignerMismatch otherwise)."""
    got = recover(message, domain, signature)
    expected = to_checksum_address(expected_signer)
    if got != expected:
        raise SignerMismatch(f"{message.PRIMARY_TYPE} signed by {got}, expected {expected} (forged, other domain "
                             "or other type)", expected=expected, got=got)


def recover_many(messages: Sequence[Message], domain: Domain, signatures: Sequence[bytes]) -> list[str]:
    """Signers of many messages (fast path) in order; raises on the first bad signature."""
    if len(messages) != len(signatures):
        raise InvalidSignatureLength(f"{len(messages)} messages but {len(signatures)} signatures",
                                     length=len(signatures))
    separator = domain.separator()
    return [recover_digest(keccak(b"\x19\x01" + separator + m.struct_hash()), s) for m, s in zip(messages, signatures)]


def verify_usage_logs(logs: Sequence[UsageLog], signatures: Sequence[bytes], domain: Domain,
                      expected_signer: str) -> None:
    """Verify a run of usage logs all signed by one device (the SP's throughput path)."""
    expected = to_checksum_address(expected_signer)
    for index, got in enumerate(recover_many(logs, domain, signatures)):
        if got != expected:
            raise SignerMismatch(f"usage log {index} signed by {got}, expected {expected}", expected=expected,
                                 got=got, index=index)


__all__ = [
    "Role", "Domain", "IssueLog", "BalanceStatement", "UsageLog", "UsageBatch", "ReceiveLog", "TransferRequest",
    "TransferReceipt", "SkipRange", "Message", "MESSAGE_TYPES", "message_from_json", "policy_id", "sign", "recover",
    "recover_generic", "recover_digest", "recover_many", "verify", "verify_usage_logs", "check_signature_rules",
    "full_typed_data", "keccak", "to_checksum_address", "address_from_public_key",
]
