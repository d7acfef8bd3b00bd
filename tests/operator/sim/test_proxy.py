"""The fault proxy's modes, each against a tiny HTTP echo server that counts what it processed."""

from __future__ import annotations

import http.client
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from offchain.operator.sim.proxy import FaultProxy


class EchoServer:
    """Answers every POST with `<n>:<body>` where n counts the requests it processed."""

    def __init__(self) -> None:
        self.processed: list[bytes] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers["Content-Length"]))
                server.processed.append(body)
                answer = f"{len(server.processed)}:".encode() + body
                self.send_response(200)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *_args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


@pytest.fixture
def proxy(echo: EchoServer) -> Iterator[FaultProxy]:
    with FaultProxy() as hub:
        hub.add("client->echo", ("127.0.0.1", echo.port))
        yield hub


def post(proxy: FaultProxy, body: bytes, path: str = "/x", timeout_s: float = 5.0) -> bytes:
    connection = http.client.HTTPConnection("127.0.0.1", proxy.links["client->echo"].port, timeout=timeout_s)
    try:
        connection.request("POST", path, body=body)
        return connection.getresponse().read()
    finally:
        connection.close()


def test_pass_relays_request_and_answer(proxy: FaultProxy, echo: EchoServer) -> None:
    assert post(proxy, b"a") == b"1:a"
    assert post(proxy, b"b") == b"2:b"
    assert echo.processed == [b"a", b"b"]
    assert proxy.stats()["client->echo"].relayed == 2


def test_delay_still_delivers(proxy: FaultProxy, echo: EchoServer) -> None:
    proxy.set_mode("client->echo", "delay", delay_s=0.05)
    assert post(proxy, b"slow") == b"1:slow"


def test_refuse_closes_the_port_and_heal_reopens_it(proxy: FaultProxy, echo: EchoServer) -> None:
    assert post(proxy, b"before") == b"1:before"  # positive control
    proxy.set_mode("client->echo", "refuse")
    with pytest.raises(ConnectionRefusedError):
        post(proxy, b"refused")
    proxy.heal()
    assert post(proxy, b"after") == b"2:after"
    assert echo.processed == [b"before", b"after"]


def test_cut_processes_the_request_but_drops_the_answer(proxy: FaultProxy, echo: EchoServer) -> None:
    proxy.once("client->echo", "cut", "/issue")
    assert post(proxy, b"other", path="/other") == b"1:other"  # not matching the prefix: relayed
    with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError, http.client.IncompleteRead)):
        post(proxy, b"lost", path="/issue")
    assert echo.processed == [b"other", b"lost"]  # the server did the work
    assert post(proxy, b"retry", path="/issue") == b"3:retry"  # one shot only
    assert proxy.stats()["client->echo"].cut == 1


def test_blackhole_never_answers_and_never_forwards(proxy: FaultProxy, echo: EchoServer) -> None:
    proxy.set_mode("client->echo", "blackhole")
    with pytest.raises((socket.timeout, TimeoutError)):
        post(proxy, b"void", timeout_s=0.3)
    proxy.heal()
    assert post(proxy, b"back") == b"1:back"
    assert echo.processed == [b"back"]


def test_dup_sends_twice_and_records_differing_answers(proxy: FaultProxy, echo: EchoServer) -> None:
    proxy.once("client->echo", "dup")
    assert post(proxy, b"twice") == b"1:twice"
    assert echo.processed == [b"twice", b"twice"]
    stats = proxy.stats()["client->echo"]
    assert stats.duplicated == 1
    assert len(stats.dup_mismatches) == 1  # the echo server counts: "1:twice" vs "2:twice" is not idempotent
    assert stats.dup_mismatches[0]["second_body"] == "2:twice"


def test_unknown_mode_is_refused(proxy: FaultProxy) -> None:
    with pytest.raises(ValueError, match="unknown link mode"):
        proxy.set_mode("client->echo", "teleport")


def test_close_with_connections_still_open_leaves_no_task_behind(echo: EchoServer) -> None:
    """A sim seed ends with clients still connected (a held black-holed request, a kept-alive link): closing the
    proxy ends their tasks, so none is destroyed pending ("Task was destroyed but it is pending!")."""
    import asyncio
    import time

    hub = FaultProxy()
    link = hub.add("client->echo", ("127.0.0.1", echo.port))
    kept = http.client.HTTPConnection("127.0.0.1", link.port, timeout=5)
    kept.request("POST", "/x", body=b"alive")
    assert kept.getresponse().read() == b"1:alive"  # positive control: the link relays, the connection stays
    hub.set_mode("client->echo", "blackhole")
    held = socket.create_connection(("127.0.0.1", link.port))
    try:
        held.sendall(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nvoid")
        time.sleep(0.2)  # the held request reaches the proxy
        hub.close()
    finally:
        held.close()
        kept.close()
    assert asyncio.all_tasks(hub._loop) == set()  # every connection's task ended with the proxy
    assert echo.processed == [b"alive"]
