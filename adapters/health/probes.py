"""Health probes: one attempt each, returning a :class:`ProbeResult`.

``http`` and ``tcp`` connect from the controller to the host's address with
the standard library only (``http`` through :mod:`adapters.health.http_get`,
one HTTP/1.1 GET on a socket); ``command`` runs on the target through its
connector. Each probe catches its own failures (refused, timed out, wrong
status ...) and reports them in ``detail``; it never raises for an unhealthy
target. Results hold ints and strings only: they are recorded in a ledger
that forbids floats.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from adapters.connectors.base import Connector
from adapters.errors import ConnectorError, ConnectorTimeout, one_line
from adapters.health.http_get import HTTPProblem, get, host_port, path_problem

__all__ = [
    "BODY_LIMIT",
    "CheckType",
    "HealthCheck",
    "ProbeResult",
    "command_probe",
    "http_probe",
    "probe_for",
    "tcp_probe",
]

BODY_LIMIT = 64 * 1024  # bytes of a response body searched for ``body_contains``


@dataclass(frozen=True)
class ProbeResult:
    """One probe attempt: passed or not, why, and how long it took (whole ms)."""

    ok: bool
    detail: str
    elapsed_ms: int
    refused: bool = False
    """Nothing listened: the connection was refused (the server is not up yet,
    or no longer); the gate looks again sooner until something first listens."""

    def __post_init__(self) -> None:
        if type(self.elapsed_ms) is not int or self.elapsed_ms < 0:
            raise TypeError("elapsed_ms must be a non-negative int")


def _ms_since(started: float) -> int:
    return max(0, round((time.monotonic() - started) * 1000))


def _seconds(timeout_ms: int) -> float:
    if timeout_ms <= 0:
        raise ValueError("timeout_ms must be positive")
    return timeout_ms / 1000


def _os_cause(e: BaseException, timeout_ms: int) -> str:
    if isinstance(e, TimeoutError):
        return f"timed out after {timeout_ms} ms"
    if isinstance(e, socket.gaierror):
        return f"cannot resolve address: {e.strerror or e}"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror.lower()
    return one_line(str(e) or type(e).__name__, limit=200)


def http_probe(
    host: str,
    port: int,
    path: str = "/",
    *,
    expect_status: int = 200,
    body_contains: str | None = None,
    timeout_ms: int = 2000,
) -> ProbeResult:
    """GET ``http://host:port/path``: pass on ``expect_status`` (and the body text)."""
    timeout = _seconds(timeout_ms)
    if not path.startswith("/"):
        path = "/" + path
    url = f"http://{host_port(host, port)}{path}"
    started = time.monotonic()
    deadline = started + timeout
    try:
        limit = BODY_LIMIT if body_contains is not None else 0
        status, body = get(host, port, path, deadline=deadline, limit=limit)
    except HTTPProblem as e:
        return ProbeResult(False, f"GET {url}: {e}", _ms_since(started))
    except OSError as e:
        refused = isinstance(e, ConnectionRefusedError)
        detail = f"GET {url}: {_os_cause(e, timeout_ms)}"
        return ProbeResult(False, detail, _ms_since(started), refused=refused)
    elapsed = _ms_since(started)
    if time.monotonic() > deadline:
        return ProbeResult(False, f"GET {url}: timed out after {timeout_ms} ms", elapsed)
    if status != expect_status:
        return ProbeResult(False, f"GET {url}: status {status}, expected {expect_status}", elapsed)
    if body_contains is not None and body_contains.encode("utf-8") not in body:
        return ProbeResult(
            False, f"GET {url}: status {status} but body lacks {body_contains!r}", elapsed
        )
    return ProbeResult(True, f"GET {url}: status {status}", elapsed)


def tcp_probe(host: str, port: int, *, timeout_ms: int = 2000) -> ProbeResult:
    """Pass when a TCP connection to ``host:port`` opens within the timeout."""
    timeout = _seconds(timeout_ms)
    target = host_port(host, port)
    started = time.monotonic()
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        refused = isinstance(e, ConnectionRefusedError)
        detail = f"tcp {target}: {_os_cause(e, timeout_ms)}"
        return ProbeResult(False, detail, _ms_since(started), refused=refused)
    return ProbeResult(True, f"tcp {target}: connected", _ms_since(started))


def command_probe(connector: Connector, command: str, *, timeout_ms: int = 2000) -> ProbeResult:
    """Run ``command`` on the target (``sh -c``); pass on exit status 0."""
    timeout = _seconds(timeout_ms)
    shown = one_line(command, limit=120)
    started = time.monotonic()
    try:
        result = connector.run(command, timeout=timeout, display=f"health: {shown}")
    except ConnectorTimeout:
        return ProbeResult(
            False, f"command {shown!r}: timed out after {timeout_ms} ms", _ms_since(started)
        )
    except ConnectorError as e:
        return ProbeResult(False, f"command {shown!r}: {e.cause}", _ms_since(started))
    elapsed = _ms_since(started)
    if result.ok:
        return ProbeResult(True, f"command {shown!r}: exit 0", elapsed)
    output = one_line(result.stderr or result.stdout, limit=200)
    tail = f": {output}" if output else ""
    return ProbeResult(False, f"command {shown!r}: exit {result.exit_code}{tail}", elapsed)


# -- the stack file's health table ------------------------------------------------

CheckType = Literal["http", "tcp", "command"]


@dataclass(frozen=True)
class HealthCheck:
    """One component's health check; field names and defaults are the stack file's.

    The gate timings (``interval_ms``, ``passes``, ``window_ms``) go to
    :class:`~adapters.health.gate.HealthGate`; ``timeout_ms`` bounds each probe.
    """

    type: CheckType
    port: int | None = None
    path: str = "/"
    expect_status: int = 200
    body_contains: str | None = None
    command: str | None = None
    interval_ms: int = 500
    timeout_ms: int = 2000
    passes: int = 2
    window_ms: int = 30000

    def __post_init__(self) -> None:
        if self.type not in ("http", "tcp", "command"):
            raise ValueError(
                f"health check type must be 'http', 'tcp' or 'command', not {self.type!r}"
            )
        if self.type in ("http", "tcp") and (
            type(self.port) is not int or not 0 < self.port < 65536
        ):
            raise ValueError(f"{self.type} health check needs a port in 1..65535")
        if self.type == "command" and not (self.command and self.command.strip()):
            raise ValueError("command health check needs a command")
        if not self.path.startswith("/"):
            raise ValueError(f"health check path must start with '/', not {self.path!r}")
        problem = path_problem(self.path)
        if problem is not None:
            raise ValueError(f"health check path {self.path!r}: {problem}")
        if type(self.expect_status) is not int or not 100 <= self.expect_status <= 599:
            raise ValueError(f"expect_status {self.expect_status!r} is not an HTTP status")
        for name in ("interval_ms", "timeout_ms", "passes", "window_ms"):
            value = getattr(self, name)
            least = 1 if name in ("timeout_ms", "passes") else 0
            if type(value) is not int or value < least:
                raise ValueError(f"health check {name} must be an int >= {least}, not {value!r}")


def probe_for(check: HealthCheck, address: str, connector: Connector) -> Callable[[], ProbeResult]:
    """A zero-argument probe (one attempt) for ``check`` against the host at ``address``.

    ``address`` is where the controller reaches the host (``127.0.0.1`` for a
    local host); ``connector`` runs ``command`` checks on the target.
    """
    if check.type == "command":
        if check.command is None:  # __post_init__ rules this out
            raise ValueError("command health check needs a command")
        shell = check.command
        return lambda: command_probe(connector, shell, timeout_ms=check.timeout_ms)
    if check.port is None:  # __post_init__ rules this out
        raise ValueError(f"{check.type} health check needs a port")
    port = check.port
    if check.type == "tcp":
        return lambda: tcp_probe(address, port, timeout_ms=check.timeout_ms)
    return lambda: http_probe(
        address,
        port,
        check.path,
        expect_status=check.expect_status,
        body_contains=check.body_contains,
        timeout_ms=check.timeout_ms,
    )
