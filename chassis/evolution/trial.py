"""The trial slot: a candidate release run beside production, never instead of it.

``chassis evolution proof --require-trial`` promotes a candidate only after it
ran, on the hosts production runs on, and passed its health gates there. The
trial runs the candidate's plan moved into an isolated *slot*
(:func:`trial_plan`):

- each host's root becomes ``<root>/trials/<slot>``: the bundle, the unpacked
  release, env files, pidfiles and logs all live there, none in production's
  ``releases/``, ``run/`` or ``logs/``; ``CHASSIS_HOST_ROOT`` (set by the
  executor from the root) is the slot's root, and the env gets
  ``CHASSIS_TRIAL_SLOT=<slot>``;
- its steps are upload, verify, unpack, configure, start, health: no
  stop-old, swap or prune, so production's processes, ``current`` and
  release directories are never touched;
- every port the plan declares (a component's ``ports``, a numeric health
  port) moves by the offset, in ``ports``, the health check, and as a whole
  number in commands, env values and health commands (``127.0.0.1:8081``
  becomes ``127.0.0.1:9081`` for an offset of 1000; ``18081`` is left alone),
  so the candidate listens beside production and its components talk to
  each other, not to production's. Secret values are references and are not
  rewritten.

Supervisors. With ``direct``, the slot's root separates everything (pidfiles,
restart records, logs). ``systemd`` names units by prefix, not by root:
production's are ``chassis-<app>-<component>@<release>.service``, and starting
one disables every unit matching ``chassis-<app>-<component>@*``, so a trial
under production's prefix would stop production. A trial's units use the
prefix ``chassis-<app>:trial-<slot>`` instead (:func:`trial_unit_prefix`):
``:`` is in no app or component name, so neither side's pattern matches the
other's units. Teardown stops them and removes their unit and env files. A
prefix longer than a unit name allows (an app name over ~40 characters) is
refused by :func:`trial_plan` before anything runs.

Life cycle: :func:`run_trial` runs the trial and reports it, host by host
(each step handed to ``record`` as it ends), and never tears anything down:
call :func:`teardown_trial` afterwards, in a ``finally``, whatever happened;
it is safe after a partial run and safe twice. A slot left behind by a crash
is found by :func:`leftover_slots` and removed by :func:`sweep_slot`
(``chassis recover``).
"""

from __future__ import annotations

import posixpath
import re
import shlex
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from adapters.connectors.base import Connector
from adapters.errors import ConnectorError
from adapters.supervisors.base import Supervisor, SupervisorError, check_component, log_path
from adapters.supervisors.direct import DirectSupervisor
from adapters.supervisors.systemd import SystemdSupervisor, unit_name
from chassis.connect import connector_for
from chassis.engine.executor import (
    HostDeployment,
    StepFailed,
    declared_ports,
    scrubbed,
    scrubbed_data,
)
from chassis.engine.plan import ComponentPlan, HostPlan, Plan
from chassis.engine.preflight import worker_failure
from chassis.errors import ChassisError
from chassis.hosts import get_host
from chassis.logs import LogSource, tail
from chassis.workspace import Workspace
from ledger.application import Ledger
from ledger.errors import LedgerError

__all__ = [
    "LOG_LINES",
    "TRIALS_DIR",
    "TRIAL_STEPS",
    "HostTrial",
    "TrialError",
    "TrialResult",
    "TrialTeardownFailed",
    "check_slot",
    "leftover_slots",
    "run_trial",
    "slot_root",
    "slot_supervisors",
    "sweep_slot",
    "teardown_trial",
    "trial_plan",
    "trial_supervisor",
    "trial_unit_prefix",
]

SLOT = re.compile(r"[0-9a-f]{8,32}\Z")
TRIALS_DIR = "trials"
TRIAL_STEPS = ("upload", "verify", "unpack", "configure", "start", "health")
LOG_LINES = 20
"""How many lines of each component's log a host's trial reports."""
MAX_PORT = 65535
SLOT_ENV = "CHASSIS_TRIAL_SLOT"
_NUMBER = re.compile(r"(?<![0-9])[0-9]+(?![0-9])")

TrialRecord = Callable[[str, str, bool, str, dict[str, Any]], None]
"""``record(host, step, ok, detail, data)``: one step's outcome on one host."""
Progress = Callable[[str], None]
SupervisorForRoot = Callable[[str], Supervisor]
"""The supervisor of one slot's root (:func:`slot_supervisors` makes one)."""


class TrialError(ChassisError):
    """A trial that cannot be set up as asked (bad slot, port offset, root):
    refused before anything runs."""

    exit_code = 2


class TrialTeardownFailed(TrialError):
    """Some host's trial slot could not be stopped or removed (each outcome
    recorded); ``chassis recover`` sweeps what is left."""

    exit_code = 15


# -- the slot ------------------------------------------------------------------


def check_slot(slot: str) -> str:
    """``slot`` if it is 8-32 lowercase hex digits (it becomes a path
    component and part of unit names); ``TrialError`` otherwise."""
    if not isinstance(slot, str) or not SLOT.match(slot):
        raise TrialError(f"trial slot {slot!r}: expected 8-32 lowercase hex digits")
    return slot


def slot_root(root: str, slot: str) -> str:
    """``<root>/trials/<slot>`` for a host root (which must be absolute)."""
    check_slot(slot)
    if not isinstance(root, str) or not posixpath.isabs(root) or "\0" in root or "\n" in root:
        raise TrialError(f"host root {root!r} must be an absolute path for a trial")
    return posixpath.join(posixpath.normpath(root), TRIALS_DIR, slot)


def _is_slot_root(root: str, slot: str) -> bool:
    return posixpath.isabs(root) and posixpath.normpath(root).endswith(f"/{TRIALS_DIR}/{slot}")


def _root_of_slot(root: str, slot: str) -> str:
    """The slot's root for a host root of the candidate's plan, or for one
    of the trial plan (already the slot's root)."""
    check_slot(slot)
    return posixpath.normpath(root) if _is_slot_root(root, slot) else slot_root(root, slot)


def trial_unit_prefix(app: str, slot: str) -> str:
    """The systemd unit prefix of a trial's units (production's is ``chassis-<app>``)."""
    return f"chassis-{app}:trial-{check_slot(slot)}"


def trial_supervisor(app: str, kind: str, connector: Connector, root: str, slot: str) -> Supervisor:
    """The supervisor of one host's slot: ``root`` is the slot's root;
    ``kind`` the host's supervisor (``systemd``, else ``direct``, as the
    engine's ``supervisor_for``)."""
    if not _is_slot_root(root, slot):
        raise TrialError(f"{root!r} is not the root of trial slot {slot}")
    try:
        if kind == "systemd":
            return SystemdSupervisor(connector, root, unit_prefix=trial_unit_prefix(app, slot))
        return DirectSupervisor(connector, root)
    except ValueError as e:
        raise TrialError(f"trial slot {slot} on {connector.name}: {e}") from None


def slot_supervisors(app: str, kind: str, connector: Connector) -> SupervisorForRoot:
    """For :func:`sweep_slot`: the supervisor of any slot root of ``app`` on
    a host whose supervisor is ``kind`` (the slot is the root's last part)."""

    def of(root: str) -> Supervisor:
        return trial_supervisor(app, kind, connector, root, posixpath.basename(root))

    return of


# -- the plan ------------------------------------------------------------------


def _port_map(plan: Plan, offset: int) -> dict[int, int]:
    """Every declared port → port + offset; ``TrialError`` for one past
    65535 or one landing on a port the plan declares."""
    declared = {
        port: (host.host, component.name)
        for host in plan.hosts
        for component in host.components
        for port in declared_ports(component)
    }
    mapping: dict[int, int] = {}
    for host in plan.hosts:
        for component in host.components:
            for port in declared_ports(component):
                moved = port + offset
                where = f"host {host.host}: component {component.name}: port {port}"
                if moved > MAX_PORT:
                    raise TrialError(
                        f"{where} + offset {offset} = {moved} is above {MAX_PORT}: "
                        "choose a smaller port offset"
                    )
                if moved in declared:
                    other_host, other = declared[moved]
                    raise TrialError(
                        f"{where} + offset {offset} = {moved}, which component {other} "
                        f"declares on host {other_host}: choose another port offset"
                    )
                mapping[port] = moved
    return mapping


def _moved(text: str, mapping: dict[int, int]) -> str:
    """``text`` with each whole number that is a declared port moved."""

    def one(match: re.Match[str]) -> str:
        token = match.group(0)
        value = int(token)
        if str(value) != token or value not in mapping:
            return token
        return str(mapping[value])

    return _NUMBER.sub(one, text)


def _trial_component(component: ComponentPlan, mapping: dict[int, int], slot: str) -> ComponentPlan:
    health = component.health
    if health is not None:
        health = dict(health)
        port = health.get("port")
        if type(port) is int:
            health["port"] = mapping[port]
        command = health.get("command")
        if isinstance(command, str):
            health["command"] = _moved(command, mapping)
    return msgspec.structs.replace(
        component,
        command=_moved(component.command, mapping),
        env={**{k: _moved(v, mapping) for k, v in component.env.items()}, SLOT_ENV: slot},
        ports={name: mapping[port] for name, port in component.ports.items()},
        health=health,
    )


def trial_plan(plan: Plan, slot: str, port_offset: int) -> Plan:
    """The candidate's ``plan`` moved into trial slot ``slot`` (see the
    module's docstring); ``TrialError`` before anything runs when it cannot be."""
    check_slot(slot)
    if type(port_offset) is not int or port_offset < 1:
        raise TrialError(f"port offset {port_offset!r}: expected a positive whole number")
    mapping = _port_map(plan, port_offset)
    hosts: list[HostPlan] = []
    for host in plan.hosts:
        root = slot_root(host.root, slot)
        components = [_trial_component(c, mapping, slot) for c in host.components]
        if host.supervisor == "systemd":
            for component in components:
                try:
                    unit_name(trial_unit_prefix(plan.app, slot), component.name, plan.release_id)
                except ValueError as e:
                    raise TrialError(
                        f"host {host.host}: component {component.name}: no systemd unit "
                        f"name for trial slot {slot} ({e}); use a shorter slot"
                    ) from None
        hosts.append(
            msgspec.structs.replace(host, root=root, components=components, steps=list(TRIAL_STEPS))
        )
    return msgspec.structs.replace(plan, hosts=hosts)


# -- running it ----------------------------------------------------------------


@dataclass(frozen=True)
class HostTrial:
    """One host's trial."""

    ok: bool
    step: str | None
    """The step that failed (None: every step passed)."""
    detail: str
    """The failure, or the last step's outcome (scrubbed)."""
    health: dict[str, Any] = field(default_factory=dict)
    """The ``health`` step's data: ``{"gates": {component: evidence}}`` when it
    passed, ``{"component", "gate", "log_tail"}`` when it failed; empty when
    the trial never got there."""
    logs: dict[str, list[str]] = field(default_factory=dict)
    """component → the last lines of its ``logs/<component>.log`` in the slot
    (scrubbed)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "step": self.step,
            "detail": self.detail,
            "health": self.health,
            "logs": self.logs,
        }


@dataclass(frozen=True)
class TrialResult:
    hosts: dict[str, HostTrial]
    plan: Plan
    """The trial plan that ran (slot roots, moved ports)."""
    slot: str
    port_offset: int

    @property
    def passed(self) -> bool:
        """Every host passed (and there was at least one)."""
        return bool(self.hosts) and all(h.ok for h in self.hosts.values())

    def failed_hosts(self) -> list[str]:
        return sorted(n for n, h in self.hosts.items() if not h.ok)

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "slot": self.slot,
            "port_offset": self.port_offset,
            "plan_digest": self.plan.digest(),
            "hosts": {n: h.to_dict() for n, h in sorted(self.hosts.items())},
        }


def run_trial(
    ledger: Ledger,
    ws: Workspace,
    plan: Plan,
    *,
    slot: str,
    port_offset: int,
    record: TrialRecord,
    progress: Progress | None,
    bundle: Path,
    interrupted: Callable[[], bool] = lambda: False,
    max_parallel: int = 4,
) -> TrialResult:
    """Run the candidate ``plan`` (its bundle at ``bundle``) in trial slot
    ``slot`` with ports moved by ``port_offset``, on every host at once (at
    most ``max_parallel``). Each step's outcome goes to ``record`` as it ends
    (calls are serialised; details and data scrubbed); a host that fails stops
    there and the others go on. Refuses (``TrialError``) before anything runs
    when the plan cannot be moved. Tears nothing down: call
    :func:`teardown_trial` afterwards, whatever happened."""
    trial = trial_plan(plan, slot, port_offset)
    lock = threading.RLock()

    def tell(line: str) -> None:
        if progress is not None:
            with lock:
                progress(line)

    def one(host_plan: HostPlan) -> HostTrial:
        name = host_plan.host
        seen: dict[str, Any] = {"detail": "", "health": {}}

        def step_record(step: str, ok: bool, detail: str, data: dict[str, Any]) -> None:
            detail, data = scrubbed(detail), scrubbed_data(data)
            seen["detail"] = detail
            if step == "health":
                seen["health"] = data
            with lock:
                record(name, step, ok, detail, data)

        connector: Connector | None = None
        failure: StepFailed | None = None
        try:
            try:
                tell(f"{name}: trial of {plan.label} in slot {slot}")
                connector = connector_for(get_host(ledger, name), ws)
                deployment = HostDeployment(
                    plan=trial,
                    host=host_plan,
                    connector=connector,
                    supervisor=trial_supervisor(
                        plan.app, host_plan.supervisor, connector, host_plan.root, slot
                    ),
                    bundle=bundle,
                    record=step_record,
                    interrupted=interrupted,
                    progress=tell,
                )
                deployment.run()
            except StepFailed as e:
                failure = e
            except (ConnectorError, SupervisorError, ChassisError) as e:
                failure = StepFailed("connect", e.diagnostics())
            except LedgerError:
                raise  # the record itself failed: nothing more can be recorded
            except Exception as e:  # a bug must not strand the other hosts
                failure = worker_failure(e, host_plan.steps, default="connect")
            if failure is not None and not failure.recorded:
                step_record(failure.step, False, failure.detail, failure.data)
            if failure is not None and not failure.reported:
                tell(f"{name}: trial failed at {failure.step}: {scrubbed(failure.detail)}")
            logs = _log_tails(connector, name, host_plan) if connector is not None else {}
        finally:
            if connector is not None:
                connector.close()
        if failure is None:
            tell(f"{name}: trial of {plan.label} healthy")
            return HostTrial(True, None, str(seen["detail"]), dict(seen["health"]), logs)
        return HostTrial(False, failure.step, scrubbed(failure.detail), dict(seen["health"]), logs)

    hosts = list(trial.hosts)
    workers = max(1, min(max_parallel, len(hosts) or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        outcomes = list(pool.map(one, hosts))
    return TrialResult(
        hosts={h.host: o for h, o in zip(hosts, outcomes, strict=True)},
        plan=trial,
        slot=slot,
        port_offset=port_offset,
    )


def _log_tails(connector: Connector, host: str, host_plan: HostPlan) -> dict[str, list[str]]:
    """component → its log's last :data:`LOG_LINES` lines, scrubbed."""
    found: dict[str, list[str]] = {}
    for component in host_plan.components:
        path = log_path(host_plan.root, component.name)
        source = LogSource(host, component.name, path, connector)
        try:
            lines = tail(source, LOG_LINES)
        except ConnectorError as e:
            lines = [f"[chassis: cannot read {source.path}: {e.diagnostics()}]"]
        found[component.name] = scrubbed("\n".join(lines)).splitlines()
    return found


# -- tearing it down -----------------------------------------------------------


def teardown_trial(
    ledger: Ledger,
    ws: Workspace,
    plan: Plan,
    slot: str,
    record: TrialRecord,
    *,
    progress: Progress | None = None,
) -> None:
    """Stop every component of trial slot ``slot`` on every host of ``plan``
    (the candidate's plan given to :func:`run_trial`, or the trial plan) and
    remove ``<root>/trials/<slot>``, recording a ``teardown`` step per host.

    Safe after a partial run and twice: what is not there is not stopped.
    Every host is tried; if any failed, ``TrialTeardownFailed`` names them
    afterwards (the slot is then left for ``chassis recover``)."""
    check_slot(slot)
    failed: dict[str, str] = {}
    for host_plan in plan.hosts:
        name = host_plan.host
        root = _root_of_slot(host_plan.root, slot)
        data: dict[str, Any] = {"slot": slot, "root": root}
        try:
            connector = connector_for(get_host(ledger, name), ws)
            try:
                supervisor = trial_supervisor(plan.app, host_plan.supervisor, connector, root, slot)
                stopped = _clear(
                    connector,
                    supervisor,
                    root,
                    slot,
                    [c.name for c in host_plan.components],
                    [plan.release_id],
                )
            finally:
                connector.close()
        except LedgerError:
            raise
        except Exception as e:  # every host is tried; each failure is recorded
            detail = scrubbed(
                e.diagnostics()
                if isinstance(e, ConnectorError | SupervisorError | ChassisError)
                else f"unexpected {type(e).__name__}: {e}"
            )
            failed[name] = detail
            record(name, "teardown", False, f"trial slot {slot} not removed: {detail}", data)
            if progress is not None:
                progress(f"{name}: trial teardown FAILED: {detail}")
            continue
        detail = f"stopped {', '.join(stopped) or 'nothing'}; removed {TRIALS_DIR}/{slot}"
        record(name, "teardown", True, detail, {**data, "stopped": stopped})
        if progress is not None:
            progress(f"{name}: trial teardown: {detail}")
    if failed:
        raise TrialTeardownFailed(
            f"trial slot {slot} could not be torn down on {', '.join(sorted(failed))} ("
            + "; ".join(f"{n}: {d}" for n, d in sorted(failed.items()))
            + "): 'chassis recover' removes what is left"
        )


def leftover_slots(connector: Connector, root: str) -> list[str]:
    """The trial slots present under ``<root>/trials`` on a host (directories
    named like a slot; symlinks and other names are ignored)."""
    trials = shlex.quote(posixpath.join(_absolute(root), TRIALS_DIR))
    result = connector.run(
        f'for d in {trials}/*/; do d=${{d%/}}; [ -d "$d" ] && [ ! -L "$d" ] && '
        "printf '%s\\n' \"${d##*/}\"; done; exit 0",
        timeout=30,
    )
    return sorted({line for line in result.stdout.split() if SLOT.match(line)})


def sweep_slot(
    connector: Connector,
    supervisor_for_root: SupervisorForRoot,
    root: str,
    slot: str,
) -> list[str]:
    """Stop what runs in ``<root>/trials/<slot>`` (components found by their
    logs and pidfiles there) and remove the directory; returns the components
    that were running. ``supervisor_for_root`` gets the slot's root
    (:func:`slot_supervisors`). Idempotent."""
    where = slot_root(root, slot)
    return _clear(connector, supervisor_for_root(where), where, slot, (), ())


def _absolute(root: str) -> str:
    if not posixpath.isabs(root):
        raise TrialError(f"host root {root!r} must be an absolute path")
    return posixpath.normpath(root)


def _found_components(connector: Connector, root: str) -> list[str]:
    """Components with a log or a pidfile under the slot's ``root``."""
    q = shlex.quote(root)
    result = connector.run(
        f'for f in {q}/logs/*.log {q}/run/*.pid; do [ -f "$f" ] && '
        "printf '%s\\n' \"${f##*/}\"; done; exit 0",
        timeout=30,
    )
    names: set[str] = set()
    for line in result.stdout.splitlines():
        stem, dot, suffix = line.strip().rpartition(".")
        if not dot or suffix not in ("log", "pid"):
            continue
        try:
            names.add(check_component(stem))
        except ValueError:
            continue
    return sorted(names)


def _clear(
    connector: Connector,
    supervisor: Supervisor,
    root: str,
    slot: str,
    components: Iterable[str],
    release_ids: Iterable[str],
) -> list[str]:
    """Stop (and forget) every component of the slot at ``root``, then remove it."""
    if not _is_slot_root(root, slot):  # never rm -rf anything but a slot
        raise TrialError(f"refusing to remove {root!r}: not the root of trial slot {slot}")
    root = posixpath.normpath(root)
    stopped: list[str] = []
    for name in sorted({*components, *_found_components(connector, root)}):
        state = supervisor.state(name)
        if state.running:
            stopped.append(name)
        supervisor.stop(name)
        for release_id in sorted({*release_ids, *([state.release_id] if state.release_id else [])}):
            supervisor.forget(name, release_id)
    connector.run(f"rm -rf -- {shlex.quote(root)}", check=True, timeout=120)
    # The trials directory itself goes once it is empty (another slot keeps it).
    connector.run(
        f"rmdir -- {shlex.quote(posixpath.dirname(root))} 2>/dev/null; exit 0", timeout=30
    )
    return stopped
