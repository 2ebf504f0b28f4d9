"""The scoring gate: one command, run against the candidate's trial and against
production in the same run, judged by the component's ``score`` thresholds.

The command runs on the host with ``sh -c`` from the release directory it
scores, with ``CHASSIS_SCORE_TARGET`` (``candidate`` or ``baseline``) and
``CHASSIS_PORT_<NAME>`` for each of the component's ports (the trial's
ports for the candidate), and prints a JSON object on its last non-empty
line of output holding the metric as a number. Values are recorded as
decimal strings (ledger events hold no floats).
"""

from __future__ import annotations

import json
import math
import shlex
from dataclasses import dataclass
from typing import Any

from adapters.connectors.base import Connector
from adapters.errors import ConnectorError
from chassis.engine.executor import scrubbed
from chassis.stack.schema import ScoreSpec


@dataclass(frozen=True)
class Measurement:
    target: str
    host: str
    value: float | None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        shown = None if self.value is None else repr(self.value)
        return {"target": self.target, "host": self.host, "value": shown, "error": self.error}


def score_env(target: str, ports: dict[str, int], host_root: str) -> dict[str, str]:
    env = {"CHASSIS_SCORE_TARGET": target, "CHASSIS_HOST_ROOT": host_root}
    env.update(
        {f"CHASSIS_PORT_{name.upper().replace('-', '_')}": str(p) for name, p in ports.items()}
    )
    return env


def measure(
    connector: Connector,
    spec: ScoreSpec,
    *,
    target: str,
    host: str,
    workdir: str,
    env: dict[str, str],
) -> Measurement:
    """Run the score command once; a failure is a measurement with an error."""
    command = f"cd {shlex.quote(workdir)} && {spec.command}"
    try:
        result = connector.run(command, env=env, timeout=spec.timeout_ms / 1000)
    except ConnectorError as e:
        return Measurement(target, host, None, scrubbed(e.diagnostics()))
    if result.exit_code != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        return Measurement(target, host, None, f"exit {result.exit_code}: {scrubbed(tail[0])}")
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    try:
        found = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        found = None
    value = found.get(spec.metric) if isinstance(found, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return Measurement(
            target, host, None, f"expected a JSON object with a number {spec.metric!r} last"
        )
    return Measurement(target, host, float(value))


def judge(
    spec: ScoreSpec, candidate: Measurement, baseline: Measurement | None
) -> tuple[bool, str]:
    """PASS or the named threshold the candidate crossed."""
    if candidate.value is None:
        return False, f"the candidate could not be measured: {candidate.error}"
    value = candidate.value
    metric = spec.metric
    if spec.min is not None and value < spec.min:
        return False, f"{metric} {value:g} is below the minimum {spec.min:g}"
    if spec.max is not None and value > spec.max:
        return False, f"{metric} {value:g} is above the maximum {spec.max:g}"
    if spec.max_regression is None:
        return True, f"{metric} {value:g} within thresholds"
    if baseline is None or baseline.value is None:
        why = baseline.error if baseline is not None else "no baseline"
        return False, f"the baseline could not be measured ({why}): regression unknown"
    base = baseline.value
    if spec.better == "lower":
        worse = (value - base) / abs(base) if base else (math.inf if value > base else 0.0)
    else:
        worse = (base - value) / abs(base) if base else (math.inf if value < base else 0.0)
    verdict = f"{metric} {value:g} vs baseline {base:g} ({worse:+.1%} worse"
    if worse > spec.max_regression:
        return False, f"{verdict}, more than {spec.max_regression:.0%} allowed)"
    return True, f"{verdict}, within {spec.max_regression:.0%})"
