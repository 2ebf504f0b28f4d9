"""Evolution runs: a candidate release tried beside production, gated, and
promoted only when every required gate passed (``chassis evolution proof``).

One aggregate per run. ``started`` fixes what is asked (candidate, baseline,
required gates, trial slot) before anything runs; each trial step on a host
and each gate's verdict (with the digests of its evidence) is an event; then
``finished`` says whether the candidate was promoted and by which revision.
A run without ``finished`` was interrupted: ``chassis recover`` tears its
trial slot down and finishes it as ``aborted``.
"""

from __future__ import annotations

import secrets
from typing import Any, ClassVar

from ledger.aggregate import LedgerAggregate
from ledger.errors import DomainRuleError
from ledger.events import LedgerEvent

GATES = ("trial", "score", "consent", "swap", "rollback-drill")
"""Every gate, in the order a run evaluates them."""
OUTCOMES = ("promoted", "blocked", "failed", "aborted")


class EvolutionRun(LedgerAggregate):
    KIND = "evolution-run"
    app: str
    environment: str
    candidate: dict[str, Any]
    baseline: dict[str, Any]
    required: list[str]
    fixture: str | None
    slot: str
    port_offset: int
    hosts: list[str]
    holder: dict[str, Any]
    requested_by: str
    gates: dict[str, dict[str, Any]]
    trial_steps: list[dict[str, Any]]
    outcome: str | None
    revision: int | None

    class Started(LedgerEvent, frozen=True, kw_only=True):
        TOPIC: ClassVar[str] = "chassis.evolution-run.started.v1"
        ROLE: ClassVar[str] = "operator"
        CREATES: ClassVar[bool] = True
        app: str
        environment: str
        candidate: dict[str, Any]
        """``{label, release_id}`` of the release asking to be promoted."""
        baseline: dict[str, Any]
        """``{revision, label, release_id}`` production runs now."""
        required: list[str]
        fixture: str | None
        slot: str
        port_offset: int
        hosts: list[str]
        holder: dict[str, Any]
        """``{hostname, pid, process}`` of the process running the gates, so
        ``chassis recover`` tells a live run from a crashed one."""

        def apply(self, aggregate: EvolutionRun) -> None:
            aggregate.app = self.app
            aggregate.environment = self.environment
            aggregate.candidate = dict(self.candidate)
            aggregate.baseline = dict(self.baseline)
            aggregate.required = list(self.required)
            aggregate.fixture = self.fixture
            aggregate.slot = self.slot
            aggregate.port_offset = self.port_offset
            aggregate.hosts = list(self.hosts)
            aggregate.holder = dict(self.holder)
            aggregate.requested_by = self.keyid
            aggregate.gates = {}
            aggregate.trial_steps = []
            aggregate.outcome = None
            aggregate.revision = None

    class TrialStepRecorded(LedgerEvent, frozen=True, kw_only=True):
        TOPIC: ClassVar[str] = "chassis.evolution-run.trial-step-recorded.v1"
        ROLE: ClassVar[str] = "operator"
        host: str
        step: str
        ok: bool
        detail: str
        data: dict[str, Any]

        def apply(self, aggregate: EvolutionRun) -> None:
            aggregate.trial_steps.append(
                {
                    "host": self.host,
                    "step": self.step,
                    "ok": self.ok,
                    "version": self.originator_version,
                }
            )

    class GateEvaluated(LedgerEvent, frozen=True, kw_only=True):
        TOPIC: ClassVar[str] = "chassis.evolution-run.gate-evaluated.v1"
        ROLE: ClassVar[str] = "operator"
        gate: str
        passed: bool
        reason: str
        evidence: dict[str, Any]
        """What the verdict rests on: measurements, and ``events``, the
        ledger positions ``{originator_id, version, digest}`` of signed events."""

        def apply(self, aggregate: EvolutionRun) -> None:
            aggregate.gates[self.gate] = {
                "passed": self.passed,
                "reason": self.reason,
                "version": self.originator_version,
            }

    class Finished(LedgerEvent, frozen=True, kw_only=True):
        TOPIC: ClassVar[str] = "chassis.evolution-run.finished.v1"
        ROLE: ClassVar[str] = "operator"
        outcome: str
        revision: int | None
        """The installation revision that promoted the candidate, if any."""
        description: str

        def apply(self, aggregate: EvolutionRun) -> None:
            aggregate.outcome = self.outcome
            aggregate.revision = self.revision

    @classmethod
    def begin(
        cls,
        *,
        app: str,
        environment: str,
        candidate: dict[str, Any],
        baseline: dict[str, Any],
        required: list[str],
        fixture: str | None,
        port_offset: int,
        hosts: list[str],
        holder: dict[str, Any],
        actor: str,
    ) -> EvolutionRun:
        unknown = sorted(set(required) - set(GATES))
        if unknown:
            raise DomainRuleError(f"unknown gates {unknown}; gates are {', '.join(GATES)}")
        slot = secrets.token_hex(8)
        return cls.create(
            cls.Started,
            id=cls.id_for(f"{app}/{environment}/{slot}"),
            keyid=actor,
            app=app,
            environment=environment,
            candidate=candidate,
            baseline=baseline,
            required=[g for g in GATES if g in required],
            fixture=fixture,
            slot=slot,
            port_offset=port_offset,
            hosts=hosts,
            holder=holder,
        )

    def record_trial_step(
        self, host: str, step: str, ok: bool, detail: str, data: dict[str, Any], *, actor: str
    ) -> None:
        self._open()
        self.trigger(
            self.TrialStepRecorded,
            keyid=actor,
            host=host,
            step=step,
            ok=ok,
            detail=detail,
            data=data,
        )

    def evaluate(
        self, gate: str, *, passed: bool, reason: str, evidence: dict[str, Any], actor: str
    ) -> None:
        self._open()
        if gate not in GATES:
            raise DomainRuleError(f"unknown gate {gate!r}")
        if gate in self.gates:
            raise DomainRuleError(f"gate {gate} was already evaluated in this run")
        self.trigger(
            self.GateEvaluated,
            keyid=actor,
            gate=gate,
            passed=passed,
            reason=reason,
            evidence=evidence,
        )

    def finish(self, outcome: str, *, revision: int | None, description: str, actor: str) -> None:
        self._open()
        if outcome not in OUTCOMES:
            raise DomainRuleError(f"outcome must be one of {OUTCOMES}")
        if outcome == "promoted":
            missing = [g for g in self.required if not self.gates.get(g, {}).get("passed")]
            if missing:
                raise DomainRuleError(f"cannot promote: required gates not passed: {missing}")
        self.trigger(
            self.Finished, keyid=actor, outcome=outcome, revision=revision, description=description
        )

    def _open(self) -> None:
        if self.outcome is not None:
            raise DomainRuleError(f"evolution run {self.slot} already finished ({self.outcome})")
