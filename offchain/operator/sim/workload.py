"""The simulator's workload: devices using content, uploading, renewing both ways, deposits and payouts.

It drives the real processes through their public surfaces only (the bank's deposit route, the device client,
which talks mTLS to the SP and the CC through the fault proxy). A failed step is recorded, never retried on the
spot: the drain after the heal retries what a real operator or device would (the same deposit id, the device's
own pending request), then the runner waits for quiescence. No wall-clock decisions: steps run in plan order.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from offchain.operator.sim.plan import DEVICES, USERS, Plan, Step

if TYPE_CHECKING:
    from offchain.device.client import DeviceClient
    from offchain.transport.client import JsonTransport

DEVICE_TIMEOUT_S = 4.0
CONTENT_PRICES = {"song": 30, "article": 45}


@dataclass
class Timeline:
    """What happened, in order: steps with their outcome, faults opened and closed, heal and drain events."""

    entries: list[dict[str, Any]] = field(default_factory=list)
    started_at: float = field(default_factory=time.monotonic)

    def add(self, kind: str, what: str, outcome: str = "ok", **detail: Any) -> None:
        self.entries.append({"t_s": round(time.monotonic() - self.started_at, 3), "kind": kind, "what": what,
                             "outcome": outcome, **detail})


def open_device(settings_path: Path, passphrase: str, user_id: str) -> Any:
    """A DeviceClient like `from_settings`, with short client timeouts (a black-holed link fails fast)."""
    from offchain.core.settings import DeviceSettings, load_settings
    from offchain.device.client import DeviceClient, chain_policy_reader
    from offchain.device.secure_module import SecureModule
    from offchain.operator.sim.compat import SyncJsonClient, deployment_domain, file_reader
    from offchain.trust.certs import CertificateVerifier

    settings = load_settings(DeviceSettings, settings_path)
    cert, key, ca = str(settings.cert_path), str(settings.key_path), str(settings.ca_path)
    module = SecureModule.open(settings.keystore_path, settings.wallet_path, passphrase)
    return DeviceClient(module, sp=SyncJsonClient(settings.sp_url, cert, key, ca, timeout_s=DEVICE_TIMEOUT_S),
                        cc=SyncJsonClient(settings.cc_url, cert, key, ca, timeout_s=DEVICE_TIMEOUT_S),
                        verifier=CertificateVerifier(Path(ca).read_bytes(), file_reader(settings.crl_path)),
                        domain=deployment_domain(settings.deployment_path), cert_pem=Path(cert).read_bytes(),
                        user_id=user_id, content_dir=settings.wallet_path.parent / "content",
                        registered_policy_of=chain_policy_reader(settings.chain_urls(), settings.deployment_path,
                                                                 confirmations=settings.confirmations,
                                                                 wait_s=settings.finality_wait_s))


class Workload:
    """Runs one plan's steps against a started consortium; `drain` finishes what faults left half done."""

    def __init__(self, plan: Plan, *, bank: JsonTransport, devices: dict[str, DeviceClient],
                 contents: dict[str, tuple[bytes, int]],
                 timeline: Timeline) -> None:
        self.plan = plan
        self.bank = bank  # the bank operator's connection to the bank
        self.devices = devices
        self.contents = contents  # name -> (content id, version)
        self.timeline = timeline
        self.deposits: dict[str, tuple[str, int]] = {}  # deposit id -> (user, amount): the checker's oracle
        self.failed_deposits: list[str] = []
        self._deposit_count = 0

    def run_step(self, step: Step) -> None:
        action: Callable[[Step], str] = getattr(self, f"_{step.action}")
        try:
            outcome = action(step)
        except Exception as exc:  # noqa: BLE001 - a step may fail under faults; the drain repairs what it must
            outcome = f"failed {type(exc).__name__}: {getattr(exc, 'code', '')} {str(exc)[:160]}"
        self.timeline.add("step", str(step), outcome)

    # steps ----------------------------------------------------------------------------------------------------
    def _deposit(self, step: Step) -> str:
        self._deposit_count += 1
        deposit_id = f"sim-{self.plan.seed}-{self._deposit_count}"
        self.deposits[deposit_id] = (step.actor, step.amount)
        try:
            self._post_deposit(deposit_id)
        except Exception:
            self.failed_deposits.append(deposit_id)
            raise
        return "ok"

    def _post_deposit(self, deposit_id: str) -> None:
        user, amount = self.deposits[deposit_id]
        self.bank.post("/v1/deposits", {"deposit_id": deposit_id, "user_id": user, "amount": amount})

    def _issue(self, step: Step) -> str:
        device = self.devices[step.actor]
        if _has_log(device):
            return "skipped (has an issue log)"
        device.request_issue_log(step.amount)
        return "ok"

    def _use(self, step: Step) -> str:
        device = self.devices[step.actor]
        if not _has_log(device):
            return "skipped (no issue log)"
        content_id, version = self.contents[step.content]
        balance = device.balance()
        if balance.renewal_pending or balance.remaining < CONTENT_PRICES[step.content]:
            return "skipped (no allowance)"
        device.use(content_id, version)
        return "ok"

    def _upload(self, step: Step) -> str:
        result = self.devices[step.actor].upload()
        return f"ok ({result.logs} logs)"

    def _renew(self, step: Step) -> str:
        device = self.devices[step.actor]
        if not _has_log(device):
            return "skipped (no issue log)"
        before = device.balance()
        after = device.renew(step.amount)
        mode = "top-up" if after.serial == before.serial else "new serial"
        return f"ok ({mode})"

    # drain ----------------------------------------------------------------------------------------------------
    def drain_round(self) -> list[str]:
        """One pass of what an operator and each device would retry; returns what still failed."""
        failures: list[str] = []
        for deposit_id in list(self.failed_deposits):
            try:
                self._post_deposit(deposit_id)
                self.failed_deposits.remove(deposit_id)
                self.timeline.add("drain", f"deposit {deposit_id} retried")
            except Exception as exc:  # noqa: BLE001 - retried next round
                failures.append(f"deposit {deposit_id}: {type(exc).__name__}")
        for name in DEVICES:
            device = self.devices[name]
            try:
                finished = _finish_pending(device)
                if finished:
                    self.timeline.add("drain", f"{name}: {finished}")
                if _has_log(device) and device.balance().renewal_pending:
                    # attested, then refused for good (e.g. more new money than unallocated): the user renews
                    # again with what is available, which is what unfreezes a wallet
                    renewed = device.renew(None)
                    self.timeline.add("drain", f"{name}: renewed a frozen wallet (cap {renewed.cap})")
                if device.module.balance().pending_count if _has_log(device) else 0:
                    result = device.upload()
                    self.timeline.add("drain", f"{name}: uploaded {result.logs} logs")
            except Exception as exc:  # noqa: BLE001 - retried next round
                failures.append(f"{name}: {type(exc).__name__} {getattr(exc, 'code', '')}")
        return failures


def _has_log(device: Any) -> bool:
    try:
        device.balance()
    except Exception:  # noqa: BLE001 - NotFound: the wallet holds no issue log yet
        return False
    return True


def _finish_pending(device: Any) -> str:
    """The device's own unfinished request (issue or renewal whose answer was lost), if the client keeps one."""
    resume = getattr(device, "resume_pending", None)
    if resume is None:
        return ""
    result = resume()
    return "resumed its pending request" if result is not None else ""


# --- quiescence: read the databases and wallets with plain SQL ------------------------------------------------------
def _count(source: Any, sql: str) -> int:
    """A count on a SQLite file or a PostgreSQL URL (the checker's reader); a missing database or table counts 0,
    an unreadable one (locked, unreachable) counts 1: not known to be quiescent yet."""
    from offchain.operator.sim.checker import count

    try:
        return count(source, sql)
    except Exception:  # noqa: BLE001 - e.g. "database is locked": ask again at the next poll
        return 1


def open_work(cc_db: Any, sp_db: Any, wallets: list[Path]) -> dict[str, int]:
    """Rows still in flight; the system is quiescent when all are zero (and the chain has nothing accrued)."""
    work = {
        "cc planned requests": _count(cc_db, "SELECT COUNT(*) FROM cc_issue_requests WHERE status = 'planned'"),
        "cc receive logs in flight": _count(cc_db, "SELECT COUNT(*) FROM receive_logs "
                                                   "WHERE status IN ('accepted', 'submitted')"),
        "cc outbox open": _count(cc_db, "SELECT COUNT(*) FROM settlement_outbox WHERE status IN ('pending', 'sent')"),
        "cc transfers open": _count(cc_db, "SELECT COUNT(*) FROM transfer_requests"
                                           " WHERE status IN ('requested', 'sent_to_bank')"),
        "sp batches open": _count(sp_db, "SELECT COUNT(*) FROM sp_batches WHERE status IN ('pending', 'forwarded')"),
    }
    work["wallet logs not uploaded"] = sum(_count(w, "SELECT COUNT(*) FROM usage_logs WHERE uploaded = 0")
                                           for w in wallets)
    return work


__all__ = ["Workload", "Timeline", "open_device", "open_work", "CONTENT_PRICES", "USERS"]
