"""The clients services and tools use to call each other: async `JsonClient` (services) and blocking
`SyncJsonClient` (CLI, devices, demo), both JSON over mutual TLS with our CA only.

A failed call raises the peer's named error (rebuilt by `error_from_payload`), TlsHandshakeFailed (a certificate
was refused: retrying does not help) or ServiceUnavailable (refused, dropped or timed out: retry later). The
server side (routes, middleware, OpenAPI) is `offchain.transport.server`.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
import socket
import ssl
import urllib.error
import urllib.request
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp

from offchain.core import errors
from offchain.core.errors import ClearhouseError, ServiceUnavailable, TlsHandshakeFailed
from offchain.core.messages import Role

Identity = Any  # offchain.trust.certs.MemberIdentity (kept loose so this module does not import the TLS stack)
PROBE_TIMEOUT_S = 5.0  # both clients: the probe that tells a refused certificate from a dropped connection


def error_from_payload(status: int, payload: Any, url: str) -> ClearhouseError:
    """Rebuild the named error a peer service answered with: `offchain.core.errors.from_payload` (an allow-list
    of codes and each class's declared fields; unknown codes become RemoteError)."""
    return errors.from_payload(status, payload, url)


class JsonClient:
    """Async JSON-over-mTLS client for service-to-service calls; raises the peer's named errors.

    A failed call raises one of three kinds: the peer's named error (it answered non-2xx), TlsHandshakeFailed
    (one side refused the other's certificate: a configuration problem, retrying does not help) or
    ServiceUnavailable (refused, dropped or timed out: retry later).
    """

    def __init__(self, base_url: str, ssl_context: ssl.SSLContext, *, timeout_s: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._ssl = ssl_context
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def request(self, method: str, path: str, body: Any = None) -> Any:
        url = self.base_url + path
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with self._session.request(method, url, json=body, ssl=self._ssl) as response:
                status = response.status
                try:
                    payload = await response.json(content_type=None)
                except ValueError:  # a plain-text answer (e.g. the server's own 413): no Clearhouse error body
                    payload = None
        except (aiohttp.ClientSSLError, ssl.SSLError) as exc:
            raise TlsHandshakeFailed(f"TLS handshake with {url} failed: {exc}", url=url, reason=str(exc)) from None
        except aiohttp.ServerDisconnectedError as exc:
            raise await _diagnose_disconnect(method, url, self._ssl, exc) from None
        except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
            raise ServiceUnavailable(f"{method} {url} failed: {exc!r}; retry later", url=url,
                                     reason=type(exc).__name__) from None
        if status >= 400:
            raise error_from_payload(status, payload, url)
        return payload

    async def post(self, path: str, body: Any) -> Any:
        return await self.request("POST", path, body)

    async def get(self, path: str) -> Any:
        return await self.request("GET", path)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


async def _diagnose_disconnect(method: str, url: str, context: ssl.SSLContext, exc: BaseException
                               ) -> ClearhouseError:
    """Tell a refused client certificate (TlsHandshakeFailed) from a dropped connection (ServiceUnavailable).

    Under TLS 1.3 the server checks our certificate after our side of the handshake has completed, and asyncio
    servers close without sending the alert: the request only sees a disconnect. A fresh probe connection that is
    closed again without a single byte of HTTP answer means the server refused our certificate.
    """
    parts = urlsplit(url)
    host, port = parts.hostname or "localhost", parts.port or 443
    try:
        answered = await asyncio.wait_for(_probe_answers(host, port, context), PROBE_TIMEOUT_S)
    except (OSError, asyncio.TimeoutError) as probe_exc:  # ssl.SSLError is an OSError
        return _disconnect_verdict(method, url, exc, probe_exc)
    return _disconnect_verdict(method, url, exc, answered)


def _disconnect_verdict(method: str, url: str, exc: BaseException, probe: bool | BaseException) -> ClearhouseError:
    """What a lost connection means, from the probe: it answered (a dropped connection: retry later), it failed
    itself (retry later) or it was closed without a byte (our client certificate was refused)."""
    if isinstance(probe, BaseException):
        return ServiceUnavailable(f"{method} {url}: connection lost ({exc!r}) and the probe failed "
                                  f"({probe!r}); retry later", url=url, reason=type(probe).__name__)
    if probe:
        return ServiceUnavailable(f"{method} {url}: connection lost ({exc!r}); retry later", url=url,
                                  reason=type(exc).__name__)
    return TlsHandshakeFailed(f"{url} closed the TLS connection without answering: it refused our client "
                              "certificate (another CA, expired, or none presented)", url=url,
                              reason="closed after handshake")


async def _probe_answers(host: str, port: int, context: ssl.SSLContext) -> bool:
    """Connect, send a bare HTTP request and report whether any byte comes back before the server closes."""
    reader, writer = await asyncio.open_connection(host, port, ssl=context, server_hostname=host)
    try:
        writer.write(f"HEAD / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        return bool(await reader.read(1))
    finally:
        writer.close()


class JsonTransport(Protocol):
    """A blocking JSON connection to one peer service, as a device or a tool uses it (SyncJsonClient implements
    it; a test double that implements it is a legitimate peer)."""

    def get(self, path: str) -> Any: ...

    def post(self, path: str, body: Any) -> Any: ...

    def server_identity(self, verifier: Any, expected_role: Role | None = None) -> Identity: ...

    def close(self) -> None: ...


class SyncJsonClient:
    """Blocking JSON-over-mTLS client for operator tools and devices (CLI, demo); the same error mapping as
    JsonClient, including a refused client certificate under TLS 1.3 told from a dropped connection by a probe.

    Uses the stdlib (urllib) with exactly `offchain.trust.tls.client_ssl_context`: our CA only, no system roots."""

    def __init__(self, base_url: str, cert_path: str, key_path: str, ca_path: str, *,
                 timeout_s: float = 30.0) -> None:
        from offchain.trust import tls
        self.base_url = base_url.rstrip("/")
        self._ssl = tls.client_ssl_context(cert_path, key_path, ca_path)
        self._timeout_s = timeout_s
        self._pinned: tuple[Any, Role | None, Identity] | None = None  # set by server_identity

    def request(self, method: str, path: str, body: Any = None) -> Any:
        if self._pinned is not None:
            return self._request_on_verified_connection(method, path, body)
        url = self.base_url + path
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method,
                                         headers={"Content-Type": "application/json", "Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, context=self._ssl, timeout=self._timeout_s) as response:
                return _json_or_none(response.read())
        except urllib.error.HTTPError as exc:
            raise error_from_payload(exc.code, _json_or_none(exc.read()), url) from None
        except urllib.error.URLError as exc:  # raised while connecting (the handshake) or sending
            reason = exc.reason if isinstance(exc.reason, OSError) else exc
            raise _sync_failure(method, url, self._ssl, reason, handshake=True) from None
        except OSError as exc:  # raised while reading the answer
            raise _sync_failure(method, url, self._ssl, exc, handshake=False) from None

    def post(self, path: str, body: Any) -> Any:
        return self.request("POST", path, body)

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def server_identity(self, verifier: Any, expected_role: Role | None = None) -> Identity:
        """The server's verified identity: a TLS connection to `base_url` (our CA only), its certificate checked by
        `verifier` (offchain.trust.certs.CertificateVerifier), WrongRole unless it has `expected_role`. Nothing is sent.

        From then on this client is pinned to that member: every request verifies the certificate of its own
        connection again and refuses a different member (IdentityMismatch) before sending anything, so what the
        caller checked is what carries the request."""
        parts = urlsplit(self.base_url)
        host, port = parts.hostname or "localhost", parts.port or 443
        try:
            with socket.create_connection((host, port), timeout=self._timeout_s) as raw:
                with self._ssl.wrap_socket(raw, server_hostname=host) as connection:
                    der = connection.getpeercert(binary_form=True)
        except OSError as exc:  # ssl.SSLError is an OSError
            raise _sync_failure("CONNECT", self.base_url, self._ssl, exc, handshake=True) from None
        identity = self._verify_peer(der, verifier, expected_role)
        self._pinned = (verifier, expected_role, identity)
        return identity

    def _verify_peer(self, der: bytes | None, verifier: Any, expected_role: Role | None) -> Identity:
        if not der:
            raise TlsHandshakeFailed(f"{self.base_url} presented no certificate", url=self.base_url,
                                     reason="no server certificate")
        return verifier.verify(ssl.DER_cert_to_PEM_cert(der), expected_role)

    def _request_on_verified_connection(self, method: str, path: str, body: Any) -> Any:
        """Once `server_identity` named the server, every request checks the certificate of the connection that
        carries it, before a byte of the request is sent: the same member (IdentityMismatch otherwise), still valid
        and not revoked (the verifier's CRL and chain checks)."""
        import http.client

        from offchain.core.errors import IdentityMismatch

        assert self._pinned is not None
        verifier, expected_role, pinned = self._pinned
        parts, url = urlsplit(self.base_url), self.base_url + path
        host, port = parts.hostname or "localhost", parts.port or 443
        connection = http.client.HTTPSConnection(host, port, context=self._ssl, timeout=self._timeout_s)
        try:
            try:
                connection.connect()
            except OSError as exc:
                raise _sync_failure(method, url, self._ssl, exc, handshake=True) from None
            peer = self._verify_peer(connection.sock.getpeercert(binary_form=True), verifier, expected_role)
            if (peer.member_id, peer.eth_address) != (pinned.member_id, pinned.eth_address):
                raise IdentityMismatch(f"{self.base_url} answered as {peer.member_id}, not {pinned.member_id} that "
                                       "this client verified: nothing was sent", expected_member=pinned.member_id,
                                       got_member=peer.member_id, kind="tls_peer")
            data = None if body is None else json.dumps(body).encode()
            try:
                connection.request(method, parts.path.rstrip("/") + path, body=data,
                                   headers={"Content-Type": "application/json", "Accept": "application/json"})
                response = connection.getresponse()
                raw = response.read()
            except OSError as exc:
                raise _sync_failure(method, url, self._ssl, exc, handshake=False) from None
            if response.status >= 400:
                raise error_from_payload(response.status, _json_or_none(raw), url)
            return _json_or_none(raw)
        finally:
            connection.close()

    def post_file(self, path: str, source: Path, headers: dict[str, str]) -> Any:
        """POST the file `source` as the raw body, streamed in chunks (never held in memory, never the JSON body
        limit); the JSON answer. On a pinned client the connection's certificate is checked first."""
        connection, url = self._raw_connection("POST", path)
        try:
            try:
                with source.open("rb") as body:
                    connection.request("POST", urlsplit(self.base_url).path.rstrip("/") + path, body=body,
                                       headers={**headers, "Content-Type": "application/octet-stream",
                                                "Content-Length": str(source.stat().st_size),
                                                "Accept": "application/json"}, encode_chunked=False)
                response = connection.getresponse()
                raw = response.read()
            except OSError as exc:
                raise _sync_failure("POST", url, self._ssl, exc, handshake=False) from None
            if response.status >= 400:
                raise error_from_payload(response.status, _json_or_none(raw), url)
            return _json_or_none(raw)
        finally:
            connection.close()

    def post_to_file(self, path: str, body: Any, destination: Path, *, chunk: int = 1024 * 1024) -> dict[str, str]:
        """POST a JSON body and stream the raw answer into `destination` in chunks; the answer's headers."""
        connection, url = self._raw_connection("POST", path)
        try:
            try:
                connection.request("POST", urlsplit(self.base_url).path.rstrip("/") + path,
                                   body=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
                response = connection.getresponse()
                if response.status >= 400:
                    raise error_from_payload(response.status, _json_or_none(response.read()), url)
                with destination.open("wb") as out:
                    while data := response.read(chunk):
                        out.write(data)
            except OSError as exc:
                raise _sync_failure("POST", url, self._ssl, exc, handshake=False) from None
            return {name: value for name, value in response.getheaders()}
        finally:
            connection.close()

    def _raw_connection(self, method: str, path: str) -> tuple[Any, str]:
        """A connected HTTPS connection to `base_url`; when pinned, its certificate is the pinned member's
        (IdentityMismatch otherwise, before anything is sent)."""
        import http.client

        from offchain.core.errors import IdentityMismatch

        parts, url = urlsplit(self.base_url), self.base_url + path
        host, port = parts.hostname or "localhost", parts.port or 443
        connection = http.client.HTTPSConnection(host, port, context=self._ssl, timeout=self._timeout_s)
        try:
            connection.connect()
        except OSError as exc:
            connection.close()
            raise _sync_failure(method, url, self._ssl, exc, handshake=True) from None
        if self._pinned is not None:
            verifier, expected_role, pinned = self._pinned
            peer = self._verify_peer(connection.sock.getpeercert(binary_form=True), verifier, expected_role)
            if (peer.member_id, peer.eth_address) != (pinned.member_id, pinned.eth_address):
                connection.close()
                raise IdentityMismatch(f"{self.base_url} answered as {peer.member_id}, not {pinned.member_id} that "
                                       "this client verified: nothing was sent", expected_member=pinned.member_id,
                                       got_member=peer.member_id, kind="tls_peer")
        return connection, url

    def close(self) -> None:
        """Nothing to release: every request uses its own connection."""


# The ways a connection ends without an answer; after the handshake they may hide a refused client certificate.
_DISCONNECTS = (ConnectionResetError, ConnectionAbortedError, BrokenPipeError, ssl.SSLEOFError, ssl.SSLZeroReturnError)


def _sync_failure(method: str, url: str, context: ssl.SSLContext, exc: BaseException, *, handshake: bool
                  ) -> ClearhouseError:
    """SyncJsonClient's error for a call that got no HTTP answer, mapped as JsonClient maps it.

    A TLS error in the handshake (either side refused a certificate, including a TLS 1.2 server that closes
    mid-handshake) or a TLS alert afterwards is TlsHandshakeFailed. A disconnect after the handshake is told
    apart by `_diagnose_disconnect_sync`, because under TLS 1.3 a server that refuses our certificate only closes.
    Anything else (refused, timed out) is ServiceUnavailable: retry later.
    """
    if isinstance(exc, ssl.SSLError) and (handshake or not isinstance(exc, _DISCONNECTS)):
        return TlsHandshakeFailed(f"TLS handshake with {url} failed: {exc}", url=url, reason=str(exc))
    if isinstance(exc, _DISCONNECTS):  # TCP-level ones also while sending: a close can race our first write
        return _diagnose_disconnect_sync(method, url, context, exc)
    return ServiceUnavailable(f"{method} {url} failed: {exc!r}; retry later", url=url, reason=type(exc).__name__)


def _diagnose_disconnect_sync(method: str, url: str, context: ssl.SSLContext, exc: BaseException
                              ) -> ClearhouseError:
    """The blocking twin of `_diagnose_disconnect`: a fresh probe connection that is closed again without a
    single byte of HTTP answer means the server refused our client certificate."""
    parts = urlsplit(url)
    host, port = parts.hostname or "localhost", parts.port or 443
    try:
        answered = _probe_answers_sync(host, port, context)
    except OSError as probe_exc:  # ssl.SSLError is an OSError
        return _disconnect_verdict(method, url, exc, probe_exc)
    return _disconnect_verdict(method, url, exc, answered)


def _probe_answers_sync(host: str, port: int, context: ssl.SSLContext) -> bool:
    """Connect, send a bare HTTP request and report whether any byte comes back before the server closes."""
    with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S) as raw:
        with context.wrap_socket(raw, server_hostname=host) as connection:
            connection.sendall(f"HEAD / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            try:
                return bool(connection.recv(1))
            except _DISCONNECTS:  # closed or reset without a byte of answer
                return False


def _json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


__all__ = ["JsonClient", "SyncJsonClient", "JsonTransport", "error_from_payload", "PROBE_TIMEOUT_S"]
