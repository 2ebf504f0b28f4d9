"""Health probes against real servers, and the gate's logic on a simulated clock."""

from __future__ import annotations

import http.server
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from adapters.connectors import LocalConnector
from adapters.health import (
    GateResult,
    HealthCheck,
    HealthGate,
    ProbeResult,
    command_probe,
    http_probe,
    probe_for,
    tcp_probe,
)

# -- the gate, on a fake clock -----------------------------------------------


@dataclass
class FakeTime:
    """A clock that only moves when someone sleeps (or a probe takes time)."""

    now: float = 100.0
    sleeps: list[float] = field(default_factory=list)

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now += seconds


def scripted(
    t: FakeTime, outcomes: str, *, takes_ms: int = 0, detail: str = "status 503"
) -> Callable[[], ProbeResult]:
    """A probe answering from ``outcomes`` ('+' pass, '-' fail), then failing forever."""
    answers = iter(outcomes)

    def probe() -> ProbeResult:
        t.now += takes_ms / 1000
        ok = next(answers, "-") == "+"
        return ProbeResult(ok, "status 200" if ok else detail, takes_ms)

    return probe


def gate(t: FakeTime, **settings: int) -> HealthGate:
    return HealthGate(**settings, clock=t.clock, sleep=t.sleep)


def test_passes_after_the_required_consecutive_passes() -> None:
    t = FakeTime()
    result = gate(t, interval_ms=500, passes=3, window_ms=30000).run(scripted(t, "-+++"))
    assert result.passed
    assert (result.attempts, result.consecutive) == (4, 3)
    assert [r.ok for r in result.results] == [False, True, True, True]
    assert t.sleeps == [0.5, 0.5, 0.5]  # nothing after the deciding attempt
    assert result.reason == "passed: 3 consecutive passes after 4 attempts in 1500 ms"
    assert result.elapsed_ms == 1500


def test_a_failure_resets_the_count() -> None:
    t = FakeTime()
    result = gate(t, interval_ms=100, passes=2, window_ms=10000).run(scripted(t, "+-+-++"))
    assert result.passed and result.attempts == 6 and result.consecutive == 2


def test_fails_at_the_window_end_naming_the_last_failure() -> None:
    t = FakeTime()
    probe = scripted(t, "+-+", detail="GET http://h:1/: status 503, expected 200")
    result = gate(t, interval_ms=250, passes=2, window_ms=1000).run(probe)
    assert not result.passed
    # Attempts start at 0, 250, 500, 750 and 1000 ms; none after the window.
    assert result.attempts == 5 and result.consecutive == 0
    assert t.now - 100.0 == pytest.approx(1.0)
    assert result.reason == (
        "window of 1000 ms ended after 5 attempts with 0 of 2 consecutive passes; "
        "last failure: GET http://h:1/: status 503, expected 200"
    )


def test_window_counts_probe_time_and_interval_is_start_to_start() -> None:
    t = FakeTime()
    result = gate(t, interval_ms=300, passes=5, window_ms=1000).run(scripted(t, "", takes_ms=200))
    assert t.sleeps == pytest.approx([0.1, 0.1, 0.1])  # 300 ms apart, start to start
    assert result.attempts == 4 and not result.passed


def test_slow_probe_past_the_window_ends_the_gate() -> None:
    t = FakeTime()
    result = gate(t, interval_ms=100, passes=2, window_ms=1000).run(scripted(t, "+", takes_ms=5000))
    assert not result.passed and result.attempts == 1
    assert "1 of 2 consecutive passes; no attempt failed" in result.reason


def test_keeps_only_the_last_ten_results() -> None:
    t = FakeTime()
    probe = scripted(t, "-" * 30 + "++")
    result = gate(t, interval_ms=10, passes=2, window_ms=60000).run(probe)
    assert result.passed and result.attempts == 32
    assert len(result.results) == 10
    assert [r.ok for r in result.results][-2:] == [True, True]


def test_a_probe_that_raises_is_a_failed_attempt() -> None:
    t = FakeTime()
    calls = iter([RuntimeError("connector exploded"), None, None])

    def probe() -> ProbeResult:
        error = next(calls)
        if error is not None:
            raise error
        return ProbeResult(True, "ok", 1)

    result = gate(t, interval_ms=10, passes=2, window_ms=1000).run(probe)
    assert result.passed and result.attempts == 3
    assert result.results[0] == ProbeResult(
        False, "probe raised RuntimeError: connector exploded", 0
    )


def refusing(t: FakeTime, outcomes: str) -> Callable[[], ProbeResult]:
    """A probe answering from ``outcomes``: 'r' refused, '-' answered but
    failed, '+' passed; then passing forever."""
    answers = iter(outcomes)

    def probe() -> ProbeResult:
        kind = next(answers, "+")
        if kind == "r":
            return ProbeResult(False, "connection refused", 0, refused=True)
        return ProbeResult(kind == "+", "status 200" if kind == "+" else "status 503", 0)

    return probe


def test_while_nothing_listens_the_gate_looks_again_sooner() -> None:
    t = FakeTime()
    result = gate(t, interval_ms=100, passes=1, window_ms=30000).run(refusing(t, "rrr"))
    assert result.passed and result.attempts == 4
    assert t.sleeps == pytest.approx([0.01, 0.02, 0.025])  # seen at 55 ms, not at 300
    assert result.elapsed_ms == 55


def test_the_sooner_looks_double_up_to_the_interval() -> None:
    t = FakeTime()
    result = gate(t, interval_ms=25, passes=2, window_ms=30000).run(refusing(t, "rrrr"))
    assert result.passed
    assert t.sleeps == pytest.approx([0.01, 0.02, 0.025, 0.025, 0.025])


def test_the_sooner_looks_stop_doubling_at_the_ready_cap() -> None:
    """A server that binds after 160 ms is seen within 25 ms of it: refusals
    are retried every 25 ms once the doubling gets there, however long the
    interval."""
    t = FakeTime()
    result = gate(t, interval_ms=100, passes=1, window_ms=30000).run(refusing(t, "r" * 8))
    assert result.passed
    assert t.sleeps == pytest.approx([0.01, 0.02, 0.025, 0.025, 0.025, 0.025, 0.025, 0.025])
    assert result.elapsed_ms == 180


def test_once_something_listened_a_refusal_waits_the_whole_interval() -> None:
    t = FakeTime()
    result = gate(t, interval_ms=100, passes=2, window_ms=30000).run(refusing(t, "r-rr+"))
    assert result.passed
    # After the 503 (something listened) a refused server may be restarting:
    # the gate keeps its interval, as for any other failure.
    assert t.sleeps == pytest.approx([0.01, 0.1, 0.1, 0.1, 0.1])


def test_refusals_still_fail_the_gate_when_the_window_ends() -> None:
    t = FakeTime()
    result = gate(t, interval_ms=100, passes=1, window_ms=1000).run(refusing(t, "r" * 100))
    assert not result.passed
    assert result.reason.endswith("last failure: connection refused")
    assert t.now - 100.0 <= 1.0


def test_results_hold_ints_and_strings_only() -> None:
    t = FakeTime()
    result: GateResult = gate(t, interval_ms=333, passes=2, window_ms=1000).run(
        scripted(t, "++", takes_ms=7)
    )
    for r in result.results:
        assert type(r.elapsed_ms) is int and isinstance(r.detail, str)
    assert type(result.elapsed_ms) is int
    with pytest.raises(TypeError):
        ProbeResult(True, "x", 1.5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "settings",
    [{"passes": 0}, {"timeout_ms": 0}, {"interval_ms": -1}, {"window_ms": 1.5}],
)
def test_bad_gate_settings_are_refused(settings: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="health gate"):
        HealthGate(**settings)


# -- real servers ----------------------------------------------------------------


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status, body = {"/health": (200, b"status: all ok\n"), "/slow": (200, b"late")}.get(
            self.path, (503, b"starting\n")
        )
        if self.path == "/slow":
            time.sleep(1.0)
        try:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the probe gave up (timeout test)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[int]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_http_probe_passes_on_status_and_body(server: int) -> None:
    result = http_probe("127.0.0.1", server, "/health", body_contains="all ok")
    assert result.ok, result.detail
    assert result.detail == f"GET http://127.0.0.1:{server}/health: status 200"
    assert type(result.elapsed_ms) is int and result.elapsed_ms < 2000


def test_http_probe_fails_on_status_mismatch(server: int) -> None:
    result = http_probe("127.0.0.1", server, "/starting")
    assert not result.ok
    assert result.detail == f"GET http://127.0.0.1:{server}/starting: status 503, expected 200"
    assert http_probe("127.0.0.1", server, "/starting", expect_status=503).ok


def test_http_probe_fails_on_body_mismatch(server: int) -> None:
    result = http_probe("127.0.0.1", server, "/health", body_contains="version 2")
    assert not result.ok
    assert result.detail.endswith("status 200 but body lacks 'version 2'")


def test_http_probe_fails_when_refused(closed_port: tuple[str, int]) -> None:
    address, port = closed_port
    result = http_probe(address, port, timeout_ms=500)
    assert not result.ok and result.detail.endswith("connection refused")
    assert result.refused


def test_only_a_refused_connection_counts_as_nothing_listening(
    server: int, silent_listener: tuple[str, int], closed_port: tuple[str, int]
) -> None:
    assert not http_probe("127.0.0.1", server, "/health", expect_status=204).refused
    assert not http_probe(*silent_listener, timeout_ms=100).refused
    assert not tcp_probe("127.0.0.1", server).refused
    assert tcp_probe(*closed_port, timeout_ms=500).refused


def test_http_probe_times_out_on_a_silent_server(silent_listener: tuple[str, int]) -> None:
    address, port = silent_listener
    began = time.monotonic()
    result = http_probe(address, port, timeout_ms=200)
    assert not result.ok and result.detail.endswith("timed out after 200 ms")
    assert time.monotonic() - began < 1.5


def test_http_probe_times_out_on_a_slow_answer(server: int) -> None:
    result = http_probe("127.0.0.1", server, "/slow", timeout_ms=200)
    assert not result.ok and "timed out after 200 ms" in result.detail


def test_tcp_probe(server: int, closed_port: tuple[str, int]) -> None:
    ok = tcp_probe("127.0.0.1", server)
    assert ok.ok and ok.detail == f"tcp 127.0.0.1:{server}: connected"
    address, port = closed_port
    refused = tcp_probe(address, port, timeout_ms=500)
    assert not refused.ok and refused.detail == f"tcp {address}:{port}: connection refused"


def test_command_probe_runs_through_the_connector() -> None:
    connector = LocalConnector("local-1")
    assert command_probe(connector, "test -d /").ok
    failed = command_probe(connector, "echo not ready >&2; exit 2")
    assert not failed.ok
    assert failed.detail == "command 'echo not ready >&2; exit 2': exit 2: not ready"
    slow = command_probe(connector, "sleep 5", timeout_ms=200)
    assert not slow.ok and slow.detail.endswith("timed out after 200 ms")
    assert slow.elapsed_ms < 2000


# -- the stack file's check, end to end --------------------------------------------


def test_health_check_validates_like_the_stack_file() -> None:
    assert HealthCheck(type="http", port=8080) == HealthCheck(
        "http", 8080, "/", 200, None, None, 500, 2000, 2, 30000
    )
    for bad in (
        {"type": "ping", "port": 1},
        {"type": "http"},
        {"type": "tcp", "port": 70000},
        {"type": "command"},
        {"type": "http", "port": 1, "path": "health"},
        {"type": "http", "port": 1, "path": "/x\r\nX-Evil: 1"},
        {"type": "http", "port": 1, "expect_status": 42},
        {"type": "http", "port": 1, "passes": 0},
    ):
        with pytest.raises(ValueError):
            HealthCheck(**bad)


def test_probe_for_each_type_against_real_targets(server: int) -> None:
    connector = LocalConnector("local-1")
    checks = [
        HealthCheck(type="http", port=server, path="/health", body_contains="ok"),
        HealthCheck(type="tcp", port=server),
        HealthCheck(type="command", command="true"),
    ]
    for check in checks:
        assert probe_for(check, "127.0.0.1", connector)().ok, check
    failing = HealthCheck(type="http", port=server, path="/nope")
    assert not probe_for(failing, "127.0.0.1", connector)().ok


def test_real_gate_passes_against_a_real_server(server: int) -> None:
    check = HealthCheck(type="http", port=server, path="/health", interval_ms=20, passes=3)
    gate = HealthGate(check.interval_ms, check.timeout_ms, check.passes, check.window_ms)
    result = gate.run(probe_for(check, "127.0.0.1", LocalConnector("local-1")))
    assert result.passed and result.attempts == 3


def test_real_gate_sees_a_server_that_starts_listening_within_one_interval() -> None:
    """The port starts listening right after the gate's first (refused) look.
    With a 60 s interval and a 10 s window the old pace gets no second look
    (the window is over first); looking again sooner while refused, it passes."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    looks: list[ProbeResult] = []

    def probe() -> ProbeResult:
        result = tcp_probe("127.0.0.1", port, timeout_ms=500)
        if not looks:
            listener.listen(8)  # the server is up from now on
        looks.append(result)
        return result

    gate = HealthGate(interval_ms=60000, timeout_ms=500, passes=1, window_ms=10000)
    try:
        result = gate.run(probe)
    finally:
        listener.close()
    assert result.passed, result.reason
    assert [r.refused for r in looks] == [True, False]
    assert looks[-1].ok


def test_real_gate_fails_against_a_closed_port(closed_port: tuple[str, int]) -> None:
    address, port = closed_port
    gate = HealthGate(interval_ms=20, timeout_ms=200, passes=2, window_ms=100)
    result = gate.run(lambda: tcp_probe(address, port, timeout_ms=200))
    assert not result.passed and 1 <= result.attempts <= 6
    assert result.reason.endswith(f"last failure: tcp {address}:{port}: connection refused")
