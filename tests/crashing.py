"""Crash injection for tests: the chassis CLI, in this process, killed at a
chosen point, with no hook in production code.

    python -m tests.crashing SPEC -- <chassis arguments>

(cwd: the workspace; ``PYTHONPATH`` must hold the repository root). It wraps
``Ledger.append``, which every event of an operation goes through (its
intent, steps, activations, lease renewals and finish), then runs the CLI's
``main``. Once an append that holds an event matching ``SPEC`` has returned,
the process names that event on stderr and ends with ``os._exit(137)``: no
cleanup, no ``finally``, nothing flushed, as if killed right after that
event was stored.

``SPEC``:

``intent``
    an ``Installation.OperationStarted`` (a deploy's, rollback's or repair's
    intent; a recover's takeover is ``event:OperationResumed``).
``STEP`` or ``HOST:STEP``
    an ``Installation.StepRecorded`` of that step, on any host or on ``HOST``
    (``start``, ``dev-2:start``, ``dev-1:recover-probe``), whatever its outcome.
``retire`` or ``HOST:retire``
    a host retired: a ``retire`` step, an ``Installation.HostRetired`` event
    where the ledger has that class, or (before both existed) the
    ``HostRestored`` to nothing that recorded a retired host.
``event:CLASS[:N]``
    the ``N``-th event (default 1st) appended by this process whose class is
    named ``CLASS`` (``HostActivated``, ``LeaseRenewed``…); ``event:*:N`` is
    the ``N``-th event of any class.
``after:SECONDS``
    no hook: the process SIGKILLs itself ``SECONDS`` after the CLI starts
    (a random-time kill that needs no parent to time it).
``none``
    no hook at all (the CLI as is, for a baseline run).

The exit status 137 is what a shell reports for a process killed by SIGKILL,
so tests can tell "crashed where asked" from the CLI's own exit codes.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapters.connectors.fork_server import run_python_module

REPO = Path(__file__).resolve().parents[1]
CRASHED = 137
"""The exit status of a process that crashed at its spec (128 + SIGKILL)."""


@dataclass(frozen=True)
class Spec:
    """A parsed ``SPEC``: which appended event ends the process."""

    text: str
    kind: str
    """``intent``, ``step``, ``retire``, ``event``, ``after`` or ``none``."""
    host: str | None = None
    step: str | None = None
    event: str | None = None
    nth: int = 1
    seconds: float = 0.0

    @classmethod
    def parse(cls, text: str) -> Spec:
        if not text:
            raise ValueError("an empty crash spec")
        if text in ("none", "intent"):
            return cls(text, text)
        if text.startswith("after:"):
            seconds = float(text.removeprefix("after:"))
            if seconds < 0:
                raise ValueError(f"{text!r}: a negative delay")
            return cls(text, "after", seconds=seconds)
        if text.startswith("event:"):
            name, _, nth = text.removeprefix("event:").partition(":")
            if not name:
                raise ValueError(f"{text!r}: event:CLASS[:N] needs a class name (or *)")
            count = int(nth) if nth else 1
            if count < 1:
                raise ValueError(f"{text!r}: N counts from 1")
            return cls(text, "event", event=name, nth=count)
        host, _, step = text.rpartition(":")
        if not step:
            raise ValueError(f"{text!r}: STEP or HOST:STEP needs a step")
        kind = "retire" if step == "retire" else "step"
        return cls(text, kind, host=host or None, step=step)


class Trigger:
    """Counts appended events and says when one matches the spec."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.seen = 0
        """Events matching an ``event:`` spec's class, appended so far."""

    def matches(self, events: Sequence[Any]) -> bool:
        """Whether ``events`` (one stored append, in order) hold the crash point."""
        return self.match(events) is not None

    def match(self, events: Sequence[Any]) -> Any:
        """The first of ``events`` that is the crash point, or None."""
        return next((event for event in events if self._one(event)), None)

    def _one(self, event: Any) -> bool:
        spec = self.spec
        name = type(event).__name__
        if spec.kind == "intent":
            return name == "OperationStarted"
        if spec.kind == "event":
            if spec.event not in ("*", name):
                return False
            self.seen += 1
            return self.seen == spec.nth
        host = getattr(event, "host", None)
        if spec.host is not None and host != spec.host:
            return False
        if name == "StepRecorded":
            return bool(getattr(event, "step", None) == spec.step)
        if spec.kind == "retire":
            return name == "HostRetired" or _retired_by_restore(event)
        return False


def _retired_by_restore(event: Any) -> bool:
    """A ``HostRestored`` to nothing that says "retired…": how a retired host
    was recorded before ``HostRetired`` (a restore of a host that ran nothing
    before names no release either, but says otherwise)."""
    return (
        type(event).__name__ == "HostRestored"
        and getattr(event, "release_id", "") is None
        and str(getattr(event, "detail", "")).startswith("retired")
    )


def install(spec: Spec, crash: Callable[[], None] | None = None) -> Callable[[], None]:
    """Arrange for ``crash`` (default: ``os._exit(137)``) at ``spec``; returns
    the function that undoes it (tests that install it in-process need that)."""
    crash = crash or _exit
    if spec.kind == "none":
        return lambda: None
    if spec.kind == "after":
        timer = threading.Timer(spec.seconds, _sigkill)
        timer.daemon = True
        timer.start()
        return timer.cancel

    from ledger.application import Ledger

    original = Ledger.append
    trigger = Trigger(spec)
    lock = threading.Lock()  # lease renewals append from their own thread

    @functools.wraps(original)
    def append(self: Ledger, *aggregates: Any) -> Any:
        pending = [event for aggregate in aggregates for event in aggregate.pending_events]
        recordings = original(self, *aggregates)
        with lock:
            event = trigger.match(pending)
            if event is not None:
                _say(f"tests.crashing: {spec.text}: stopping after {describe(event)}")
                crash()
        return recordings

    Ledger.append = append  # type: ignore[method-assign]

    def undo() -> None:
        Ledger.append = original  # type: ignore[method-assign]

    return undo


def describe(event: Any) -> str:
    """``StepRecorded dev-2 start ok``: an event, briefly, for the stderr line."""
    words = [type(event).__name__]
    for name in ("host", "step", "label"):
        value = getattr(event, name, None)
        if isinstance(value, str):
            words.append(value)
    ok = getattr(event, "ok", None)
    if isinstance(ok, bool):
        words.append("ok" if ok else "failed")
    return " ".join(words)


def _say(line: str) -> None:
    with contextlib.suppress(OSError):
        os.write(2, (line + "\n").encode())


def _exit() -> None:
    os._exit(CRASHED)


def _sigkill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def command(spec: str, *args: str) -> list[str]:
    """The argv that runs ``chassis ARGS`` crashing at ``spec``."""
    Spec.parse(spec)  # a typo fails the test here, not as a run that never crashes
    return [sys.executable, "-m", "tests.crashing", spec, "--", *args]


def environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """``os.environ`` with the repository importable (for ``tests.crashing``)."""
    path = os.environ.get("PYTHONPATH")
    pythonpath = str(REPO) if not path else os.pathsep.join([str(REPO), path])
    return {**os.environ, "PYTHONPATH": pythonpath, **(extra or {})}


def run(spec: str, *args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``chassis ARGS`` in a subprocess in ``cwd`` that crashes at ``spec``.

    The process is forked from a warm interpreter (``_PRELOAD``) where one
    runs, else started as ``python -m tests.crashing``: the same program, a
    process of its own either way, crashed or killed for real.
    """
    return run_python_module(
        "tests.crashing",
        command(spec, *args)[3:],  # what follows python -m tests.crashing
        cwd=str(cwd),
        env=environment(),
        timeout=timeout,
        preload=_PRELOAD,
    )


def popen(spec: str, *args: str, cwd: Path) -> subprocess.Popen[str]:
    """Like :func:`run`, started in the background (stdout and stderr piped)."""
    return subprocess.Popen(
        command(spec, *args),
        cwd=cwd,
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# Crashed runs are about 200 of the suite's processes, and a new interpreter
# spends about 0.15 s of CPU importing the CLI before it gets anywhere. So
# they are forked from an interpreter that has imported it already: a fork
# server of this test process, told what to preload.
_PRELOAD = (
    "tests.crashing",
    "chassis.cli",
    "chassis.cli.deploy_cmd",
    "chassis.engine.deploy",
    "chassis.engine.rollback",
    "chassis.engine.recover",
    "chassis.engine.reconcile",
    "chassis.aftermath",
    "chassis.receipts",
    "chassis.checkpoints",
    "adapters.connectors.local",
    "adapters.connectors.ssh",
    "ledger.postgres",
)


def main(argv: Sequence[str]) -> None:
    usage = "usage: python -m tests.crashing SPEC -- CHASSIS-ARGUMENTS..."
    if len(argv) < 2 or argv[1] != "--":
        sys.exit(usage)
    try:
        spec = Spec.parse(argv[0])
    except ValueError as e:
        sys.exit(f"tests.crashing: {e}\n{usage}")
    install(spec)
    from chassis.cli import main as chassis_main

    sys.argv = ["chassis", *argv[2:]]
    chassis_main()


if __name__ == "__main__":
    main(sys.argv[1:])
