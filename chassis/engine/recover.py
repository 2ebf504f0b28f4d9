"""Recovering an operation whose process died (``chassis recover``).

A crashed deploy leaves its lease held, its revision ``pending`` and its hosts
anywhere between "untouched" and "fully switched". Recovery:

1. Loads the installation. No lease: nothing to recover. A lease that is
   still being renewed belongs to a working operation and is not taken over
   (see ``_check_takeover``): the user is told what runs where. Every plan it
   may run (the operation's, and what the hosts ran before it) is checked
   against its signed digest before anything is appended.
2. Appends ``OperationResumed`` (the signed intent: this key takes the
   operation over; the lease stays with the operation and restarts) with a
   ``LeaseRenewed`` naming this process, which then renews it while it works.
   A second recoverer, or the original process if it was not dead after all,
   then conflicts on its next append instead of writing beside us, and stops
   (``LeaseLost``).
3. Probes every host of the operation's plan (where ``current`` points, which
   release each component runs, health gates) and records what it found as a
   ``recover-probe`` step per host.
4. Completes the operation when every host runs the new release, healthy
   (``HostActivated`` for hosts not yet recorded, then ``OperationFinished``
   ``deployed``); otherwise puts every host back on the release it ran before
   the operation, as a failed deploy does, and finishes ``failed``. A host
   found already on its previous release, healthy, is left running.

If a host cannot be restored, the operation is not finished: the lease stays
held (by this key) with the evidence recorded, and ``chassis recover`` can be
run again once the host is fixed (or the lease broken).
"""

from __future__ import annotations

import shlex
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from adapters.connectors.base import Connector
from adapters.errors import ConnectorError
from adapters.supervisors.base import SupervisorError
from chassis.connect import connector_for
from chassis.engine.deploy import DEFAULT_LEASE_TTL_S
from chassis.engine.executor import crash_point, gate_evidence, run_gate, scrubbed, scrubbed_data
from chassis.engine.lease import holder_running
from chassis.engine.operation import (
    OperationRecorder,
    load_installation,
    previous_plan,
    supervisor_for,
)
from chassis.engine.plan import ComponentPlan, HostPlan, Plan, verified_plan, verified_plans
from chassis.engine.restore import restore_host
from chassis.engine.retire import unretire_host
from chassis.errors import ChassisError
from chassis.hosts import get_host
from chassis.workspace import Workspace
from ledger.application import Ledger
from ledger.canonical import format_timestamp
from ledger.installations import Installation, LeaseHeldError, LeaseHolder

PROBE_STEP = "recover-probe"
"""The step name of the per-host probe records (and a ``CHASSIS_CRASH_AT`` point)."""

Progress = Callable[[str], None]
Command = Callable[[Installation], None]
PreviousPlans = dict[str, tuple[HostPlan | None, dict[str, Any] | None]]


class RecoveryIncomplete(ChassisError):
    """A host could not be restored; the lease stays held for another try."""

    exit_code = 17


@dataclass
class RecoverResult:
    app: str
    environment: str
    outcome: str
    """``nothing-to-recover``, ``completed``, ``restored`` or ``incomplete``."""
    description: str
    revision: int | None = None
    operation: str | None = None
    label: str | None = None
    status: str | None = None
    """The revision's final status (``deployed``, ``failed``, ``noop``); None if unfinished."""
    hosts: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "app": self.app,
            "environment": self.environment,
            "outcome": self.outcome,
            "description": self.description,
            "revision": self.revision,
            "operation": self.operation,
            "label": self.label,
            "status": self.status,
            "hosts": self.hosts,
        }


@dataclass
class _Probe:
    """What one host looked like. ``on_new``: ``current`` is the operation's
    release and every planned component runs it (nothing of the previous
    release left); ``on_previous``: the same for the release the host ran
    before the operation (or nothing at all if it ran nothing)."""

    host: str
    current: str | None = None
    components: dict[str, dict[str, Any]] = field(default_factory=dict)
    on_new: bool = False
    on_previous: bool = False
    healthy: bool | None = None
    """Gates of the release the host is on (None: not gated)."""
    gates: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    connector: Connector | None = None

    def data(self) -> dict[str, Any]:
        return {
            "current": self.current,
            "components": self.components,
            "on_new": self.on_new,
            "on_previous": self.on_previous,
            "healthy": self.healthy,
            "gates": self.gates,
        }

    def summary(self) -> str:
        if self.error:
            return f"probe failed: {self.error}"
        where = (
            "on the new release"
            if self.on_new
            else "on its previous release"
            if self.on_previous
            else "between releases"
        )
        health = {True: ", healthy", False: ", unhealthy", None: ""}[self.healthy]
        running = ", ".join(
            f"{name} {c['release'] or '-'}" if c["running"] else f"{name} stopped"
            for name, c in sorted(self.components.items())
        )
        current = self.current or "nothing"
        return f"current -> {current}; {running or 'nothing runs'}: {where}{health}"


def _check_takeover(installation: Installation, actor: str, force: bool) -> str:
    """Refuse to take over a lease that is being renewed, whichever key holds
    it, unless its process is known to be gone; return why taking it over is
    right. The holder is known gone when it ran on this machine and its
    process no longer runs; a live one is never taken over, even with
    ``--force``. One on another machine (or from before holders were
    recorded) cannot be checked from here: wait for its lease to expire (it
    stops being renewed when its process dies), or ``--force``."""
    lease = installation.lease
    assert lease is not None
    now = datetime.now(UTC)
    name = f"{installation.app}/{installation.environment}"
    expires = installation.lease_expires()
    if expires is None or now > expires:
        return " (expired)"
    until = format_timestamp(expires)
    running = holder_running(lease)
    holder = LeaseHolder.of(lease)
    if running is True and holder is not None:
        raise LeaseHeldError(
            f"{name}: {installation.lease_text(now)} is still running: pid {holder.pid} on "
            f"{holder.hostname} is alive and renews the lease. recover does not take over a "
            f"live operation (not even with --force): wait for it to finish, or stop it (kill "
            f"{holder.pid} on {holder.hostname}) and run recover again"
        )
    gone = f" (its process, pid {holder.pid} on {holder.hostname}, is gone)" if holder else ""
    if force:
        return " (taken over with --force)" if running is None else gone
    if lease["holder"] != actor:
        raise LeaseHeldError(
            f"the lease of {name} ({installation.lease_text(now)}) is live until {until} "
            f"and held by another key ({lease['holder'][:16]}); if its process is gone, "
            "pass --force"
        )
    if running is None:
        where = (
            f"on {holder.describe()}, which cannot be checked from here"
            if holder
            else "(its lease, from before holders were recorded, names no host or pid)"
        )
        raise LeaseHeldError(
            f"{name}: {installation.lease_text(now)} may still be running {where}. recover "
            f"does not take over a lease that is being renewed: wait for the operation to "
            f"finish; if its process is gone the lease expires at {until} (it is no longer "
            "renewed), or pass --force"
        )
    return gone


def recover(
    ledger: Ledger,
    ws: Workspace,
    *,
    app: str,
    environment: str,
    force: bool = False,
    progress: Progress,
) -> RecoverResult:
    """Complete or undo the operation that holds the lease of ``app`` in ``environment``."""
    if ledger.signer is None:
        raise ChassisError("recovering needs a signing key")
    actor = ledger.signer.keyid
    installation = load_installation(ledger, app, environment)
    lease = installation.lease
    if lease is None:
        return RecoverResult(app, environment, "nothing-to-recover", _nothing(installation))
    why = _check_takeover(installation, actor, force)
    op_id = str(lease["op_id"])
    revision = int(lease["revision"])
    entry = installation.revision_entry(revision)
    plan = verified_plan(ledger, installation, revision)
    operation = str(entry["operation"])
    before = _state_before(ledger, installation, op_id)
    previous_hosts = {name: dict(entry) for name, entry in before.hosts.items()}
    placed = {h.host for h in plan.hosts}
    retired = {
        name: entry
        for name, entry in previous_hosts.items()
        if name not in placed and name not in installation.hosts
    }
    # What an undo restarts: the previous plans (as the installation holds
    # them for the hosts of the plan, as they were for retired hosts).
    verified_plans(
        ledger,
        installation,
        {int(previous_hosts[h.host]["revision"]) for h in plan.hosts if h.host in previous_hosts},
    )
    retired_plans = verified_plans(ledger, before, {int(e["revision"]) for e in retired.values()})
    previous_plans: PreviousPlans = {
        h.host: previous_plan(installation, previous_hosts.get(h.host), h.host) for h in plan.hosts
    }
    result = RecoverResult(
        app, environment, "pending", "", revision=revision, operation=operation, label=plan.label
    )
    reason = (
        f"recover: {operation} {plan.label} (revision {revision}) was interrupted; its lease "
        f"was held by key {str(lease['holder'])[:16]} since {lease['started']}" + why
    )
    record = OperationRecorder(ledger, installation, op_id)
    probes: dict[str, _Probe] = {}
    try:
        record(
            lambda i: i.resume_operation(
                actor=actor, op_id=op_id, reason=reason, lease_ttl_s=DEFAULT_LEASE_TTL_S
            )
        )
        progress(
            f"recovering {operation} {plan.label} (revision {revision}) of {app}/{environment}"
        )
        probes = _probe_all(ledger, ws, plan, previous_plans)
        record(*(_probe_recorder(probes[h.host], actor, op_id) for h in plan.hosts))
        for host_plan in plan.hosts:
            progress(f"{host_plan.host}: {probes[host_plan.host].summary()}")
        for host_plan in plan.hosts:
            crash_point(host_plan.host, PROBE_STEP)
        if all(p.on_new and p.healthy is not False for p in probes.values()):
            _complete(plan, previous_hosts, record, actor, op_id, result, progress)
        else:
            def unretire() -> None:
                for name, entry in sorted(retired.items()):
                    was = retired_plans[int(entry["revision"])]
                    try:
                        ok, detail = unretire_host(ledger, ws, was, name, entry, record)
                    except (ConnectorError, SupervisorError) as e:
                        ok, detail = False, e.diagnostics()
                    result.hosts[name] = {"action": "restored", "ok": ok, "detail": detail}

            _undo(
                plan, probes, previous_plans, previous_hosts, record, actor, op_id, result, unretire
            )
            for name, outcome in sorted(result.hosts.items()):
                progress(f"{name}: {outcome['detail']}")
    finally:
        record.close()
        for probe in probes.values():
            if probe.connector is not None:
                probe.connector.close()
    return result


def _probe_recorder(probe: _Probe, actor: str, op_id: str) -> Command:
    def command(installation: Installation) -> None:
        installation.record_step(
            actor=actor,
            op_id=op_id,
            host=probe.host,
            step=PROBE_STEP,
            ok=probe.error is None,
            detail=scrubbed(probe.summary()),
            data=scrubbed_data(probe.data()),
        )

    return command


def _nothing(installation: Installation) -> str:
    text = (
        "nothing to recover: no operation holds the lease of "
        f"{installation.app}/{installation.environment}"
    )
    if installation.revisions:
        last = installation.revisions[-1]
        text += f" (revision {last['revision']} is {last['status']}: {last['description']})"
    return text


def _state_before(ledger: Ledger, installation: Installation, op_id: str) -> Installation:
    """The installation just before ``op_id`` started (what each host ran,
    and the plans it ran them with): replayed to the version before its
    ``OperationStarted``."""
    for _, event in reversed(ledger.verified_events(installation.id)):
        if isinstance(event, Installation.OperationStarted) and event.op_id == op_id:
            version = event.originator_version - 1
            return ledger.load(Installation, installation.id, version=version)
    raise ChassisError(f"the ledger has no start of operation {op_id}")


# Probing.


def _probe_all(
    ledger: Ledger, ws: Workspace, plan: Plan, previous_plans: PreviousPlans
) -> dict[str, _Probe]:
    """Look at every host in parallel. Health gates run only where a host
    looks settled on one release, and the new release is gated only if every
    host is on it (otherwise the operation is undone anyway)."""
    probes: dict[str, _Probe] = {}
    lock = threading.Lock()

    def look(host_plan: HostPlan) -> None:
        probe = _Probe(host_plan.host)
        try:
            probe.connector = connector_for(get_host(ledger, host_plan.host), ws)
        except ChassisError as e:
            probe.error = e.diagnostics()
        else:
            _look(probe, plan, host_plan, probe.connector, *previous_plans[host_plan.host])
        with lock:
            probes[host_plan.host] = probe

    def gate(host_plan: HostPlan) -> None:
        probe = probes[host_plan.host]
        prev_plan, prev_entry = previous_plans[host_plan.host]
        if probe.connector is None:
            return
        if probe.on_new and all_new:
            _gate(probe, plan, host_plan, probe.connector, host_plan.components, plan.release_dir)
        elif probe.on_previous and prev_plan is not None and prev_entry is not None:
            release_dir = str(prev_entry["release_dir"])
            _gate(probe, plan, host_plan, probe.connector, prev_plan.components, release_dir)

    workers = max(1, len(plan.hosts))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(look, plan.hosts))
    all_new = all(p.on_new for p in probes.values())
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(gate, plan.hosts))
    return probes


def _look(
    probe: _Probe,
    plan: Plan,
    host_plan: HostPlan,
    connector: Connector,
    prev_plan: HostPlan | None,
    prev_entry: dict[str, Any] | None,
) -> None:
    root = host_plan.root.rstrip("/")
    new = {c.name for c in host_plan.components}
    old = {c.name for c in prev_plan.components} if prev_plan else set()
    try:
        link = connector.run(
            f"readlink -- {shlex.quote(root + '/current')}", check=False, timeout=30
        )
        probe.current = link.stdout.strip().rsplit("/", 1)[-1] if link.ok else None
        supervisor = supervisor_for(plan, host_plan, connector)
        for name in sorted(new | old):
            state = supervisor.state(name)
            probe.components[name] = {
                "running": state.running,
                "release": state.release_id[:16] if state.release_id else None,
                "release_id": state.release_id,
                "pid": state.pid,
            }
    except (ConnectorError, SupervisorError) as e:
        probe.error = e.diagnostics()
        return

    def runs(names: set[str], release_id: str) -> bool:
        return all(
            probe.components[n]["running"] and probe.components[n]["release_id"] == release_id
            for n in names
        )

    def idle(names: set[str]) -> bool:
        return not any(probe.components[n]["running"] for n in names)

    probe.on_new = (
        probe.current == plan.release_dir and runs(new, plan.release_id) and idle(old - new)
    )
    if prev_entry is None:
        probe.on_previous = probe.current is None and idle(new | old)
    else:
        probe.on_previous = (
            probe.current == prev_entry["release_dir"]
            and runs(old, str(prev_entry["release_id"]))
            and idle(new - old)
        )


def _gate(
    probe: _Probe,
    plan: Plan,
    host_plan: HostPlan,
    connector: Connector,
    components: list[ComponentPlan],
    release_dir: str,
) -> None:
    workdir = f"{host_plan.root.rstrip('/')}/releases/{release_dir}"
    probe.healthy = True
    try:
        for component in components:
            # Health counts only from our own process holding the port.
            gate = run_gate(
                component, host_plan.address, connector, workdir,
                supervisor=supervisor_for(plan, host_plan, connector),
            )
            if gate is None:
                continue
            probe.gates[component.name] = gate_evidence(gate)
            if not gate.passed:
                probe.healthy = False
    except ConnectorError as e:
        probe.healthy = False
        probe.error = e.diagnostics()


# Deciding.


def _complete(
    plan: Plan,
    previous_hosts: dict[str, dict[str, Any]],
    record: OperationRecorder,
    actor: str,
    op_id: str,
    result: RecoverResult,
    progress: Progress,
) -> None:
    """Every host runs the new release, healthy: record the activations the
    crash did not, and the outcome, in one save."""
    installation = record.installation
    revision = int(installation.revision)
    wanted = {h.host: sorted(c.name for c in h.components) for h in plan.hosts}
    noop = set(wanted) == set(previous_hosts) and all(
        previous_hosts[h]["release_id"] == plan.release_id
        and sorted(previous_hosts[h]["components"]) == wanted[h]
        for h in wanted
    )
    commands: list[Command] = []
    for name, components in wanted.items():
        entry = installation.hosts.get(name)
        recorded = (
            entry is not None
            and entry["release_id"] == plan.release_id
            and (noop or int(entry["revision"]) == revision)
            and sorted(entry["components"]) == components
        )
        if not recorded:
            commands.append(_activation(plan, name, components, actor, op_id))
        result.hosts[name] = {
            "action": "already-recorded" if recorded else "activated",
            "ok": True,
            "detail": f"{plan.label} runs and is healthy",
        }
    status = "noop" if noop else "deployed"
    description = (
        f"{result.operation} {plan.label}"
        + (" (no change)" if noop else "")
        + f" completed by recover (key {actor[:16]}): every host runs it, healthy"
    )
    commands.append(
        lambda i: i.finish(actor=actor, op_id=op_id, status=status, description=description)
    )
    record(*commands)
    for name, outcome in sorted(result.hosts.items()):
        if outcome["action"] == "activated":
            progress(f"{name}: {plan.label} active and healthy (recorded by recover)")
    result.outcome, result.status, result.description = "completed", status, description


def _activation(plan: Plan, host: str, components: list[str], actor: str, op_id: str) -> Command:
    def command(installation: Installation) -> None:
        installation.activate_host(
            actor=actor,
            op_id=op_id,
            host=host,
            release_id=plan.release_id,
            label=plan.label,
            components=components,
        )

    return command


def _undo(
    plan: Plan,
    probes: dict[str, _Probe],
    previous_plans: PreviousPlans,
    previous_hosts: dict[str, dict[str, Any]],
    record: OperationRecorder,
    actor: str,
    op_id: str,
    result: RecoverResult,
    unretire: Callable[[], None],
) -> None:
    """Put every host of the plan back on what it ran before the operation.
    A host found there, healthy, keeps running; the others are restored as a
    failed deploy restores them, each outcome recorded as it happens. Hosts
    the operation had retired (a placement change) then run their release
    again (``unretire``)."""
    installation = record.installation

    def one(host_plan: HostPlan) -> None:
        name = host_plan.host
        probe = probes[name]
        previous = previous_hosts.get(name)
        prev_plan, prev_entry = previous_plans[name]
        settled = probe.on_previous and probe.healthy is not False and probe.error is None
        if settled and installation.hosts.get(name) == previous:
            was = f" {previous['label']}, healthy" if previous else " (nothing)"
            result.hosts[name] = {
                "action": "left-running",
                "ok": True,
                "detail": f"already on its previous release{was}",
            }
            return
        if settled:
            ok, detail = True, "already on its previous release, healthy"
        elif probe.connector is None:
            ok, detail = False, f"cannot reach the host: {probe.error}"
        else:
            supervisor = supervisor_for(plan, host_plan, probe.connector)
            ok, detail, _ = restore_host(
                probe.connector, supervisor, host_plan, prev_plan, prev_entry
            )
        record(
            lambda i: i.restore_host(
                actor=actor,
                op_id=op_id,
                host=name,
                previous=previous,
                ok=ok,
                detail=scrubbed(detail),
            )
        )
        result.hosts[name] = {"action": "restored", "ok": ok, "detail": detail}

    with ThreadPoolExecutor(max_workers=max(1, len(plan.hosts))) as pool:
        list(pool.map(one, plan.hosts))
    unretire()
    what = f"{result.operation} {plan.label}"
    failed = sorted(name for name, outcome in result.hosts.items() if not outcome["ok"])
    if failed:
        why = "; ".join(f"{n}: {result.hosts[n]['detail']}" for n in failed)
        result.outcome, result.status = "incomplete", None
        result.description = (
            f"{what} could not be undone on {', '.join(failed)} ({why}); the lease stays held: "
            f"fix the host(s) and run 'chassis recover {plan.app} --env {plan.environment}' "
            "again, or break the lease"
        )
        return
    if all(outcome["action"] == "left-running" for outcome in result.hosts.values()):
        done = "no host had changed yet"
    else:
        done = "the previous release is restored"
    description = f"{what} was interrupted; {done} (recover, key {actor[:16]})"
    record(lambda i: i.finish(actor=actor, op_id=op_id, status="failed", description=description))
    result.outcome, result.status, result.description = "restored", "failed", description
