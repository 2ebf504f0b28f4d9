"""The health gate: probe until enough consecutive passes, or give up.

A release becomes active only after its gate passes (DESIGN.md §6). The gate
calls a probe every ``interval_ms`` (measured from the start of one attempt to
the start of the next), counts consecutive passes (a failure resets the
count), and passes as soon as the count reaches ``passes``. Until something
first listens (every attempt so far was refused: the server is still
starting), the next attempt comes sooner: after ``READY_RETRY_MS``, doubling
each time up to ``READY_RETRY_MAX_MS``, never later than ``interval_ms`` (a
refused attempt is still a failure). No attempt starts
after ``window_ms`` from the first one; the gate then fails with a reason that
names the last failure. The clock and sleep are injectable, so tests can
simulate time; everything recorded is an int or a string.

An answer is not health by itself: a stray server on the port answers too.
``run`` takes an optional *watch*, called after every attempt with its
result, which may turn a pass into a failure (the answer came from someone
else) or raise :class:`ProcessGone` (the process we started is gone), which
ends the gate at once: a dead process never recovers within the window, and
its exit is the cause worth reporting (see :mod:`adapters.health.owner`).
It also takes an optional *on_attempt*, told of every attempt as it ends
(:class:`Attempt`), so an operator can watch the window; what it does (or
raises) changes nothing about the verdict.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from adapters.errors import one_line
from adapters.health.probes import ProbeResult

__all__ = [
    "KEEP_RESULTS",
    "Attempt",
    "GateResult",
    "HealthGate",
    "OnAttempt",
    "ProcessGone",
    "Watch",
    "check_timings",
]

KEEP_RESULTS = 10
READY_RETRY_MS = 10
"""The first retry after a refused connection while nothing has listened yet.
A server that starts in 30 ms is then seen at 30 ms, not one whole interval
later (the probe costs one local ``connect``)."""
READY_RETRY_MAX_MS = 25
"""The longest wait between refused attempts while nothing has listened yet:
a server that takes 160 ms to bind is seen within 25 ms of it, not at the
next doubling (250 ms). A refused ``connect`` costs the client a fraction of
a millisecond, so even a window of refusals stays cheap."""


class ProcessGone(Exception):
    """Raised by a watch: the supervised process exited (or its pid was reused)."""


Watch = Callable[[ProbeResult], ProbeResult]
"""Checks one attempt's result against the host; may raise :class:`ProcessGone`."""


@dataclass(frozen=True)
class Attempt:
    """One attempt as it ended: what ``on_attempt`` is told."""

    number: int
    """1 for the first attempt."""
    result: ProbeResult
    """After the watch: a pass the watch refused is a failure here."""
    consecutive: int
    """Consecutive passes so far, this one included."""
    passes: int
    """Consecutive passes the gate needs."""
    elapsed_ms: int
    """Since the gate's first attempt started."""
    window_ms: int


OnAttempt = Callable[[Attempt], None]
"""Told of each attempt (progress output); never changes the verdict."""


def check_timings(interval_ms: int, timeout_ms: int, passes: int, window_ms: int) -> None:
    """ValueError unless every setting is an int in range (``passes``, ``timeout_ms`` >= 1)."""
    values = {
        "interval_ms": (interval_ms, 0),
        "timeout_ms": (timeout_ms, 1),
        "passes": (passes, 1),
        "window_ms": (window_ms, 0),
    }
    for name, (value, least) in values.items():
        if type(value) is not int or value < least:
            raise ValueError(f"health gate {name} must be an int >= {least}, not {value!r}")


@dataclass(frozen=True)
class GateResult:
    """The gate's verdict and its evidence (the last ``KEEP_RESULTS`` probe results)."""

    passed: bool
    attempts: int
    consecutive: int
    results: list[ProbeResult] = field(default_factory=list)
    reason: str = ""
    elapsed_ms: int = 0
    exited: bool = False
    """The watched process was gone: the gate stopped at once (``reason`` says so)."""


class HealthGate:
    """Run a probe until ``passes`` consecutive passes or the end of ``window_ms``.

    ``timeout_ms`` is the per-probe timeout: the probe enforces it (see
    :func:`~adapters.health.probes.probe_for`); the gate only carries it.
    """

    def __init__(
        self,
        interval_ms: int = 500,
        timeout_ms: int = 2000,
        passes: int = 2,
        window_ms: int = 30000,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        keep: int = KEEP_RESULTS,
    ) -> None:
        check_timings(interval_ms, timeout_ms, passes, window_ms)
        self.interval_ms = interval_ms
        self.timeout_ms = timeout_ms
        self.passes = passes
        self.window_ms = window_ms
        self._clock = clock
        self._sleep = sleep
        self._keep = keep

    def run(
        self,
        probe: Callable[[], ProbeResult],
        *,
        watch: Watch | None = None,
        on_attempt: OnAttempt | None = None,
    ) -> GateResult:
        interval = self.interval_ms / 1000
        started = self._clock()
        deadline = started + self.window_ms / 1000
        results: deque[ProbeResult] = deque(maxlen=self._keep)
        attempts = consecutive = refusals = 0
        listened = False  # has any attempt reached a listener?
        last_failure: ProbeResult | None = None
        while True:
            attempt_at = self._clock()
            result = self._attempt(probe, attempt_at)
            attempts += 1
            if watch is not None:
                try:
                    result = watch(result)
                except ProcessGone as gone:
                    elapsed_ms = max(0, round((self._clock() - started) * 1000))
                    detail = one_line(str(gone), limit=300)
                    results.append(ProbeResult(False, detail, result.elapsed_ms))
                    return GateResult(
                        False,
                        attempts,
                        0,
                        list(results),
                        f"{detail} during the health gate, at attempt {attempts} "
                        f"after {elapsed_ms} ms",
                        elapsed_ms,
                        exited=True,
                    )
                except Exception as e:  # fail closed: an unattributed answer is no pass
                    cause = one_line(f"{type(e).__name__}: {e}", limit=200)
                    result = ProbeResult(
                        False,
                        one_line(f"{result.detail}; cannot tell who answered: {cause}", limit=500),
                        result.elapsed_ms,
                    )
            results.append(result)
            if result.ok:
                consecutive += 1
            else:
                consecutive = 0
                last_failure = result
            elapsed_ms = max(0, round((self._clock() - started) * 1000))
            if on_attempt is not None:
                self._tell(
                    on_attempt,
                    Attempt(attempts, result, consecutive, self.passes, elapsed_ms, self.window_ms),
                )
            if consecutive >= self.passes:
                return GateResult(
                    True,
                    attempts,
                    consecutive,
                    list(results),
                    f"passed: {consecutive} consecutive passes after {attempts} attempts "
                    f"in {elapsed_ms} ms",
                    elapsed_ms,
                )
            step = interval
            if result.refused and not listened:
                sooner = min(READY_RETRY_MS * 2**refusals, READY_RETRY_MAX_MS) / 1000
                if sooner < interval:
                    step, refusals = sooner, min(refusals + 1, 16)
            else:
                listened = True
            next_at = attempt_at + step
            if next_at > deadline or self._clock() >= deadline:
                failure = (
                    f"; last failure: {last_failure.detail}"
                    if last_failure is not None
                    else "; no attempt failed"
                )
                return GateResult(
                    False,
                    attempts,
                    consecutive,
                    list(results),
                    f"window of {self.window_ms} ms ended after {attempts} attempts with "
                    f"{consecutive} of {self.passes} consecutive passes{failure}",
                    elapsed_ms,
                )
            wait = next_at - self._clock()
            if wait > 0:
                self._sleep(wait)

    @staticmethod
    def _tell(on_attempt: OnAttempt, attempt: Attempt) -> None:
        with contextlib.suppress(Exception):  # progress output must not decide health
            on_attempt(attempt)

    def _attempt(self, probe: Callable[[], ProbeResult], attempt_at: float) -> ProbeResult:
        try:
            return probe()
        except Exception as e:  # a probe must not break the gate: record it as a failure
            elapsed = max(0, round((self._clock() - attempt_at) * 1000))
            detail = one_line(f"probe raised {type(e).__name__}: {e}", limit=300)
            return ProbeResult(False, detail, elapsed)
