"""Key backends: where the secp256k1 signing keys (members', the authority's) and the CA's X.509 key live.

`file` (the default) keeps a hex key in a 0600 file, as before; `pkcs11` keeps it in a token (an HSM, or SoftHSM2
for tests and the demo), generated there as non-extractable, sensitive keys: the process can ask the token to
sign a digest and can never read the key. It does not initialise tokens in production (that is the HSM's own
tooling) and it does not move member TLS keys (P-256, `key.pem`) into the token.
Security caveat: the token PIN is a secret of the process; give it through `CLEARHOUSE_PKCS11_PIN`.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import coincurve
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils
from eth_account import Account
from eth_account.datastructures import SignedTransaction
from eth_utils import keccak
from hexbytes import HexBytes

from offchain.core.errors import HsmError, PathError, ToolMissing
from offchain.core.messages import SECP256K1_HALF_N, SECP256K1_N, address_from_public_key

__all__ = ["Signer", "FileSigner", "Pkcs11Config", "Pkcs11Signer", "Pkcs11EcPrivateKey", "open_token",
           "generate_secp256k1", "open_secp256k1", "generate_ec_key", "open_ec_key", "softhsm_module",
           "init_softhsm", "SECP256K1_PARAMS", "PIN_ENV"]

PIN_ENV = "CLEARHOUSE_PKCS11_PIN"
SECP256K1_PARAMS = bytes.fromhex("06052b8104000a")  # DER OID 1.3.132.0.10
_CURVES: dict[bytes, ec.EllipticCurve] = {
    bytes.fromhex("06052b81040022"): ec.SECP384R1(),
    bytes.fromhex("06082a8648ce3d030107"): ec.SECP256R1(),
}
_CURVE_PARAMS = {type(curve).__name__: params for params, curve in _CURVES.items()}
SOFTHSM_MODULES = ("/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
                   "/usr/local/lib/softhsm/libsofthsm2.so")


# --- the signer seam -----------------------------------------------------------------------------------------
@runtime_checkable
class Signer(Protocol):
    """A secp256k1 key that signs 32-byte digests and Ethereum transactions; it may not reveal the key."""

    @property
    def address(self) -> str: ...

    def sign_digest(self, digest: bytes) -> bytes:
        """65-byte r || s || v over `digest` (low s, v in {27, 28}), as `offchain.core.messages.sign`."""
        ...

    def sign_transaction(self, tx: Mapping[str, Any]) -> SignedTransaction:
        """The signed raw transaction, exactly as `eth_account.Account.sign_transaction` returns it."""
        ...


class FileSigner:
    """The `file` backend: a key held in memory (read from a hex file or a setting)."""

    def __init__(self, private_key: bytes) -> None:
        self._key = coincurve.PrivateKey(bytes(private_key))
        self._account = Account.from_key(bytes(private_key))
        self.address: str = self._account.address

    def sign_digest(self, digest: bytes) -> bytes:
        signature = self._key.sign_recoverable(bytes(digest), hasher=None)
        return signature[:64] + bytes((signature[64] + 27,))

    def sign_transaction(self, tx: Mapping[str, Any]) -> SignedTransaction:
        return self._account.sign_transaction(dict(tx))


@dataclass(frozen=True)
class _Vrs:
    """What eth-account's `sign_transaction_dict` reads from a key's `sign_msg_hash`: raw v (0/1), r, s."""

    vrs: tuple[int, int, int]


def sign_transaction_with(signer: Any, address: str, tx: Mapping[str, Any]) -> SignedTransaction:
    """`Account.sign_transaction` for a key that only signs hashes: eth-account builds and hashes the (typed or
    legacy) transaction and asks `signer.sign_msg_hash(hash)` for (v, r, s); the same bytes come out."""
    from eth_account._utils.signing import sign_transaction_dict

    tx = dict(tx)
    sender = tx.pop("from", None)
    if sender is not None and sender != address:
        raise HsmError(f"transaction from {sender} cannot be signed by the key of {address}", address=address,
                       sender=sender)
    v, r, s, encoded = sign_transaction_dict(signer, tx)
    return SignedTransaction(raw_transaction=HexBytes(encoded), hash=HexBytes(keccak(encoded)), r=r, s=s, v=v)


# --- PKCS#11 tokens ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pkcs11Config:
    """Which token: the vendor's PKCS#11 module (.so), the token label and its user PIN."""

    module: Path
    token_label: str
    pin: str

    def public(self) -> dict[str, str]:
        """What may be written beside a CA (no PIN)."""
        return {"module": str(self.module), "token_label": self.token_label}


class TokenSession:
    """One logged-in session on one token, shared by every key of the process (PKCS#11 logins are per process)
    and serialised by a lock (a session must not be used by two threads at once)."""

    def __init__(self, config: Pkcs11Config) -> None:
        import pkcs11

        try:
            with softhsm_store_lock(config):
                lib = pkcs11.lib(str(config.module))
                token = lib.get_token(token_label=config.token_label)
                self.session = token.open(rw=True, user_pin=config.pin)
        except (pkcs11.PKCS11Error, RuntimeError, OSError) as exc:
            raise HsmError(f"cannot open PKCS#11 token {config.token_label!r} with {config.module}: "
                           f"{type(exc).__name__} {exc}", module=str(config.module),
                           token_label=config.token_label) from exc
        self.config = config
        self.lock = threading.Lock()

    def find_key(self, label: str, object_class: Any) -> Any:
        import pkcs11

        with self.lock:
            try:
                return self.session.get_key(object_class=object_class, label=label)
            except (pkcs11.NoSuchKey, pkcs11.MultipleObjectsReturned) as exc:
                raise HsmError(f"token {self.config.token_label!r} has no single {object_class.name} key labelled "
                               f"{label!r}", token_label=self.config.token_label, label=label) from exc

    def sign_raw_ecdsa(self, key: Any, digest: bytes) -> bytes:
        """CKM_ECDSA over a digest computed outside: the token returns raw r || s."""
        import pkcs11

        with self.lock:
            return bytes(key.sign(bytes(digest), mechanism=pkcs11.Mechanism.ECDSA))


@contextmanager
def softhsm_store_lock(config: Pkcs11Config) -> Iterator[None]:
    """SoftHSM2's file object store is not safe when several processes log in to, or write into, one token directory
    at once: a process that loads the module while another logs in can miss the token (NoSuchToken) or fail with
    GeneralError (SoftHSMv2 issue 757; here 15 of 60 concurrent opens failed, and `demo --hsm`, whose CC, SP and
    bank log in as they start, once failed so). Opening a SoftHSM2 token and writing a key into it hold an exclusive
    flock named after SOFTHSM2_CONF, across processes; any other module (a real HSM) takes no lock. Signing
    needs none (60 processes signing side by side never failed)."""
    if "softhsm" not in Path(config.module).name.lower():
        yield
        return
    conf = Path(os.environ.get("SOFTHSM2_CONF", "/etc/softhsm/softhsm2.conf")).resolve()
    name = f"clearhouse-softhsm2-{hashlib.sha256(str(conf).encode()).hexdigest()[:16]}.lock"
    with open(Path(tempfile.gettempdir()) / name, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


_sessions: dict[tuple[str, str], TokenSession] = {}  # per process, like the token's login state itself
_sessions_lock = threading.Lock()


def open_token(config: Pkcs11Config) -> TokenSession:
    key = (str(config.module), config.token_label)
    with _sessions_lock:
        if key not in _sessions:
            _sessions[key] = TokenSession(config)
        return _sessions[key]


def _generate_ec(config: Pkcs11Config, label: str, params: bytes) -> tuple[Any, Any]:
    """A key pair generated in the token: private half sensitive, non-extractable, sign-only."""
    import pkcs11
    from pkcs11 import Attribute, KeyType, ObjectClass

    token = open_token(config)
    with softhsm_store_lock(config), token.lock:
        try:
            token.session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=label)
        except pkcs11.NoSuchKey:
            pass
        else:
            raise HsmError(f"token {config.token_label!r} already holds a key labelled {label!r}",
                           token_label=config.token_label, label=label)
        domain = token.session.create_domain_parameters(KeyType.EC, {Attribute.EC_PARAMS: params}, local=True)
        return domain.generate_keypair(
            store=True, label=label, id=label.encode(),
            public_template={Attribute.VERIFY: True, Attribute.TOKEN: True},
            private_template={Attribute.SIGN: True, Attribute.TOKEN: True, Attribute.PRIVATE: True,
                              Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False,
                              Attribute.DERIVE: False, Attribute.DECRYPT: False, Attribute.UNWRAP: False})


def _ec_point(public_key: Any) -> bytes:
    """CKA_EC_POINT is the DER OCTET STRING around the uncompressed point (some tokens give the bare point)."""
    from pkcs11 import Attribute

    data = bytes(public_key[Attribute.EC_POINT])
    if data[:1] == b"\x04" and len(data) >= 2 and data[1] == len(data) - 2 and data[2:3] == b"\x04":
        return data[2:]
    return data


class Pkcs11Signer:
    """The `pkcs11` backend for secp256k1: CKM_ECDSA over the digest, low-s normalised, recovery id by trial."""

    def __init__(self, token: TokenSession, label: str, private_key: Any, public_point: bytes) -> None:
        if len(public_point) != 65 or public_point[0] != 4:
            raise HsmError(f"key {label!r} is not an uncompressed secp256k1 point", label=label)
        self._token = token
        self._key = private_key
        self._public = public_point
        self.label = label
        self.address: str = address_from_public_key(public_point)

    def sign_digest(self, digest: bytes) -> bytes:
        v, r, s = self.sign_msg_hash(digest).vrs
        return r.to_bytes(32, "big") + s.to_bytes(32, "big") + bytes((v + 27,))

    def sign_msg_hash(self, digest: bytes) -> _Vrs:
        """(raw v, r, s) for eth-account; `digest` is the 32-byte hash itself (no hashing here)."""
        digest = bytes(digest)
        if len(digest) != 32:
            raise HsmError(f"a digest is 32 bytes, got {len(digest)}", label=self.label, length=len(digest))
        raw = self._token.sign_raw_ecdsa(self._key, digest)
        r, s = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
        if s > SECP256K1_HALF_N:
            s = SECP256K1_N - s
        rs = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        for recovery_id in (0, 1):
            try:
                recovered = coincurve.PublicKey.from_signature_and_message(rs + bytes((recovery_id,)), digest,
                                                                           hasher=None)
            except ValueError:
                continue
            if recovered.format(compressed=False) == self._public:
                return _Vrs((recovery_id, r, s))
        raise HsmError(f"the token's signature with {self.label!r} does not recover to its public key",
                       label=self.label)

    def sign_transaction(self, tx: Mapping[str, Any]) -> SignedTransaction:
        return sign_transaction_with(self, self.address, tx)


def generate_secp256k1(config: Pkcs11Config, label: str) -> Pkcs11Signer:
    """A new non-extractable secp256k1 key in the token, labelled `label` (HsmError if the label is taken)."""
    public, private = _generate_ec(config, label, SECP256K1_PARAMS)
    return Pkcs11Signer(open_token(config), label, private, _ec_point(public))


def open_secp256k1(config: Pkcs11Config, label: str) -> Pkcs11Signer:
    """The secp256k1 key labelled `label` in the token."""
    from pkcs11 import ObjectClass

    token = open_token(config)
    private = token.find_key(label, ObjectClass.PRIVATE_KEY)
    public = token.find_key(label, ObjectClass.PUBLIC_KEY)
    return Pkcs11Signer(token, label, private, _ec_point(public))


# --- the CA's X.509 key ------------------------------------------------------------------------------------------
class Pkcs11EcPrivateKey(ec.EllipticCurvePrivateKey):
    """A P-256/P-384 key in a token, usable wherever cryptography wants an EC private key for signing
    (`CertificateBuilder.sign`, `CertificateRevocationListBuilder.sign`): cryptography calls `sign()`, which hashes
    here and lets the token sign the digest with CKM_ECDSA. Everything that would reveal the key raises."""

    def __init__(self, token: TokenSession, label: str, private_key: Any, public_key: ec.EllipticCurvePublicKey):
        self._token = token
        self._key = private_key
        self._public = public_key
        self.label = label

    def sign(self, data: bytes, signature_algorithm: ec.EllipticCurveSignatureAlgorithm) -> bytes:
        if not isinstance(signature_algorithm, ec.ECDSA):
            raise HsmError("only ECDSA signatures are supported by the token key", label=self.label)
        algorithm = signature_algorithm.algorithm
        if isinstance(algorithm, utils.Prehashed):
            digest = bytes(data)
        else:
            hasher = hashes.Hash(algorithm)
            hasher.update(bytes(data))
            digest = hasher.finalize()
        raw = self._token.sign_raw_ecdsa(self._key, digest)
        half = len(raw) // 2
        return utils.encode_dss_signature(int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big"))

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._public

    @property
    def curve(self) -> ec.EllipticCurve:
        return self._public.curve

    @property
    def key_size(self) -> int:
        return self._public.curve.key_size

    def exchange(self, algorithm: ec.ECDH, peer_public_key: ec.EllipticCurvePublicKey) -> bytes:
        raise HsmError("the token key signs only", label=self.label)

    def private_numbers(self) -> ec.EllipticCurvePrivateNumbers:
        raise HsmError("the token key is not extractable", label=self.label)

    def private_bytes(self, *args: Any, **kwargs: Any) -> bytes:
        raise HsmError("the token key is not extractable", label=self.label)

    def __copy__(self) -> Pkcs11EcPrivateKey:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Pkcs11EcPrivateKey:
        return self

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Pkcs11EcPrivateKey) and other._public == self._public

    def __hash__(self) -> int:
        return hash(self.label)


def _ec_key(token: TokenSession, label: str, private: Any, public: Any) -> Pkcs11EcPrivateKey:
    from pkcs11 import Attribute

    curve = _CURVES.get(bytes(public[Attribute.EC_PARAMS]))
    if curve is None:
        raise HsmError(f"key {label!r} is on a curve the CA does not use", label=label)
    return Pkcs11EcPrivateKey(token, label, private, ec.EllipticCurvePublicKey.from_encoded_point(curve,
                                                                                               _ec_point(public)))


def generate_ec_key(config: Pkcs11Config, label: str, curve: ec.EllipticCurve) -> Pkcs11EcPrivateKey:
    """A new non-extractable P-256/P-384 key in the token for X.509 signing."""
    public, private = _generate_ec(config, label, _CURVE_PARAMS[type(curve).__name__])
    return _ec_key(open_token(config), label, private, public)


def open_ec_key(config: Pkcs11Config, label: str) -> Pkcs11EcPrivateKey:
    from pkcs11 import ObjectClass

    token = open_token(config)
    return _ec_key(token, label, token.find_key(label, ObjectClass.PRIVATE_KEY),
                   token.find_key(label, ObjectClass.PUBLIC_KEY))


# --- SoftHSM2 (tests and the demo) -----------------------------------------------------------------------------
def softhsm_module() -> Path:
    """Debian's SoftHSM2 PKCS#11 module; ConfigError naming the package when it is not installed."""
    for candidate in SOFTHSM_MODULES:
        if Path(candidate).is_file():
            return Path(candidate)
    raise ToolMissing("SoftHSM2 is not installed: `apt-get install softhsm2`", candidates=list(SOFTHSM_MODULES))


def init_softhsm(directory: Path, labels: list[str], pin: str, so_pin: str = "0000") -> Path:
    """A SoftHSM2 configuration under `directory` with one initialised token per label; returns the config file,
    which the process (and its children) must name in SOFTHSM2_CONF before the module is first loaded."""
    util = shutil.which("softhsm2-util")
    if util is None:
        raise ToolMissing("softhsm2-util not found: `apt-get install softhsm2`", tool="softhsm2-util")
    directory = Path(directory)
    (directory / "tokens").mkdir(parents=True, exist_ok=True)
    conf = directory / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {directory / 'tokens'}\nobjectstore.backend = file\n"
                    "log.level = ERROR\nslots.removable = false\n")
    env = {**os.environ, "SOFTHSM2_CONF": str(conf)}
    for label in labels:
        subprocess.run([util, "--init-token", "--free", "--label", label, "--pin", pin, "--so-pin", so_pin],
                       check=True, capture_output=True, env=env)
    return conf


def write_pkcs11_marker(path: Path, config: Pkcs11Config, label: str, kind: str) -> None:
    """Where a key lives (module, token, label; never the PIN), written where the key file would be."""
    path.write_text(json.dumps({**config.public(), "key_label": label, "kind": kind}, indent=1) + "\n")


def read_pkcs11_marker(path: Path, pin: str | None = None) -> tuple[Pkcs11Config, str]:
    """(config, key label) from a marker; the PIN from `pin` or CLEARHOUSE_PKCS11_PIN."""
    data = json.loads(Path(path).read_text())
    pin = pin if pin is not None else os.environ.get(PIN_ENV)
    if not pin:
        raise PathError(f"{path} names a key in PKCS#11 token {data['token_label']!r}: set {PIN_ENV}",
                        path=str(path), env=PIN_ENV)
    return Pkcs11Config(Path(data["module"]), data["token_label"], pin), data["key_label"]


# --- the CA with its root key in a token ------------------------------------------------------------------------
CA_KEY_MARKER = "root.key.pkcs11.json"  # written instead of root.key.pem when the root key lives in a token
CA_KEY_LABEL = "clearhouse-root"


def create_ca(directory: Path, config: Pkcs11Config | None = None, *, label: str = CA_KEY_LABEL,
              clock: Any = None) -> Any:
    """A new CA in `directory`: root key in a file (config None) or generated in the token (P-384, as ca.py)."""
    import time

    from offchain.trust.ca import CertificateAuthority

    clock = clock or time.time
    if config is None:
        return CertificateAuthority.create(directory, clock=clock)
    key = generate_ec_key(config, label, ec.SECP384R1())
    ca = CertificateAuthority.create(directory, clock=clock, key=key)
    write_pkcs11_marker(Path(directory) / CA_KEY_MARKER, config, label, "ca-root")
    return ca


def load_ca(directory: Path, *, clock: Any = None, pin: str | None = None) -> Any:
    """The CA in `directory`, whichever backend holds its root key (PIN from `pin` or CLEARHOUSE_PKCS11_PIN)."""
    import time

    from offchain.trust.ca import CertificateAuthority

    clock = clock or time.time
    marker = Path(directory) / CA_KEY_MARKER
    if not marker.is_file():
        return CertificateAuthority.load(directory, clock=clock)
    config, label = read_pkcs11_marker(marker, pin)
    return CertificateAuthority.load(directory, clock=clock, key=open_ec_key(config, label))
