"""Crash recovery of evolution runs (``chassis recover``): a run whose process
died leaves trial slots running beside production. Each unfinished run whose
holder is known gone (or any, with ``--force``) has its slots swept from
every host it named, each sweep recorded, and is finished as ``aborted``.
A run whose process still runs here is left alone."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from uuid import UUID

from adapters.errors import ConnectorError
from chassis.connect import connector_for
from chassis.engine.executor import scrubbed
from chassis.engine.lease import holder_running
from chassis.errors import ChassisError
from chassis.evolution import trial as trials
from chassis.hosts import get_host, resolve_root
from chassis.workspace import Workspace
from ledger.application import Ledger
from ledger.errors import NotFoundError
from ledger.evolution import GATES, EvolutionRun


def unfinished_runs(ledger: Ledger, app: str, environment: str) -> list[EvolutionRun]:
    found: list[EvolutionRun] = []
    for row in ledger.recorder.select_notifications(
        start=None, limit=1_000_000, topics=[EvolutionRun.Started.TOPIC]
    ):
        try:
            run = ledger.load(EvolutionRun, UUID(str(row.originator_id)))
        except NotFoundError:
            continue
        if run.app == app and run.environment == environment and run.outcome is None:
            found.append(run)
    return found


def recover_runs(
    ledger: Ledger,
    ws: Workspace,
    *,
    app: str,
    environment: str,
    force: bool,
    progress: Callable[[str], None],
) -> list[dict[str, Any]]:
    """Sweep and finish every crashed run of APP in ENV; what was done, per run."""
    assert ledger.signer is not None
    actor = ledger.signer.keyid
    outcomes: list[dict[str, Any]] = []
    for run in unfinished_runs(ledger, app, environment):
        running = holder_running({**run.holder, "op_id": run.slot})
        if running is True or (running is None and not force):
            why = (
                "its process still runs"
                if running
                else "its process cannot be checked from here (--force once it is gone)"
            )
            progress(f"evolution run {run.slot}: left alone: {why}")
            outcomes.append({"run": run.slot, "action": "left", "detail": why})
            continue
        swept, complete = _sweep(ledger, ws, run, actor, progress)
        if not complete:  # finished only once nothing is left: recover again later
            progress(f"evolution run {run.slot}: left unfinished; {swept}")
            outcomes.append({"run": run.slot, "action": "incomplete", "detail": swept})
            continue
        for gate in GATES:
            if gate not in run.gates:
                run.evaluate(
                    gate,
                    passed=False,
                    reason="not reached: the run crashed",
                    evidence={"status": "SKIPPED", "events": []},
                    actor=actor,
                )
        run.finish(
            "aborted",
            revision=None,
            description=f"recover: the run's process died; {swept}",
            actor=actor,
        )
        ledger.append(run)
        progress(f"evolution run {run.slot}: aborted; {swept}")
        outcomes.append({"run": run.slot, "action": "aborted", "detail": swept})
    return outcomes


def _sweep(
    ledger: Ledger, ws: Workspace, run: EvolutionRun, actor: str, progress: Callable[[str], None]
) -> tuple[str, bool]:
    cleared: list[str] = []
    complete = True
    for name in run.hosts:
        try:
            host = get_host(ledger, name)
            root = resolve_root(host, ws.root)
            with connector_for(host, ws) as connector:
                supervisors = trials.slot_supervisors(run.app, host.settings.supervisor, connector)
                for slot in trials.leftover_slots(connector, root):
                    if not slot.startswith(run.slot):
                        continue
                    stopped = trials.sweep_slot(connector, supervisors, root, slot)
                    detail = f"slot {slot} removed; stopped {', '.join(stopped) or 'nothing'}"
                    run.record_trial_step(
                        name,
                        "teardown",
                        True,
                        detail,
                        {"slot": slot, "stopped": stopped},
                        actor=actor,
                    )
                    ledger.append(run)
                    cleared.append(f"{name}: {slot}")
        except (ChassisError, ConnectorError) as e:
            detail = scrubbed(e.diagnostics())
            run.record_trial_step(name, "teardown", False, detail, {}, actor=actor)
            ledger.append(run)
            progress(f"{name}: trial slots of run {run.slot} not swept: {detail}")
            cleared.append(f"{name}: NOT swept ({detail})")
            complete = False
    return "slots swept: " + ("; ".join(cleared) if cleared else "none left"), complete
