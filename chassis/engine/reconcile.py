"""Reconciling the ledger's spatial reality with the hosts (``chassis reconcile``).

The ledger says what runs where (``Installation.hosts``). Someone can still
kill a process, repoint ``current`` or delete a release directory by hand.
Reconcile probes every host of the installation, in parallel, for:

- ``current``: the symlink points at ``releases/<release-dir>``;
- ``release-dir``: that directory exists and its ``.chassis-release`` marker
  names the recorded release;
- ``process``: every recorded component runs, and runs that release;
- ``health``: every component's health check passes once, within a short
  window (:data:`QUICK_WINDOW_MS`: reconcile is a look, not a gate).

Each difference is ``{what, component, expected, found}``. Drift is recorded
as one ``DriftObserved`` event per drifted host (one save) and reported with
exit 18; a clean installation records nothing. A host that cannot be reached
is not drift (nothing was observed): it is reported and exits 11, which wins
over 18 because the check is incomplete.

``--repair`` puts drifted hosts back on their recorded release through the
engine: a ``repair`` operation (intent, lease, step outcomes, activation,
finish) per recorded revision the drifted hosts are on, running the same host
steps as a deploy from the bundle store, then reconciles again.
"""

from __future__ import annotations

import shlex
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import msgspec

from adapters.connectors.base import Connector
from adapters.errors import ConnectorError, RemoteFileMissing
from adapters.supervisors.base import Supervisor, SupervisorError
from chassis.connect import connector_for
from chassis.engine.deploy import DEFAULT_LEASE_TTL_S, DeployInterrupted
from chassis.engine.executor import HostDeployment, StepFailed, run_gate, scrubbed
from chassis.engine.operation import (
    OperationRecorder,
    load_installation,
    previous_plan,
    supervisor_for,
)
from chassis.engine.plan import (
    ComponentPlan,
    HostPlan,
    Plan,
    hosts_revisions,
    recorded_form,
    verified_plan,
    verified_plans,
)
from chassis.engine.releases import require_bundle
from chassis.errors import ChassisError
from chassis.hosts import get_host
from chassis.workspace import Workspace
from ledger.application import Ledger
from ledger.installations import Installation
from ledger.releases import Release, release_dir_name

QUICK_WINDOW_MS = 1500
"""Longest a reconcile health check keeps trying (or the check's own window, if shorter)."""
QUICK_INTERVAL_MS = 250
"""Longest pause between its probes."""
RESTART_FOR = ("process", "health", "release-dir")
"""Differences a repair fixes by restarting the components (``current`` alone only swaps)."""

Progress = Callable[[str], None]


class DriftFound(ChassisError):
    """Hosts differ from what the ledger records (the differences are listed)."""

    exit_code = 18


class HostsUnchecked(ChassisError):
    """A host could not be reached or probed, so the check is incomplete."""

    exit_code = 11


@dataclass
class HostCheck:
    """One host compared with its recorded entry."""

    host: str
    label: str
    release_id: str
    revision: int
    differences: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None


@dataclass
class ReconcileResult:
    app: str
    environment: str
    checks: dict[str, HostCheck] = field(default_factory=dict)
    recorded: list[str] = field(default_factory=list)
    """Hosts a ``DriftObserved`` was appended for (by the last check)."""
    repaired: dict[str, dict[str, Any]] = field(default_factory=dict)
    stale: list[str] = field(default_factory=list)
    """Hosts with drift recorded earlier that the last check no longer sees."""

    @property
    def drift(self) -> dict[str, list[dict[str, Any]]]:
        return {h: c.differences for h, c in sorted(self.checks.items()) if c.differences}

    @property
    def unreachable(self) -> dict[str, str]:
        return {h: c.error for h, c in sorted(self.checks.items()) if c.error is not None}

    def to_dict(self) -> dict[str, Any]:
        return {
            "app": self.app,
            "environment": self.environment,
            "drift": self.drift,
            "hosts_checked": len(self.checks) - len(self.unreachable),
            "unreachable": self.unreachable,
            "recorded": sorted(self.recorded),
            "repaired": self.repaired,
            "stale": sorted(self.stale),
        }

    def lines(self) -> list[str]:
        """One line per difference, naming host and what."""
        out = []
        for host, differences in self.drift.items():
            for d in differences:
                what = d["what"] + (f" {d['component']}" if d["component"] else "")
                out.append(f"{host}: {what}: expected {d['expected']}, found {d['found']}")
        out += [f"{host}: not checked: {error}" for host, error in self.unreachable.items()]
        return out


def difference(what: str, component: str | None, expected: str, found: str) -> dict[str, Any]:
    return {"what": what, "component": component, "expected": expected, "found": found}


def reconcile(
    ledger: Ledger,
    ws: Workspace,
    *,
    app: str,
    environment: str,
    repair: bool = False,
    progress: Progress,
) -> ReconcileResult:
    """Compare every host with the ledger; record drift; with ``repair``, fix it and look again."""
    if ledger.signer is None:
        raise ChassisError("reconciling needs a signing key (drift is recorded)")
    installation = load_installation(ledger, app, environment)
    key = installation.id
    # Hosts mid-operation differ from the ledger on purpose, and our append
    # would conflict with the operation's own.
    installation.check_lease_free(datetime.now(UTC))
    result = ReconcileResult(app, environment)
    _check_and_record(ledger, ws, installation, result, progress)
    if repair and result.drift:
        drifted = {h: result.checks[h] for h in result.drift}
        result.repaired = _repair(ledger, ws, key, drifted, progress)
        installation = ledger.load(Installation, key)
        result.checks, result.recorded, result.stale = {}, [], []
        _check_and_record(ledger, ws, installation, result, progress)
    return result


def _check_and_record(
    ledger: Ledger,
    ws: Workspace,
    installation: Installation,
    result: ReconcileResult,
    progress: Progress,
) -> None:
    result.checks = check_hosts(ledger, ws, installation)
    for host, check in sorted(result.checks.items()):
        if check.error is None and not check.differences:
            progress(f"{host}: {check.label} as recorded")
    drift = result.drift
    result.stale = sorted(h for h in installation.drift if h in result.checks and h not in drift)
    if not drift and not result.stale:
        return
    assert ledger.signer is not None
    actor = ledger.signer.keyid

    def observe(i: Installation) -> None:
        i.check_lease_free(datetime.now(UTC))
        for host, differences in drift.items():
            i.observe_drift(actor=actor, host=host, differences=differences)
        for host in result.stale:  # seen clean again: an empty observation clears it
            i.observe_drift(actor=actor, host=host, differences=[])

    ledger.update(Installation, installation.id, observe)
    result.recorded = sorted(drift)


# Probing.


def check_hosts(ledger: Ledger, ws: Workspace, installation: Installation) -> dict[str, HostCheck]:
    """Every recorded host compared with the hosts themselves, in parallel."""
    # Probes run the plans' health commands: only plans the ledger signed.
    verified_plans(ledger, installation, hosts_revisions(installation))
    checks: dict[str, HostCheck] = {}
    lock = threading.Lock()

    def one(item: tuple[str, dict[str, Any]]) -> None:
        host, entry = item
        check = _check_host(ledger, ws, installation, host, entry)
        with lock:
            checks[host] = check

    entries = sorted(installation.hosts.items())
    with ThreadPoolExecutor(max_workers=max(1, len(entries))) as pool:
        list(pool.map(one, entries))
    return checks


def _check_host(
    ledger: Ledger, ws: Workspace, installation: Installation, host: str, entry: dict[str, Any]
) -> HostCheck:
    release_id = str(entry["release_id"])
    check = HostCheck(host, str(entry["label"]), release_id, int(entry["revision"]))
    host_plan, _ = previous_plan(installation, entry, host)
    if host_plan is None:
        check.error = f"revision {check.revision} records no plan for {host}"
        return check
    plan = recorded_plan(installation, check.revision)
    try:
        connector = connector_for(get_host(ledger, host), ws)
    except ChassisError as e:
        check.error = e.diagnostics()
        return check
    try:
        supervisor = supervisor_for(plan, host_plan, connector)
        components = [c for c in host_plan.components if c.name in entry["components"]]
        check.differences = probe_host(connector, supervisor, host_plan, components, release_id)
    except (ConnectorError, SupervisorError) as e:
        check.error = e.diagnostics()
    finally:
        connector.close()
    return check


def probe_host(
    connector: Connector,
    supervisor: Supervisor,
    host_plan: HostPlan,
    components: list[ComponentPlan],
    release_id: str,
) -> list[dict[str, Any]]:
    """The differences between one host and the release recorded active there."""
    root = host_plan.root.rstrip("/")
    link = f"releases/{release_dir_name(release_id)}"
    workdir = f"{root}/{link}"
    found: list[dict[str, Any]] = []
    current = connector.run(f"readlink -- {shlex.quote(root + '/current')}", timeout=30)
    target = current.stdout.strip().rstrip("/") if current.ok else ""
    if target not in (link, workdir):
        found.append(difference("current", None, link, target or "missing"))
    try:
        marker: str | None = connector.read_bytes(f"{workdir}/.chassis-release").decode().strip()
    except RemoteFileMissing:
        marker = None
    if marker != release_id:
        seen = "missing" if marker is None else f"its marker names release {marker[:16]}"
        found.append(difference("release-dir", None, f"{link} of release {release_id[:16]}", seen))
    for component in components:
        state = supervisor.state(component.name)
        expected = f"running release {release_id[:16]}"
        if not state.running:
            found.append(difference("process", component.name, expected, "not running"))
        elif state.release_id != release_id:
            other = (state.release_id or "unknown")[:16]
            found.append(difference("process", component.name, expected, f"running {other}"))
        gate = run_gate(quick(component), host_plan.address, connector, workdir)
        if gate is not None and not gate.passed:
            found.append(difference("health", component.name, "passing", gate.reason))
    return found


def quick(component: ComponentPlan) -> ComponentPlan:
    """The component with a health check that passes on its first success and
    gives up within :data:`QUICK_WINDOW_MS` (probe timeout unchanged)."""
    if component.health is None:
        return component
    health = dict(component.health)
    health["passes"] = 1
    health["window_ms"] = min(int(health.get("window_ms", 30000)), QUICK_WINDOW_MS)
    health["interval_ms"] = min(int(health.get("interval_ms", 500)), QUICK_INTERVAL_MS)
    return msgspec.structs.replace(component, health=health)


def recorded_plan(installation: Installation, revision: int) -> Plan:
    """The plan ``revision`` recorded (a revision active on a host keeps it)."""
    return msgspec.convert(plan_data(installation, revision), Plan)


def plan_data(installation: Installation, revision: int) -> dict[str, Any]:
    # Newer aggregates keep plans apart from the (bounded) revision entries.
    plan_of = getattr(installation, "plan_of", None)
    data: dict[str, Any] = (
        plan_of(revision) if plan_of else installation.revision_entry(revision)["plan"]
    )
    return data


# Repairing.


def _repair(
    ledger: Ledger,
    ws: Workspace,
    key: UUID,
    drifted: dict[str, HostCheck],
    progress: Progress,
) -> dict[str, dict[str, Any]]:
    """One ``repair`` operation per recorded revision the drifted hosts are on
    (a plan has one release); usually there is just one."""
    by_revision: dict[int, list[HostCheck]] = {}
    for check in drifted.values():
        by_revision.setdefault(check.revision, []).append(check)
    outcomes: dict[str, dict[str, Any]] = {}
    for revision, checks in sorted(by_revision.items()):
        installation = ledger.load(Installation, key)
        outcomes.update(_repair_revision(ledger, ws, installation, revision, checks, progress))
    return outcomes


def _repair_revision(
    ledger: Ledger,
    ws: Workspace,
    installation: Installation,
    revision: int,
    checks: list[HostCheck],
    progress: Progress,
) -> dict[str, dict[str, Any]]:
    assert ledger.signer is not None
    actor = ledger.signer.keyid
    plan = verified_plan(ledger, installation, revision)
    release = ledger.find(Release, Release.id_for(Release.key(plan.app, plan.label)))
    if release is None or release.release_id != plan.release_id:
        raise ChassisError(
            f"release {plan.label} of revision {revision} is not registered as recorded; "
            "cannot repair from the bundle store"
        )
    bundle = require_bundle(ws, release)
    names = sorted(c.host for c in checks)
    whats = sorted({d["what"] for c in checks for d in c.differences})
    op_id = uuid.uuid4().hex
    plan_digest, plan_data = recorded_form(plan)
    installation.start_operation(
        actor=actor,
        op_id=op_id,
        operation="repair",
        label=plan.label,
        release_id=plan.release_id,
        profile=plan.profile,
        placement={group: h.host for h in plan.hosts for group in h.groups},
        host_components={h.host: [c.name for c in h.components] for h in plan.hosts},
        plan_digest=plan_digest,
        plan=plan_data,
        lease_ttl_s=DEFAULT_LEASE_TTL_S,
        description=f"repair {plan.label} on {', '.join(names)} (drift: {', '.join(whats)})",
        now=datetime.now(UTC),
    )
    ledger.append(installation)
    recorder = OperationRecorder(ledger, installation, op_id)
    recorded = {name: dict(installation.hosts[name]) for name in names}
    outcomes: dict[str, dict[str, Any]] = {}
    lock = threading.Lock()

    def one(check: HostCheck) -> None:
        name = check.host
        host_plan = repair_steps(plan.host(name), check.differences)
        connector: Connector | None = None
        try:
            connector = connector_for(get_host(ledger, name), ws)
            deployment = HostDeployment(
                plan=plan,
                host=host_plan,
                connector=connector,
                supervisor=supervisor_for(plan, host_plan, connector),
                bundle=bundle,
                record=recorder.step(name),
            )
            progress(f"{name}: repairing {plan.label} ({', '.join(host_plan.steps)})")
            deployment.run()
            recorder(
                lambda i: i.activate_host(
                    actor=actor,
                    op_id=op_id,
                    host=name,
                    release_id=plan.release_id,
                    label=plan.label,
                    components=[c.name for c in host_plan.components],
                )
            )
            ok, detail = True, f"{plan.label} restored and healthy"
        except StepFailed as failed:
            ok, detail = False, f"repair failed at {failed.step}: {failed.detail}"
        except (ConnectorError, ChassisError) as e:
            recorder.step(name)("connect", False, e.diagnostics(), {})
            ok, detail = False, f"repair failed: {e.diagnostics()}"
        finally:
            if connector is not None:
                connector.close()
        if not ok:
            # The recorded entry stays; the next reconcile records what is still wrong.
            recorder(
                lambda i: i.restore_host(
                    actor=actor,
                    op_id=op_id,
                    host=name,
                    previous=recorded[name],
                    ok=False,
                    detail=scrubbed(detail),
                )
            )
        progress(f"{name}: {detail}")
        with lock:
            outcomes[name] = {
                "ok": ok,
                "detail": detail,
                "revision": installation.revision,
                "steps": list(host_plan.steps),
                "differences": check.differences,
            }

    try:
        with ThreadPoolExecutor(max_workers=max(1, len(checks))) as pool:
            list(pool.map(one, checks))
    except KeyboardInterrupt:
        raise DeployInterrupted(
            f"interrupted: repair revision {installation.revision} of {plan.app}/"
            f"{plan.environment} is unfinished and its lease is still held. Run 'chassis "
            f"recover {plan.app} --env {plan.environment}' to complete or undo it"
        ) from None
    failed = sorted(n for n, o in outcomes.items() if not o["ok"])
    status = "failed" if len(failed) == len(names) else "deployed"
    description = f"repair {plan.label} on {', '.join(names)}" + (
        f"; {', '.join(failed)} could not be repaired" if failed else ""
    )
    recorder(lambda i: i.finish(actor=actor, op_id=op_id, status=status, description=description))
    return outcomes


def repair_steps(host_plan: HostPlan, differences: list[dict[str, Any]]) -> HostPlan:
    """The deploy steps a repair needs: bundle and config always (no-ops when
    intact), a restart only if a process, its health or its directory drifted,
    then the health gate and the swap. Never ``prune``: that is ``chassis prune``."""
    restart = any(d["what"] in RESTART_FOR for d in differences)
    steps = ["upload", "verify", "unpack", "configure"]
    steps += ["stop-old", "start"] if restart else []
    steps += ["health", "swap"]
    return msgspec.structs.replace(host_plan, steps=steps)
