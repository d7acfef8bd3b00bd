"""The CRL must not expire under a running consortium: with a shifted clock, a verifier accepts before expiry,
warns inside the last day, refuses everyone with CrlExpired after next_update, and accepts again once
`clearhouse ca refresh-crl` has re-signed the CRL (revoked entries kept)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import coincurve
import pytest
from click.testing import CliRunner

from offchain.core.errors import CertificateRevoked, CrlExpired, CrlUnavailable
from offchain.core.messages import Role, address_from_public_key
from offchain.trust import crl as crl_mod
from offchain.trust.ca import CRL_VALID_S, CertificateAuthority
from offchain.trust.certs import CertificateVerifier
from offchain.transport.wiring import file_reader

T0 = 1_900_000_000
DAY = 86_400


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _eth() -> str:
    return address_from_public_key(coincurve.PrivateKey().public_key.format(compressed=False))


@pytest.fixture()
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture()
def authority(tmp_path: Path, clock: FakeClock) -> CertificateAuthority:
    return CertificateAuthority.create(tmp_path / "ca", clock=clock)


def _warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "clearhouse.crl" and r.levelno == logging.WARNING]


def test_crl_expiry_warns_then_fails_closed_until_refreshed(authority, clock, tmp_path, caplog) -> None:
    member = authority.issue_member("sp-1", Role.SERVICE_PROVIDER, _eth(), valid_days=365)
    verifier = CertificateVerifier(authority.root_pem, file_reader(tmp_path / "ca" / "crl.pem"), clock=clock)
    caplog.set_level(logging.WARNING, logger="clearhouse.crl")

    assert verifier.verify(member.cert_pem).member_id == "sp-1"  # fresh CRL: accepted, no warning
    assert _warnings(caplog) == []

    clock.now = T0 + CRL_VALID_S - DAY // 2  # inside the last day: still accepted, with a warning
    assert verifier.verify(member.cert_pem).member_id == "sp-1"
    assert len(_warnings(caplog)) == 1 and "refresh-crl" in _warnings(caplog)[0].getMessage()
    verifier.verify(member.cert_pem)  # rate limited: no second warning within the hour
    assert len(_warnings(caplog)) == 1
    clock.now += crl_mod.CRL_WARN_EVERY_S + 1
    verifier.verify(member.cert_pem)
    assert len(_warnings(caplog)) == 2

    clock.now = T0 + CRL_VALID_S + 1  # past next_update: everyone refused, with the named error and the fix
    with pytest.raises(CrlExpired) as info:
        verifier.verify(member.cert_pem)
    assert isinstance(info.value, CrlUnavailable) and info.value.code == "crl_expired"
    assert info.value.next_update == T0 + CRL_VALID_S and info.value.now == T0 + CRL_VALID_S + 1
    assert "clearhouse ca refresh-crl" in info.value.message

    status = crl_mod.refresh_crl(tmp_path / "ca", clock=clock)
    assert status.next_update == int(clock.now) + CRL_VALID_S and status.crl_number == 2
    assert verifier.verify(member.cert_pem).member_id == "sp-1"


def test_refresh_keeps_revoked_entries(authority, clock, tmp_path) -> None:
    kept = authority.issue_member("sp-1", Role.SERVICE_PROVIDER, _eth())
    gone = authority.issue_member("sp-2", Role.SERVICE_PROVIDER, _eth())
    authority.revoke("sp-2")
    clock.now = T0 + CRL_VALID_S + 10
    status = crl_mod.refresh_crl(tmp_path / "ca", clock=clock)
    assert status.revoked == 1
    verifier = CertificateVerifier(authority.root_pem, file_reader(tmp_path / "ca" / "crl.pem"), clock=clock)
    assert verifier.verify(kept.cert_pem).member_id == "sp-1"  # positive control
    with pytest.raises(CertificateRevoked):
        verifier.verify(gone.cert_pem)


def test_cli_refresh_crl_resigns_with_a_new_next_update(tmp_path) -> None:
    from offchain.cli import main

    CertificateAuthority.create(tmp_path / "ca", clock=lambda: time.time() - 2 * DAY)  # the CLI uses the real clock
    before = crl_mod.crl_status(_load(tmp_path))
    result = CliRunner().invoke(main, ["ca", "refresh-crl", "--ca-dir", str(tmp_path / "ca")])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    after = crl_mod.crl_status(_load(tmp_path))
    assert shown == after.to_json()
    assert after.crl_number == before.crl_number + 1 and after.next_update > before.next_update


def test_refresh_timer_calls_refresh_until_stopped() -> None:
    import threading

    calls: list[int] = []
    done = threading.Event()

    def refresh() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise OSError("first round fails")  # the timer survives a failed round
        done.set()

    timer = crl_mod.RefreshTimer(refresh, interval_s=0.01).start()
    assert done.wait(10)
    timer.stop()
    assert timer.failures == 1 and len(calls) >= 2


def _load(tmp_path: Path):
    from cryptography import x509

    return x509.load_pem_x509_crl((tmp_path / "ca" / "crl.pem").read_bytes())
