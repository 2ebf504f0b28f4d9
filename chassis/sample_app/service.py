#!/usr/bin/env python3
"""Chassis sample app: one small stdlib-only program with three roles.

This file is copied verbatim into a release tree as ``app/gateway.py``,
``app/api.py`` and ``app/worker.py``; the file name picks the role (``--role``
overrides it). It runs on target hosts that only have ``python3`` (3.7 or
later), so it must never import anything but the standard library.

- ``gateway`` and ``api`` serve HTTP/1.0 (a thread per connection) on
  ``--bind``:``--port``: ``GET /healthz`` answers ``ok <service> <version>``,
  ``GET /`` a JSON document ``{"service", "version", "release"}``. The
  gateway also proxies ``GET /upstream`` (to the upstream's ``/``) and
  ``GET /api/...`` to ``--upstream``; its own ``/healthz`` never depends on
  the upstream, so each host can be health-checked on its own.
- ``worker`` serves nothing: it writes a ready file once started, removes it
  when stopped, and ticks once a second.
- ``score`` is a client, the evolution scoring gate's command: it sends
  ``--requests`` GETs to ``/api/score`` on ``$CHASSIS_PORT_HTTP`` and prints
  ``{"error_rate": …, "latency_p95_ms": …}`` on one line.

The version is the ``VERSION`` file of the release directory (the working
directory, else the tree this file sits in); the release id is
``$CHASSIS_RELEASE_ID``. ``FAIL_HEALTH=1`` makes ``/healthz`` answer 503 and
``CRASH_ON_START=1`` makes the program exit with status 3 at once: the demo's
deliberately broken releases. The evolution fixtures plant faults too:
``PLANTED_FAULT=1`` makes every third ``/api/`` request answer 500,
``SLOW_MS=N`` delays every ``/api/`` answer by N ms, and
``HANG_HEALTH_OUTSIDE_TRIAL=1`` makes ``/healthz`` hang for 10 s unless
``$CHASSIS_TRIAL_SLOT`` is set (healthy in a trial, not in production).
SIGTERM or SIGINT stop it cleanly with status 0.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # signal, without its enums
import _socket
import os
import select
import sys
import threading
import time
import types
from types import FrameType

# pathlib and typing were a third of this program's imports at every start
# (8 ms of 23): paths are strings here, and Any is for the type checker only.
# json (which compiles its regular expressions) and contextlib were 7 ms of
# what remained: json is imported where a JSON answer is written, and
# nothing else needs contextlib.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

ROLES = ("gateway", "api", "worker", "score")
DEFAULT_PORTS = {"gateway": 8080, "api": 8081}
DEFAULT_UPSTREAM = "127.0.0.1:8081"
EXIT_CRASH = 3
UPSTREAM_TIMEOUT_S = 5.0


def log(role: str, message: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    sys.stderr.write(f"{stamp}Z {role}[{os.getpid()}] {message}\n")
    sys.stderr.flush()


def flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def read_version() -> str:
    tree = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
    for candidate in (os.path.join(os.getcwd(), "VERSION"), os.path.join(tree, "VERSION")):
        try:
            with open(candidate, encoding="utf-8") as f:
                text = f.read().strip()
        except OSError:
            continue
        if text:
            return text
    return "unknown"


class Identity:
    __slots__ = ("release", "role", "version")

    def __init__(self, role: str, version: str, release: str | None) -> None:
        self.role = role
        self.version = version
        self.release = release

    def document(self) -> dict[str, Any]:
        return {"service": self.role, "version": self.version, "release": self.release}


# ---------------------------------------------------------------------- http


REASONS = {
    200: "OK",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}
_LINE_LIMIT = 65536


class SampleServer:
    """A listening socket and what its requests need; each connection is
    served by a thread of its own (daemon: in-flight requests never delay a
    stop)."""

    def __init__(
        self, address: tuple[str, int], identity: Identity, upstream: tuple[str, int] | None
    ) -> None:
        self.identity = identity
        self.upstream = upstream
        self.fail_health = flag("FAIL_HEALTH")
        self.hang_health = flag("HANG_HEALTH_OUTSIDE_TRIAL") and not os.environ.get(
            "CHASSIS_TRIAL_SLOT"
        )
        self.planted_fault = flag("PLANTED_FAULT")
        self.slow_s = int(os.environ.get("SLOW_MS", "0") or 0) / 1000
        self.requests = 0
        self.lock = threading.Lock()
        self.socket = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
        try:
            self.socket.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
            self.socket.bind(address)
            self.socket.listen(16)
        except OSError:
            self.socket.close()
            raise
        self.port: int = self.socket.getsockname()[1]

    def accept_one(self) -> None:
        """Take one connection off the listening socket and serve it in a thread."""
        try:
            fd, client = self.socket._accept()  # type: ignore[attr-defined]  # socket.accept's
        except OSError:
            return  # the client went away before we accepted
        conn = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM, 0, fd)
        try:
            threading.Thread(target=Handler(self, conn, client).run, daemon=True).start()
        except RuntimeError as e:  # no thread to be had: drop this one, keep serving
            log(self.identity.role, f"cannot serve {client[0]}: {e}")
            conn.close()

    def close(self) -> None:
        self.socket.close()


class Handler:
    """HTTP/1.0, GET only, one request per connection.

    Written on the socket itself rather than ``http.server``, which pulls in
    ``http.client``, ``email`` and ``ssl`` (about 90 ms of CPU against 30), or
    ``socketserver``, whose ``socket``, ``selectors`` and ``signal`` build
    enum classes from the platform's constants at import (a third of what
    is left): paid at every start of every component of every deploy. The
    proxy and the score client, which need a client, import ``http.client``
    and ``urllib`` when they run.
    """

    timeout = 30.0  # a client that sends no request line does not hold a thread forever

    def __init__(self, server: SampleServer, conn: _socket.socket, client: tuple[str, int]) -> None:
        self.server = server
        self.conn = conn
        self.client_address = client
        self.requestline = ""
        self.path = ""
        self._buffer = b""

    def run(self) -> None:
        try:
            self.conn.settimeout(self.timeout)
            self.handle()
        except OSError:
            pass  # the client went away or never finished its request
        except Exception:
            import traceback

            traceback.print_exc()
        finally:
            try:  # noqa: SIM105 - contextlib would be imported at every start
                self.conn.shutdown(_socket.SHUT_WR)
            except OSError:
                pass
            self.conn.close()

    def readline(self, limit: int) -> bytes:
        """One line (with its newline) of at most ``limit`` bytes; b"" at the end."""
        while b"\n" not in self._buffer and len(self._buffer) < limit:
            chunk = self.conn.recv(4096)
            if not chunk:
                break
            self._buffer += chunk
        end = self._buffer.find(b"\n", 0, limit)
        end = limit if end < 0 else end + 1
        line, self._buffer = self._buffer[:end], self._buffer[end:]
        return line

    def handle(self) -> None:
        self.requestline = self.readline(_LINE_LIMIT).decode("latin-1").rstrip("\r\n")
        while self.readline(_LINE_LIMIT) not in (b"\r\n", b"\n", b""):
            pass  # headers: nothing here depends on them
        parts = self.requestline.split()
        if len(parts) < 2:
            return
        if parts[0] != "GET":
            self.reply(405, b"only GET is served\n")
            return
        self.path = parts[1]
        self.do_GET()

    def do_GET(self) -> None:
        identity = self.server.identity
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            if self.server.hang_health:
                time.sleep(10)
            if self.server.fail_health:
                text = f"failing {identity.role} {identity.version} (FAIL_HEALTH=1)\n"
                self.reply(503, text.encode())
            else:
                text = f"ok {identity.role} {identity.version}\n"
                self.reply(200, text.encode())
        elif path == "/":
            self.reply_json(identity.document())
        elif self.server.upstream and (path == "/upstream" or path.startswith("/api/")):
            self.proxy(self.server.upstream, "/" if path == "/upstream" else self.path)
        elif identity.role == "api" and path.startswith("/api/"):
            with self.server.lock:
                self.server.requests += 1
                count = self.server.requests
            time.sleep(self.server.slow_s)
            if self.server.planted_fault and count % 3 == 0:
                self.reply(500, b"planted fault\n")
                return
            self.reply_json({**identity.document(), "path": path})
        else:
            self.reply(404, f"no such path: {path}\n".encode())

    def proxy(self, upstream: tuple[str, int], target: str) -> None:
        import http.client

        host, port = upstream
        conn = http.client.HTTPConnection(host, port, timeout=UPSTREAM_TIMEOUT_S)
        try:
            conn.request("GET", target, headers={"X-Forwarded-For": self.client_address[0]})
            response = conn.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException) as e:
            text = f"upstream {host}:{port} unreachable: {e}\n"
            self.reply(502, text.encode())
            return
        finally:
            conn.close()
        content_type = response.getheader("Content-Type", "application/octet-stream")
        self.reply(response.status, body, content_type, {"X-Upstream": f"{host}:{port}"})

    def reply_json(self, document: dict[str, Any]) -> None:
        import json

        body = json.dumps(document, sort_keys=True).encode() + b"\n"
        self.reply(200, body, "application/json")

    def reply(
        self,
        status: int,
        body: bytes,
        content_type: str = "text/plain; charset=utf-8",
        headers: dict[str, str] | None = None,
    ) -> None:
        lines = [
            f"HTTP/1.0 {status} {REASONS.get(status, 'Unknown')}",
            "Server: chassis-sample-app",
            f"Content-Type: {content_type}",
            f"Content-Length: {len(body)}",
            "Connection: close",
        ]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        # Logged first: a client that has its answer finds it in the log, even
        # when a SIGTERM right after ends the process (request threads are
        # daemons, and the accept loop stops at once).
        log(self.server.identity.role, f'{self.client_address[0]} "{self.requestline}" {status} -')
        try:  # noqa: SIM105 - contextlib would be imported at every start
            self.conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        except OSError:  # the client went away
            pass


# -------------------------------------------------------------------- running

_SIGNAL_NAMES = {_signal.SIGTERM: "SIGTERM", _signal.SIGINT: "SIGINT"}


def stop_event(role: str) -> threading.Event:
    """An event set by SIGTERM or SIGINT."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log(role, f"received {_SIGNAL_NAMES.get(signum, signum)}, stopping")
        stop.set()

    _signal.signal(_signal.SIGTERM, on_signal)
    _signal.signal(_signal.SIGINT, on_signal)
    return stop


def accept_until(server: SampleServer, stop: threading.Event) -> None:
    """Serve connections (each in a thread of its own) until ``stop`` is set.

    The loop sleeps in ``poll`` on the listening socket and on a pipe the
    signal machinery writes to (``set_wakeup_fd``): nothing wakes it while
    the service is idle, and SIGTERM ends it at once, where
    ``socketserver``'s ``serve_forever`` looked for a stop every
    ``poll_interval``."""
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    previous = _signal.set_wakeup_fd(wake_w)
    listening = server.socket.fileno()
    try:
        waiting = select.poll()
        waiting.register(listening, select.POLLIN)
        waiting.register(wake_r, select.POLLIN)
        while not stop.is_set():
            for fd, _ in waiting.poll():
                if fd == wake_r:
                    try:
                        while os.read(wake_r, 512):
                            pass
                    except BlockingIOError:
                        pass
                elif not stop.is_set():
                    server.accept_one()
    finally:
        _signal.set_wakeup_fd(previous)
        os.close(wake_r)
        os.close(wake_w)


def serve(identity: Identity, bind: str, port: int, upstream: tuple[str, int] | None) -> int:
    stop = stop_event(identity.role)
    try:
        server = SampleServer((bind, port), identity, upstream)
    except OSError as e:
        log(identity.role, f"cannot listen on {bind}:{port}: {e}")
        return 1
    via = f" upstream {upstream[0]}:{upstream[1]}" if upstream else ""
    log(
        identity.role,
        f"listening on http://{bind}:{server.port} version {identity.version}"
        f" release {identity.release or '-'}{via}",
    )
    try:
        accept_until(server, stop)
    finally:
        server.close()
    log(identity.role, "stopped")
    return 0


def work(identity: Identity, ready_file: str) -> int:
    stop = stop_event(identity.role)
    token = f"{os.getpid()} {identity.role} {identity.version} {identity.release or '-'}\n"
    directory, name = os.path.split(ready_file)
    os.makedirs(directory or ".", exist_ok=True)
    partial = os.path.join(directory, f".{name}.{os.getpid()}")
    with open(partial, "w", encoding="utf-8") as f:
        f.write(token)
    os.replace(partial, ready_file)
    log(identity.role, f"ready ({ready_file}) version {identity.version}")
    ticks = 0
    try:
        while not stop.wait(1.0):
            ticks += 1
            if ticks % 60 == 0:
                log(identity.role, f"alive, {ticks} ticks")
    finally:
        # Leave the file alone if a newer worker has replaced it since.
        try:
            with open(ready_file, encoding="utf-8") as f:
                mine = f.read() == token
            if mine:
                os.unlink(ready_file)
        except OSError:
            pass
    log(identity.role, f"stopped after {ticks} ticks")
    return 0


def default_ready_file() -> str:
    return os.path.join(os.environ.get("CHASSIS_HOST_ROOT") or "", "run", "worker.ready")


def score(requests: int) -> int:
    """Measure the api on ``$CHASSIS_PORT_HTTP``: error rate and p95 latency."""
    port = os.environ.get("CHASSIS_PORT_HTTP", "")
    if not port.isdigit():
        sys.stderr.write("score: CHASSIS_PORT_HTTP is not set\n")
        return 2
    import json
    import urllib.error
    import urllib.request

    errors, latencies = 0, []
    for _ in range(requests):
        began = time.monotonic()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/score", timeout=5) as r:
                r.read()
        except (urllib.error.URLError, OSError):
            errors += 1
        latencies.append((time.monotonic() - began) * 1000)
    latencies.sort()
    p95 = latencies[max(0, int(len(latencies) * 0.95) - 1)] if latencies else 0.0
    print(json.dumps({"error_rate": errors / max(1, requests), "latency_p95_ms": round(p95, 3)}))
    return 0


def upstream_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def _upstream_option(text: str) -> tuple[str, int]:
    import argparse

    try:
        return upstream_address(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _default_role() -> str | None:
    stem = os.path.splitext(os.path.basename(__file__))[0]
    return stem if stem in ROLES else None


def _usual_args(argv: list[str]) -> types.SimpleNamespace | None:
    """What :func:`parse_args` gives for the command lines a stack runs
    (``--option value`` pairs, each option once, every value valid), without
    importing argparse: a third of this program's start. None for anything
    else (``--help``, ``--option=value``, a bad value), which argparse parses
    or refuses with its usual message."""
    if len(argv) % 2:
        return None
    given: dict[str, str] = {}
    for index in range(0, len(argv), 2):  # (no zip(strict=): hosts may run 3.7)
        option, value = argv[index], argv[index + 1]
        if option not in _OPTIONS or option in given or value.startswith("-"):
            return None
        given[option] = value
    role = given.get("--role", _default_role())
    port, requests = given.get("--port"), given.get("--requests", "30")
    if role not in ROLES or not requests.isdigit() or not (port is None or port.isdigit()):
        return None
    try:
        upstream = upstream_address(given["--upstream"]) if "--upstream" in given else None
    except ValueError:
        return None
    ready_file = given.get("--ready-file")
    return types.SimpleNamespace(
        role=role,
        bind=given.get("--bind", "127.0.0.1"),
        port=None if port is None else int(port),
        upstream=upstream,
        requests=int(requests),
        ready_file=ready_file,
    )


_OPTIONS = ("--role", "--bind", "--port", "--upstream", "--requests", "--ready-file")


def parse_args(argv: list[str] | None) -> Any:
    usual = _usual_args(sys.argv[1:] if argv is None else argv)
    return usual if usual is not None else _argparse_args(argv)


def _argparse_args(argv: list[str] | None) -> Any:
    import argparse

    default_role = _default_role()
    parser = argparse.ArgumentParser(description="Chassis sample app service.")
    parser.add_argument(
        "--role",
        choices=ROLES,
        default=default_role,
        required=default_role is None,
        help="which service to run (default: this file's name)",
    )
    parser.add_argument("--bind", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, help="port to listen on (0: any free port)")
    parser.add_argument(
        "--upstream",
        type=_upstream_option,
        help=f"gateway: HOST:PORT of the api (default {DEFAULT_UPSTREAM})",
    )
    parser.add_argument("--requests", type=int, default=30, help="score: requests to send")
    parser.add_argument(
        "--ready-file",
        help="worker: file written when ready "
        "(default $CHASSIS_HOST_ROOT/run/worker.ready, else run/worker.ready)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    role: str = args.role
    if flag("CRASH_ON_START"):
        sys.stderr.write(
            f"{role}: CRASH_ON_START=1 is set: exiting with status {EXIT_CRASH}"
            " (deliberately broken release)\n"
        )
        return EXIT_CRASH
    if role == "score":
        return score(args.requests)
    identity = Identity(role, read_version(), os.environ.get("CHASSIS_RELEASE_ID") or None)
    if role == "worker":
        return work(identity, args.ready_file or default_ready_file())
    port: int = DEFAULT_PORTS[role] if args.port is None else args.port
    upstream: tuple[str, int] | None = None
    if role == "gateway":
        upstream = args.upstream or upstream_address(DEFAULT_UPSTREAM)
    return serve(identity, args.bind, port, upstream)


if __name__ == "__main__":
    sys.exit(main())
