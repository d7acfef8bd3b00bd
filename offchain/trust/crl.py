"""CRL freshness: re-signing the CRL before it expires, warning while it is about to, refusing once it has.

The CA's CRL is valid for `CRL_VALID_S` (7 days); `refresh_crl` (the `clearhouse ca refresh-crl` command, and a
timer in the demo) re-signs it with the same revoked entries. Verifiers warn when less than `CRL_WARN_S` remains
and fail closed with `CrlExpired` after `next_update`: a stale CRL could hide a revocation, so nobody is served.
It does not distribute the CRL: services read the file the CA writes (copy it to remote hosts yourself).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from offchain.core.errors import CrlExpired

__all__ = ["CrlStatus", "CrlFreshness", "RefreshTimer", "crl_status", "refresh_crl", "CRL_WARN_S",
           "CRL_REFRESH_INTERVAL_S", "REFRESH_HINT"]

CRL_WARN_S = 24 * 3600  # warn when less than a day of validity remains
CRL_WARN_EVERY_S = 3600  # at most one warning per hour (of the verifier's clock) for the same CRL
CRL_REFRESH_INTERVAL_S = 24 * 3600  # re-sign daily: six days of slack before a 7-day CRL expires
REFRESH_HINT = "run `clearhouse ca refresh-crl --ca-dir <CA dir>` (the CA re-signs it) and copy crl.pem to the services"
log = logging.getLogger("clearhouse.crl")


@dataclass(frozen=True)
class CrlStatus:
    crl_number: int
    last_update: int
    next_update: int
    revoked: int

    def remaining_s(self, now: float) -> int:
        return self.next_update - int(now)

    def to_json(self) -> dict[str, int]:
        return {"crl_number": self.crl_number, "last_update": self.last_update, "next_update": self.next_update,
                "revoked": self.revoked}


def crl_status(crl: x509.CertificateRevocationList) -> CrlStatus:
    try:
        number = int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)
    except x509.ExtensionNotFound:
        number = 0
    next_update = crl.next_update_utc
    return CrlStatus(number, int(crl.last_update_utc.timestamp()),
                     0 if next_update is None else int(next_update.timestamp()), len(list(crl)))


def refresh_crl(ca_dir: Path, *, clock: Callable[[], float] = time.time, pin: str | None = None) -> CrlStatus:
    """Re-sign the CRL in `ca_dir` now (root key from a file or a PKCS#11 token): same revoked serials, the next
    CRL number, a fresh next_update. Safe to run at any time and as often as wanted."""
    from offchain.trust.keys import load_ca

    return crl_status(load_ca(Path(ca_dir), clock=clock, pin=pin).refresh_crl())


class CrlFreshness:
    """The verifier's check of a parsed CRL against its clock: CrlExpired past next_update, a rate-limited
    warning (logger `clearhouse.crl`) inside the last `warn_s`."""

    def __init__(self, warn_s: int = CRL_WARN_S, warn_every_s: int = CRL_WARN_EVERY_S) -> None:
        self.warn_s = warn_s
        self.warn_every_s = warn_every_s
        self._warned: tuple[int, float] | None = None  # (crl number, when) of the last warning
        self._lock = threading.Lock()

    def check(self, crl: x509.CertificateRevocationList, now: float) -> None:
        status = crl_status(crl)
        remaining = status.remaining_s(now)
        if crl.next_update_utc is None or remaining < 0:
            raise CrlExpired(f"the CRL (number {status.crl_number}) expired at {status.next_update}: every caller is "
                             f"refused until it is re-signed; {REFRESH_HINT}", next_update=status.next_update,
                             now=int(now), crl_number=status.crl_number, hint=REFRESH_HINT)
        if remaining < self.warn_s and self._should_warn(status.crl_number, now):
            log.warning("the CRL (number %d) expires in %d s at %d; services refuse everyone after that: %s",
                        status.crl_number, remaining, status.next_update, REFRESH_HINT)

    def _should_warn(self, crl_number: int, now: float) -> bool:
        with self._lock:
            if self._warned is not None and self._warned[0] == crl_number \
                    and now - self._warned[1] < self.warn_every_s:
                return False
            self._warned = (crl_number, now)
            return True


class RefreshTimer:
    """Calls `refresh()` every `interval_s` on a daemon thread until `stop()` (the demo's --keep mode; in
    production use cron or a systemd timer running `clearhouse ca refresh-crl`)."""

    def __init__(self, refresh: Callable[[], object], interval_s: float = CRL_REFRESH_INTERVAL_S) -> None:
        self._refresh = refresh
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="crl-refresh", daemon=True)
        self.failures = 0

    def start(self) -> RefreshTimer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self._refresh()
            except Exception:  # a timer thread must survive a failed round; say so and try again next time
                self.failures += 1
                log.exception("CRL refresh failed; retrying in %.0f s", self._interval_s)
