"""A small asyncio fault proxy for the simulator: one listening port per link (device->SP, SP->CC, CC->bank, ...).

Each link relays HTTP/1.1 message by message (plain, or TLS terminated on both sides with the link's own
certificates), so its faults are exact, not timed: pass, delay, refuse (no listener), cut (the request is
delivered and its whole answer read, then the client's connection is closed without it), black-hole (read,
never answer) and duplicate (each request sent twice; the answers are compared). `tc netem` is not available
here; this is its user-space stand-in. Not a general proxy: no pipelining, no upgrades. Dev and test only.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

MODES = ("pass", "delay", "refuse", "cut", "blackhole", "dup")
HEAD_LIMIT_BYTES = 64 * 1024
IGNORED_IN_COMPARISON = (b"date", b"server")


@dataclass(frozen=True)
class LinkTls:
    """TLS of one link: the proxy presents `server` to the client and `client` to the upstream server."""

    server: ssl.SSLContext
    client: ssl.SSLContext
    server_hostname: str = "127.0.0.1"


@dataclass
class LinkStats:
    requests: int = 0
    relayed: int = 0
    cut: int = 0
    blackholed: int = 0
    refused_periods: int = 0
    duplicated: int = 0
    dup_mismatches: list[dict[str, Any]] = field(default_factory=list)
    server_errors: list[dict[str, Any]] = field(default_factory=list)  # every 5xx answer: request, status, code


@dataclass(frozen=True)
class Message:
    head: bytes  # start line and headers, up to and including the blank line
    body: bytes

    @property
    def start_line(self) -> str:
        return self.head.split(b"\r\n", 1)[0].decode("latin-1")

    def header(self, name: bytes) -> bytes | None:
        for line in self.head.split(b"\r\n")[1:]:
            key, sep, value = line.partition(b":")
            if sep and key.strip().lower() == name:
                return value.strip()
        return None

    @property
    def closes(self) -> bool:
        return (self.header(b"connection") or b"").lower() == b"close"

    def raw(self) -> bytes:
        return self.head + self.body

    def comparable(self) -> tuple[bytes, tuple[bytes, ...], bytes]:
        lines = self.head.split(b"\r\n")
        headers = tuple(sorted(line.lower() for line in lines[1:]
                               if line and line.split(b":", 1)[0].strip().lower() not in IGNORED_IN_COMPARISON))
        return lines[0], headers, self.body


async def read_message(reader: asyncio.StreamReader) -> Message | None:
    """One HTTP/1.1 message (Content-Length or chunked body); None when the peer closed between messages."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise ConnectionError("connection closed inside an HTTP head") from None
        return None
    except asyncio.LimitOverrunError:
        raise ConnectionError("HTTP head too large") from None
    message = Message(head, b"")
    if (message.header(b"transfer-encoding") or b"").lower() == b"chunked":
        return Message(head, await _read_chunked(reader))
    length = int(message.header(b"content-length") or b"0")
    return Message(head, await reader.readexactly(length) if length else b"")


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        size_line = await reader.readuntil(b"\r\n")
        parts.append(size_line)
        size = int(size_line.split(b";")[0].strip(), 16)
        if size == 0:
            parts.append(await reader.readuntil(b"\r\n"))  # trailer-less end
            return b"".join(parts)
        parts.append(await reader.readexactly(size + 2))


class Link:
    """One proxied hop: listens on `port`, relays to `target`; `set_mode` changes what happens to new requests."""

    def __init__(self, name: str, target: tuple[str, int], *, port: int = 0, tls: LinkTls | None = None) -> None:
        self.name = name
        self.target = target
        self.port = port
        self.tls = tls
        self.mode = "pass"
        self.delay_s = 0.0
        self.stats = LinkStats()
        self._one_shots: list[tuple[str, str]] = []  # (mode, path prefix) applied to the next matching requests
        self._server: asyncio.AbstractServer | None = None
        self._held: set[asyncio.StreamWriter] = set()
        self._open: set[asyncio.StreamWriter] = set()
        self.on_event: Callable[[str, str, str], None] = lambda _link, _what, _detail: None

    # control (called on the proxy's loop) ---------------------------------------------------------------------
    async def listen(self) -> None:
        if self._server is not None:
            return
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, ssl=self.tls and self.tls.server,
                                                  reuse_address=True, limit=HEAD_LIMIT_BYTES)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def unlisten(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def set_mode(self, mode: str, delay_s: float = 0.0) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown link mode {mode!r}; one of {MODES}")
        previous, self.mode, self.delay_s = self.mode, mode, delay_s
        if mode == "refuse" and previous != "refuse":
            self.stats.refused_periods += 1
            await self.unlisten()
            for writer in list(self._open):  # kept-alive connections too: the peer must reconnect, and cannot
                writer.close()
        elif mode != "refuse":
            await self.listen()
        if previous == "blackhole" and mode != "blackhole":
            for writer in list(self._held):
                writer.close()
            self._held.clear()

    def once(self, mode: str, path_prefix: str = "") -> None:
        """Apply `mode` (cut, blackhole, dup or delay) to the next request whose path starts with `path_prefix`."""
        if mode not in MODES:
            raise ValueError(f"unknown link mode {mode!r}; one of {MODES}")
        self._one_shots.append((mode, path_prefix))

    # relaying ----------------------------------------------------------------------------------------------
    def _mode_for(self, request: Message) -> str:
        parts = request.start_line.split(" ")
        path = parts[1] if len(parts) > 1 else ""
        for index, (mode, prefix) in enumerate(self._one_shots):
            if path.startswith(prefix):
                del self._one_shots[index]
                return mode
        return self.mode

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._open.add(writer)
        try:
            while True:
                if self.mode == "blackhole":
                    await self._hold(reader, writer)
                    return
                request = await read_message(reader)
                if request is None:
                    return
                self.stats.requests += 1
                mode = self._mode_for(request)
                if mode == "blackhole":
                    self.stats.blackholed += 1
                    self.on_event(self.name, "blackhole", request.start_line)
                    await self._hold(reader, writer)
                    return
                if mode == "delay" or (mode == "pass" and self.delay_s):
                    await asyncio.sleep(self.delay_s)
                if upstream is None:
                    upstream = await self._connect()
                answer = await self._exchange(upstream, request)
                self._note_server_error(request, answer)
                if mode == "dup":
                    upstream = await self._duplicate(upstream, request, answer)
                if mode == "cut":
                    self.stats.cut += 1
                    self.on_event(self.name, "cut", request.start_line)
                    return  # processed upstream, the answer is thrown away and the client sees a dropped connection
                self.stats.relayed += 1  # before the write: the client may read the answer before drain() returns
                writer.write(answer.raw())
                await writer.drain()
                if request.closes or answer.closes:
                    return
        except (ConnectionError, OSError, asyncio.IncompleteReadError, ssl.SSLError):
            return
        finally:
            self._open.discard(writer)
            for w in (writer, upstream[1] if upstream else None):
                if w is not None:
                    w.close()

    def _note_server_error(self, request: Message, answer: Message) -> None:
        """A 5xx answer is kept with the error code of its JSON body (`internal_error`, `storage_full`, ...)."""
        parts = answer.start_line.split(" ")
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        if status < 500:
            return
        try:
            code = str(json.loads(answer.body).get("error", ""))
        except (ValueError, AttributeError):
            code = ""
        self.stats.server_errors.append({"request": request.start_line, "status": status, "error": code})
        self.on_event(self.name, f"answer {status}", f"{request.start_line} -> {code}")

    async def _hold(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Black hole: swallow whatever arrives and never answer, until the client or a heal closes it."""
        self._held.add(writer)
        try:
            while await reader.read(65536):
                pass
        finally:
            self._held.discard(writer)

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        host, port = self.target
        if self.tls is None:
            return await asyncio.open_connection(host, port, limit=HEAD_LIMIT_BYTES)
        return await asyncio.open_connection(host, port, ssl=self.tls.client,
                                             server_hostname=self.tls.server_hostname, limit=HEAD_LIMIT_BYTES)

    async def _exchange(self, upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                        request: Message) -> Message:
        up_reader, up_writer = upstream
        up_writer.write(request.raw())
        await up_writer.drain()
        answer = await read_message(up_reader)
        if answer is None:
            raise ConnectionError(f"{self.name}: upstream closed without an answer")
        return answer

    async def _duplicate(self, upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter], request: Message,
                         first: Message) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Send the same request again (on a fresh connection if the first closed) and compare the answers."""
        if request.closes or first.closes:
            upstream[1].close()
            upstream = await self._connect()
        second = await self._exchange(upstream, request)
        self.stats.duplicated += 1
        if second.comparable() != first.comparable():
            self.stats.dup_mismatches.append({"request": request.start_line, "first": first.start_line,
                                              "second": second.start_line, "first_body": first.body[:300].decode(
                                                  "utf-8", "replace"),
                                              "second_body": second.body[:300].decode("utf-8", "replace"),
                                              "first_error": _error_code(first), "second_error": _error_code(second),
                                              "first_json": _json_body(first), "second_json": _json_body(second)})
        self.on_event(self.name, "dup", request.start_line)
        if request.closes or first.closes:
            upstream[1].close()
            upstream = await self._connect()
        return upstream


def _json_body(answer: Message) -> Any:
    """An answer's JSON body (None if it is not JSON)."""
    try:
        return json.loads(answer.body)
    except ValueError:
        return None


def _error_code(answer: Message) -> str | None:
    """The Clearhouse error code of an answer's JSON body (`{"error": ...}`), if it has one."""
    body = _json_body(answer)
    code = body.get("error") if isinstance(body, dict) else None
    return code if isinstance(code, str) else None


async def _end_connection_tasks() -> None:
    """Cancel and await every connection task still open (a held black-holed request, a kept-alive client), so
    none is left pending when the loop stops ("Task was destroyed but it is pending!" at exit)."""
    tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class FaultProxy:
    """All links of one simulation, served from one background event loop; every method is thread-safe."""

    def __init__(self) -> None:
        self.links: dict[str, Link] = {}
        self.events: list[tuple[str, str, str]] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy", daemon=True)
        self._thread.start()

    def _run(self, coroutine: Any, timeout_s: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout_s)

    def add(self, name: str, target: tuple[str, int], *, port: int = 0, tls: LinkTls | None = None) -> Link:
        link = Link(name, target, port=port, tls=tls)
        link.on_event = lambda *event: self.events.append(event)
        self._run(link.listen())
        self.links[name] = link
        return link

    def url(self, name: str, scheme: str = "https") -> str:
        return f"{scheme}://127.0.0.1:{self.links[name].port}"

    def set_mode(self, name: str, mode: str, delay_s: float = 0.0) -> None:
        self._run(self.links[name].set_mode(mode, delay_s))

    def once(self, name: str, mode: str, path_prefix: str = "") -> None:
        link = self.links[name]

        async def apply() -> None:
            link.once(mode, path_prefix)

        self._run(apply())

    def heal(self) -> None:
        for name in self.links:
            self.set_mode(name, "pass")

    def stats(self) -> dict[str, LinkStats]:
        return {name: link.stats for name, link in self.links.items()}

    def close(self) -> None:
        if self._loop.is_closed():
            return
        for link in self.links.values():
            try:
                self._run(link.set_mode("pass"), 5.0)
                self._run(link.unlisten(), 5.0)
            except Exception:  # noqa: BLE001 - shutting down: nothing left to protect
                pass
        try:
            self._run(_end_connection_tasks(), 5.0)
        except Exception:  # noqa: BLE001 - shutting down: nothing left to protect
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["FaultProxy", "Link", "LinkTls", "LinkStats", "Message", "MODES", "read_message"]
