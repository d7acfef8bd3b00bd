"""The device client: the user's side around the SecureModule (issue logs from the CC, content from the SP).

`use` is fully offline: it reads the downloaded container and wrapped key from local files and charges the
wallet; only `request_issue_log`, `renew`, `catalog`, `download`, `upload` (which keeps each SP's signed ack,
fetched again from the SP when the answer was lost) and `skip_withheld` (a SkipRange with that ack, for a batch
the SP never forwarded) talk to the network (mTLS). The server certificate must be a CC's (issue logs) or an
SP's (content, uploads; the receiver is its address), and every issue log is checked (CC certificate = TLS
server, signature, role) before the secure module installs it.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from offchain.trust.certs import CertificateVerifier, Envelope, MemberIdentity
from offchain.trust.container import WrappedKey, verify_container
from offchain.core.errors import (ClearhouseError, ContractReverted, DuplicateMessage, IdentityMismatch, MalformedMessage,
                                  NoIssueLog, NotFound, ServiceUnavailable,
                             PolicyMismatch, SequenceError)
from offchain.transport.client import JsonTransport, SyncJsonClient
from offchain.transport.wiring import deployment_domain, file_reader, require_path
from offchain.core import messages
from offchain.clearing_center.skips import RELEASE_PATH, SKIP_PATH, WITHHOLD_WINDOW_S
from offchain.core.messages import BalanceStatement, Domain, IssueLog, ReceiveLog, Role, UsageBatch
from offchain.device.secure_module import KeptAck, SecureModule, WalletBalance, cc_verify_fn
from offchain.core.files import write_atomically
from offchain.core.settings import DeviceSettings
from offchain.core.types import Clock, to_hex

PENDING_REQUEST_FILE = "pending-request.json"  # in the device's folder: the issue or renewal request not answered
STILL_OPEN_CODES = ("transaction_pending", "rebroadcast_refused", "chain_unreachable", "service_unavailable")
RENEW_PATH = "/v1/issue-logs/renew"

@dataclass(frozen=True)
class RegisteredPolicy:
    """What the chain says about a policy id: its policy hash and the content id's owner (the provider)."""

    policy_hash: bytes
    owner: str


RegisteredPolicyOf = Callable[[bytes], "RegisteredPolicy | None"]  # policy id -> on-chain policy (None: unknown)


@dataclass(frozen=True)
class UploadResult:
    batches: int
    logs: int
    receive_log_ids: tuple[str, ...]


@dataclass(frozen=True)
class SkipResult:
    """What `skip_withheld` did with the kept acks: ranges skipped on chain, ranges found settled (the SP
    forwarded them after all), acks still waiting (window open, or behind an earlier range), and skipped
    ranges whose batch the device then settled itself (released)."""

    skipped: tuple[KeptAck, ...]
    settled: tuple[KeptAck, ...]
    waiting: tuple[KeptAck, ...]
    released: tuple[KeptAck, ...] = ()  # skipped batches then settled from the device's copy: nothing held


class DeviceClient:
    """One device: its secure module, its mTLS clients to the SP and CC, and a local content directory."""

    def __init__(self, module: SecureModule, *, sp: JsonTransport, cc: JsonTransport, verifier: CertificateVerifier,
                 domain: Domain, cert_pem: bytes, user_id: str, content_dir: Path,
                 registered_policy_of: RegisteredPolicyOf,
                 clock: Clock = time.time) -> None:
        self.module = module
        self._registered_policy_of = registered_policy_of
        self._sp = sp
        self._cc = cc
        self._verifier = verifier
        self.domain = domain
        self._cert_pem = cert_pem
        self.user_id = user_id
        self.content_dir = Path(content_dir)
        self._clock = clock

    @classmethod
    def from_settings(cls, settings: DeviceSettings, passphrase: str, user_id: str, clock: Clock = time.time, *,
                      sp: JsonTransport | None = None, cc: JsonTransport | None = None) -> DeviceClient:
        """A device from its settings file; `sp` and `cc` default to mTLS clients of the settings' URLs."""
        cert, key = require_path(settings.cert_path, "cert_path"), require_path(settings.key_path, "key_path")
        ca = require_path(settings.ca_path, "ca_path")
        domain = deployment_domain(settings.deployment_path)
        module = SecureModule.open(settings.keystore_path, settings.wallet_path, passphrase)
        try:
            module.bind_deployment(domain)  # WalletDeploymentMismatch: the wallet is another deployment's
        except BaseException:
            module.close()
            raise
        return cls(module, sp=sp or SyncJsonClient(settings.sp_url, str(cert), str(key), str(ca)),
                   cc=cc or SyncJsonClient(settings.cc_url, str(cert), str(key), str(ca)),
                   verifier=CertificateVerifier(ca.read_bytes(), file_reader(settings.crl_path), clock=clock),
                   domain=domain, cert_pem=cert.read_bytes(), user_id=user_id,
                   content_dir=settings.wallet_path.parent / "content",
                   registered_policy_of=chain_policy_reader(
                       settings.chain_urls(), settings.deployment_path, confirmations=settings.confirmations,
                       wait_s=settings.finality_wait_s), clock=clock)

    def close(self) -> None:
        self._sp.close()
        self._cc.close()
        self.module.close()

    # --- issue logs ---------------------------------------------------------------------------------------------
    def request_issue_log(self, amount: int | None = None) -> WalletBalance:
        """Ask the CC for a first issue log (cap = `amount` or all available deposits) and install it.

        The request (id and body) is kept beside the wallet before it is sent and resent as it was until it is
        answered: after a lost answer this call finishes that request (`resume_pending`) instead of making a
        second one, whose fresh id would allocate the user's money a second time."""
        kept = self.pending_request()
        if kept is not None:
            return self._send_kept(self._clearing_center(), kept["path"], kept["body"], keep=False)
        cc = self._clearing_center()
        body: dict[str, Any] = {"request_id": to_hex(os.urandom(32)), "user_id": self.user_id}
        if amount is not None:
            body["amount"] = amount
        return self._send_kept(cc, "/v1/issue-logs", body)

    def renew(self, amount: int | None = None) -> WalletBalance:
        """Attest the balance (freezes the current log), ask the CC for the renewed log, install it.

        Like `request_issue_log`, the request is kept and resent identically after a lost answer; a renewal
        the CC applied whose request was not kept is fetched by the attested serial (`resume_pending`)."""
        resumed = self.resume_pending()
        if resumed is not None:
            return resumed
        cc = self._clearing_center()  # before attesting: a statement sent to an impostor would freeze the log
        statement, signature = self.module.balance_statement(self.domain, int(self._clock()))
        envelope = Envelope(kind=statement.PRIMARY_TYPE, message=statement.to_json(), signature=to_hex(signature),
                            certificate=self._cert_pem.decode())
        body: dict[str, Any] = {"request_id": to_hex(os.urandom(32)), "statement": envelope.to_json()}
        if amount is not None:
            body["amount"] = amount
        return self._send_kept(cc, RENEW_PATH, body)

    # --- requests kept across lost answers and restarts ---------------------------------------------------------
    @property
    def pending_request_path(self) -> Path:
        return self.content_dir / PENDING_REQUEST_FILE

    def pending_request(self) -> dict[str, Any] | None:
        """The issue or renewal request sent but not answered yet ({"path", "body"}), if any."""
        path = self.pending_request_path
        return json.loads(path.read_text()) if path.exists() else None

    def resume_pending(self) -> WalletBalance | None:
        """Finish a request whose answer was lost: resend it unchanged (same id, same body: the CC answers with
        the original result), or, for an attested renewal that was not kept, fetch the CC's result for the
        attested serial. None when nothing is pending (or the CC never saw the attested renewal)."""
        kept = self.pending_request()
        if kept is not None:
            return self._send_kept(self._clearing_center(), kept["path"], kept["body"], keep=False)
        if not self._renewal_pending():
            return None
        cc = self._clearing_center()
        try:
            answer = self._cc.get(f"/v1/issue-logs/renewals/{to_hex(self.module.balance().serial)}")
        except NotFound:
            return None
        return self._install(answer["issue_log"], cc)

    def _renewal_pending(self) -> bool:
        try:
            return self.module.balance().renewal_pending
        except NoIssueLog:
            return False

    def _send_kept(self, cc: MemberIdentity, path: str, body: dict[str, Any], *, keep: bool = True) -> WalletBalance:
        if keep:
            write_atomically(self.pending_request_path, json.dumps({"path": path, "body": body}))
        try:
            answer = self._cc.post(path, body)
        except ClearhouseError as exc:
            if not _may_still_apply(exc):  # refused for good: nothing was or will be applied, forget it
                self.pending_request_path.unlink(missing_ok=True)
                if path == RENEW_PATH:  # and unfreeze the log its statement attested: the wallet is as before
                    self.module.withdraw_statement(_attested(body))
            raise
        balance = self._install(answer["issue_log"], cc)
        self.pending_request_path.unlink(missing_ok=True)
        return balance

    def _clearing_center(self) -> MemberIdentity:
        """The verified certificate of the server at `cc_url`: it must be a clearing center's (WrongRole)."""
        return self._cc.server_identity(self._verifier, Role.CLEARING_CENTER)

    def _service_provider(self) -> MemberIdentity:
        """The verified certificate of the server at `sp_url`: a service provider's (WrongRole); its address is the
        receiver of this device's usage logs (never an unauthenticated status field)."""
        return self._sp.server_identity(self._verifier, Role.SERVICE_PROVIDER)

    def _install(self, envelope_json: dict[str, Any], server: MemberIdentity) -> WalletBalance:
        issue_log, cc = Envelope.from_json(envelope_json).open(self._verifier, self.domain, Role.CLEARING_CENTER,
                                                               peer=server)
        if not isinstance(issue_log, IssueLog):
            raise MalformedMessage("the clearing center answered with another log than an IssueLog",
                                   type=envelope_json.get("kind"), field="kind", value=envelope_json.get("kind"),
                                   reason="wrong message type")
        signature = Envelope.from_json(envelope_json).signature_bytes()
        return self.module.install_issue_log(issue_log, signature, cc_verify_fn(self.domain, cc.eth_address))

    # --- content ------------------------------------------------------------------------------------------------
    def catalog(self) -> list[dict[str, Any]]:
        return list(self._sp.get("/v1/catalog")["items"])

    def download(self, content_id: bytes, version: int) -> Path:
        """Fetch a container and its wrapped key, check the container against the policy hash and the content id's
        owner on chain, and store both (with the SP's address, the receiver, and the on-chain policy hash and owner
        for the offline checks before each use) locally."""
        receiver = self._service_provider().eth_address
        request = {"content_id": to_hex(content_id), "version": version,
                   "agreement": self.module.agreement_attestation}
        self.content_dir.mkdir(parents=True, exist_ok=True)
        incoming = self._content_path(content_id, version).with_suffix(".incoming")
        if hasattr(self._sp, "post_to_file"):  # streamed: any size, never one JSON body
            headers = self._sp.post_to_file("/v1/downloads/container", request, incoming)
            wrapped_key = json.loads(base64.b64decode(_header(headers, "X-Clearhouse-Wrapped-Key")))
            blob = incoming.read_bytes()
            incoming.unlink()
        else:  # a transport without streaming (test doubles): the JSON route
            answer = self._sp.post("/v1/downloads", request)
            blob, wrapped_key = base64.b64decode(answer["container_b64"]), answer["wrapped_key"]
        policy_id = messages.policy_id(content_id, version)
        registered = self._registered_policy_of(policy_id)
        if registered is None:
            raise PolicyMismatch("no policy is registered on chain for this content version", policy_id=policy_id)
        # tampered, uncertified, off-policy or signed by another provider than the content id's owner: refused here
        verify_container(blob, self._verifier, registered.policy_hash, expected_owner=registered.owner)
        self.content_dir.mkdir(parents=True, exist_ok=True)
        path = self._content_path(content_id, version)
        path.write_bytes(blob)
        self._key_path(content_id, version).write_text(json.dumps(
            {"wrapped_key": wrapped_key, "receiver": receiver,
             "policy_hash": to_hex(registered.policy_hash), "owner": registered.owner}))
        return path

    def use(self, content_id: bytes, version: int) -> bytes:
        """Offline: pay for one use from the wallet and return the plaintext (no network call)."""
        path, key_path = self._content_path(content_id, version), self._key_path(content_id, version)
        if not path.exists() or not key_path.exists():
            raise NotFound("content not downloaded on this device", content_id=content_id, version=version)
        meta = json.loads(key_path.read_text())
        plaintext, _signed = self.module.use(path.read_bytes(), WrappedKey.from_json(meta["wrapped_key"]),
                                             self._verifier, self.domain, meta["receiver"], int(self._clock()),
                                             expected_policy_hash=bytes.fromhex(meta["policy_hash"][2:]),
                                             expected_owner=meta["owner"])
        return plaintext

    def _content_path(self, content_id: bytes, version: int) -> Path:
        return self.content_dir / f"{content_id.hex()}-{version}.chsc"

    def _key_path(self, content_id: bytes, version: int) -> Path:
        return self.content_dir / f"{content_id.hex()}-{version}.key.json"

    # --- upload -------------------------------------------------------------------------------------------------
    def upload(self, max_logs: int = 1024) -> UploadResult:
        """Upload every pending usage log, batch by batch; each batch is marked only after the SP's ack."""
        sp = self._service_provider()
        batches, logs, ids = 0, 0, []
        while (pending := self.module.pending_batch(self.domain, max_logs)) is not None:
            batch, signature, run = pending
            if batch.receiver != sp.eth_address:  # logs for another SP: that SP's countersignature, not this one's
                raise IdentityMismatch("pending usage logs name another service provider as their receiver",
                                       serial=batch.serial, expected=batch.receiver, got=sp.eth_address,
                                       member_id=sp.member_id)
            last_seq = batch.first_seq + batch.count - 1
            try:
                ack = self._sp.post("/v1/usage", {
                    "batch": batch.to_json(), "batch_signature": to_hex(signature),
                    "logs": [{"log": item.log.to_json(), "signature": to_hex(item.signature)} for item in run],
                    "certificate": self._cert_pem.decode()})
            except DuplicateMessage as exc:  # an earlier batch from these seqs reached the SP, its ack was lost
                held = exc.fields.get("highest_received")
                if not isinstance(held, int) or held < batch.first_seq:
                    raise  # no highest_received: another signer's copy of this batch, never this device's receipt
                through, acks = self._recovered_acks(batch, sp)  # the SP's signed receipts of those seqs, again
                self.module.mark_uploaded_with_acks(batch.serial, through, acks)
                continue
            acked = int(ack["acked_through_seq"])
            if not batch.first_seq <= acked <= last_seq:  # marking more would drop logs the SP never received
                raise SequenceError("the service provider acknowledged seqs outside the batch it was sent",
                                    serial=batch.serial, expected=last_seq, got=acked, first_seq=batch.first_seq)
            self.module.mark_uploaded(batch.serial, acked, self._verified_ack(ack.get("receive_log"), batch, sp))
            batches, logs = batches + 1, logs + batch.count
            ids.append(ack["receive_log_id"])
        return UploadResult(batches, logs, tuple(ids))

    def _recovered_acks(self, batch: UsageBatch, sp: MemberIdentity) -> tuple[int, list[KeptAck]]:
        """The SP's signed receive logs of the batches this device uploaded earlier from `batch.first_seq` (GET
        /v1/usage/acks, the TLS server's own answer for this device's own serial), each verified against the batch
        this wallet's own logs form over the range the SP names (`_verified_ack`). Returns the last seq they cover
        contiguously from `batch.first_seq` and the acks that cover it. Nothing is marked uploaded without a kept
        ack: a range the SP names that this wallet did not sign, or no receipt of `batch.first_seq`, is
        MalformedMessage; an SP that keeps nothing of this device's is NotFound."""
        answer = self._sp.get(f"/v1/usage/acks?serial={to_hex(batch.serial)}&from_seq={batch.first_seq}")
        items = answer.get("acks") if isinstance(answer, dict) else None
        if not isinstance(items, list):
            raise MalformedMessage("the service provider's receive logs answer carries no list", type="UsageAcks",
                                   field="acks", reason="missing")
        through, acks = batch.first_seq - 1, []
        for item in sorted((i for i in items if isinstance(i, dict)), key=lambda i: _int_field(i, "first_seq")):
            first_seq, count = _int_field(item, "first_seq"), _int_field(item, "count")
            if first_seq + count - 1 <= through or first_seq > through + 1:
                continue  # before what is covered already, or past a gap: proves nothing about these seqs
            own = self.module.own_batch(batch.serial, first_seq, count)
            if own is None or own.receiver != sp.eth_address:
                raise MalformedMessage("the service provider names a range of seqs this device did not sign for it",
                                       type="UsageAcks", field="count", value=count, reason="not this device's batch")
            acks.append(self._verified_ack(item.get("receive_log"), own, sp))
            through = first_seq + count - 1
        if not acks:
            raise MalformedMessage("the service provider says these seqs were received but returns no signed "
                                   "receive log of them", type="UsageAcks", field="acks", value=batch.first_seq,
                                   reason="missing")
        return through, acks

    def _verified_ack(self, envelope_json: Any, batch: UsageBatch, sp: MemberIdentity) -> KeptAck:
        """The SP's signed ReceiveLog of `batch`: sealed by the TLS server's own certificate, about this very batch
        and this device. Without it the device has no proof of the upload, so nothing is marked uploaded."""
        if not isinstance(envelope_json, dict):
            raise MalformedMessage("the service provider's ack carries no signed receive log", type="UsageAck",
                                   field="receive_log", reason="missing")
        envelope = Envelope.from_json(envelope_json)
        receive_log, _sp = envelope.open(self._verifier, self.domain, Role.SERVICE_PROVIDER, peer=sp)
        if not isinstance(receive_log, ReceiveLog):
            raise MalformedMessage("the service provider acked with another log than a ReceiveLog", type="UsageAck",
                                   field="receive_log", value=envelope.kind, reason="wrong message type")
        if receive_log.usage_batch != batch.struct_hash() or receive_log.payer != self.module.eth_address:
            raise MalformedMessage("the service provider's receive log is about another batch or device",
                                   type="ReceiveLog", field="usageBatch", reason="ack mismatch",
                                   value=to_hex(receive_log.usage_batch))
        return KeptAck(serial=batch.serial, first_seq=batch.first_seq, count=batch.count, receiver=batch.receiver,
                       total=batch.total, usage_batch=receive_log.usage_batch, received_at=receive_log.received_at,
                       receive_log=envelope.to_json())

    # --- withheld batches ---------------------------------------------------------------------------------------
    def skip_withheld(self, now: int | None = None, *, release: bool = True) -> SkipResult:
        """Send a SkipRange, with the SP's signed ack, for every kept ack whose withhold window has passed at
        `now` (default: the device clock) and whose batch the chain has not settled, oldest first per serial;
        with `release`, then send each skipped batch itself (`release_skipped`), so its fees are not held.

        The CC answers `skipped` (the chain moved past the range), or refuses with a named error: a range the
        chain settled already (SequenceError, expected > first seq: the SP forwarded it after all; the ack is
        resolved), a range behind an earlier unsettled one (SequenceError, expected < first seq: this serial waits
        until that one is due), a window still open by the chain's clock (ContractReverted WithholdWindowOpen).
        Any other refusal propagates."""
        now = int(self._clock()) if now is None else now
        released = list(self.release_skipped()) if release else []  # skipped earlier, release not done then
        skipped, settled, waiting = [], [], []
        blocked: set[bytes] = set()
        for ack in self.module.kept_acks("open"):
            if ack.serial in blocked or ack.received_at + WITHHOLD_WINDOW_S > now:
                blocked.add(ack.serial)  # later ranges of this serial wait behind this one
                waiting.append(ack)
                continue
            outcome = self._send_skip(ack)
            if outcome == "waiting":
                blocked.add(ack.serial)
                waiting.append(ack)
                continue
            self.module.resolve_ack(ack, outcome)
            (skipped if outcome == "skipped" else settled).append(ack)
        if release and skipped:
            released += self.release_skipped()
        return SkipResult(tuple(skipped), tuple(settled), tuple(waiting), tuple(released))

    def release_skipped(self) -> tuple[KeptAck, ...]:
        """Send the device's own copy of each skipped batch (rebuilt from its usage logs, with the SP's signed
        ack): the CC settles it through the contract's release path, so its fees reach the policies' payees
        instead of staying held. Returns the acks released (now in state `released`)."""
        done = []
        for ack in self.module.kept_acks("skipped"):
            batch, signature = self.module.acked_batch(ack, self.domain)
            answer = self._cc.post(RELEASE_PATH, {"usage_batch": batch.to_json(), "device_signature": to_hex(signature),
                                                  "receive_log": ack.receive_log})
            if answer.get("status") != "released":
                raise MalformedMessage("the clearing center answered a release with an unknown status",
                                       type="ReleaseAnswer", field="status", value=str(answer.get("status")),
                                       reason="unknown status")
            self.module.resolve_ack(ack, "released")
            done.append(ack)
        return tuple(done)

    def _send_skip(self, ack: KeptAck) -> str:
        """skipped, settled (the chain is past the range already) or waiting (an earlier range, or the chain's
        clock, holds it back)."""
        skip, signature = self.module.sign_skip(ack, self.domain)
        envelope = Envelope(kind=skip.PRIMARY_TYPE, message=skip.to_json(), signature=to_hex(signature),
                            certificate=self._cert_pem.decode())
        try:
            answer = self._cc.post(SKIP_PATH, {"skip_range": envelope.to_json(), "receive_log": ack.receive_log})
        except SequenceError as exc:
            if exc.fields.get("held_receive_log_id"):  # the SP forwarded it after all: it settles without a skip
                return "waiting"
            expected = exc.fields.get("expected")
            if isinstance(expected, int) and expected > ack.first_seq:
                return "settled"
            if isinstance(expected, int) and expected < ack.first_seq:
                return "waiting"
            raise
        except ContractReverted as exc:
            if exc.fields.get("error_name") == "WithholdWindowOpen":
                return "waiting"
            raise
        if answer.get("status") != "skipped":
            raise MalformedMessage("the clearing center answered a skip with an unknown status", type="SkipAnswer",
                                   field="status", value=str(answer.get("status")), reason="unknown status")
        return "skipped"

    def balance(self) -> WalletBalance:
        return self.module.balance()


def _int_field(item: dict[str, Any], name: str) -> int:
    """A non-negative integer field of a peer's answer; MalformedMessage otherwise."""
    value = item.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise MalformedMessage(f"the service provider's receive logs answer has no valid {name}", type="UsageAcks",
                               field=name, reason="not an unsigned integer")
    return value


def _header(headers: dict[str, str], name: str) -> str:
    """A response header, case-insensitively; MalformedMessage when the SP did not send it."""
    for key, value in headers.items():
        if key.lower() == name.lower():
            return value
    raise MalformedMessage(f"the SP's streamed download has no {name} header", type="DownloadResponse",
                           field=name, reason="missing")


def _may_still_apply(error: ClearhouseError) -> bool:
    """True when the CC may have applied, or may still apply, the request (keep it and resend it as it was)."""
    return isinstance(error, ServiceUnavailable) or error.http_status >= 500 or error.code in STILL_OPEN_CODES


def _attested(renew_body: dict[str, Any]) -> BalanceStatement:
    """The balance statement a renewal request carries (the device signed it; it is read back, not trusted)."""
    return BalanceStatement.from_json(Envelope.from_json(renew_body["statement"]).message)


def chain_policy_reader(rpc_urls: str | Sequence[str], deployment_path: Path, *, confirmations: int | None = None,
                        wait_s: float = 20.0) -> RegisteredPolicyOf:
    """Read-only lookup of a policy's registered hash and owner, at the finality depth (`confirmations`, unset: the
    chain's policy, detected on the first lookup; a registration not yet final waits up to `wait_s`, then
    NotFinal), over `rpc_urls` in order with failover (one URL is a list of one). Building it needs no node: `use`
    stays offline. The device's own key never leaves its module."""
    from offchain.chain import ClearhouseChain, Deployment
    from offchain.chain.failover import connect
    from offchain.transport.wiring import final_views_for

    w3 = connect([rpc_urls] if isinstance(rpc_urls, str) else list(rpc_urls))
    chain = ClearhouseChain(w3, Deployment.load(deployment_path), os.urandom(32))  # eth_call only: never signs
    reader = final_views_for(chain, confirmations, wait_s=wait_s)

    def registered_policy_of(policy_id: bytes) -> RegisteredPolicy | None:
        try:
            view = reader.policy(policy_id)
        except ContractReverted as exc:
            if exc.fields.get("error_name") == "UnknownPolicy":
                return None
            raise
        return None if int(view.provider, 16) == 0 else RegisteredPolicy(view.policy_hash, view.provider)

    return registered_policy_of


__all__ = ["DeviceClient", "RegisteredPolicy", "SkipResult", "UploadResult", "chain_policy_reader"]
