"""Rollback: replay the installation to an earlier revision, then converge on it.

1. Choose the target: ``--to REV|LABEL``, or the newest successful revision
   before the current one that is not itself rolled back and whose state
   differs from the current state.
2. Replay: the target state is ``Installation`` loaded at the version whose
   ``operation-finished`` made that revision deployed (a release snapshot is
   taken there, so this is one snapshot load).
3. Diff: per host, the release (and components) the target ran there against
   what runs now; hosts only the current state has are retired.
4. Check every bundle needed is in the store, and every recorded plan the
   rollback may run (the target's, and the current ones a failure restores)
   against its signed digest, before anything is recorded.
5. Execute as a new revision ``rollback to REV``, through the same health-gated
   host steps as a deploy, restoring the pre-rollback release on failure.
"""

from __future__ import annotations

import dataclasses
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from adapters.connectors.base import Connector
from chassis.engine.deploy import DEFAULT_LEASE_TTL_S, Progress
from chassis.engine.executor import INTERRUPTED, scrubbed
from chassis.engine.lifecycle import RETIRED, Operation, befores, run_operation
from chassis.engine.operation import (
    OperationRecorder,
    full_history,
    load_installation,
    signed_revision_state,
)
from chassis.engine.plan import (
    HostPlan,
    Plan,
    hosts_revisions,
    recorded_form,
    running_models,
    running_secrets,
    verified_plans,
)
from chassis.engine.preflight import check_bundle, check_plan, reach_hosts
from chassis.engine.releases import require_bundle
from chassis.errors import ChassisError
from chassis.hosts import get_host
from chassis.models.cache import require_models
from chassis.secrets import check_available
from chassis.workspace import Workspace
from ledger.application import Ledger
from ledger.installations import Installation
from ledger.releases import Release

SUCCESSFUL = ("deployed", "superseded", "rolled-back")
"""Statuses of revisions whose operation deployed (a rolled-back one did too)."""


class RollbackRefused(ChassisError):
    """The rollback cannot be planned; nothing was recorded or changed."""

    exit_code = 9


class RevisionNotFound(ChassisError):
    exit_code = 10


@dataclass(frozen=True)
class Target:
    revision: int
    version: int
    label: str
    state: Installation
    state_digest: str
    reason: str
    skipped: list[dict[str, Any]]


@dataclass(frozen=True)
class HostChange:
    host: str
    action: str
    """``deploy`` (run the target release there), ``retire`` (the target ran
    nothing there) or ``unchanged``."""
    current: dict[str, Any] | None
    target: dict[str, Any] | None
    plan: Plan | None
    host_plan: HostPlan | None

    def to_dict(self) -> dict[str, Any]:
        def brief(entry: dict[str, Any] | None) -> dict[str, Any] | None:
            if entry is None:
                return None
            return {
                "label": entry["label"],
                "release_id": entry["release_id"],
                "revision": entry["revision"],
                "components": sorted(entry["components"]),
            }

        return {
            "host": self.host,
            "action": self.action,
            "current": brief(self.current),
            "target": brief(self.target),
        }


@dataclass
class RollbackPlan:
    app: str
    environment: str
    from_revision: int
    target: Target
    changes: list[HostChange]
    bundles: dict[str, Path]
    """release id → bundle in the store, for every release a host must get."""
    target_plan: Plan
    """The target revision's plan, checked against its signed digest."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "app": self.app,
            "environment": self.environment,
            "from_revision": self.from_revision,
            "target_revision": self.target.revision,
            "target_version": self.target.version,
            "target_label": self.target.label,
            "target_state_digest": self.target.state_digest,
            "reason": self.target.reason,
            "skipped": self.target.skipped,
            "hosts": [c.to_dict() for c in self.changes],
        }


@dataclass
class RollbackResult:
    app: str
    environment: str
    revision: int
    status: str
    description: str
    plan: RollbackPlan
    state_digest: str = ""
    hosts: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.plan.to_dict(),
            "revision": self.revision,
            "status": self.status,
            "description": self.description,
            "state_digest": self.state_digest,
            "restored_exactly": self.state_digest == self.plan.target.state_digest,
            "hosts": self.hosts,
        }


def choose_target(ledger: Ledger, installation: Installation, to: str | None) -> Target:
    name = f"{installation.app}/{installation.environment}"
    revisions = full_history(ledger, installation)
    current = installation.last_successful
    if current is None:
        raise RollbackRefused(f"{name} has no successful revision to roll back from")
    current_digest = installation.state_digest()
    if to is not None:
        entry = _named(installation, revisions, to)
        if entry["revision"] == current or entry["revision"] == installation.revision:
            raise RollbackRefused(
                f"revision {entry['revision']} of {name} is the current revision; "
                f"pick an earlier one (chassis history {installation.app} "
                f"--env {installation.environment})"
            )
        if entry["status"] not in SUCCESSFUL or "version" not in entry:
            raise RollbackRefused(
                f"revision {entry['revision']} of {name} is {entry['status']}: only a revision "
                "that deployed can be rolled back to"
            )
        return _target(ledger, installation, entry, f"--to {to}", [])
    skipped: list[dict[str, Any]] = []
    for entry in reversed(revisions):
        if entry["revision"] >= current:
            continue
        why = _skip_reason(entry)
        if why is None:
            target = _target(ledger, installation, entry, "", skipped)
            # A revision that changed only a model (a swap) or a secret's store
            # version (a redeploy after a rotation) has the same spatial state.
            if (
                target.state_digest != current_digest
                or running_models(target.state) != running_models(installation)
                or running_secrets(target.state) != running_secrets(installation)
            ):
                reason = f"last successful revision before {current}"
                return dataclasses.replace(target, reason=reason)
            why = "same state as the current revision"
        skipped.append({"revision": entry["revision"], "label": entry["label"], "why": why})
    raise RollbackRefused(
        f"{name} has no successful revision before {current} to roll back to"
        + (f" (skipped: {_describe(skipped)})" if skipped else "")
    )


def _skip_reason(entry: dict[str, Any]) -> str | None:
    status = str(entry["status"])
    if status == "rolled-back":
        return "rolled back"
    if status not in SUCCESSFUL or "version" not in entry:
        return status
    return None


def _describe(skipped: list[dict[str, Any]]) -> str:
    return ", ".join(f"{s['revision']} ({s['why']})" for s in skipped)


def _named(installation: Installation, revisions: list[dict[str, Any]], to: str) -> dict[str, Any]:
    name = f"{installation.app}/{installation.environment}"
    if to.isdigit():
        for entry in revisions:
            if entry["revision"] == int(to):
                found: dict[str, Any] = entry
                return found
        raise RevisionNotFound(
            f"{name} has no revision {to} (revisions 1..{installation.revision})"
        )
    current = installation.last_successful
    for entry in reversed(revisions):
        usable = _skip_reason(entry) in (None, "rolled back")
        if entry["label"] == to and entry["revision"] != current and usable:
            named: dict[str, Any] = entry
            return named
    raise RevisionNotFound(f"{name} has no successful earlier revision of release {to!r}")


def _target(
    ledger: Ledger,
    installation: Installation,
    entry: dict[str, Any],
    reason: str,
    skipped: list[dict[str, Any]],
) -> Target:
    version = int(entry["version"])
    state = signed_revision_state(ledger, installation, entry, "roll back")
    return Target(
        revision=int(entry["revision"]),
        version=version,
        label=str(entry["label"]),
        state=state,
        state_digest=state.state_digest(),
        reason=reason,
        skipped=list(skipped),
    )


def plan_rollback(
    ledger: Ledger, ws: Workspace, installation: Installation, to: str | None
) -> RollbackPlan:
    """Choose, replay and diff; raises before anything is recorded."""
    target = choose_target(ledger, installation, to)
    # Every plan this rollback may execute: the target's, and the current ones
    # a failed rollback restores (or a retire stops), each against its signed digest.
    verified_plans(ledger, installation, hosts_revisions(installation))
    target_plans = verified_plans(
        ledger, target.state, {target.revision, *hosts_revisions(target.state)}
    )
    changes: list[HostChange] = []
    bundles: dict[str, Path] = {}
    models_now, models_then = running_models(installation), running_models(target.state)
    secrets_now, secrets_then = running_secrets(installation), running_secrets(target.state)
    for host in sorted({*installation.hosts, *target.state.hosts}):
        current = installation.hosts.get(host)
        wanted = target.state.hosts.get(host)
        if wanted is None:
            changes.append(HostChange(host, "retire", current, None, None, None))
            continue
        same_models = models_now.get(host) == models_then.get(host)
        same_secrets = secrets_now.get(host) == secrets_then.get(host)
        if current is not None and _same(current, wanted) and same_models and same_secrets:
            changes.append(HostChange(host, "unchanged", current, wanted, None, None))
            continue
        plan = target_plans[int(wanted["revision"])]
        host_plan = next((h for h in plan.hosts if h.host == host), None)
        if host_plan is None:
            raise RollbackRefused(
                f"revision {wanted['revision']} recorded no plan for {host}; cannot roll back"
            )
        if plan.release_id not in bundles:
            release_key = Release.id_for(Release.key(installation.app, plan.label))
            release = ledger.load(Release, release_key)
            bundles[plan.release_id] = require_bundle(ws, release, ledger)
        check_available((c.name, c.secrets) for c in host_plan.components)
        changes.append(HostChange(host, "deploy", current, wanted, plan, host_plan))
    return RollbackPlan(
        installation.app,
        installation.environment,
        int(installation.last_successful or 0),
        target,
        changes,
        bundles,
        target_plans[target.revision],
    )


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a["release_id"] == b["release_id"] and sorted(a["components"]) == sorted(b["components"])


def rollback(
    ledger: Ledger,
    ws: Workspace,
    *,
    app: str,
    environment: str,
    to: str | None,
    max_parallel: int,
    progress: Progress,
    lease_ttl_s: int = DEFAULT_LEASE_TTL_S,
) -> RollbackResult:
    reached: dict[str, Connector] = {}
    try:
        return _rollback(
            ledger, ws, app, environment, to, max_parallel, progress, lease_ttl_s, reached
        )
    finally:
        for connector in reached.values():  # those no operation adopted
            connector.close()


def _rollback(
    ledger: Ledger,
    ws: Workspace,
    app: str,
    environment: str,
    to: str | None,
    max_parallel: int,
    progress: Progress,
    lease_ttl_s: int,
    reached: dict[str, Connector],
) -> RollbackResult:
    if ledger.signer is None:
        raise ChassisError("rolling back needs a signing key")
    installation = load_installation(ledger, app, environment)
    installation.check_lease_free(datetime.now(UTC))
    plan = plan_rollback(ledger, ws, installation, to)
    _preflight(ledger, ws, plan, progress, reached)
    target = plan.target
    progress(
        f"rolling back {app}/{environment} from revision {plan.from_revision} to revision "
        f"{target.revision} ({target.label}; {target.reason})"
    )
    for skip in target.skipped:
        progress(f"  skipped revision {skip['revision']} ({skip['label']}): {skip['why']}")
    recorded = target.state.revision_entry(target.revision)
    target_plan = plan.target_plan
    before = befores(installation)
    # The digest recorded is recomputed from the verified plan, never copied.
    plan_digest, plan_data = recorded_form(target_plan)
    op_id = uuid.uuid4().hex
    actor = ledger.signer.keyid
    installation.start_operation(
        actor=actor,
        op_id=op_id,
        operation="rollback",
        label=target.label,
        release_id=str(recorded["release_id"]),
        profile=target_plan.profile,
        placement={g: h.host for h in target_plan.hosts for g in h.groups},
        host_components={h: sorted(e["components"]) for h, e in target.state.hosts.items()},
        plan_digest=plan_digest,
        plan=plan_data,
        lease_ttl_s=lease_ttl_s,
        description=f"rollback to {target.revision}",
        now=datetime.now(UTC),
    )
    installation.target_rollback(
        actor=actor,
        op_id=op_id,
        target_revision=target.revision,
        target_version=target.version,
        digest=target.state_digest,
    )
    ledger.append(installation)
    recorder = OperationRecorder(ledger, installation, op_id)
    result = RollbackResult(app, environment, installation.revision, "pending", "", plan, hosts={})
    op = Operation(ledger, ws, recorder, before, progress)
    for name in list(reached):  # the pre-flight's sessions: no second handshake per host
        op.adopt(name, reached.pop(name))
    run_operation(
        op,
        lambda: _execute(op, plan, max_parallel, result),
        what=f"rollback revision {result.revision} of {app}/{environment}",
    )
    result.state_digest = installation.state_digest()
    return result


def _preflight(
    ledger: Ledger,
    ws: Workspace,
    plan: RollbackPlan,
    progress: Progress,
    reached: dict[str, Connector],
) -> None:
    """Before the intent (``chassis.engine.preflight``): the plans the rollback
    runs, the bundles they need, and every host it touches, reachable (their
    open connectors go into ``reached``)."""
    acting = [c for c in plan.changes if c.action != "unchanged"]
    plans = {c.plan.digest(): c.plan for c in acting if c.plan is not None}
    for host_plan in plans.values():
        check_plan(host_plan)
    for release_plan in plans.values():
        check_bundle(
            plan.bundles[release_plan.release_id], release_plan.bundle_sha256, release_plan.label
        )
    hosts = {c.host: get_host(ledger, c.host) for c in acting}
    settings = {name: host.settings for name, host in hosts.items()}
    pins = {name: host.key_pin() for name, host in hosts.items()}
    reach_hosts(list(settings.items()), ws, progress, pins=pins, keep=reached)
    # The models the earlier plans name must still be on their hosts (an
    # eviction does not protect an earlier revision's model).
    for change in acting:
        if change.plan is not None:
            only_here = [h for h in change.plan.hosts if h.host == change.host]
            here = msgspec.structs.replace(change.plan, hosts=only_here)
            require_models(ledger, ws, here, settings, progress)


def _execute(
    op: Operation,
    plan: RollbackPlan,
    max_parallel: int,
    result: RollbackResult,
) -> None:
    """Retire and evict first (a component moving to another host may need
    its port), then deploy the target's plans; on any failure restore every
    host the rollback touched."""
    target = plan.target
    for change in plan.changes:
        if change.action == "unchanged":
            result.hosts[change.host] = {
                "action": "unchanged",
                "ok": True,
                "detail": "already there",
            }
    retiring = [c.host for c in plan.changes if c.action == "retire"]
    deploying = [c for c in plan.changes if c.action == "deploy"]
    workers = max(1, max_parallel)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for name, ok in zip(retiring, pool.map(op.retire, retiring), strict=True):
            if ok:
                result.hosts[name] = {"action": "retire", "ok": True, "detail": RETIRED}
    for change in deploying:
        assert change.host_plan is not None
        staying = {c.name for c in change.host_plan.components}
        moving = sorted(set(op.was(change.host).components) - staying)
        if moving:
            op.evict(change.host, moving)

    def one(change: HostChange) -> None:
        assert change.plan is not None and change.host_plan is not None
        op.progress(f"{change.host}: rolling back to {change.plan.label}")
        if op.deploy(change.plan, change.host_plan, plan.bundles[change.plan.release_id]):
            result.hosts[change.host] = {
                "action": "deploy",
                "ok": True,
                "detail": "restored target",
            }

    if not op.failures:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(one, deploying))
    if op.failures or op.interrupted.is_set():
        op.restore()
        for name, failure in op.failures.items():
            result.hosts[name] = {
                **result.hosts.get(name, {}),
                "ok": False,
                "detail": f"{failure.step}: {failure.detail}",
            }
        for name, (ok, detail) in op.restores.items():
            result.hosts[name] = {**result.hosts.get(name, {}), "restored": ok, "restore": detail}
        if op.interrupted.is_set():
            why = INTERRUPTED
        else:
            first = sorted(op.failures)[0]
            why = f"{first}: {op.failures[first].step}: {op.failures[first].detail}"
        status = "failed"
        description = f"rollback to {target.revision} failed ({why}); " + (
            "the pre-rollback release was restored" if not op.unrestored() else op.restore_summary()
        )
    else:
        status, description = "deployed", f"rollback to {target.revision} ({target.label})"
    op.finish(status, description)
    result.status, result.description = status, scrubbed(description)
