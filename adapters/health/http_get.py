"""One HTTP GET for the health probe, on a plain socket.

``http.client`` imports ``email`` and ``ssl`` with it: about a tenth of a
deploy command's start, for one request per probe attempt. A probe needs
only the status and, for ``body_contains``, the start of the body, so this
sends one HTTP/1.1 request, as ``http.client`` did, with ``Connection:
close`` (so the answer ends with a Content-Length, a last chunk or the
connection's close, and each is honoured) and reads the status line, the
headers and at most ``limit`` bytes of the body.

What it refuses, as :class:`HTTPProblem` (the probe reports it as a failed
attempt): a path that is not printable ASCII without spaces (nothing a
stack file holds can add a header or a second request line), a status line
that is not ``HTTP/x.y NNN``, headers over 64 KiB, a malformed chunk. A
connection error or the deadline raises ``OSError`` / ``TimeoutError``.
"""

from __future__ import annotations

import socket
import time

__all__ = ["HEADER_LIMIT", "HTTPProblem", "get", "host_port", "path_problem"]

HEADER_LIMIT = 64 * 1024
_CHUNK = 16 * 1024


class HTTPProblem(Exception):
    """The request could not be made as asked, or the answer is not HTTP."""


def host_port(host: str, port: int) -> str:
    """``host:port`` as a URL or a Host header writes it (an IPv6 address in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def path_problem(path: str) -> str | None:
    """Why ``path`` cannot be a health check's request path (None: it can)."""
    if not path.startswith("/"):
        return "expected a path starting with /"
    if not all(0x21 <= ord(c) <= 0x7E for c in path):
        return "expected printable ASCII without spaces (percent-encode anything else)"
    return None


def get(host: str, port: int, path: str, *, deadline: float, limit: int) -> tuple[int, bytes]:
    """``(status, body)`` of ``GET path``; the body only up to ``limit`` bytes
    (0: not read). Everything must happen before ``deadline`` (monotonic)."""
    problem = path_problem(path)
    if problem is not None:
        raise HTTPProblem(f"path {path!r}: {problem}")
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host_port(host, port)}\r\nUser-Agent: chassis-health\r\n"
        "Connection: close\r\n\r\n"
    ).encode("ascii")
    with socket.create_connection((host, port), timeout=_left(deadline)) as sock:
        sock.settimeout(_left(deadline))
        sock.sendall(request)
        reader = _Reader(sock, deadline)
        while True:
            status, headers = _head(reader)
            if status != 100:  # a 100 Continue is followed by the real answer
                break
        if limit <= 0:
            return status, b""
        if headers.get("transfer-encoding", "").lower() == "chunked":
            return status, _chunked(reader, limit)
        length = headers.get("content-length", "")
        want = min(limit, int(length)) if length.isdigit() else limit
        return status, reader.read(want)


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("timed out")
    return left


class _Reader:
    """Buffered reads from ``sock``, each bounded by the deadline."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.buffer = b""
        self.closed = False

    def _more(self) -> bool:
        if self.closed:
            return False
        self.sock.settimeout(_left(self.deadline))
        data = self.sock.recv(_CHUNK)
        if not data:
            self.closed = True
            return False
        self.buffer += data
        return True

    def line(self, limit: int) -> bytes:
        """Up to and without the next CRLF (or LF); HTTPProblem past ``limit``."""
        while b"\n" not in self.buffer:
            if len(self.buffer) > limit:
                raise HTTPProblem(f"a header line longer than {limit} bytes")
            if not self._more():
                raise HTTPProblem("the connection closed in the middle of the headers")
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.rstrip(b"\r")

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes (fewer if the connection closes first)."""
        while len(self.buffer) < size and self._more():
            pass
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data


def _head(reader: _Reader) -> tuple[int, dict[str, str]]:
    """The status code and the headers (lower-case names; the last of a name wins)."""
    status_line = reader.line(HEADER_LIMIT)
    version, _, rest = status_line.partition(b" ")
    code = rest[:3]
    if (
        not version.startswith(b"HTTP/")
        or len(code) != 3
        or not code.isdigit()
        or rest[3:4] not in (b"", b" ")
    ):
        shown = status_line[:80].decode("ascii", "replace")
        raise HTTPProblem(f"not an HTTP status line: {shown!r}")
    headers: dict[str, str] = {}
    size = len(status_line)
    while line := reader.line(HEADER_LIMIT):
        size += len(line)
        if size > HEADER_LIMIT:
            raise HTTPProblem(f"headers longer than {HEADER_LIMIT} bytes")
        name, colon, value = line.partition(b":")
        if colon:
            headers[name.strip().decode("latin-1").lower()] = value.strip().decode("latin-1")
    return int(code), headers


def _chunked(reader: _Reader, limit: int) -> bytes:
    """A chunked body, decoded, up to ``limit`` bytes."""
    body = b""
    while len(body) < limit:
        size_line = reader.line(HEADER_LIMIT).split(b";", 1)[0].strip()
        if not size_line or size_line.strip(b"0123456789abcdefABCDEF"):
            raise HTTPProblem(f"a malformed chunk size {size_line[:20]!r}")
        size = int(size_line, 16)
        if size == 0:
            break
        body += reader.read(min(size, limit - len(body)))
        if len(body) >= limit:
            break
        if reader.line(HEADER_LIMIT):  # the CRLF after each chunk
            raise HTTPProblem("a chunk longer than its size")
    return body[:limit]
