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
exit 18. What each component was seen doing (running, down, restarting,
health, the direct supervisor's restart count) is recorded as a
``StateObserved`` event per host, only where it differs from what the
ledger last recorded there, so a clean installation that nothing happened to
records nothing. :func:`observe_live` (``chassis status --live``) is the
same look without ``DriftObserved`` and without repairing. A host that
cannot be reached is not drift (nothing was observed): it is reported and
exits 11, which wins over 18 because the check is incomplete.

``--repair`` puts drifted hosts back on their recorded release through the
engine: a ``repair`` operation (intent, lease, step outcomes, activation,
finish) per recorded revision the drifted hosts are on, running the same host
steps as a deploy from the bundle store, then reconciles again.

Reconcile also reports every copy of a secret version whose lease has
expired (``chassis.engine.expire``: the component running it, and retained
env files that may hold it), with the same exit status as drift. ``--repair``
removes them first, by an ``expire-lease`` operation (the component is
stopped and no longer placed there, its env files deleted), so that a drift
repair never starts a component on an expired value; a host whose expiry
failed is not drift-repaired.
"""

from __future__ import annotations

import shlex
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import msgspec

from adapters.connectors.base import Connector
from adapters.errors import ConnectorError, RemoteFileMissing
from adapters.health import GateResult
from adapters.supervisors.base import ProcessState, Supervisor, SupervisorError
from adapters.supervisors.direct import DirectSupervisor, RestartRecord
from chassis.connect import connector_for
from chassis.engine.executor import run_gate, scrubbed
from chassis.engine.expire import ExpiredCopy, expire, expired_copies
from chassis.engine.operation import (
    load_installation,
    previous_plan,
    supervisor_for,
)
from chassis.engine.plan import (
    ComponentPlan,
    HostPlan,
    Plan,
    hosts_revisions,
    verified_plan,
    verified_plans,
)
from chassis.engine.rerun import rerun_revision
from chassis.errors import ChassisError
from chassis.hosts import get_host
from chassis.workspace import Workspace
from ledger.application import Ledger
from ledger.installations import Installation, LeaseHeldError
from ledger.releases import release_dir_name

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
    seen: dict[str, dict[str, Any]] = field(default_factory=dict)
    """component → what the probe saw (:func:`component_seen`)."""


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
    observed: list[str] = field(default_factory=list)
    """Hosts a ``StateObserved`` was appended for (what was seen there changed)."""
    expired: list[ExpiredCopy] = field(default_factory=list)
    """Copies of secret versions whose lease has expired (after ``--repair``: left)."""
    expired_unchecked: dict[str, str] = field(default_factory=dict)
    """Hosts whose retained env files could not be looked at, and why."""
    expired_removed: dict[str, dict[str, Any]] = field(default_factory=dict)
    """host → outcome of the ``expire-lease`` operation (``--repair``)."""

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
            "observed": sorted(self.observed),
            "expired_leases": [c.to_dict() for c in self.expired],
            "expired_unchecked": self.expired_unchecked,
            "expired_removed": self.expired_removed,
        }

    def lines(self) -> list[str]:
        """One line per difference, naming host and what."""
        out = []
        for host, differences in self.drift.items():
            for d in differences:
                what = d["what"] + (f" {d['component']}" if d["component"] else "")
                out.append(f"{host}: {what}: expected {d['expected']}, found {d['found']}")
        out += [f"{host}: not checked: {error}" for host, error in self.unreachable.items()]
        out += [c.line() for c in self.expired]
        out += [
            f"{host}: retained env files not checked for expired secrets: {error}"
            for host, error in sorted(self.expired_unchecked.items())
        ]
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
    at: datetime | None = None,
) -> ReconcileResult:
    """Compare every host with the ledger; record drift; find expired secret
    leases (as of ``at``, default now); with ``repair``, remove the expired
    copies, fix the drift and look again."""
    if ledger.signer is None:
        raise ChassisError("reconciling needs a signing key (drift is recorded)")
    installation = load_installation(ledger, app, environment)
    key = installation.id
    # Hosts mid-operation differ from the ledger on purpose, and our append
    # would conflict with the operation's own.
    installation.check_lease_free(datetime.now(UTC))
    when = at or datetime.now(UTC)
    result = ReconcileResult(app, environment)
    _check_and_record(ledger, ws, installation, result, progress)
    _find_expired(ledger, ws, installation, when, result)
    if repair and result.expired:
        result.expired_removed = expire(
            ledger, ws, installation, result.expired, at=when, progress=progress
        )
        installation = ledger.load(Installation, key)
        result.checks, result.recorded, result.stale = {}, [], []
        _check_and_record(ledger, ws, installation, result, progress)
    if repair and result.drift:
        # Never restart a component on a copy that should have been removed.
        kept = {h for h, o in result.expired_removed.items() if not o["ok"]}
        drifted = {h: result.checks[h] for h in result.drift if h not in kept}
        if drifted:
            result.repaired = _repair(ledger, ws, key, drifted, progress)
            installation = ledger.load(Installation, key)
            result.checks, result.recorded, result.stale = {}, [], []
            _check_and_record(ledger, ws, installation, result, progress)
    if repair and (result.expired_removed or result.repaired):
        _find_expired(ledger, ws, installation, when, result)
    return result


def _find_expired(
    ledger: Ledger,
    ws: Workspace,
    installation: Installation,
    at: datetime,
    result: ReconcileResult,
) -> None:
    found = expired_copies(ledger, ws, installation, at)
    result.expired, result.expired_unchecked = found.copies, found.unchecked


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
    changed = changed_hosts(installation, result.checks)
    if not drift and not result.stale and not changed:
        return
    assert ledger.signer is not None
    actor = ledger.signer.keyid

    def observe(i: Installation) -> None:
        i.check_lease_free(datetime.now(UTC))
        for host, differences in drift.items():
            i.observe_drift(actor=actor, host=host, differences=differences)
        for host in result.stale:  # seen clean again: an empty observation clears it
            i.observe_drift(actor=actor, host=host, differences=[])
        record_seen(i, actor, "reconcile", [result.checks[h] for h in changed])

    ledger.update(Installation, installation.id, observe)
    result.recorded = sorted(drift)
    result.observed = changed


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
        check.differences = probe_host(
            connector, supervisor, host_plan, components, release_id, observations=check.seen
        )
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
    *,
    observations: dict[str, dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """The differences between one host and the release recorded active there;
    what each component was seen doing goes into ``observations``."""
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
        state, restarts = observe_process(supervisor, component.name)
        expected = f"running release {release_id[:16]}"
        if not state.running:
            found.append(difference("process", component.name, expected, "not running"))
        elif state.release_id != release_id:
            other = (state.release_id or "unknown")[:16]
            found.append(difference("process", component.name, expected, f"running {other}"))
        # The answer must come from the recorded process, not whoever holds the port.
        gate = run_gate(
            quick(component),
            host_plan.address,
            connector,
            workdir,
            supervisor=supervisor,
            process=state,
        )
        if gate is not None and not gate.passed:
            found.append(difference("health", component.name, "passing", gate.reason))
        if observations is not None:
            observations[component.name] = component_seen(
                supervisor, state, restarts, gate, release_id
            )
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


# Observing (``status --live``, and what reconcile records besides drift).


def observe_process(
    supervisor: Supervisor, component: str
) -> tuple[ProcessState, RestartRecord | None]:
    """The component's state and, from the direct supervisor, the restart
    record of its running instance (systemd keeps its own count: None)."""
    if isinstance(supervisor, DirectSupervisor):
        return supervisor.observe(component)
    return supervisor.state(component), None


def component_seen(
    supervisor: Supervisor,
    state: ProcessState,
    restarts: RestartRecord | None,
    gate: GateResult | None,
    release_id: str,
) -> dict[str, Any]:
    """What one look saw of one component: ``state`` (``running`` the
    recorded release, ``wrong-release``, ``restarting``: the direct
    supervisor waits to restart it, or ``down``), ``health`` (``passed``,
    ``failed``, ``none`` without a check), ``restarts`` (of the running
    instance; None where the supervisor keeps no count), ``last_exit``
    and a one-line ``detail``. No floats (the ledger refuses them)."""
    if state.running:
        kind = "running" if state.release_id == release_id else "wrong-release"
    elif restarts is not None and restarts.state == "backoff":
        kind = "restarting"
    else:
        kind = "down"
    health = "none" if gate is None else ("passed" if gate.passed else "failed")
    if gate is not None and not gate.passed:
        detail = f"{state.detail}; health: {gate.reason}"
    else:
        detail = state.detail
    counted = isinstance(supervisor, DirectSupervisor)
    return {
        "state": kind,
        "health": health,
        "restarts": (restarts.restarts if restarts else 0) if counted else None,
        "last_exit": {"at": restarts.at, "status": restarts.status} if restarts else None,
        "detail": scrubbed(detail),
    }


def _summary(components: dict[str, dict[str, Any]], differences: list[dict[str, Any]]) -> Any:
    """What counts as a change: states, health verdicts, restart counts and
    which differences (not their wording, which varies from look to look)."""
    parts = sorted(
        (name, c.get("state"), c.get("health"), c.get("restarts")) for name, c in components.items()
    )
    whats = sorted((str(d["what"]), str(d.get("component") or "")) for d in differences)
    return parts, whats


def observation_changed(installation: Installation, check: HostCheck) -> bool:
    """True when ``check`` saw something else than the ledger last recorded
    for its host (or the ledger has seen nothing there since a restore)."""
    if check.error is not None or not check.seen:
        return False
    recorded = installation.observed.get(check.host)
    if recorded is None or recorded.get("at") is None:
        return True
    drift = installation.drift.get(check.host)
    before = _summary(recorded["components"], drift["differences"] if drift else [])
    return bool(before != _summary(check.seen, check.differences))


def changed_hosts(installation: Installation, checks: dict[str, HostCheck]) -> list[str]:
    return sorted(h for h, c in checks.items() if observation_changed(installation, c))


def record_seen(i: Installation, actor: str, by: str, checks: list[HostCheck]) -> None:
    """One ``StateObserved`` per host in ``checks`` that still runs something
    of the installation (one retired since it was probed has nothing to describe)."""
    for check in checks:
        if check.host not in i.hosts:
            continue
        i.observe_state(
            actor=actor,
            host=check.host,
            by=by,
            release_id=check.release_id,
            components=check.seen,
            differences=check.differences,
        )


def observe_live(
    ledger: Ledger, ws: Workspace, installations: list[Installation], progress: Progress
) -> list[ReconcileResult]:
    """``chassis status --live``: probe every host of every installation in
    parallel, read-only (what reconcile does, never repairing), then record
    one ``StateObserved`` per host where what was seen differs from what the
    ledger last recorded: looking again at an unchanged host appends nothing.
    Appends happen one installation after another, in this thread (the probes
    only read). While an operation holds an installation's lease its hosts
    differ from the ledger on purpose and an append would race the
    operation's: nothing is recorded for it then (what was seen is still
    returned)."""
    with ThreadPoolExecutor(max_workers=max(1, len(installations))) as pool:
        looks = list(pool.map(lambda i: check_hosts(ledger, ws, i), installations))
    results = []
    for installation, checks in zip(installations, looks, strict=True):
        result = ReconcileResult(installation.app, installation.environment, checks)
        _record_live(ledger, installation, result, progress)
        results.append(result)
    return results


def _record_live(
    ledger: Ledger, installation: Installation, result: ReconcileResult, progress: Progress
) -> None:
    assert ledger.signer is not None
    actor = ledger.signer.keyid
    changed = changed_hosts(installation, result.checks)
    if not changed:
        return
    name = f"{installation.app}/{installation.environment}"
    if installation.lease is not None:
        progress(f"{name}: what was seen is not recorded: an operation holds the lease")
        return

    def record(i: Installation) -> None:
        # Decided again on the state this append follows: another look may
        # have recorded the same change meanwhile, or an operation replaced
        # the release that was looked at.
        i.check_lease_free(datetime.now(UTC))
        fresh = [
            h
            for h in changed
            if i.hosts.get(h, {}).get("release_id") == result.checks[h].release_id
            and observation_changed(i, result.checks[h])
        ]
        record_seen(i, actor, "status --live", [result.checks[h] for h in fresh])
        result.observed = fresh

    try:
        ledger.update(Installation, installation.id, record)
    except LeaseHeldError:
        progress(f"{name}: what was seen is not recorded: an operation took the lease")
        result.observed = []
        return
    changed = result.observed
    for host in changed:
        progress(f"{host}: recorded what was seen ({name} changed there)")


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
    plan = verified_plan(ledger, installation, revision)
    names = sorted(c.host for c in checks)
    whats = sorted({d["what"] for c in checks for d in c.differences})
    outcomes = rerun_revision(
        ledger,
        ws,
        installation,
        revision,
        {c.host: repair_steps(plan.host(c.host), c.differences).steps for c in checks},
        operation="repair",
        description=f"repair {plan.label} on {', '.join(names)} (drift: {', '.join(whats)})",
        verb="repair",
        progress=progress,
    )
    for check in checks:
        outcomes[check.host]["differences"] = check.differences
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
