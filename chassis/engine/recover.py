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
from chassis.engine.executor import gate_evidence, run_gate, scrubbed, scrubbed_data
from chassis.engine.lease import holder_running
from chassis.engine.lifecycle import RETIRED, Before, Operation, befores, recorded_entry
from chassis.engine.operation import (
    OperationRecorder,
    load_installation,
    restored,
    supervisor_for,
)
from chassis.engine.plan import ComponentPlan, HostPlan, Plan, verified_plan, verified_plans
from chassis.errors import ChassisError
from chassis.hosts import get_host
from chassis.workspace import Workspace
from ledger.application import Ledger
from ledger.canonical import format_timestamp
from ledger.installations import Installation, LeaseHeldError, LeaseHolder

PROBE_STEP = "recover-probe"
"""The step name of the per-host probe records."""

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
    # Every plan a restore may start (what each host ran before the
    # operation), checked against its signed digest before anything is
    # appended; hosts the operation retires are probed too, whether or not
    # their retirement was recorded (a crash may have come half-way).
    verified_plans(ledger, before, {int(e["revision"]) for e in previous_hosts.values()})
    was = befores(before)
    leaving = sorted(set(previous_hosts) - placed)
    result = RecoverResult(
        app, environment, "pending", "", revision=revision, operation=operation, label=plan.label
    )
    reason = (
        f"recover: {operation} {plan.label} (revision {revision}) was interrupted; its lease "
        f"was held by key {str(lease['holder'])[:16]} since {lease['started']}" + why
    )
    record = OperationRecorder(ledger, installation, op_id)
    op = Operation(ledger, ws, record, was, progress)
    try:
        record(
            lambda i: i.resume_operation(
                actor=actor, op_id=op_id, reason=reason, lease_ttl_s=DEFAULT_LEASE_TTL_S
            )
        )
        progress(
            f"recovering {operation} {plan.label} (revision {revision}) of {app}/{environment}"
        )
        probes = _probe_all(ledger, ws, plan, was, leaving)
        for probe in probes.values():
            if probe.connector is not None:
                op.adopt(probe.host, probe.connector)
        record(*(_probe_recorder(probes[name], actor, op_id) for name in sorted(probes)))
        for name in sorted(probes):
            progress(f"{name}: {probes[name].summary()}")
        if all(p.on_new and p.healthy is not False for p in probes.values()):
            _complete(plan, previous_hosts, leaving, record, actor, op_id, result, progress)
        else:
            _undo(plan, probes, op, leaving, result)
            for name, outcome in sorted(result.hosts.items()):
                progress(f"{name}: {outcome['detail']}")
    finally:
        record.close()
        op.close()
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
    ledger: Ledger, ws: Workspace, plan: Plan, was: dict[str, Before], leaving: list[str]
) -> dict[str, _Probe]:
    """Look at every host in parallel: those of the plan, and those the
    operation retires. Health gates run only where a host looks settled on
    one release, and the new release is gated only if every host is on it
    (otherwise the operation is undone anyway)."""
    probes: dict[str, _Probe] = {}
    lock = threading.Lock()
    targets: list[tuple[str, Plan, HostPlan, bool]] = [(h.host, plan, h, False) for h in plan.hosts]
    for name in leaving:
        before = was[name]
        if before.plan is not None and before.host_plan is not None:
            targets.append((name, before.plan, before.host_plan, True))

    def look(target: tuple[str, Plan, HostPlan, bool]) -> None:
        name, host_in, host_plan, retiring = target
        probe = _Probe(name)
        try:
            probe.connector = connector_for(get_host(ledger, name), ws)
            before = was.get(name) or Before()
            _look(probe, host_in, host_plan, probe.connector, before, retiring=retiring)
        except ChassisError as e:
            probe.error = e.diagnostics()
        except Exception as e:  # a probe worker never escapes: the host is undone
            probe.error = f"unexpected {type(e).__name__}: {e}"
        with lock:
            probes[name] = probe

    def gate(target: tuple[str, Plan, HostPlan, bool]) -> None:
        name, host_in, host_plan, retiring = target
        probe = probes[name]
        before = was.get(name) or Before()
        if probe.connector is None:
            return
        if probe.on_new and all_new and not retiring:
            _gate(
                probe, host_in, host_plan, probe.connector, host_plan.components, plan.release_dir
            )
        elif probe.on_previous and before.host_plan is not None and before.release is not None:
            release_dir = str(before.release["release_dir"])
            _gate(
                probe, host_in, host_plan, probe.connector, before.host_plan.components, release_dir
            )

    workers = max(1, len(targets))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(look, targets))
    all_new = all(p.on_new for p in probes.values())
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(gate, targets))
    return probes


def _look(
    probe: _Probe,
    plan: Plan,
    host_plan: HostPlan,
    connector: Connector,
    before: Before,
    *,
    retiring: bool,
) -> None:
    """``retiring``: the operation's target runs nothing on this host, so
    "on the new release" means nothing of the installation runs there."""
    root = host_plan.root.rstrip("/")
    prev_plan, prev_entry = before.host_plan, before.release
    new = set() if retiring else {c.name for c in host_plan.components}
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

    if retiring:
        probe.on_new = probe.current is None and idle(old)
    else:
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
                component,
                host_plan.address,
                connector,
                workdir,
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
    leaving: list[str],
    record: OperationRecorder,
    actor: str,
    op_id: str,
    result: RecoverResult,
    progress: Progress,
) -> None:
    """Every host runs the new release, healthy (and the hosts it retires run
    nothing): record the activations and retirements the crash did not, and
    the outcome, in one save."""
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
    for name in leaving:
        if name in installation.hosts:
            commands.append(_retirement(name, previous_hosts[name], actor, op_id))
        result.hosts[name] = {"action": "retired", "ok": True, "detail": RETIRED}
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


def _retirement(host: str, entry: dict[str, Any], actor: str, op_id: str) -> Command:
    def command(installation: Installation) -> None:
        installation.retire_host(
            actor=actor,
            op_id=op_id,
            host=host,
            components=list(entry["components"]),
            detail=RETIRED + " (found so by recover)",
        )

    return command


def _undo(
    plan: Plan,
    probes: dict[str, _Probe],
    op: Operation,
    leaving: list[str],
    result: RecoverResult,
) -> None:
    """Put every host back on what it ran before the operation: those of the
    plan and those it was retiring. A host found there, healthy, keeps
    running; the others are restored as a failed operation restores them
    (all stopped first, then started and gated), each outcome recorded."""
    installation = op.recorder.installation
    record = op.recorder
    hosts = {h.host: h for h in plan.hosts}
    for name in sorted({*hosts, *leaving}):
        probe = probes.get(name)
        before = op.was(name)
        previous = recorded_entry(before)
        settled = (
            probe is not None
            and probe.on_previous
            and probe.healthy is not False
            and probe.error is None
        )
        if settled and installation.hosts.get(name) == previous:
            was = f" {before.entry['label']}, healthy" if before.entry else " (nothing)"
            result.hosts[name] = {
                "action": "left-running",
                "ok": True,
                "detail": f"already on its previous release{was}",
            }
        elif settled:
            detail = "already on its previous release, healthy"
            record(restored(record, name, previous, True, detail))
            result.hosts[name] = {"action": "restored", "ok": True, "detail": detail}
        elif probe is None or probe.connector is None:
            why = probe.error if probe is not None else "no plan recorded for it"
            detail = f"cannot reach the host: {why}"
            record(restored(record, name, previous, False, detail))
            result.hosts[name] = {"action": "restored", "ok": False, "detail": detail}
        else:
            host_plan = hosts.get(name)
            op.mark(name, plan if host_plan is not None else None, host_plan)
    for name, (ok, detail) in op.restore().items():
        result.hosts[name] = {"action": "restored", "ok": ok, "detail": detail}
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
    actor = record.actor
    description = f"{what} was interrupted; {done} (recover, key {actor[:16]})"
    op.finish("failed", description)
    result.outcome, result.status, result.description = "restored", "failed", description
