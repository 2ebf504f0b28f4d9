"""Readable output (issue 13, item 9): each host's steps as they end, with
their elapsed time; the health window's attempts; one line per failed host
and no traceback; colour only on a terminal without ``NO_COLOR``; ``--json``
stdout stays pure JSON (progress goes to stderr).

Real deploys of the sample app to three local hosts (``tests/engine/conftest.py``:
v3 fails its health gate on the gateway and the api hosts).
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from adapters.health.gate import HealthGate
from adapters.health.probes import ProbeResult
from chassis.cli import cli
from chassis.cli.app import App, table
from tests.conftest import Runner
from tests.engine import conftest as engine

shop = engine.shop  # the workspace fixture of the engine tests

DEPLOY = ("deploy", "shop", "--env", "dev", "--profile", "ternary-split-3")
ESC = "\x1b"
STEP_OK = re.compile(r"^(dev-\d): ([a-z-]+) ok \((\d+\.\d\d)s\)$")
ATTEMPT = re.compile(
    r"^(dev-\d): health (\w+) attempt (\d+): (.+) "
    r"\((\d+)/(\d+) passes needed, (\d+\.\d)s of (\d+(?:\.\d+)?)s\)$"
)


def steps_per_host(run: Runner, label: str) -> dict[str, list[str]]:
    plan = json.loads(run.ok(*DEPLOY, "--release", label, "--dry-run", "--json").stdout)
    return {h["host"]: h["steps"] for h in plan["hosts"]}


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_a_deploy_tells_each_step_of_each_host_with_its_elapsed_time(
    run: Runner, shop: Path
) -> None:
    steps = steps_per_host(run, "v1")
    result = run.ok(*DEPLOY, "--release", "v1")
    told: dict[str, list[str]] = {}
    for line in lines(result.stderr):
        found = STEP_OK.match(line)
        if found:
            told.setdefault(found[1], []).append(found[2])
            assert 0 <= float(found[3]) < 60, line
    assert told == steps, result.stderr  # every step, in order, once, for every host
    for host in steps:
        assert f"{host}: deploying v1" in result.stderr
        assert f"{host}: v1 active and healthy" in result.stderr
    # The gate's attempts are visible: each health-checked component's first one at least.
    attempts = [m for m in map(ATTEMPT.match, lines(result.stderr)) if m]
    assert {m[2] for m in attempts if m[3] == "1"} >= {"gateway", "api"}, result.stderr
    assert ESC not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_a_failing_health_gate_shows_its_attempts_and_one_line_per_failed_host(
    run: Runner, shop: Path
) -> None:
    run.ok(*DEPLOY, "--release", "v1")
    result = run(*DEPLOY, "--release", "v3", "--json")
    assert result.exit_code == 16, result.stderr
    summary = json.loads(result.stdout)  # stdout is the summary alone: no progress in it
    failed = sorted(h for h, r in summary["hosts"].items() if not r["ok"])
    assert len(failed) >= 2, summary  # the gateway's host and the api's host
    err = lines(result.stderr)

    # The window, attempt by attempt: failures with their cause and the count needed.
    attempts = [m for m in map(ATTEMPT.match, err) if m]
    for host in failed:
        mine = [m for m in attempts if m[1] == host]
        assert mine, (host, result.stderr)
        failing = [m for m in mine if "status 503" in m[4]]
        assert failing and all(m[5] == "0" for m in failing), result.stderr
        assert {m[8] for m in mine} == {"4"}, "the window is the stack's 4000 ms"
        # Throttled: a 4 s window of 500 ms attempts (8 or so) is told about once a second.
        numbers = [int(m[3]) for m in mine]
        assert numbers == sorted(numbers) and numbers[0] == 1
        assert len(mine) <= 6, mine

    # One concise line per failed host: its step, elapsed time and cause.
    for host in failed:
        failure_lines = [
            line
            for line in err
            if line.startswith(f"{host}: ") and ("FAILED" in line or "failed at" in line)
        ]
        assert len(failure_lines) == 1, (host, failure_lines)
        (line,) = failure_lines
        assert re.match(rf"^{host}: health FAILED \(\d+\.\d\ds\): \w+ failed its health gate", line)
        assert "window of 4000 ms ended" in line and "\n" not in line
        assert f"{host}: restored" in result.stderr  # and the restore, once
    assert "Traceback" not in result.stderr
    assert ESC not in result.stderr + result.stdout


def test_no_escape_codes_off_a_terminal_even_without_no_color(
    shop: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``color=True`` stops click from stripping escape codes itself: none come
    anyway, because stdout and stderr are not terminals."""
    monkeypatch.delenv("NO_COLOR")
    runner = CliRunner()
    ok = runner.invoke(cli, [*DEPLOY, "--release", "v1"], color=True, catch_exceptions=False)
    assert ok.exit_code == 0, ok.stderr
    failed = runner.invoke(cli, [*DEPLOY, "--release", "v3"], color=True, catch_exceptions=False)
    assert failed.exit_code == 16, failed.stderr
    for result in (ok, failed):
        assert re.search(r"^dev-\d: upload ok \(\d+\.\d\ds\)$", result.stderr, re.M)
        assert ESC not in result.stderr and ESC not in result.stdout
    assert re.search(r"^dev-\d: health FAILED \(", failed.stderr, re.M), failed.stderr
    assert "failed at health" in failed.stdout and "restored" in failed.stdout


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("no_color", "tty", "coloured"),
    [(None, True, True), ("1", True, False), ("", True, True), (None, False, False)],
)
def test_colour_only_on_a_terminal_without_no_color(
    monkeypatch: pytest.MonkeyPatch, no_color: str | None, tty: bool, coloured: bool
) -> None:
    from chassis.cli.app import outcome_colour

    if no_color is None:
        monkeypatch.delenv("NO_COLOR")
    else:
        monkeypatch.setenv("NO_COLOR", no_color)
    err = Terminal() if tty else io.StringIO()
    out = Terminal() if tty else io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    monkeypatch.setattr("sys.stdout", out)
    app = App()
    app.note("dev-1: upload ok (0.42s)")
    app.note("dev-2: health FAILED (4.01s): api failed its health gate")
    app.note("dev-2: restored release v2 and it is healthy")
    table(
        [["dev-1", "ok", "", "x"], ["dev-2", "failed at health", "restored", "y"]],
        ["HOST", "RESULT", "", "DETAIL"],
        colours={1: outcome_colour, 2: outcome_colour},
    )
    notes, summary = err.getvalue(), out.getvalue()
    plain = re.compile(r"\x1b\[[0-9;]*m")
    assert plain.sub("", notes) == (
        "dev-1: upload ok (0.42s)\n"
        "dev-2: health FAILED (4.01s): api failed its health gate\n"
        "dev-2: restored release v2 and it is healthy\n"
    )
    rows = plain.sub("", summary).splitlines()
    assert rows[0] == "HOST   RESULT                      DETAIL"  # widths of the plain text
    assert rows[2] == "dev-2  failed at health  restored  y"
    if not coloured:
        assert ESC not in notes + summary
        return
    green, red, yellow = "\x1b[32m", "\x1b[31m", "\x1b[33m"
    assert f"upload {green}ok" in notes and f"{red}" in notes.splitlines()[1]
    assert f"{yellow}restored" in notes
    assert f"{green}ok" in summary and f"{red}" in summary and f"{yellow}restored" in summary
    assert ESC not in summary.splitlines()[0], "the header row is plain"


def test_attempts_are_told_on_a_change_and_at_most_once_a_second() -> None:
    from adapters.health.gate import Attempt
    from chassis.engine.executor import attempt_reporter

    told: list[str] = []
    now = [0.0]
    report = attempt_reporter(told.append, "dev-1: health api", clock=lambda: now[0])
    outcomes = [False, False, False, False, False, True, True, False]
    for number, ok in enumerate(outcomes, start=1):
        now[0] = (number - 1) * 0.4
        result = ProbeResult(ok, "status 200" if ok else "connection refused", 3)
        consecutive = 1 if number in (6, 8) else (2 if number == 7 else 0)
        report(Attempt(number, result, consecutive, 3, round(now[0] * 1000), 8000))
    assert told == [
        "dev-1: health api attempt 1: connection refused (0/3 passes needed, 0.0s of 8s)",
        "dev-1: health api attempt 4: connection refused (0/3 passes needed, 1.2s of 8s)",
        "dev-1: health api attempt 6: status 200 (1/3 passes needed, 2.0s of 8s)",
        "dev-1: health api attempt 8: connection refused (1/3 passes needed, 2.8s of 8s)",
    ]


def test_the_gate_tells_each_attempt_and_a_broken_listener_changes_nothing() -> None:
    clock = [0.0]
    gate = HealthGate(
        interval_ms=100,
        passes=2,
        window_ms=1000,
        clock=lambda: clock[0],
        sleep=lambda s: clock.__setitem__(0, clock[0] + s),
    )
    answers = iter([False, True, True])
    seen: list[Any] = []

    def listener(attempt: Any) -> None:
        seen.append(attempt)
        raise RuntimeError("stderr is gone")

    result = gate.run(lambda: ProbeResult(next(answers), "probe", 1), on_attempt=listener)
    assert result.passed and result.attempts == 3
    assert [(a.number, a.result.ok, a.consecutive) for a in seen] == [
        (1, False, 0),
        (2, True, 1),
        (3, True, 2),
    ]
    assert {(a.passes, a.window_ms) for a in seen} == {(2, 1000)}
