"""Mutual TLS refusals against the real service processes, each with a positive control and the way it happened.

Every test first makes the same request with the same probe and a valid certificate and sees HTTP 200 (so a
service that is down, or a probe that cannot connect, fails the test), then makes it with the refused certificate
and asserts HOW it was refused:
- in the TLS layer (no certificate, another CA, expired): the TCP connection and the server's side of the
  handshake succeed (our probe verified the service's certificate), then the server aborts with a TLS alert or
  closes without a single byte of HTTP;
- in the application (revoked in the CRL or on chain, a role without the route): an HTTP answer with status
  401/403 and the named error code of `offchain.core.errors`.
The probe is a raw socket + `ssl` client (the same contexts as `offchain.trust.tls`), so nothing between the
test and the service can turn one kind of refusal into another.
"""

from __future__ import annotations

import json
import socket
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from offchain.core.messages import Role
from offchain.trust.ca import CertificateAuthority
from offchain.trust.tls import TLS12_CIPHERS

Services = Any  # tests/services/conftest.py Services
PROBE_TIMEOUT_S = 20.0
# OpenSSL reasons of the alerts a TLS 1.2/1.3 server sends when it refuses a client certificate
CERTIFICATE_ALERTS = ("CERTIFICATE_REQUIRED", "HANDSHAKE_FAILURE", "UNKNOWN_CA", "BAD_CERTIFICATE",
                      "CERTIFICATE_EXPIRED", "CERTIFICATE_UNKNOWN", "DECRYPT_ERROR")


@dataclass(frozen=True)
class Outcome:
    """What one request met: `how` is "http" (status, code), "tls_alert" (alert), "closed_after_handshake"
    (the server closed or reset without any HTTP byte), "handshake_failed" or "connect_failed"."""

    how: str
    server_verified: bool = False  # our side of the handshake completed: the service's certificate checked out
    status: int | None = None
    code: str | None = None
    alert: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)


def client_context(ca_path: Path, cert: tuple[Path, Path] | None, *, tls12: bool = False) -> ssl.SSLContext:
    """`offchain.trust.tls.client_ssl_context`, with the client certificate optional (and TLS 1.2 at most)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls12:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    if cert is not None:
        context.load_cert_chain(str(cert[0]), str(cert[1]))
    context.load_verify_locations(cafile=str(ca_path))
    context.verify_mode = ssl.CERT_REQUIRED
    context.check_hostname = True
    return context


def probe(url: str, path: str, ca_path: Path, cert: tuple[Path, Path] | None, method: str = "GET", *,
          tls12: bool = False) -> Outcome:
    """One HTTP/1.1 request over a fresh TLS connection; classifies where it ended."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 443
    context = client_context(ca_path, cert, tls12=tls12)
    body = b"{}" if method == "POST" else b""
    request = (f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    try:
        raw = socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S)
    except OSError:
        return Outcome("connect_failed")
    with raw:
        try:
            connection = context.wrap_socket(raw, server_hostname=host)
        except ssl.SSLError as exc:
            return Outcome("handshake_failed", alert=exc.reason)
        except OSError:
            return Outcome("handshake_failed")
        with connection:
            answer = b""
            try:
                connection.sendall(request)
                while chunk := connection.recv(65536):
                    answer += chunk
            except ssl.SSLError as exc:
                if not answer:
                    return Outcome("tls_alert", server_verified=True, alert=exc.reason)
            except (ConnectionResetError, BrokenPipeError):
                pass
    if not answer:
        return Outcome("closed_after_handshake", server_verified=True)
    return http_outcome(answer)


def http_outcome(answer: bytes) -> Outcome:
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    try:
        payload = json.loads(body) if body.strip() else None
    except ValueError:
        payload = None  # a chunked body or a non-JSON page: the status is what the tests assert then
    if isinstance(payload, dict) and isinstance(payload.get("error"), str):
        return Outcome("http", True, status, payload["error"], fields=dict(payload.get("fields") or {}))
    return Outcome("http", True, status)


def assert_refused_in_tls(running: Services, service: str, path: str, cert: tuple[Path, Path] | None,
                          control: tuple[Path, Path]) -> None:
    """Refused by the TLS layer, under TLS 1.3 and 1.2 alike, right after the same request with a valid
    certificate (`control`) was answered with HTTP 200 under both.

    TLS 1.3: the service answered the handshake (our probe verified its certificate), then, on receiving our
    certificate, sent a certificate alert or closed without a single byte of HTTP. TLS 1.2: the client certificate
    is part of the handshake, so the handshake itself ends in an alert or the server's close. A service that is
    down is `connect_failed` and fails this; a certificate passed on to the application gets an HTTP answer."""
    for tls12 in (False, True):
        accepted = call(running, service, path, control, tls12=tls12)
        assert (accepted.how, accepted.status) == ("http", 200), (tls12, accepted)
        refused = call(running, service, path, cert, tls12=tls12)
        if refused.alert is not None and "ALERT" in refused.alert:  # the server named its reason in an alert
            assert any(name in refused.alert for name in CERTIFICATE_ALERTS), refused
            assert refused.how == ("handshake_failed" if tls12 else "tls_alert"), refused
        elif tls12:  # closed (or reset) by the server in the middle of the handshake
            assert refused.how == "handshake_failed", refused
            assert refused.alert in ("UNEXPECTED_EOF_WHILE_READING", None), refused
        else:
            assert (refused.how, refused.server_verified) == ("closed_after_handshake", True), refused


def assert_refused_in_http(outcome: Outcome, status: int, code: str) -> None:
    assert (outcome.how, outcome.status, outcome.code) == ("http", status, code), outcome


@pytest.fixture(scope="module")
def running(services: Services) -> Services:
    for name in ("sp", "bank", "cc"):
        services.start(name)
    return services


def files_of(running: Services, member_id: str) -> tuple[Path, Path]:
    member = running.consortium.member(member_id)
    return Path(member.cert_path), Path(member.key_path)


def written(directory: Path, cert_pem: bytes, key_pem: bytes) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cert.pem").write_bytes(cert_pem)
    (directory / "key.pem").write_bytes(key_pem)
    return directory / "cert.pem", directory / "key.pem"


def call(running: Services, service: str, path: str, cert: tuple[Path, Path] | None,
         method: str = "GET", *, tls12: bool = False) -> Outcome:
    return probe(running.consortium.urls[service], path, running.consortium.root_path, cert, method, tls12=tls12)


def authority_chain(running: Services, actors: dict, w3: Any) -> Any:
    from offchain.chain import ClearhouseChain, Deployment

    return ClearhouseChain(w3, Deployment.load(running.consortium.deployment_path), actors["authority"].key)


def provisioned(running: Services, actors: dict, w3: Any, tmp_path: Path, member_id: str,
                role: Role = Role.DEVICE) -> Any:
    """A new member, certified by the consortium's CA and registered on chain (an active member)."""
    from offchain.operator.provision import MemberSpec, create_member

    spec = MemberSpec(member_id, role, user_id="alice" if role == Role.DEVICE else None)
    return create_member(running.consortium.ca(), authority_chain(running, actors, w3), w3, tmp_path, spec)


# --- refused in the TLS layer ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("service", ["sp", "bank", "cc"])
def test_request_without_client_certificate_refused_in_the_handshake(running: Services, service: str) -> None:
    assert_refused_in_tls(running, service, "/openapi.json", None, control=files_of(running, "bank"))


def test_certificate_from_another_ca_refused_in_the_handshake(running: Services, tmp_path: Path) -> None:
    alice = running.consortium.member("alice-phone")
    rogue = CertificateAuthority.create(tmp_path / "rogue-ca")  # same member id, role, address and user
    creds = rogue.issue_member("alice-phone", Role.DEVICE, alice.eth_address, user_id="alice")
    assert_refused_in_tls(running, "sp", "/v1/catalog", written(tmp_path / "rogue", creds.cert_pem, creds.key_pem),
                          control=files_of(running, "alice-phone"))


def test_expired_certificate_refused_in_the_handshake(running: Services, actors: dict, w3: Any,
                                                      tmp_path: Path) -> None:
    member = provisioned(running, actors, w3, tmp_path, "expiring-phone")
    expired = running.consortium.ca().issue_member(  # the same active member, its certificate out of date
        "expiring-phone", Role.DEVICE, member.eth_address, valid_days=1, user_id="alice",
        not_before=int(time.time()) - 3 * 86400)
    assert_refused_in_tls(running, "sp", "/v1/catalog", written(tmp_path / "expired", expired.cert_pem,
                                                                 expired.key_pem),
                          control=(member.cert_path, member.key_path))


# --- refused in the application, with a named error -------------------------------------------------------------
def test_certificate_revoked_in_the_crl_refused_with_401(running: Services, actors: dict, w3: Any,
                                                         tmp_path: Path) -> None:
    member = provisioned(running, actors, w3, tmp_path, "crl-phone")
    cert = (member.cert_path, member.key_path)
    control = call(running, "sp", "/v1/catalog", cert)
    assert (control.how, control.status) == ("http", 200), control
    running.consortium.ca().revoke("crl-phone")
    outcome = call(running, "sp", "/v1/catalog", cert)
    assert_refused_in_http(outcome, 401, "certificate_revoked")
    assert outcome.fields.get("member_id") == "crl-phone" and outcome.fields.get("source") == "crl"


@pytest.mark.parametrize(("service", "path", "control_status"), [
    ("sp", "/v1/catalog", 200),
    ("cc", "/v1/users/alice", 404),  # identified, then the CC holds nothing for alice yet: not_found
])
def test_member_revoked_on_chain_only_refused_with_401(running: Services, actors: dict, w3: Any, tmp_path: Path,
                                                       service: str, path: str, control_status: int) -> None:
    member = provisioned(running, actors, w3, tmp_path, f"chain-gone-{service}")
    cert = (member.cert_path, member.key_path)
    control = call(running, service, path, cert)
    assert (control.how, control.status) == ("http", control_status), control
    assert control.code in (None, "not_found")
    authority_chain(running, actors, w3).revoke_member(member.eth_address)
    assert not running.consortium.ca().is_revoked(member.member_id)  # the CRL does not list it
    outcome = call(running, service, path, cert)
    assert_refused_in_http(outcome, 401, "certificate_revoked")
    assert outcome.fields.get("source") == "chain"


def test_member_never_active_on_chain_refused_by_bank_with_401(running: Services, tmp_path: Path) -> None:
    control = call(running, "bank", "/v1/ledger", files_of(running, "bank"))
    assert (control.how, control.status) == ("http", 200), control
    ghost = running.consortium.ca().issue_member("ghost-bank", Role.BANK, "0x000000000000000000000000000000000000dEaD")
    outcome = call(running, "bank", "/v1/ledger", written(tmp_path / "ghost", ghost.cert_pem, ghost.key_pem))
    assert_refused_in_http(outcome, 401, "certificate_revoked")
    assert outcome.fields.get("source") == "chain"


@pytest.mark.parametrize(("member_id", "service", "allowed", "method", "path"), [
    ("alice-phone", "sp", ("GET", "/v1/catalog"), "POST", "/v1/catalog"),
    ("studio", "sp", ("GET", "/v1/catalog"), "POST", "/v1/usage"),
    ("sp", "bank", ("GET", "/openapi.json"), "GET", "/v1/ledger"),
    ("alice-phone", "bank", ("GET", "/openapi.json"), "POST", "/v1/deposits"),
    ("bank", "bank", ("GET", "/v1/ledger"), "POST", "/v1/transfers"),
])
def test_member_calling_a_route_of_another_role_refused_with_403(running: Services, member_id: str, service: str,
                                                                allowed: tuple[str, str], method: str,
                                                                path: str) -> None:
    cert = files_of(running, member_id)
    control = call(running, service, allowed[1], cert, allowed[0])
    assert (control.how, control.status) == ("http", 200), control
    outcome = call(running, service, path, cert, method)
    assert_refused_in_http(outcome, 403, "wrong_role")
    assert outcome.fields.get("member_id") == member_id
