"""Running some host steps of a recorded revision again, as an operation of
its own, through the one lifecycle (``chassis.engine.lifecycle``):
``reconcile --repair`` runs the steps drift needs, ``chassis restart`` stops,
starts and health-gates. The plan is the revision's, verified against its
signed digest; the intent records it and takes the lease; a host whose
steps fail and that was changed goes back to what it ran (the same release),
restored like a failed deploy, and is reported as not done.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import msgspec

from chassis.engine.deploy import DEFAULT_LEASE_TTL_S
from chassis.engine.executor import scrubbed
from chassis.engine.lifecycle import Operation, befores, run_operation
from chassis.engine.operation import OperationRecorder
from chassis.engine.plan import Plan, recorded_form, verified_plan
from chassis.engine.releases import require_bundle
from chassis.errors import ChassisError
from chassis.workspace import Workspace
from ledger.application import Ledger
from ledger.installations import Installation
from ledger.releases import Release

Progress = Callable[[str], None]


def begin(
    ledger: Ledger,
    ws: Workspace,
    installation: Installation,
    plan: Plan,
    operation: str,
    description: str,
    progress: Callable[[str], None],
) -> Operation:
    """Record ``operation``'s intent with ``plan`` (taking the lease) and
    return the operation that runs it: what every operation that re-runs a
    recorded plan, or part of one, starts with (repair, restart, expire-lease)."""
    assert ledger.signer is not None
    before = befores(installation)
    op_id = uuid.uuid4().hex
    plan_digest, plan_data = recorded_form(plan)
    installation.start_operation(
        actor=ledger.signer.keyid,
        op_id=op_id,
        operation=operation,
        label=plan.label,
        release_id=plan.release_id,
        profile=plan.profile,
        placement={group: h.host for h in plan.hosts for group in h.groups},
        host_components={h.host: [c.name for c in h.components] for h in plan.hosts},
        plan_digest=plan_digest,
        plan=plan_data,
        lease_ttl_s=DEFAULT_LEASE_TTL_S,
        description=scrubbed(description),
        now=datetime.now(UTC),
    )
    ledger.append(installation)
    return Operation(ledger, ws, OperationRecorder(ledger, installation, op_id), before, progress)


def rerun_revision(
    ledger: Ledger,
    ws: Workspace,
    installation: Installation,
    revision: int,
    steps: Mapping[str, list[str]],
    *,
    operation: str,
    description: str,
    verb: str,
    progress: Progress,
    only: frozenset[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Run ``steps`` (host → step names) of ``revision``'s plan on its hosts,
    as operation ``operation``; returns host → {ok, detail, revision, steps}.
    ``verb`` words the outcome ("repair", "restart")."""
    assert ledger.signer is not None
    plan = verified_plan(ledger, installation, revision)
    release = ledger.find(Release, Release.id_for(Release.key(plan.app, plan.label)))
    if release is None or release.release_id != plan.release_id:
        raise ChassisError(
            f"release {plan.label} of revision {revision} is not registered as recorded; "
            f"cannot {verb} from the bundle store"
        )
    bundle = require_bundle(ws, release, ledger)
    names = sorted(steps)
    op = begin(ledger, ws, installation, plan, operation, description, progress)
    outcomes: dict[str, dict[str, Any]] = {}

    def one(name: str) -> None:
        host_plan = msgspec.structs.replace(plan.host(name), steps=list(steps[name]))
        progress(f"{name}: {verb} {plan.label} ({', '.join(host_plan.steps)})")
        op.deploy(plan, host_plan, bundle, on_done=lambda _: None, only=only)
        outcomes[name] = {
            "ok": name not in op.failures,
            "revision": installation.revision,
            "steps": list(host_plan.steps),
        }

    def work() -> None:
        with ThreadPoolExecutor(max_workers=max(1, len(names))) as pool:
            list(pool.map(one, names))
        # A host changed and then failed goes back to what it ran.
        op.restore(list(op.failures))
        for name, outcome in outcomes.items():
            failure = op.failures.get(name)
            if failure is None:
                outcome["detail"] = f"{plan.label} {verb} done; healthy"
            else:
                outcome["detail"] = f"{verb} failed at {failure.step}: {failure.detail}"
                if name in op.restores:
                    outcome["detail"] += "; " + (
                        "put back as it was"
                        if op.restores[name][0]
                        else f"NOT restored: {op.restores[name][1]}"
                    )
            progress(f"{name}: {scrubbed(outcome['detail'])}")
        failed = sorted(op.failures)
        status = "failed" if len(failed) == len(names) or op.interrupted.is_set() else "deployed"
        summary = description + (f"; {', '.join(failed)} failed" if failed else "")
        op.finish(status, summary)

    run_operation(
        op,
        work,
        what=f"{operation} revision {installation.revision} of {plan.app}/{plan.environment}",
    )
    return outcomes
