"""The health probe's HTTP GET (``adapters.health.http_get``) against raw
servers on 127.0.0.1 that answer exactly the bytes each test gives them."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from adapters.health import http_probe
from adapters.health.http_get import HTTPProblem, get


class RawServer:
    """Accepts connections and answers each with ``answer``; keeps what it was sent."""

    def __init__(self, answer: bytes, *, close: bool = True) -> None:
        self.answer = answer
        self.close = close
        self.received: list[bytes] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port: int = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                self.received.append(data)
                conn.sendall(self.answer)
                if not self.close:
                    time.sleep(5)  # holds the connection open


@pytest.fixture
def raw() -> Iterator[type[RawServer]]:
    made: list[RawServer] = []

    class Made(RawServer):
        def __init__(self, answer: bytes, **kwargs: bool) -> None:
            super().__init__(answer, **kwargs)
            made.append(self)

    yield Made
    for server in made:
        server.sock.close()


def later(seconds: float = 5.0) -> float:
    return time.monotonic() + seconds


def test_status_and_body_of_a_plain_answer(raw: type[RawServer]) -> None:
    server = raw(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nready v2\n")
    assert get("127.0.0.1", server.port, "/healthz", deadline=later(), limit=1024) == (
        200,
        b"ready v2\n",
    )
    assert server.received == [
        b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUser-Agent: chassis-health\r\n"
        b"Connection: close\r\n\r\n" % server.port
    ]


def test_the_body_stops_at_content_length_and_at_the_limit(raw: type[RawServer]) -> None:
    server = raw(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello, and more", close=False)
    assert get("127.0.0.1", server.port, "/", deadline=later(), limit=1024) == (200, b"hello")
    long = raw(b"HTTP/1.0 200 OK\r\n\r\n" + b"x" * 5000)
    assert get("127.0.0.1", long.port, "/", deadline=later(), limit=100) == (200, b"x" * 100)


def test_a_chunked_body_is_decoded(raw: type[RawServer]) -> None:
    server = raw(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nver\r\n6;ext=1\r\nsion 2\r\n0\r\n\r\n"
    )
    assert get("127.0.0.1", server.port, "/", deadline=later(), limit=1024) == (
        200,
        b"version 2",
    )
    # The probe finds text that spans two chunks.
    assert http_probe("127.0.0.1", server.port, "/", body_contains="version 2").ok


def test_a_100_continue_is_skipped(raw: type[RawServer]) -> None:
    server = raw(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 503 Busy\r\n\r\n")
    assert get("127.0.0.1", server.port, "/", deadline=later(), limit=0) == (503, b"")


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        (b"hello there\r\n\r\n", "not an HTTP status line: 'hello there'"),
        (b"HTTP/1.1 2000 OK\r\n\r\n", "not an HTTP status line"),
        (b"HTTP/1.1 200 OK\r\nServer: x", "closed in the middle of the headers"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n", "malformed chunk"),
        (b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70000 + b"\r\n\r\n", "longer than 65536 bytes"),
    ],
)
def test_what_is_not_http_is_a_problem_not_a_crash(
    raw: type[RawServer], answer: bytes, problem: str
) -> None:
    server = raw(answer)
    with pytest.raises(HTTPProblem, match=problem):
        get("127.0.0.1", server.port, "/", deadline=later(), limit=1024)
    result = http_probe("127.0.0.1", server.port, "/", body_contains="x")
    assert not result.ok and problem.split(":")[0] in result.detail


@pytest.mark.parametrize("path", ["/a b", "/x\r\nX-Evil: 1", "/ünï", "/\x00", "/tab\there"])
def test_a_path_that_could_change_the_request_is_refused_unsent(
    raw: type[RawServer], path: str
) -> None:
    server = raw(b"HTTP/1.0 200 OK\r\n\r\n")
    with pytest.raises(HTTPProblem, match="expected printable ASCII"):
        get("127.0.0.1", server.port, path, deadline=later(), limit=0)
    result = http_probe("127.0.0.1", server.port, path)
    assert not result.ok and "expected printable ASCII" in result.detail
    assert server.received == []


def test_a_silent_server_times_out_at_the_deadline(raw: type[RawServer]) -> None:
    # It accepts, reads the request and says nothing for 5 s, then closes:
    # a reader that ignored the deadline would see the close, not a timeout.
    server = raw(b"", close=False)
    with pytest.raises(TimeoutError):
        get("127.0.0.1", server.port, "/", deadline=later(0.3), limit=0)
