"""Running one host's part of a plan, step by step, and restoring it.

Every step's outcome is handed to ``record`` (which appends it to the ledger)
before the next step starts, and, with a ``progress``, told to the operator
as it ends: ``HOST: STEP ok (0.42s)`` or ``HOST: STEP FAILED (1.10s): detail``,
with the health gate's attempts in between (:func:`attempt_reporter`). Host
operations go through the connector, so local and SSH hosts behave the same.

Components listen on fixed ports, so a host cannot run two releases of one
component at once: the old release is stopped just before the new one
starts, and restored if the new one fails its health gate. Hosts are
deployed in parallel (``--max-parallel``), which bounds how many are
briefly down at a time.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapters.connectors.base import Connector
from adapters.errors import ConnectorError, one_line
from adapters.health.gate import Attempt, GateResult, HealthGate, OnAttempt
from adapters.health.owner import OwnerUnknown, ProcessWatch, port_conflicts
from adapters.health.probes import HealthCheck, probe_for
from adapters.supervisors.base import ProcessSpec, ProcessState, Supervisor, SupervisorError
from adapters.supervisors.direct import exit_status
from adapters.supervisors.envfile import ENV_FILE_MODE, render_env_file
from chassis.engine.plan import ComponentPlan, HostPlan, Plan
from chassis.secrets import SecretUnavailable, resolve_all
from proofs.redaction import scrub_text

KEEP_RELEASES = 3
INTERRUPTED = "interrupted by the operator (Ctrl-C)"

Record = Callable[[str, bool, str, dict[str, Any]], None]
Progress = Callable[[str], None]
ATTEMPT_EVERY_S = 1.0
"""Health attempts whose outcome did not change are told at most this often."""
DETAIL_CHARS = 300
"""A progress line's detail is cut to this (the ledger and summary keep it whole)."""


class StepFailed(Exception):
    def __init__(self, step: str, detail: str, data: dict[str, Any] | None = None) -> None:
        super().__init__(f"{step}: {detail}")
        self.step = step
        self.detail = detail
        self.data = data or {}
        self.recorded = False
        """True once the failure is in the ledger (``HostDeployment.run`` records it)."""
        self.reported = False
        """True once a progress line told it (``HostDeployment.run`` with a progress)."""


@dataclass
class HostDeployment:
    plan: Plan
    host: HostPlan
    connector: Connector
    supervisor: Supervisor
    bundle: Path
    record: Record
    previous_components: list[str] = field(default_factory=list)
    keep_also: tuple[str, ...] = ()
    """Release dirs prune must keep besides the new one (the rollback target)."""
    touched: bool = False
    started: dict[str, ProcessState] = field(default_factory=dict)
    """What ``start`` launched, per component: the processes the gate watches."""
    interrupted: Callable[[], bool] = lambda: False
    """Asked before each step: true once the operator pressed Ctrl-C."""
    only: frozenset[str] | None = None
    """Restart only these components (``chassis restart --component``): stop-old,
    start and health leave the host's other components alone."""
    progress: Progress | None = None
    """Told each step's outcome and elapsed time, and the health gate's attempts."""
    _ports_seen_free: bool = field(default=False, init=False)
    """stop-old found the ports free and stopped nothing: the start that
    follows it would look at the same ports in the same state again."""

    def _acting(self) -> list[ComponentPlan]:
        """The components stop-old, start and health act on."""
        return [c for c in self.host.components if self.only is None or c.name in self.only]

    def _acting_names(self) -> list[str]:
        names = {*self.previous_components, *(c.name for c in self.host.components)}
        return sorted(n for n in names if self.only is None or n in self.only)

    @property
    def root(self) -> str:
        return self.host.root

    def path(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def run(self) -> None:
        """All steps; raises ``StepFailed`` at the first failing one."""
        for step in self.host.steps:
            action = getattr(self, "_" + step.replace("-", "_"))
            began = time.monotonic()
            try:
                if self.interrupted():
                    raise StepFailed(step, INTERRUPTED)
                detail, data = action()
            except StepFailed as failed:
                elapsed = time.monotonic() - began
                self.record(failed.step, False, failed.detail, failed.data)
                failed.recorded = True
                self._tell_failed(failed, elapsed)
                raise
            except (ConnectorError, SupervisorError) as e:
                elapsed = time.monotonic() - began
                message = e.diagnostics()
                self.record(step, False, message, {})
                broken = StepFailed(step, message)
                broken.recorded = True
                self._tell_failed(broken, elapsed)
                raise broken from e
            elapsed = time.monotonic() - began  # the step's own time, not its record's
            self.record(step, True, detail, data)
            if self.progress is not None:
                self.progress(f"{self.host.host}: {step} ok ({elapsed:.2f}s)")

    def _tell_failed(self, failed: StepFailed, elapsed: float) -> None:
        """The host's one failure line (``Operation.fail`` then prints none)."""
        if self.progress is None:
            return
        detail = one_line(scrubbed(failed.detail), limit=DETAIL_CHARS)
        self.progress(f"{self.host.host}: {failed.step} FAILED ({elapsed:.2f}s): {detail}")
        failed.reported = True

    # Steps. Each returns (detail, data) for the ledger.

    def _upload(self) -> tuple[str, dict[str, Any]]:
        dirs = [shlex.quote(self.path(d)) for d in ("releases", "shared", "run", "logs")]
        present = " && ".join(f"[ -d {d} ]" for d in dirs)  # then no mkdir process
        self.connector.run(f"{{ {present}; }} || mkdir -p {' '.join(dirs)}", check=True, timeout=30)
        remote = self._remote_bundle()
        # A stat (over SFTP: no process on the host) spares a new release,
        # the usual case, a hash command that would only find nothing.
        if self.connector.exists(remote) and self.connector.sha256(remote) == (
            self.plan.bundle_sha256
        ):
            return "bundle already on host", {"bytes": 0}
        self.touched = True
        self.connector.put(self.bundle, remote)
        return "bundle uploaded", {"bytes": self.plan.bundle_size}

    def _verify(self) -> tuple[str, dict[str, Any]]:
        found = self.connector.sha256(self._remote_bundle())
        if found != self.plan.bundle_sha256:
            raise StepFailed(
                "verify",
                f"sha256 of the bundle on {self.host.host} is {found}, expected "
                f"{self.plan.bundle_sha256}: corrupted in transit or on disk",
                {"expected": self.plan.bundle_sha256, "found": found or ""},
            )
        return "sha256 verified on the host", {"sha256": found}

    def _unpack(self) -> tuple[str, dict[str, Any]]:
        """Unpack with the reader that checked the bundle at ``release add``
        (``adapters.archive``, run by the host's ``python3``), never ``tar``:
        the bytes that were checked are the bytes that are placed. It writes
        into ``releases/<dir>.unpack``, moves that into place with the marker,
        and leaves nothing behind when it refuses or fails."""
        from adapters import archive

        target = self.path("releases", self.plan.release_dir)
        if self.connector.exists(f"{target}/{archive.MARKER}"):
            return "already unpacked", {}
        self.touched = True
        result = self.connector.run_python(
            archive.source(),
            archive.host_args(
                self._remote_bundle(),
                self.path("releases"),
                self.plan.release_dir,
                self.plan.release_id,
            ),
            timeout=600,
            display=f"unpack releases/{self.plan.release_dir}",
        )
        report = archive.host_report(result.stdout)
        if report is None:
            cause = (result.stderr.strip().splitlines() or ["no output"])[-1]
            if result.exit_code == 127:
                cause = "python3 is not installed there; unpacking needs it"
            raise StepFailed(
                "unpack", f"cannot unpack on {self.host.host} (exit {result.exit_code}): {cause}"
            )
        if not report["ok"]:
            entry, problem = report.get("entry"), str(report.get("problem"))
            what = "bundle refused" if report.get("refused") else "unpack failed"
            where = f"entry {entry!r}: " if entry is not None else ""
            raise StepFailed(
                "unpack",
                f"{what} on {self.host.host}: {where}{problem}",
                {"entry": entry, "problem": problem, "refused": bool(report.get("refused"))},
            )
        counts = {k: report[k] for k in ("files", "dirs", "symlinks", "size")}
        return f"unpacked into releases/{self.plan.release_dir}", counts

    def _configure(self) -> tuple[str, dict[str, Any]]:
        # One writer for every variable (release config, component env,
        # secrets): names are checked again there, values quoted for systemd
        # and the direct supervisor's loader; no shell ever sources the file.
        for component in self.host.components:
            try:
                text = render_env_file(self._env(component))
            except ValueError as e:
                raise StepFailed("configure", f"component {component.name}: {e}") from None
            self.connector.put_bytes(text, self._env_file(component.name), mode=ENV_FILE_MODE)
        return f"{len(self.host.components)} env file(s) written (mode 600)", {}

    def _stop_old(self) -> tuple[str, dict[str, Any]]:
        ours = self._ours()
        self._ports_free("stop-old", ours)  # a stranger's port: fail before any stop
        self._ports_seen_free = not ours
        stopped = []
        for state in ours:  # running a moment ago, under this operation's lease
            self.touched = True
            self.supervisor.stop(state.component)
            stopped.append(state.component)
        return f"stopped {', '.join(stopped) or 'nothing'}", {"stopped": stopped}

    def _start(self) -> tuple[str, dict[str, Any]]:
        self.touched = True
        # stop-old stopped ours: whoever listens now would make the start fail.
        # Where it stopped nothing, it just saw these ports free.
        if not self._ports_seen_free:
            self._ports_free("start", [])
        self._ports_seen_free = False
        pids: dict[str, int] = {}
        for component in self._acting():
            try:
                state = self.supervisor.start(self._spec(component))
            except SupervisorError as e:
                raise StepFailed(
                    "start",
                    f"{component.name} did not start: {e.diagnostics()}",
                    {
                        "component": component.name,
                        "log_tail": self.supervisor.log_tail(component.name),
                    },
                ) from e
            self.started[component.name] = state
            pids[component.name] = state.pid or 0
        return f"started {', '.join(pids)}", {"pids": pids}

    def _health(self) -> tuple[str, dict[str, Any]]:
        evidence: dict[str, Any] = {}
        for component in self._acting():
            result = self.gate(component)
            if result is None:
                self._still_running(component.name)
                continue
            evidence[component.name] = gate_evidence(result)
            if not result.passed:
                tail = self.supervisor.log_tail(component.name)
                why = f"failed its health gate: {result.reason}"
                if result.exited or not self.supervisor.state(component.name).running:
                    # The supervisor's own "==> chassis:" lines frame the process's output.
                    lines = [ln for ln in tail.strip().splitlines() if not ln.startswith("==>")]
                    last = (lines or ["no output"])[-1]
                    status = exit_status(tail)
                    how = f" with status {status}" if status is not None else ""
                    when = "during" if result.exited else "before passing"
                    why = f"exited{how} {when} its health gate: {last}"
                raise StepFailed(
                    "health",
                    f"{component.name} {why}",
                    {
                        "component": component.name,
                        "gate": gate_evidence(result),
                        "log_tail": tail,
                    },
                )
        return f"healthy: {', '.join(evidence) or 'no checks'}", {"gates": evidence}

    def _swap(self) -> tuple[str, dict[str, Any]]:
        self.connector.symlink_swap(f"releases/{self.plan.release_dir}", self.path("current"))
        return f"current -> releases/{self.plan.release_dir}", {}

    def _prune(self) -> tuple[str, dict[str, Any]]:
        keep = {self.plan.release_dir, *self.keep_also}
        listing = self.connector.run(
            f"ls -1t {shlex.quote(self.path('releases'))}", check=True, timeout=30
        ).stdout.split()
        dirs = [d for d in listing if not d.endswith((".tar.gz", ".unpack"))]
        remove = [d for d in dirs[KEEP_RELEASES:] if d not in keep]
        commands = []
        if remove:
            targets = [self.path("releases", name) for name in remove]
            targets += [f"{target}.tar.gz" for target in targets]
            commands.append("rm -rf -- " + " ".join(shlex.quote(t) for t in targets))
        # Retained releases keep no copy of a secret: only the active release
        # and the rollback target hold env files (a release started again
        # gets its env file written by configure first).
        stale = [d for d in dirs if d not in keep and d not in remove]
        if stale:
            commands.append(
                "rm -f -- "
                + " ".join(f"{shlex.quote(self.path('releases', d))}/.env.*" for d in stale)
            )
        if commands:  # one round trip for all of it (a large release may take a while)
            self.connector.run(" && ".join(commands), check=True)
        return f"kept {min(len(dirs), KEEP_RELEASES)} release(s), removed {len(remove)}", {
            "removed": remove
        }

    # Helpers.

    def gate(self, component: ComponentPlan) -> GateResult | None:
        # The new release, not ``current``: the gate runs before the swap.
        workdir = self.path("releases", self.plan.release_dir)
        return run_gate(
            component,
            self.host.address,
            self.connector,
            workdir,
            supervisor=self.supervisor,
            process=self.started.get(component.name),
            on_attempt=(
                attempt_reporter(self.progress, f"{self.host.host}: health {component.name}")
                if self.progress is not None
                else None
            ),
        )

    def _ours(self) -> list[ProcessState]:
        """This installation's processes on the host that stop-old is about to stop."""
        return [
            state for state in map(self.supervisor.state, self._acting_names()) if state.running
        ]

    def _ports_free(self, step: str, ours: list[ProcessState]) -> None:
        """StepFailed naming the holder when anything but ``ours`` listens on a
        port this host's components declare (their health port included).

        A component that cannot bind its port dies with "Address already in
        use" while the stranger answers its probe; naming the holder first
        is the useful failure, and before stop-old it costs no outage.
        """
        needed = {
            port: component.name
            for component in self._acting()
            for port in declared_ports(component)
        }
        if not needed:
            return
        roots = [(s.pid, s.start) for s in ours if s.pid is not None]
        try:
            strangers, hidden = port_conflicts(self.connector, needed, self.host.address, roots)
        except OwnerUnknown as e:
            raise StepFailed(
                step, f"cannot tell who listens on ports on {self.host.host}: {e}"
            ) from None
        if not strangers:
            return
        held = strangers[0]
        component = needed[held.port]
        holder = held.held_by(hidden)
        after = "; nothing was stopped" if step == "stop-old" else ""
        raise StepFailed(
            step,
            f"{component} cannot start: address already in use: port {held.port} on "
            f"{self.host.host} is held by {holder}, not by this installation{after}",
            {
                "component": component,
                "port": held.port,
                "address": held.address,
                "holders": [{"pid": h.pid, "cmdline": h.cmdline} for h in held.holders],
            },
        )

    def _still_running(self, name: str) -> None:
        """A component without a health check must at least still be the process we started."""
        started = self.started.get(name)
        if started is None:
            return
        now = self.supervisor.state(name)
        if now.running and now.pid == started.pid:
            return
        tail = self.supervisor.log_tail(name)
        status = exit_status(tail)
        how = f" with status {status}" if status is not None else ""
        raise StepFailed(
            "health",
            f"{name} exited{how} after starting (pid {started.pid}): {now.detail}",
            {"component": name, "log_tail": tail},
        )

    def _remote_bundle(self) -> str:
        return self.path("releases", f"{self.plan.release_dir}.tar.gz")

    def _env_file(self, component: str) -> str:
        return self.path("releases", self.plan.release_dir, f".env.{component}")

    def _env(self, component: ComponentPlan) -> dict[str, str]:
        try:
            secrets = resolve_all(component.secrets, component=component.name)
        except SecretUnavailable as e:
            raise StepFailed("configure", e.diagnostics()) from None
        return {
            **component.env,
            **secrets,
            "CHASSIS_RELEASE_ID": self.plan.release_id,
            "CHASSIS_COMPONENT": component.name,
            "CHASSIS_HOST_ROOT": self.root,
        }

    def _spec(self, component: ComponentPlan) -> ProcessSpec:
        return ProcessSpec(
            component=component.name,
            release_id=self.plan.release_id,
            command=component.command,
            workdir=self.path("releases", self.plan.release_dir),
            env={},
            env_file=self._env_file(component.name),
            root=self.root,
            restart=component.restart_mode,
            health_gated=component.health is not None,
        )


def declared_ports(component: ComponentPlan) -> list[int]:
    """The ports ``component`` listens on: its ``ports`` and a numeric health port."""
    ports = set(component.ports.values())
    port = (component.health or {}).get("port")
    if type(port) is int:
        ports.add(port)
    return sorted(ports)


def run_gate(
    component: ComponentPlan,
    address: str,
    connector: Connector,
    workdir: str,
    *,
    supervisor: Supervisor | None = None,
    process: ProcessState | None = None,
    on_attempt: OnAttempt | None = None,
) -> GateResult | None:
    """Run ``component``'s health gate (None: it has no check).

    With a ``supervisor`` (or the ``process`` its start returned), an answer
    counts only while that process (pid and start time) lives and owns the
    socket probed (:class:`~adapters.health.owner.ProcessWatch`): a stray
    server on the port is not this release's health, and a process that
    dies ends the gate at once. Without either, any answer counts.
    ``on_attempt`` is told of each attempt (:func:`attempt_reporter`).
    """
    check = health_check(component, workdir)
    if check is None:
        return None
    gate = health_gate(check)
    watch = None
    if process is None and supervisor is not None:
        process = supervisor.state(component.name)
    if process is not None:
        if not process.running or process.pid is None:
            reason = f"{component.name} is not running: {process.detail}"
            return GateResult(False, 0, 0, [], reason, 0, exited=True)
        watch = ProcessWatch(
            connector,
            component.name,
            process.pid,
            process.start,
            port=check.port if check.type != "command" else None,
            address=address,
            child=supervisor is not None and supervisor.pid_is_wrapper,
        )
    return gate.run(probe_for(check, address, connector), watch=watch, on_attempt=on_attempt)


def attempt_reporter(
    progress: Progress,
    prefix: str,
    *,
    every_s: float = ATTEMPT_EVERY_S,
    clock: Callable[[], float] = time.monotonic,
) -> OnAttempt:
    """Tells ``progress`` a health gate's attempts, one line each,
    ``PREFIX attempt 3: DETAIL (1/2 passes needed, 5.1s of 8s)``: the first
    one, each whose outcome (pass or fail) differs from the last told, and
    otherwise at most one per ``every_s``, so a fast gate does not flood."""
    told: list[tuple[bool, float]] = []

    def tell(attempt: Attempt) -> None:
        now = clock()
        if told:
            ok, at = told[-1]
            if ok == attempt.result.ok and now - at < every_s:
                return
        told[:] = [(attempt.result.ok, now)]
        detail = one_line(scrubbed(attempt.result.detail), limit=DETAIL_CHARS)
        progress(
            f"{prefix} attempt {attempt.number}: {detail} "
            f"({attempt.consecutive}/{attempt.passes} passes needed, "
            f"{attempt.elapsed_ms / 1000:.1f}s of {attempt.window_ms / 1000:g}s)"
        )

    return tell


def health_check(component: ComponentPlan, workdir: str | None = None) -> HealthCheck | None:
    """The check ``component`` declares, exactly as its gate runs it (the
    pre-flight builds it too, so a bad value fails before the intent);
    a ``command`` check runs in ``workdir``. None: it declares none."""
    health = component.health
    if health is None:
        return None
    port = health.get("port")
    if isinstance(port, str):
        if port not in component.ports:
            raise ValueError(f"health port {port!r} is not one of the component's ports")
        port = component.ports[port]
    command = health.get("command")
    if command is not None and workdir is not None:
        command = f"cd {shlex.quote(workdir)} && {command}"
    return HealthCheck(
        type=health["type"],
        port=port,
        path=health.get("path", "/"),
        expect_status=health.get("expect_status", 200),
        body_contains=health.get("body_contains"),
        command=command,
        interval_ms=health.get("interval_ms", 500),
        timeout_ms=health.get("timeout_ms", 2000),
        passes=health.get("passes", 2),
        window_ms=health.get("window_ms", 30000),
    )


def health_gate(check: HealthCheck) -> HealthGate:
    """The gate that runs ``check`` (its constructor refuses bad numbers)."""
    return HealthGate(
        interval_ms=check.interval_ms,
        timeout_ms=check.timeout_ms,
        passes=check.passes,
        window_ms=check.window_ms,
    )


def gate_evidence(result: GateResult) -> dict[str, Any]:
    return {
        "passed": result.passed,
        "attempts": result.attempts,
        "consecutive": result.consecutive,
        "reason": result.reason,
        "last": [
            {"ok": r.ok, "detail": r.detail, "elapsed_ms": r.elapsed_ms}
            for r in result.results[-3:]
        ],
    }


def scrubbed(text: str) -> str:
    """A detail bound for the ledger with secret-looking parts (PEM keys,
    bearer tokens, URL passwords, ``password=…``) replaced: process output and
    error messages end up in step records, receipts and exports."""
    return scrub_text(text)


def scrubbed_data(data: Any) -> Any:
    if isinstance(data, str):
        return scrub_text(data)
    if isinstance(data, dict):
        return {k: scrubbed_data(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [scrubbed_data(v) for v in data]
    return data
