"""The device's secure module ("encryption processing unit"): encrypted keystore, SQLite wallet and the atomic use
of a secure container (verify, charge, sign the usage log, then release the plaintext).

It trusts nothing it is handed: containers, wrapped keys and issue logs are verified here. It does not talk to
the network. Caveat: keys live in this process's memory once unlocked; the at-rest keystore is the only barrier.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import coincurve
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from offchain.trust.container import (
    CertVerifier,
    Container,
    WrappedKey,
    canonical_json,
    check_fee,
    derive_kek,
    key_fingerprint,
    verify_container,
)
from offchain.core.gas import DEFAULT_GAS_BUDGET, max_batch_logs
from offchain.core.errors import (
    AllowanceExceeded,
    ContainerTampered,
    DuplicateMessage,
    IssueLogExpired,
    IssueLogRejected,
    NoIssueLog,
    RenewalPending,
    WalletDeploymentMismatch,
    WrongDevice,
    WrongPassphrase,
)
from offchain.core.messages import (
    MAX_BATCH_ENTRIES,
    MAX_BATCH_POLICIES,
    BalanceStatement,
    Domain,
    IssueLog,
    SkipRange,
    UsageBatch,
    UsageLog,
    address_from_public_key,
    sign,
    to_checksum_address,
    verify,
)

__all__ = ["KdfParams", "DeviceKeys", "device_keys_with_agreement", "create_keystore", "unlock_keystore",
           "SecureModule", "Wallet", "LogRow", "KeptAck",
           "SignedLog", "WalletBalance", "cc_verify_fn"]

KEYSTORE_FORMAT = "CHKS/1"
ZERO32 = bytes(32)
MAX_SCRYPT_N = 2**20  # an edited keystore must not make unlocking allocate unbounded memory
IssueLogVerifyFn = Callable[[IssueLog, bytes], object]


# --- keystore -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class KdfParams:
    """scrypt cost; the defaults take ~0.1 s and 32 MiB. Tests pass e.g. KdfParams(n=2**4)."""

    n: int = 2**15
    r: int = 8
    p: int = 1


@dataclass(frozen=True)
class DeviceKeys:
    """The device's secrets: Ethereum signing key (secp256k1) and the P-256 content-key agreement key, plus the
    CA's attestation of the agreement key (public; offchain.trust.agreement). Provisioning generates a dedicated
    agreement key that exists only in the keystore; a keystore holding the TLS key instead (the older layout,
    without an attestation) still opens, but no SP wraps content keys to it any more."""

    member_id: str
    eth_private_key: bytes
    agreement_key_pem: bytes
    agreement_attestation: dict[str, Any] | None = None

    @property
    def eth_address(self) -> str:
        return address_from_public_key(coincurve.PrivateKey(self.eth_private_key).public_key.format(False))

    def agreement_key(self) -> ec.EllipticCurvePrivateKey:
        key = serialization.load_pem_private_key(self.agreement_key_pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
            raise TypeError("the agreement key must be a P-256 private key")
        return key


def device_keys_with_agreement(ca: Any, member_id: str, eth_private_key: bytes, member_cert_pem: bytes,
                               now: int | None = None) -> DeviceKeys:
    """The keys of a newly provisioned device: its eth key, a fresh P-256 agreement key and the CA's attestation
    of it for `member_cert_pem` (the agreement key's private half goes into the keystore and nowhere else)."""
    import time

    from offchain.trust.agreement import attest_agreement_key, new_agreement_key

    key, pem = new_agreement_key()
    attestation = attest_agreement_key(ca, member_cert_pem, key.public_key(), int(time.time() if now is None else now))
    return DeviceKeys(member_id, eth_private_key, pem, attestation.to_json())


def _keystore_kek(passphrase: str, salt: bytes, params: KdfParams) -> bytes:
    return Scrypt(salt=salt, length=32, n=params.n, r=params.r, p=params.p).derive(passphrase.encode("utf-8"))


def create_keystore(path: Path, passphrase: str, keys: DeviceKeys, params: KdfParams = KdfParams()) -> None:
    """Write `keys` encrypted under `passphrase` (scrypt + AES-256-GCM, docs/container.md section 7), mode 0600."""
    salt, nonce = os.urandom(16), os.urandom(12)
    public = {"format": KEYSTORE_FORMAT, "member_id": keys.member_id, "eth_address": keys.eth_address,
              "agreement_key_fingerprint": "0x" + key_fingerprint(keys.agreement_key().public_key()).hex(),
              "kdf": {"name": "scrypt", "n": params.n, "r": params.r, "p": params.p, "salt": "0x" + salt.hex()},
              "cipher": "AES-256-GCM", "nonce": "0x" + nonce.hex()}
    if keys.agreement_attestation is not None:  # authenticated as AAD: an edited attestation does not unlock
        _check_attested_key(keys)
        public["agreement_attestation"] = keys.agreement_attestation
    secret = canonical_json({"eth_private_key": "0x" + keys.eth_private_key.hex(),
                             "agreement_key_pem": keys.agreement_key_pem.decode("ascii")})
    ciphertext = AESGCM(_keystore_kek(passphrase, salt, params)).encrypt(nonce, secret, canonical_json(public))
    data = json.dumps({**public, "ciphertext": "0x" + ciphertext.hex()}, indent=1, sort_keys=True).encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def unlock_keystore(path: Path, passphrase: str) -> DeviceKeys:
    """Decrypt the keystore; WrongPassphrase on a wrong passphrase or an edited file."""
    try:
        stored = json.loads(Path(path).read_text())
        public = {k: v for k, v in stored.items() if k != "ciphertext"}
        kdf = stored["kdf"]
        params = KdfParams(n=kdf["n"], r=kdf["r"], p=kdf["p"])
        salt, nonce = bytes.fromhex(kdf["salt"][2:]), bytes.fromhex(stored["nonce"][2:])
        ciphertext = bytes.fromhex(stored["ciphertext"][2:])
    except (ValueError, KeyError, TypeError, AttributeError):
        raise WrongPassphrase(f"keystore {path} is malformed", path=str(path), reason="malformed") from None
    if stored.get("format") != KEYSTORE_FORMAT or kdf.get("name") != "scrypt" or not 1 < params.n <= MAX_SCRYPT_N:
        raise WrongPassphrase(f"keystore {path} is not {KEYSTORE_FORMAT}", path=str(path), reason="format")
    try:
        kek = _keystore_kek(passphrase, salt, params)
        secret = json.loads(AESGCM(kek).decrypt(nonce, ciphertext, canonical_json(public)))
    except (InvalidTag, ValueError):
        raise WrongPassphrase(f"keystore {path} did not decrypt: wrong passphrase or an edited file",
                              path=str(path), reason="decrypt") from None
    return DeviceKeys(member_id=stored["member_id"], eth_private_key=bytes.fromhex(secret["eth_private_key"][2:]),
                      agreement_key_pem=secret["agreement_key_pem"].encode("ascii"),
                      agreement_attestation=stored.get("agreement_attestation"))


def _check_attested_key(keys: DeviceKeys) -> None:
    from offchain.trust.agreement import AgreementAttestation

    attested = AgreementAttestation.from_json(keys.agreement_attestation).public_key()
    if key_fingerprint(attested) != key_fingerprint(keys.agreement_key().public_key()):
        raise ValueError("the agreement attestation names another key than the keystore's agreement key")


# --- wallet -------------------------------------------------------------------------------------------------------
SCHEMA = """
CREATE TABLE IF NOT EXISTS issue_logs (
    serial BLOB PRIMARY KEY, ord INTEGER NOT NULL UNIQUE, issue_log_json TEXT NOT NULL, cc_signature BLOB NOT NULL,
    cap TEXT NOT NULL, expires_at INTEGER NOT NULL, spent TEXT NOT NULL, next_seq INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('current', 'closed')),
    attested_spent TEXT, attested_next_seq INTEGER, attested_at INTEGER);
CREATE UNIQUE INDEX IF NOT EXISTS one_current_log ON issue_logs (state) WHERE state = 'current';
CREATE TABLE IF NOT EXISTS usage_logs (
    serial BLOB NOT NULL REFERENCES issue_logs (serial), seq INTEGER NOT NULL, log_json TEXT NOT NULL,
    signature BLOB NOT NULL, uploaded INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (serial, seq));
CREATE TABLE IF NOT EXISTS deployment (
    id INTEGER PRIMARY KEY CHECK (id = 1), chain_id INTEGER NOT NULL, contract TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sp_acks (
    serial BLOB NOT NULL REFERENCES issue_logs (serial), first_seq INTEGER NOT NULL, count INTEGER NOT NULL,
    receiver TEXT NOT NULL, total TEXT NOT NULL, usage_batch BLOB NOT NULL, received_at INTEGER NOT NULL,
    receive_log_json TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'skipped', 'released', 'settled')),
    PRIMARY KEY (serial, first_seq));
"""


@dataclass(frozen=True)
class LogRow:
    """One installed issue log and its wallet counters (money is int; stored as decimal text)."""

    serial: bytes
    issue_log: IssueLog
    cc_signature: bytes
    cap: int
    expires_at: int
    spent: int
    next_seq: int
    state: str
    attested: BalanceStatement | None


def _answers_statement(row: LogRow, issue_log: IssueLog) -> bool:
    """`issue_log` (equal to the installed `row`'s) is an in-place renewal answering `row`'s attested statement:
    the current log, attested at its present counters, carried exactly what the statement left."""
    attested = row.attested
    return (row.state == "current" and attested is not None and issue_log.previous_serial == issue_log.serial
            and attested.spent == row.spent and attested.next_seq == row.next_seq
            and issue_log.carried == row.cap - attested.spent)


@dataclass(frozen=True)
class KeptAck:
    """An SP's signed ack of one uploaded batch (its ReceiveLog Envelope, verified on receipt) and what the
    device signed in that batch: the proof that the SP received it, kept until the chain is past the batch.
    `state`: open (the chain may not have settled it), skipped (the device's SkipRange moved the chain past it;
    its fees are held), released (the device's copy of the batch then settled: fees credited, nothing held),
    settled (the SP's batch itself settled)."""

    serial: bytes
    first_seq: int
    count: int
    receiver: str
    total: int
    usage_batch: bytes  # the batch's EIP-712 struct hash, which the ReceiveLog names
    received_at: int
    receive_log: dict[str, Any]  # Envelope JSON
    state: str = "open"


ACK_STATES = ("open", "skipped", "released", "settled")


class SignedLog(NamedTuple):
    log: UsageLog
    signature: bytes


@dataclass(frozen=True)
class WalletBalance:
    serial: bytes
    cap: int
    spent: int
    remaining: int
    next_seq: int
    expires_at: int
    pending_count: int
    renewal_pending: bool


class Wallet:
    """The SQLite wallet (one file, WAL, synchronous=FULL). Writes happen only inside `transaction()`."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._conn = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._conn.executescript(SCHEMA)

    def close(self) -> None:
        self._conn.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE ... COMMIT; any exception rolls everything back."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._commit()
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise

    def _commit(self) -> None:
        self._conn.execute("COMMIT")

    def current(self) -> LogRow | None:
        return self._one("SELECT * FROM issue_logs WHERE state = 'current'", ())

    def get(self, serial: bytes) -> LogRow | None:
        return self._one("SELECT * FROM issue_logs WHERE serial = ?", (serial,))

    def _one(self, sql: str, args: tuple[Any, ...]) -> LogRow | None:
        cursor = self._conn.execute(sql, args)
        row = cursor.fetchone()
        if row is None:
            return None
        r = dict(zip([c[0] for c in cursor.description], row))
        attested = None if r["attested_at"] is None else BalanceStatement(
            serial=r["serial"], next_seq=r["attested_next_seq"], spent=int(r["attested_spent"]),
            attested_at=r["attested_at"])
        return LogRow(serial=r["serial"], issue_log=IssueLog.from_json(json.loads(r["issue_log_json"])),
                      cc_signature=r["cc_signature"], cap=int(r["cap"]), expires_at=r["expires_at"],
                      spent=int(r["spent"]), next_seq=r["next_seq"], state=r["state"], attested=attested)

    def insert_log(self, issue_log: IssueLog, cc_signature: bytes) -> None:
        (order,) = self._conn.execute("SELECT COALESCE(MAX(ord), 0) + 1 FROM issue_logs").fetchone()
        self._conn.execute(
            "INSERT INTO issue_logs (serial, ord, issue_log_json, cc_signature, cap, expires_at, spent, next_seq,"
            " state) VALUES (?, ?, ?, ?, ?, ?, '0', 0, 'current')",
            (issue_log.serial, order, canonical_json(issue_log.to_json()).decode(), cc_signature,
             str(issue_log.cap), issue_log.expires_at))

    def top_up(self, issue_log: IssueLog, cc_signature: bytes) -> None:
        """Replace cap and expiry of the same serial (spent/next_seq kept) and clear the attestation."""
        self._conn.execute(
            "UPDATE issue_logs SET issue_log_json = ?, cc_signature = ?, cap = ?, expires_at = ?,"
            " attested_spent = NULL, attested_next_seq = NULL, attested_at = NULL WHERE serial = ?",
            (canonical_json(issue_log.to_json()).decode(), cc_signature, str(issue_log.cap), issue_log.expires_at,
             issue_log.serial))

    def deployment(self) -> tuple[int, str] | None:
        row = self._conn.execute("SELECT chain_id, contract FROM deployment WHERE id = 1").fetchone()
        return None if row is None else (int(row[0]), str(row[1]))

    def bind_deployment(self, chain_id: int, contract: str) -> None:
        self._conn.execute("INSERT INTO deployment (id, chain_id, contract) VALUES (1, ?, ?)", (chain_id, contract))

    def clear_attestation(self, serial: bytes) -> None:
        self._conn.execute("UPDATE issue_logs SET attested_spent = NULL, attested_next_seq = NULL,"
                           " attested_at = NULL WHERE serial = ?", (serial,))

    def close_log(self, serial: bytes) -> None:
        self._conn.execute("UPDATE issue_logs SET state = 'closed' WHERE serial = ?", (serial,))

    def attest(self, statement: BalanceStatement) -> None:
        self._conn.execute(
            "UPDATE issue_logs SET attested_spent = ?, attested_next_seq = ?, attested_at = ? WHERE serial = ?",
            (str(statement.spent), statement.next_seq, statement.attested_at, statement.serial))

    def charge(self, serial: bytes, spent: int, next_seq: int) -> None:
        self._conn.execute("UPDATE issue_logs SET spent = ?, next_seq = ? WHERE serial = ?",
                           (str(spent), next_seq, serial))

    def append_usage_log(self, log: UsageLog, signature: bytes) -> None:
        self._conn.execute("INSERT INTO usage_logs (serial, seq, log_json, signature) VALUES (?, ?, ?, ?)",
                           (log.serial, log.seq, canonical_json(log.to_json()).decode(), signature))

    def oldest_unsent_serial(self) -> bytes | None:
        row = self._conn.execute(
            "SELECT i.serial FROM issue_logs i JOIN usage_logs u ON u.serial = i.serial WHERE u.uploaded = 0"
            " ORDER BY i.ord LIMIT 1").fetchone()
        return None if row is None else row[0]

    def unsent_logs(self, serial: bytes, limit: int) -> list[SignedLog]:
        rows = self._conn.execute(
            "SELECT log_json, signature FROM usage_logs WHERE serial = ? AND uploaded = 0 ORDER BY seq LIMIT ?",
            (serial, limit)).fetchall()
        return [SignedLog(UsageLog.from_json(json.loads(text)), signature) for text, signature in rows]

    def mark_uploaded(self, serial: bytes, up_to_seq: int) -> int:
        cursor = self._conn.execute(
            "UPDATE usage_logs SET uploaded = 1 WHERE serial = ? AND seq <= ? AND uploaded = 0", (serial, up_to_seq))
        return cursor.rowcount

    def pending_count(self) -> int:
        return self._conn.execute("SELECT COUNT(*) FROM usage_logs WHERE uploaded = 0").fetchone()[0]

    def keep_ack(self, ack: KeptAck) -> None:
        """The first ack of a (serial, first seq) stays: the same batch re-sent gets the same receipt."""
        self._conn.execute(
            "INSERT OR IGNORE INTO sp_acks (serial, first_seq, count, receiver, total, usage_batch, received_at,"
            " receive_log_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (ack.serial, ack.first_seq, ack.count, ack.receiver, str(ack.total), ack.usage_batch, ack.received_at,
             canonical_json(ack.receive_log).decode()))

    def acks(self, state: str | None = None) -> list[KeptAck]:
        sql = ("SELECT a.serial, a.first_seq, a.count, a.receiver, a.total, a.usage_batch, a.received_at,"
               " a.receive_log_json, a.state FROM sp_acks a JOIN issue_logs i ON i.serial = a.serial")
        args: tuple[Any, ...] = ()
        if state is not None:
            sql, args = sql + " WHERE a.state = ?", (state,)
        rows = self._conn.execute(sql + " ORDER BY i.ord, a.first_seq", args).fetchall()
        return [KeptAck(serial=r[0], first_seq=r[1], count=r[2], receiver=r[3], total=int(r[4]), usage_batch=r[5],
                        received_at=r[6], receive_log=json.loads(r[7]), state=r[8]) for r in rows]

    def set_ack_state(self, serial: bytes, first_seq: int, state: str) -> int:
        return self._conn.execute("UPDATE sp_acks SET state = ? WHERE serial = ? AND first_seq = ?",
                                  (state, serial, first_seq)).rowcount

    def logs_between(self, serial: bytes, first_seq: int, count: int) -> list[SignedLog]:
        rows = self._conn.execute(
            "SELECT log_json, signature FROM usage_logs WHERE serial = ? AND seq >= ? AND seq < ? ORDER BY seq",
            (serial, first_seq, first_seq + count)).fetchall()
        return [SignedLog(UsageLog.from_json(json.loads(text)), signature) for text, signature in rows]

    def all_logs(self, serial: bytes) -> list[SignedLog]:
        rows = self._conn.execute("SELECT log_json, signature FROM usage_logs WHERE serial = ? ORDER BY seq",
                                  (serial,)).fetchall()
        return [SignedLog(UsageLog.from_json(json.loads(text)), signature) for text, signature in rows]


def cc_verify_fn(domain: Domain, cc_address: str) -> IssueLogVerifyFn:
    """An `install_issue_log` verifier: the IssueLog must be signed by `cc_address` in `domain`."""

    def check(issue_log: IssueLog, signature: bytes) -> None:
        verify(issue_log, domain, signature, cc_address)

    return check


# --- the secure module --------------------------------------------------------------------------------------------
class SecureModule:
    """The device's encryption processing unit: the only code that holds the device keys and unwraps content keys."""

    def __init__(self, keys: DeviceKeys, wallet: Wallet) -> None:
        self._keys = keys
        self._agreement_key = keys.agreement_key()
        self._wallet = wallet
        self.member_id = keys.member_id
        self.eth_address = keys.eth_address
        self.agreement_fingerprint = key_fingerprint(self._agreement_key.public_key())
        self.agreement_attestation = keys.agreement_attestation  # public: sent with each download

    @classmethod
    def open(cls, keystore_path: Path, wallet_path: Path, passphrase: str) -> SecureModule:
        return cls(unlock_keystore(keystore_path, passphrase), Wallet(wallet_path))

    def close(self) -> None:
        self._wallet.close()

    def bind_deployment(self, domain: Domain) -> None:
        """Tie the wallet to one deployment (chain id and contract) the first time it is opened for it; a wallet
        tied to another is WalletDeploymentMismatch: its logs could never settle there, nor new ones here."""
        got = (domain.chain_id, to_checksum_address(domain.verifying_contract))
        with self._wallet.transaction():
            bound = self._wallet.deployment()
            if bound is None:
                self._wallet.bind_deployment(*got)
                return
        if bound != got:
            expected_text, got_text = f"{bound[0]}:{bound[1]}", f"{got[0]}:{got[1]}"
            raise WalletDeploymentMismatch(
                f"the wallet {self._wallet.path} belongs to deployment {expected_text}, the settings name {got_text}: "
                "point the settings back at that deployment, or give this deployment its own wallet_path",
                expected=expected_text, got=got_text, path=str(self._wallet.path))

    # -- issue logs ------------------------------------------------------------------------------------------------
    def install_issue_log(self, issue_log: IssueLog, cc_signature: bytes,
                          verify_fn: IssueLogVerifyFn) -> WalletBalance:
        """Install a CC-signed issue log (first issue, renewal to a new serial, or top-up in place)."""
        verify_fn(issue_log, cc_signature)
        if issue_log.device != self.eth_address:
            raise IssueLogRejected(f"issue log is for {issue_log.device}, this device is {self.eth_address}",
                                   serial=issue_log.serial, reason="device")
        with self._wallet.transaction():
            existing = self._wallet.get(issue_log.serial)
            if existing is not None and existing.issue_log == issue_log and _answers_statement(existing, issue_log):
                # a top-up in place that re-signs the log the wallet holds (no new money, nothing spent since the
                # last top-up, the same expiry) is still the pending statement's answer: it clears the statement
                self._wallet.top_up(issue_log, cc_signature)
            elif existing is not None and existing.issue_log == issue_log:
                pass  # the same record again: idempotent no-op
            elif issue_log.previous_serial == ZERO32:
                self._install_first(issue_log, cc_signature, existing)
            else:
                self._install_renewal(issue_log, cc_signature, existing)
        return self.balance()

    def _install_first(self, issue_log: IssueLog, cc_signature: bytes, existing: LogRow | None) -> None:
        if existing is not None:
            raise DuplicateMessage("this serial is installed with another payload", serial=issue_log.serial)
        current = self._wallet.current()
        if current is not None:
            raise IssueLogRejected("an issue log is open on this device: renew it instead", serial=issue_log.serial,
                                   reason="log open", current=current.serial)
        self._wallet.insert_log(issue_log, cc_signature)

    def _install_renewal(self, issue_log: IssueLog, cc_signature: bytes, existing: LogRow | None) -> None:
        current = self._wallet.current()
        if current is None or current.serial != issue_log.previous_serial:
            raise IssueLogRejected("renewal of a log that is not this device's current log", serial=issue_log.serial,
                                   reason="previous serial")
        attested = current.attested
        if attested is None or attested.spent != current.spent or attested.next_seq != current.next_seq:
            raise IssueLogRejected("renewal without a matching attested balance statement", serial=issue_log.serial,
                                   reason="no statement")
        remaining = current.cap - attested.spent
        if issue_log.carried != remaining:
            raise IssueLogRejected(f"carried {issue_log.carried} != remaining {remaining} of the attested log",
                                   serial=issue_log.serial, reason="carried", expected=remaining,
                                   got=issue_log.carried)
        in_place = issue_log.serial == issue_log.previous_serial
        floor = attested.spent + remaining if in_place else remaining
        if issue_log.cap < floor:
            raise IssueLogRejected(f"renewed cap {issue_log.cap} below {floor}", serial=issue_log.serial,
                                   reason="cap", minimum=floor, got=issue_log.cap)
        if in_place:
            self._wallet.top_up(issue_log, cc_signature)
            return
        if existing is not None:
            raise DuplicateMessage("this serial is installed with another payload", serial=issue_log.serial)
        self._wallet.close_log(current.serial)
        self._wallet.insert_log(issue_log, cc_signature)

    def _current(self) -> LogRow:
        row = self._wallet.current()
        if row is None:
            raise NoIssueLog("no issue log is installed: request one from the clearing center")
        return row

    # -- use -------------------------------------------------------------------------------------------------------
    def use(self, container_blob: bytes, wrapped_key: WrappedKey, verifier: CertVerifier, domain: Domain,
            receiver: str, now: int, *, expected_policy_hash: bytes | None = None,
            expected_owner: str | None = None) -> tuple[bytes, SignedLog]:
        """Verify, charge the price and sign a UsageLog in one transaction, then decrypt: (plaintext, signed log).

        The key is unwrapped (inside this module) and checked against the header's key commitment before the
        transaction, so nothing is charged for content that cannot be opened; nothing leaves before the commit."""
        container = verify_container(container_blob, verifier, expected_policy_hash, expected_owner=expected_owner)
        content_key = self._unwrap(wrapped_key, container)
        receiver = to_checksum_address(receiver)
        with self._wallet.transaction():
            row = self._spendable(now)
            fee = check_fee(container.policy.price)
            if row.spent + fee > row.cap:
                raise AllowanceExceeded(f"fee {fee} exceeds the remaining {row.cap - row.spent} of the issue log",
                                        serial=row.serial, cap=row.cap, spent=row.spent, fee=fee)
            log = UsageLog(serial=row.serial, seq=row.next_seq, policy_id=container.policy.policy_id, fee=fee,
                           receiver=receiver, used_at=now)
            signature = sign(log, domain, self._keys.eth_private_key)
            self._wallet.charge(row.serial, row.spent + fee, row.next_seq + 1)
            self._wallet.append_usage_log(log, signature)
        return container.decrypt(content_key), SignedLog(log, signature)

    def _spendable(self, now: int) -> LogRow:
        row = self._current()
        if row.attested is not None:
            raise RenewalPending("a balance statement was attested: install the renewed issue log first",
                                 serial=row.serial, attested_at=row.attested.attested_at)
        if now > row.expires_at:
            raise IssueLogExpired(f"issue log expired at {row.expires_at}, now is {now}: renew it",
                                  serial=row.serial, expires_at=row.expires_at, now=now)
        return row

    def _unwrap(self, wrapped: WrappedKey, container: Container) -> bytes:
        if wrapped.device_member_id != self.member_id or wrapped.device_key_fingerprint != self.agreement_fingerprint:
            raise WrongDevice(f"content key is wrapped for {wrapped.device_member_id}, this is {self.member_id}",
                              wrapped_for=wrapped.device_member_id, device=self.member_id, reason="device")
        if wrapped.content_id != container.content_id:
            raise WrongDevice("content key is wrapped for another content", reason="content",
                              wrapped_for=wrapped.device_member_id, device=self.member_id)
        try:
            epk = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), wrapped.ephemeral_public_key)
            shared = self._agreement_key.exchange(ec.ECDH(), epk)
            kek = derive_kek(shared, wrapped.ephemeral_public_key, wrapped.info())
            content_key = AESGCM(kek).decrypt(wrapped.nonce, wrapped.ciphertext, wrapped.info())
        except (ValueError, InvalidTag):
            raise ContainerTampered("wrapped content key failed authentication", reason="wrapped key") from None
        container.check_key(content_key)
        return content_key

    # -- renewals, uploads, balance --------------------------------------------------------------------------------
    def balance_statement(self, domain: Domain, now: int) -> tuple[BalanceStatement, bytes]:
        """Sign the current log's (next_seq, spent) and freeze it until the renewed issue log is installed."""
        with self._wallet.transaction():
            row = self._current()
            statement = BalanceStatement(serial=row.serial, next_seq=row.next_seq, spent=row.spent, attested_at=now)
            signature = sign(statement, domain, self._keys.eth_private_key)
            self._wallet.attest(statement)
        return statement, signature

    def withdraw_statement(self, statement: BalanceStatement) -> bool:
        """Unfreeze the current log after the CC refused the renewal of `statement` for good (a named refusal:
        nothing was or will be applied). Only that exact statement is withdrawn; returns whether it was."""
        with self._wallet.transaction():
            row = self._wallet.current()
            if row is None or row.attested != statement:
                return False
            self._wallet.clear_attestation(row.serial)
            return True

    def pending_batch(self, domain: Domain, max_logs: int = MAX_BATCH_ENTRIES
                      ) -> tuple[UsageBatch, bytes, list[SignedLog]] | None:
        """The next signed batch to upload (oldest serial, contiguous seqs, one receiver), or None if all sent."""
        serial = self._wallet.oldest_unsent_serial()
        if serial is None:
            return None
        run = _batchable_run(self._wallet.unsent_logs(serial, min(max_logs, MAX_BATCH_ENTRIES)))
        batch = UsageBatch.from_logs([item.log for item in run])
        return batch, sign(batch, domain, self._keys.eth_private_key), run

    def mark_uploaded(self, serial: bytes, up_to_seq: int, ack: KeptAck | None = None) -> int:
        """Mark seqs <= up_to_seq of `serial` as acknowledged by the SP, and keep its signed `ack` in the same
        transaction (the proof a SkipRange needs later); returns how many rows changed."""
        return self.mark_uploaded_with_acks(serial, up_to_seq, () if ack is None else (ack,))

    def mark_uploaded_with_acks(self, serial: bytes, up_to_seq: int, acks: Sequence[KeptAck]) -> int:
        """`mark_uploaded` keeping several signed acks (the SP's receipts of earlier batches, fetched again after
        a lost answer) in the same transaction."""
        with self._wallet.transaction():
            for ack in acks:
                self._wallet.keep_ack(ack)
            return self._wallet.mark_uploaded(serial, up_to_seq)

    def own_batch(self, serial: bytes, first_seq: int, count: int) -> UsageBatch | None:
        """The batch this wallet's own signed usage logs form over seqs [first_seq, first_seq + count), or None
        when it does not hold every one of them: what an SP's receive log of that range must name."""
        if count < 1:
            return None
        logs = self._wallet.logs_between(serial, first_seq, count)
        return UsageBatch.from_logs([item.log for item in logs]) if len(logs) == count else None

    def kept_acks(self, state: str | None = "open") -> list[KeptAck]:
        """The SPs' signed acks this wallet keeps (oldest serial first, then by first seq); None: all states."""
        return self._wallet.acks(state)

    def resolve_ack(self, ack: KeptAck, state: str) -> bool:
        """Record that the chain is past `ack`'s batch: skipped (by this device's SkipRange), released or settled."""
        if state not in ACK_STATES[1:]:
            raise ValueError(f"an ack is resolved as skipped, released or settled, not {state!r}")
        with self._wallet.transaction():
            return self._wallet.set_ack_state(ack.serial, ack.first_seq, state) == 1

    def acked_batch(self, ack: KeptAck, domain: Domain) -> tuple[UsageBatch, bytes]:
        """The batch a kept ack names, rebuilt from this wallet's own usage logs and signed again: what the SP
        received (same struct hash), for the release of a skipped range."""
        _kept, batch = self._kept_batch(ack)
        return batch, sign(batch, domain, self._keys.eth_private_key)

    def _kept_batch(self, ack: KeptAck) -> tuple[KeptAck, UsageBatch]:
        kept = {(a.serial, a.first_seq): a for a in self._wallet.acks()}.get((ack.serial, ack.first_seq))
        if kept is None or kept.usage_batch != ack.usage_batch or kept.received_at != ack.received_at:
            raise IssueLogRejected("no SP ack of this batch is kept in the wallet", serial=ack.serial,
                                   reason="no kept ack")
        logs = self._wallet.logs_between(kept.serial, kept.first_seq, kept.count)
        own = UsageBatch.from_logs([item.log for item in logs]) if len(logs) == kept.count else None
        if own is None or own.struct_hash() != kept.usage_batch or own.total != kept.total:
            raise IssueLogRejected("the kept ack does not name a batch of this wallet's usage logs",
                                   serial=ack.serial, reason="ack mismatch")
        return kept, own

    def sign_skip(self, ack: KeptAck, domain: Domain) -> tuple[SkipRange, bytes]:
        """Sign a SkipRange for a batch an SP acknowledged (a kept ack, checked against this wallet's own usage
        logs: the range's count and total are what this device signed, never a caller's numbers)."""
        kept, _batch = self._kept_batch(ack)
        skip = SkipRange(serial=kept.serial, first_seq=kept.first_seq, count=kept.count, receiver=kept.receiver,
                         total=kept.total, usage_batch=kept.usage_batch, received_at=kept.received_at)
        return skip, sign(skip, domain, self._keys.eth_private_key)

    def balance(self) -> WalletBalance:
        row = self._current()
        return WalletBalance(serial=row.serial, cap=row.cap, spent=row.spent, remaining=row.cap - row.spent,
                             next_seq=row.next_seq, expires_at=row.expires_at,
                             pending_count=self._wallet.pending_count(), renewal_pending=row.attested is not None)

    def usage_logs(self, serial: bytes) -> list[SignedLog]:
        """Every usage log signed under `serial`, uploaded or not (for audits and tests)."""
        return self._wallet.all_logs(serial)


def _batchable_run(logs: list[SignedLog], gas_budget: int = DEFAULT_GAS_BUDGET) -> list[SignedLog]:
    """The longest prefix with contiguous seqs, one receiver, at most 255 distinct policies, and no more logs
    than one settle transaction carries at `gas_budget` (offchain.core.gas: the SP and CC refuse bigger)."""
    run = logs[:1]
    policies = {logs[0].log.policy_id}
    for item in logs[1:]:
        previous = run[-1].log
        if item.log.seq != previous.seq + 1 or item.log.receiver != previous.receiver:
            break
        if item.log.policy_id not in policies and len(policies) == MAX_BATCH_POLICIES:
            break
        with_item = len(policies) + (item.log.policy_id not in policies)
        if len(run) + 1 > max_batch_logs(with_item, gas_budget):
            break
        policies.add(item.log.policy_id)
        run.append(item)
    return run
