"""``chassis evolution proof``: try a candidate beside production, gate it,
promote it through the engine, drill the way back, and prove all of it.

Gates, each decided from what ran and recorded as a signed
``gate-evaluated`` event citing its evidence (guides/evolution.md):

- **trial**: the candidate runs in a slot beside production on the target
  hosts (``chassis.evolution.trial``), health-gated;
- **score**: each component's ``score`` command, against the trial and
  against production, in this run; without one, the trial's health gate
  alone decides (and the verdict says so);
- **rollback-drill**: the release production would roll back to (what runs
  now) is staged and started in a slot of its own, health-gated, so the
  way back is known to work before production moves; with ``--drill
  production``, a real rollback after the swap, proven, then the candidate
  again;
- **consent**: a standing grant for this candidate by an approver key other
  than the one asking;
- **swap**: a normal deploy through the engine (health gate, restore on
  failure), attempted only when every required gate before it passed.

A gate that is not reached (an earlier required gate failed) is recorded as
``SKIPPED`` with why. The run promotes only if every required gate passed;
the ledger itself refuses to record a promotion otherwise.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chassis.connect import connector_for
from chassis.consent import consent_verdict
from chassis.engine.deploy import DeployOptions, DeployResult, deploy, prepare
from chassis.engine.executor import scrubbed, scrubbed_data
from chassis.engine.operation import load_installation
from chassis.engine.plan import Plan, verified_plan
from chassis.engine.releases import require_bundle
from chassis.errors import ChassisError, NotFound
from chassis.evolution import trial as trials
from chassis.evolution.score import Measurement, judge, measure, score_env
from chassis.hosts import get_host
from chassis.replay import positions
from chassis.stack.spec import Stack
from chassis.workspace import Workspace
from ledger.aggregate import now
from ledger.application import Ledger
from ledger.evolution import GATES, EvolutionRun
from ledger.installations import Installation, LeaseHolder
from ledger.releases import Release

Progress = Callable[[str], None]
DRILLS = ("trial", "production")
DEFAULT_PORT_OFFSET = 10000


class EvolutionError(ChassisError):
    """The run cannot start (nothing deployed, candidate already active…): exit 9."""

    exit_code = 9


@dataclass(frozen=True)
class EvolutionRequest:
    app: str
    environment: str
    profile: str
    candidate: str
    required: frozenset[str]
    fixture: str | None = None
    port_offset: int = DEFAULT_PORT_OFFSET
    drill: str = "trial"


@dataclass
class GateOutcome:
    gate: str
    required: bool
    status: str  # PASS, FAIL, SKIPPED
    reason: str
    evidence: list[dict[str, Any]] = field(default_factory=list)
    verdict: dict[str, Any] | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "gate": self.gate,
            "required": self.required,
            "status": self.status,
            "reason": self.reason,
            "evidence": self.evidence,
            "verdict": self.verdict,
            "data": self.data,
        }


@dataclass
class EvolutionResult:
    run: EvolutionRun
    gates: dict[str, GateOutcome]
    outcome: str
    revision: int | None
    candidate: dict[str, Any]
    baseline: dict[str, Any]

    @property
    def promoted(self) -> bool:
        return self.outcome == "promoted"


class _Run:
    """One evolution run: its aggregate, appended step by step, and its gates."""

    def __init__(self, ledger: Ledger, run: EvolutionRun, progress: Progress) -> None:
        self.ledger = ledger
        self.run = run
        self.progress = progress
        self.actor = run.requested_by
        self.lock = threading.Lock()
        self.gates: dict[str, GateOutcome] = {}

    def record_step(
        self, host: str, step: str, ok: bool, detail: str, data: dict[str, Any]
    ) -> None:
        with self.lock:
            self.run.record_trial_step(
                host, step, ok, scrubbed(detail), scrubbed_data(data), actor=self.actor
            )
            self.ledger.append(self.run)

    def steps_since(self, version: int) -> list[dict[str, Any]]:
        """Cited positions of this run's trial steps recorded after ``version``."""
        versions = {s["version"] for s in self.run.trial_steps if s["version"] > version}
        return cite(self.ledger, self.run.id, versions)

    def decide(
        self,
        gate: str,
        passed: bool | None,
        reason: str,
        evidence: list[dict[str, Any]] | None = None,
        data: dict[str, Any] | None = None,
    ) -> GateOutcome:
        """Record the verdict (``None``: not reached, recorded as not passed)."""
        required = gate in self.run.required
        status = "SKIPPED" if passed is None else ("PASS" if passed else "FAIL")
        cited = evidence or []
        self.run.evaluate(
            gate,
            passed=bool(passed),
            reason=scrubbed(reason),
            evidence=scrubbed_data(
                {"status": status, "events": cited, **({"data": data} if data else {})}
            ),
            actor=self.actor,
        )
        self.ledger.append(self.run)
        verdict = cite(self.ledger, self.run.id, {self.run.gates[gate]["version"]})[0]
        outcome = GateOutcome(gate, required, status, reason, cited, verdict, data or {})
        self.gates[gate] = outcome
        mark = {"PASS": "PASS", "FAIL": "FAIL", "SKIPPED": "skipped"}[status]
        self.progress(f"gate {gate}: {mark}{'' if required else ' (not required)'}: {reason}")
        return outcome

    def blocking(self) -> list[str]:
        return [g for g, o in self.gates.items() if o.required and o.status != "PASS"]


def cite(ledger: Ledger, aggregate_id: Any, versions: set[int]) -> list[dict[str, Any]]:
    return [p.to_dict() for p in positions(ledger, aggregate_id, versions)]


def evolve(
    ledger: Ledger, ws: Workspace, stack: Stack, request: EvolutionRequest, progress: Progress
) -> EvolutionResult:
    """Run every gate and promote only if each required one passed."""
    if ledger.signer is None:
        raise ChassisError("an evolution run needs a signing key")
    if request.drill not in DRILLS:
        raise EvolutionError(f"--drill: expected one of {', '.join(DRILLS)}")
    installation = load_installation(ledger, request.app, request.environment)
    if installation.last_successful is None:
        raise NotFound(
            f"{request.app}/{request.environment} has no successful revision: deploy a "
            "baseline first (the candidate is tried beside it)"
        )
    baseline_entry = installation.revision_entry(installation.last_successful)
    baseline = {
        "revision": installation.last_successful,
        "label": str(baseline_entry["label"]),
        "release_id": str(baseline_entry["release_id"]),
    }
    plan, bundle = prepare(
        ledger,
        ws,
        stack,
        app=request.app,
        environment=request.environment,
        profile=request.profile,
        label=request.candidate,
        progress=progress,
    )
    candidate = {"label": plan.label, "release_id": plan.release_id}
    if plan.release_id == baseline["release_id"]:
        raise EvolutionError(
            f"candidate {request.candidate} is the release production runs "
            f"(revision {baseline['revision']}): nothing to promote"
        )
    run = EvolutionRun.begin(
        app=request.app,
        environment=request.environment,
        candidate=candidate,
        baseline=baseline,
        required=sorted(request.required),
        fixture=request.fixture,
        port_offset=request.port_offset,
        hosts=[h.host for h in plan.hosts],
        holder=dataclasses.asdict(LeaseHolder.here()),
        actor=ledger.signer.keyid,
    )
    ledger.append(run)
    state = _Run(ledger, run, progress)
    progress(
        f"evolution run {run.slot}: {candidate['label']} beside {baseline['label']} "
        f"(revision {baseline['revision']}) on {', '.join(run.hosts)}"
    )
    revision: int | None = None
    try:
        _trial_and_score(state, ledger, ws, stack, plan, bundle, installation, request)
        _drill_in_trial(state, ledger, ws, stack, installation, request)
        _consent(state, ledger, request, candidate)
        revision = _swap(state, ledger, ws, stack, request)
        _drill_in_production(state, ledger, ws, stack, request, revision)
    except BaseException:
        _finish(state, "aborted", None, "interrupted by an error; see the gates recorded")
        raise
    if state.blocking() or state.gates["swap"].status != "PASS":
        outcome = "failed" if state.gates["swap"].status == "FAIL" else "blocked"
        if revision is not None and state.gates["swap"].status == "PASS":
            outcome = "failed"  # promoted, then a required later gate failed
        description = f"not promoted: {', '.join(state.blocking()) or 'swap'} did not pass"
    else:
        outcome, description = "promoted", f"{candidate['label']} promoted (revision {revision})"
    _finish(state, outcome, revision, description)
    return EvolutionResult(run, state.gates, outcome, revision, candidate, baseline)


def _finish(state: _Run, outcome: str, revision: int | None, description: str) -> None:
    if state.run.outcome is not None:
        return
    for gate in GATES:  # every gate has a verdict, even on the way out
        if gate not in state.gates:
            state.decide(gate, None, "not reached")
    state.run.finish(outcome, revision=revision, description=description, actor=state.actor)
    state.ledger.append(state.run)


# -- trial and score ---------------------------------------------------------------


def _trial_and_score(
    state: _Run,
    ledger: Ledger,
    ws: Workspace,
    stack: Stack,
    plan: Plan,
    bundle: Path,
    installation: Installation,
    request: EvolutionRequest,
) -> None:
    slot = state.run.slot
    before = state.run.version
    try:
        result = trials.run_trial(
            ledger,
            ws,
            plan,
            slot=slot,
            port_offset=request.port_offset,
            record=state.record_step,
            progress=state.progress,
            bundle=bundle,
        )
        failed = {h: t for h, t in result.hosts.items() if not t.ok}
        reason = (
            f"healthy in slot {slot} on {', '.join(sorted(result.hosts))}"
            if not failed
            else "; ".join(f"{h}: {t.step} failed: {t.detail}" for h, t in sorted(failed.items()))
        )
        data = {
            h: {"ok": t.ok, "step": t.step, "health": t.health, "logs": t.logs}
            for h, t in result.hosts.items()
        }
        state.decide("trial", not failed, reason, state.steps_since(before), data)
        if failed:
            state.decide("score", None, "not measured: the trial failed")
        else:
            _score(state, ledger, ws, stack, result.plan, installation)
    finally:
        trials.teardown_trial(ledger, ws, plan, slot, state.record_step)


def _score(
    state: _Run,
    ledger: Ledger,
    ws: Workspace,
    stack: Stack,
    trial: Plan,
    installation: Installation,
) -> None:
    scored = {name: c.score for name, c in stack.components.items() if c.score is not None}
    if not scored:
        state.decide(
            "score", True, "no component declares a score command: the trial's health gate decides"
        )
        return
    assert installation.last_successful is not None
    production = verified_plan(ledger, installation, installation.last_successful)
    verdicts: list[tuple[bool, str]] = []
    data: dict[str, Any] = {}
    for name, spec in sorted(scored.items()):
        candidate = _measure(ledger, ws, trial, name, spec, "candidate")
        baseline = _measure(ledger, ws, production, name, spec, "baseline")
        if candidate is None:
            verdicts.append((False, f"{name}: not placed by the candidate's plan"))
            continue
        ok, why = judge(spec, candidate, baseline)
        verdicts.append((ok, f"{name}: {why}"))
        data[name] = {
            "metric": spec.metric,
            "candidate": candidate.to_dict(),
            "baseline": baseline.to_dict() if baseline else None,
            "passed": ok,
        }
    passed = all(ok for ok, _ in verdicts)
    state.decide("score", passed, "; ".join(why for _, why in verdicts), data=data)


def _measure(
    ledger: Ledger, ws: Workspace, plan: Plan, component: str, spec: Any, target: str
) -> Measurement | None:
    for host in plan.hosts:
        for placed in host.components:
            if placed.name != component:
                continue
            workdir = f"{host.root.rstrip('/')}/releases/{plan.release_dir}"
            env = score_env(target, placed.ports, host.root)
            with connector_for(get_host(ledger, host.host), ws) as connector:
                return measure(
                    connector, spec, target=target, host=host.host, workdir=workdir, env=env
                )
    return None


# -- rollback drill ---------------------------------------------------------------


def _drill_in_trial(
    state: _Run,
    ledger: Ledger,
    ws: Workspace,
    stack: Stack,
    installation: Installation,
    request: EvolutionRequest,
) -> None:
    """Stage and start what production would roll back to, in a slot of its own."""
    if request.drill != "trial":
        return
    if state.blocking():
        state.decide("rollback-drill", None, f"not drilled: {', '.join(state.blocking())} failed")
        return
    assert installation.last_successful is not None
    back = verified_plan(ledger, installation, installation.last_successful)
    release = ledger.find(Release, Release.id_for(Release.key(back.app, back.label)))
    slot = f"{state.run.slot}d"
    before = state.run.version
    try:
        if release is None:
            raise ChassisError(f"release {back.label} is not registered")
        bundle = require_bundle(ws, release, ledger)
        result = trials.run_trial(
            ledger,
            ws,
            back,
            slot=slot,
            port_offset=request.port_offset,
            record=state.record_step,
            progress=state.progress,
            bundle=bundle,
        )
    except ChassisError as e:
        state.decide(
            "rollback-drill",
            False,
            f"the way back to {back.label} (revision {installation.last_successful}) cannot be "
            f"staged: {e.diagnostics()}",
            state.steps_since(before),
        )
        return
    finally:
        trials.teardown_trial(ledger, ws, back, slot, state.record_step)
    failed = {h: t for h, t in result.hosts.items() if not t.ok}
    reason = (
        f"{back.label} (revision {installation.last_successful}) staged and healthy in slot {slot}"
        if not failed
        else "; ".join(f"{h}: {t.step} failed: {t.detail}" for h, t in sorted(failed.items()))
    )
    state.decide("rollback-drill", not failed, reason, state.steps_since(before))


def _drill_in_production(
    state: _Run,
    ledger: Ledger,
    ws: Workspace,
    stack: Stack,
    request: EvolutionRequest,
    revision: int | None,
) -> None:
    """``--drill production``: roll back for real, prove it, promote again."""
    if request.drill != "production":
        return
    if revision is None:
        state.decide("rollback-drill", None, "not drilled: the candidate was not swapped in")
        return
    from chassis.engine.rollback import rollback
    from chassis.rollback_proof import rollback_proof

    back = rollback(
        ledger,
        ws,
        app=request.app,
        environment=request.environment,
        to=None,
        max_parallel=4,
        progress=state.progress,
    )
    if back.status != "deployed":
        state.decide("rollback-drill", False, f"the rollback failed: {back.description}")
        return
    assert ledger.signer is not None
    envelope = rollback_proof(
        ledger,
        ws,
        ledger.signer,
        app=request.app,
        environment=request.environment,
        revision=back.revision,
    )
    again, _ = _promote(state, ledger, ws, stack, request, "after the rollback drill")
    evidence = _finished_event(ledger, request, back.revision)
    ok = again.status == "deployed"
    state.decide(
        "rollback-drill",
        ok,
        f"rolled back to {back.plan.target.label} (revision {back.revision}, proof "
        f"issued) and promoted again (revision {again.revision})"
        if ok
        else f"rolled back (revision {back.revision}) but promoting again failed",
        evidence,
        {"rollback_proof": envelope},
    )


# -- consent and swap --------------------------------------------------------------


def _consent(
    state: _Run, ledger: Ledger, request: EvolutionRequest, candidate: dict[str, Any]
) -> None:
    verdict = consent_verdict(
        ledger,
        app=request.app,
        environment=request.environment,
        release_id=candidate["release_id"],
        requester=state.actor,
        at=now(),
    )
    evidence = cite(ledger, verdict.consent.id, {1}) if verdict.consent is not None else []
    state.decide(
        "consent", verdict.passed, verdict.reason, evidence, {"considered": verdict.considered}
    )


def _swap(
    state: _Run, ledger: Ledger, ws: Workspace, stack: Stack, request: EvolutionRequest
) -> int | None:
    blocking = state.blocking()
    if blocking:
        state.decide("swap", None, f"not attempted: {', '.join(blocking)} did not pass")
        return None
    result, evidence = _promote(state, ledger, ws, stack, request, "")
    ok = result.status == "deployed" and all(h["ok"] for h in result.hosts.values())
    state.decide("swap", ok, result.description, evidence, {"revision": result.revision})
    return result.revision if ok else None


def _promote(
    state: _Run, ledger: Ledger, ws: Workspace, stack: Stack, request: EvolutionRequest, why: str
) -> tuple[DeployResult, list[dict[str, Any]]]:
    """Deploy the candidate through the engine; the result and the cited
    position of the deploy's operation-finished event."""
    reason = f"evolution {state.run.slot}" + (f": {why}" if why else "")
    result = deploy(
        ledger,
        ws,
        stack,
        app=request.app,
        environment=request.environment,
        profile=request.profile,
        label=request.candidate,
        options=DeployOptions(reason=reason),
        progress=state.progress,
    )
    return result, _finished_event(ledger, request, result.revision)


def _finished_event(
    ledger: Ledger, request: EvolutionRequest, revision: int
) -> list[dict[str, Any]]:
    installation = load_installation(ledger, request.app, request.environment)
    entry = installation.revision_entry(revision)
    return cite(ledger, installation.id, {int(entry["version"])})
