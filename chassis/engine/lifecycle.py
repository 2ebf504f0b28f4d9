"""One operation's life on its hosts, shared by deploy, rollback, repair and
recover: every change to a host goes through an :class:`Operation`.

- The intent (with the plan) is recorded by the caller and takes the lease.
- Each host is marked touched *before* its first side effect, with what it
  ran before, so whatever happens next, the restore knows it.
- Evicting components and retiring a host are recorded as a step before
  anything stops, and as what they are afterwards (an ``evict`` step, a
  ``host-retired`` event): never as a restore. So is removing expired
  secret copies (an ``expire-secret`` step, then ``components-stopped`` or
  ``host-retired``), which is never restored either.
- Deploying a host runs its steps (``HostDeployment``), each outcome recorded
  before the next starts; any exception becomes a recorded failure.
- On failure, :meth:`Operation.restore` puts back every host the operation
  touched, deployed, evicted and retired alike: first it stops what must
  stop on all of them, then starts each host's previous release, whose
  processes must pass the same health gate; each outcome is recorded, and a
  host that could not be put back is reported as such.
- Ctrl-C (:meth:`Operation.interruptible`) is a failure like any other: hosts
  stop at their next step and are restored; a second Ctrl-C abandons the
  restore and leaves the lease to ``chassis recover``.
"""

from __future__ import annotations

import shlex
import signal
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import msgspec

from adapters.connectors.base import Connector
from adapters.connectors.local import LocalConnector
from adapters.errors import ConnectorError
from adapters.supervisors.base import Supervisor, SupervisorError
from chassis.engine.executor import INTERRUPTED, HostDeployment, StepFailed, scrubbed
from chassis.engine.operation import (
    OperationRecorder,
    ledger_outage,
    restored,
    supervisor_for,
)
from chassis.engine.plan import HostPlan, Plan
from chassis.engine.preflight import worker_failure
from chassis.engine.releases import require_bundle
from chassis.engine.restore import start_previous, stop_for_restore
from chassis.errors import ChassisError
from chassis.hosts import get_host
from chassis.workspace import Workspace
from ledger.application import Ledger
from ledger.errors import LedgerError, StorageError
from ledger.installations import Installation
from ledger.releases import Release, release_dir_name

Progress = Callable[[str], None]

RETIRED = "retired: the operation's target runs nothing here"
RESTAGE_STEPS = ("upload", "verify", "unpack", "configure")
"""What puts a previous release's directory back on a host before a restore."""
EXPIRE_STEP = "expire-secret"
"""The step recording that expired secret copies are being (``data.phase`` =
``begin``) and were removed from a host (``chassis.engine.expire``)."""


@dataclass(frozen=True)
class Before:
    """What a host ran when the operation started: its active entry and the
    plan of that entry's revision (both None: it ran nothing)."""

    entry: dict[str, Any] | None = None
    plan: Plan | None = None

    @property
    def host_plan(self) -> HostPlan | None:
        if self.plan is None or self.entry is None:
            return None
        return next((h for h in self.plan.hosts if h.host == self.host), None)

    @property
    def host(self) -> str:
        return str((self.entry or {}).get("host", ""))

    @property
    def release(self) -> dict[str, Any] | None:
        """The entry with its release directory, as a restore needs it."""
        if self.entry is None:
            return None
        return {**self.entry, "release_dir": release_dir_name(str(self.entry["release_id"]))}

    @property
    def components(self) -> list[str]:
        return list(self.entry["components"]) if self.entry else []


def befores(installation: Installation) -> dict[str, Before]:
    """host → what it runs now, with the plan it runs it with (take them
    before the intent: the lease then keeps those plans until it ends)."""
    found: dict[str, Before] = {}
    for host, entry in installation.hosts.items():
        plan = msgspec.convert(installation.plan_of(int(entry["revision"])), Plan)
        found[host] = Before({**entry, "host": host}, plan)
    return found


def recorded_entry(before: Before) -> dict[str, Any] | None:
    """The active entry as the installation holds it (without our ``host``)."""
    if before.entry is None:
        return None
    return {k: v for k, v in before.entry.items() if k != "host"}


@dataclass
class Touched:
    """A host the operation has started to change."""

    host: str
    kind: str
    """``deploy``, ``evict`` or ``retire``: what the operation did there."""
    before: Before
    plan: Plan | None = None
    host_plan: HostPlan | None = None
    """What the operation deploys there (``deploy`` only) and its host's part."""
    deployment: HostDeployment | None = None
    changed: bool = True
    """False while a deploy has changed nothing on the host yet."""

    def needs_restore(self) -> bool:
        if self.deployment is not None:
            return self.deployment.touched or self.changed
        return self.changed


@dataclass
class Operation:
    """The hosts of one operation, recorded by ``recorder`` (whose lease it holds)."""

    ledger: Ledger
    ws: Workspace
    recorder: OperationRecorder
    before: Mapping[str, Before]
    progress: Progress
    failures: dict[str, StepFailed] = field(default_factory=dict)
    touched: dict[str, Touched] = field(default_factory=dict)
    restores: dict[str, tuple[bool, str]] = field(default_factory=dict)
    """host → (ok, detail) of each restore made."""
    interrupted: threading.Event = field(default_factory=threading.Event)
    _connectors: dict[str, Connector] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # Bookkeeping.

    def was(self, host: str) -> Before:
        return self.before.get(host) or Before()

    def fail(self, host: str, failure: StepFailed, *, record: bool = True) -> None:
        """``host`` failed (recorded now unless it already was)."""
        with self._lock:
            self.failures.setdefault(host, failure)
        if record:
            self.recorder.step(host)(failure.step, False, failure.detail, failure.data)
        if not failure.reported:  # else its step's FAILED line told it: one line per host
            self.progress(f"{host}: failed at {failure.step}: {scrubbed(failure.detail)}")

    def _touch(self, touched: Touched) -> None:
        with self._lock:
            known = self.touched.get(touched.host)
            if known is None or known.kind != "deploy":
                self.touched[touched.host] = touched

    def mark(self, host: str, plan: Plan | None, host_plan: HostPlan | None) -> None:
        """``host`` may have been changed by the operation (``recover`` found
        it so): restore it with the others. ``plan``/``host_plan``: what the
        operation deploys there (None: it was retiring the host)."""
        kind = "deploy" if host_plan is not None else "retire"
        self._touch(Touched(host, kind, self.was(host), plan=plan, host_plan=host_plan))

    def connector(self, host: str) -> Connector:
        """One connection per host for the whole operation."""
        with self._lock:
            found = self._connectors.get(host)
        if found is None:
            known = get_host(self.ledger, host)
            if known.settings.connector == "local":
                found = LocalConnector(host)  # what connector_for gives, without fabric
            else:
                from chassis.connect import connector_for  # fabric: only for SSH hosts

                found = connector_for(known, self.ws)
            with self._lock:
                self._connectors[host] = found
        return found

    def adopt(self, host: str, connector: Connector) -> None:
        """Use ``connector`` (a probe's) for ``host`` and close it with the others."""
        with self._lock:
            self._connectors[host] = connector

    def close(self) -> None:
        with self._lock:
            connectors, self._connectors = list(self._connectors.values()), {}
        for connector in connectors:
            connector.close()

    def _guarded(
        self, host: str, step: str, work: Callable[[], None], steps: Iterable[str] = ()
    ) -> bool:
        """Run one host's ``work``; any failure is recorded for ``host``."""
        try:
            if self.interrupted.is_set():
                raise StepFailed(step, INTERRUPTED)
            work()
        except StepFailed as failed:
            self.fail(host, failed, record=not failed.recorded)
        except (ConnectorError, SupervisorError, ChassisError) as e:
            self.fail(host, StepFailed(step, e.diagnostics()))
        except LedgerError:
            raise  # the record itself failed: nothing more can be recorded here
        except Exception as e:  # a bug must not strand the operation: record it, restore
            self.fail(host, worker_failure(e, tuple(steps), default=step))
        else:
            return True
        return False

    # Changing hosts.

    def evict(self, host: str, components: list[str]) -> bool:
        """Stop ``components``, which the new placement moves off ``host``,
        before any host starts (their ports must be free where they go)."""
        was = self.was(host)
        record = self.recorder.step(host)

        def work() -> None:
            host_plan = was.host_plan
            if host_plan is None or was.plan is None:
                return
            record(
                "evict",
                True,
                f"stopping {', '.join(components)}: moving to other hosts",
                {"phase": "begin", "components": components},
            )
            self._touch(Touched(host, "evict", was))
            supervisor = supervisor_for(was.plan, host_plan, self.connector(host))
            for component in components:
                supervisor.stop(component)
            record(
                "evict",
                True,
                f"stopped {', '.join(components)}: moving to other hosts",
                {"components": components},
            )

        return self._guarded(host, "evict", work)

    def retire(self, host: str) -> bool:
        """Stop everything ``host`` runs and unlink ``current``: the target runs
        nothing there. A ``retire`` step is recorded before anything stops,
        the ``host-retired`` event after."""
        was = self.was(host)

        def work() -> None:
            components = was.components
            self.recorder.step(host)(
                "retire",
                True,
                f"stopping {', '.join(components) or 'nothing'}: "
                "the operation's target runs nothing here",
                {"phase": "begin", "components": components},
            )
            self._touch(Touched(host, "retire", was))
            host_plan = was.host_plan
            if host_plan is not None and was.plan is not None:
                connector = self.connector(host)
                supervisor = supervisor_for(was.plan, host_plan, connector)
                for component in host_plan.components:
                    supervisor.stop(component.name)
                current = host_plan.root.rstrip("/") + "/current"
                connector.run(f"rm -f -- {shlex.quote(current)}", check=True, timeout=30)
            self.recorder(
                lambda i: i.retire_host(
                    actor=self.recorder.actor,
                    op_id=self.recorder.op_id,
                    host=host,
                    components=components,
                    detail=RETIRED,
                )
            )
            self.progress(f"{host}: {RETIRED}")

        return self._guarded(host, "retire", work)

    def expire_secrets(
        self, host: str, stop: list[str], files: list[str], expired: list[dict[str, Any]]
    ) -> bool:
        """Remove expired secret copies from ``host``: stop the components of
        ``stop`` (their active env file holds an expired version) and record
        them stopped (``components-stopped``; a host left running nothing is
        retired instead), then delete their env files in every release
        directory, and the retained env files ``files`` (paths under the
        host's root). An ``expire-secret`` step is recorded before anything
        stops (``data.phase`` = ``begin``) and after, each naming the
        ``expired`` versions (secret, version, when it expired; never a
        value). Never restored: that would write the expired value again."""
        was = self.was(host)
        record = self.recorder.step(host)

        def work() -> None:
            host_plan, plan = was.host_plan, was.plan
            if host_plan is None or plan is None:
                raise StepFailed(EXPIRE_STEP, f"{host}: no plan recorded for what it runs")
            versions = ", ".join(sorted({f"{e['secret']}@{e['version']}" for e in expired}))
            stopping = f"stopping {', '.join(stop)}" if stop else "stopping nothing"
            record(
                EXPIRE_STEP,
                True,
                f"{stopping}: the lease of {versions} expired",
                {"phase": "begin", "components": stop, "expired": expired},
            )
            connector = self.connector(host)
            if stop:
                remaining = [c for c in was.components if c not in stop]
                if not remaining:
                    if not self.retire(host):
                        return  # its failure is recorded
                else:
                    supervisor = supervisor_for(plan, host_plan, connector)
                    for component in stop:
                        supervisor.stop(component)
                    self.recorder(
                        lambda i: i.stop_components(
                            actor=self.recorder.actor,
                            op_id=self.recorder.op_id,
                            host=host,
                            components=stop,
                            detail=f"stopped: the lease of {versions} expired",
                        )
                    )
            removed = _remove_env_files(connector, host_plan.root, stop, files)
            record(
                EXPIRE_STEP,
                True,
                f"removed {len(removed)} env file(s) holding {versions}"
                + (f"; stopped {', '.join(stop)}" if stop else ""),
                {"components": stop, "expired": expired, "removed": removed},
            )
            self.progress(
                f"{host}: expired {versions} removed"
                + (f" ({', '.join(stop)} stopped)" if stop else "")
                + f", {len(removed)} env file(s) deleted"
            )

        return self._guarded(host, EXPIRE_STEP, work)

    def deploy(
        self,
        plan: Plan,
        host_plan: HostPlan,
        bundle: Path,
        *,
        on_done: Progress | None = None,
        only: frozenset[str] | None = None,
    ) -> bool:
        """Run ``plan`` on one host through every step and record it activated."""
        name = host_plan.host
        was = self.was(name)
        touched = Touched(name, "deploy", was, plan=plan, host_plan=host_plan, changed=False)
        if name in self.touched:  # evicted first: something changed already
            touched.changed = True

        def work() -> None:
            self.recorder.check()  # a halted operation starts no other host
            self._touch(touched)
            connector = self.connector(name)
            deployment = HostDeployment(
                plan=plan,
                host=host_plan,
                connector=connector,
                supervisor=supervisor_for(plan, host_plan, connector),
                bundle=bundle,
                record=self.recorder.step(name),
                previous_components=was.components,
                keep_also=(str(was.release["release_dir"]),) if was.release else (),
                touched=touched.changed,
                interrupted=self.interrupted.is_set,
                only=only,
                progress=self.progress,
            )
            touched.deployment = deployment
            self.recorder.deployments[name] = (deployment, (was.host_plan, was.release))
            deployment.run()
            self.recorder(
                lambda i: i.activate_host(
                    actor=self.recorder.actor,
                    op_id=self.recorder.op_id,
                    host=name,
                    release_id=plan.release_id,
                    label=plan.label,
                    components=[c.name for c in host_plan.components],
                )
            )
            (on_done or self.progress)(f"{name}: {plan.label} active and healthy")

        return self._guarded(name, "connect", work, host_plan.steps)

    def deploy_all(
        self, plan: Plan, hosts: Iterable[HostPlan], bundle: Path, max_parallel: int
    ) -> None:
        hosts = list(hosts)

        def one(host_plan: HostPlan) -> None:
            self.progress(f"{host_plan.host}: deploying {plan.label}")
            self.deploy(plan, host_plan, bundle)

        with ThreadPoolExecutor(max_workers=max(1, min(max_parallel, len(hosts) or 1))) as pool:
            list(pool.map(one, hosts))

    # Undoing.

    def restore(self, hosts: Iterable[str] | None = None) -> dict[str, tuple[bool, str]]:
        """Put every touched host (or those of ``hosts``) back on what it ran
        before, each outcome recorded: all of them stop first, then each
        starts its previous release, which must pass its health gate."""
        wanted = set(self.touched) if hosts is None else set(hosts) & set(self.touched)
        names = sorted(n for n in wanted if self.touched[n].needs_restore())
        if not names:
            return {}
        self.progress(f"restoring {', '.join(names)}")
        stopped: dict[str, tuple[Connector, Supervisor] | str] = {}

        def stop(name: str) -> None:
            touched = self.touched[name]
            current = touched.host_plan or touched.before.host_plan
            plan = touched.plan or touched.before.plan
            if current is None or plan is None:
                stopped[name] = "nothing recorded to restore it with"
                return
            try:
                connector = self.connector(name)
            except (ConnectorError, ChassisError) as e:
                stopped[name] = f"restore failed: {e.diagnostics()}"
                return
            supervisor = supervisor_for(plan, current, connector)
            problem = stop_for_restore(supervisor, current, touched.before.host_plan)
            stopped[name] = problem if problem is not None else (connector, supervisor)

        def start(name: str) -> None:
            touched = self.touched[name]
            found = stopped[name]
            if isinstance(found, str):
                ok, detail = False, found
            else:
                connector, supervisor = found
                root = (touched.host_plan or touched.before.host_plan or _no_plan(name)).root
                try:
                    problem = self._restage(name, touched.before, connector, supervisor)
                    if problem is None:
                        problem = self._reconfigure(name, touched, connector, supervisor)
                    if problem is not None:
                        raise StepFailed("restore", problem)
                    ok, detail, _ = start_previous(
                        connector,
                        supervisor,
                        root,
                        touched.before.host_plan,
                        touched.before.release,
                    )
                except StepFailed as e:
                    ok, detail = False, e.detail
                except Exception as e:  # a restore worker never lets one escape
                    ok, detail = False, f"restore failed: unexpected {type(e).__name__}: {e}"
            self.recorder(restored(self.recorder, name, recorded_entry(touched.before), ok, detail))
            with self._lock:
                self.restores[name] = (ok, detail)
            self.progress(f"{name}: {scrubbed(detail if ok else 'NOT restored: ' + detail)}")

        workers = max(1, len(names))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(_safely(stop, stopped), names))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(start, names))
        return {n: self.restores[n] for n in names}

    def _restage(
        self, name: str, before: Before, connector: Connector, supervisor: Supervisor
    ) -> str | None:
        """Put the previous release's directory back (upload, verify, unpack,
        configure: each recorded) when it is gone from the host, say because
        its deletion was the drift a repair was fixing; returns why it cannot
        be, or None."""
        if before.plan is None or before.host_plan is None or before.release is None:
            return None
        release_dir = str(before.release["release_dir"])
        workdir = f"{before.host_plan.root.rstrip('/')}/releases/{release_dir}"
        if connector.exists(f"{workdir}/.chassis-release"):
            return None
        gone = f"releases/{release_dir} is gone from the host"
        key = Release.id_for(Release.key(before.plan.app, before.plan.label))
        release = self.ledger.find(Release, key)
        if release is None or release.release_id != before.plan.release_id:
            return f"{gone}, and release {before.plan.label} is not registered as recorded"
        try:
            bundle = require_bundle(self.ws, release, self.ledger)
        except ChassisError as e:
            return f"{gone}, and {e.diagnostics()}"
        staging = HostDeployment(
            plan=before.plan,
            host=msgspec.structs.replace(before.host_plan, steps=list(RESTAGE_STEPS)),
            connector=connector,
            supervisor=supervisor,
            bundle=bundle,
            record=self.recorder.step(name),
        )
        try:
            staging.run()
        except StepFailed as e:
            return f"{gone}, and putting it back failed at {e.step}: {e.detail}"
        return None

    def _reconfigure(
        self, name: str, touched: Touched, connector: Connector, supervisor: Supervisor
    ) -> str | None:
        """Write the previous release's env files again (its ``configure``,
        recorded) when the operation wrote its own into the same release
        directory with other secret references or env (a redeploy after a
        rotation, a rollback between two versions of a store secret, a model
        swap's CHASSIS_MODEL_DIR): restored, it runs what it ran before, not
        what failed. Returns why that failed, or None."""
        before = touched.before
        if (
            before.plan is None
            or before.host_plan is None
            or before.release is None
            or touched.plan is None
            or touched.host_plan is None
            or "configure" not in touched.host_plan.steps
            or touched.plan.release_dir != str(before.release["release_dir"])
        ):
            return None
        was = {c.name: (c.secrets, c.env) for c in before.host_plan.components}
        if was == {c.name: (c.secrets, c.env) for c in touched.host_plan.components}:
            return None
        configure = HostDeployment(
            plan=before.plan,
            host=msgspec.structs.replace(before.host_plan, steps=["configure"]),
            connector=connector,
            supervisor=supervisor,
            bundle=Path(),  # configure uploads nothing
            record=self.recorder.step(name),
        )
        try:
            configure.run()
        except StepFailed as e:
            return f"writing the env files of {before.plan.label} again failed: {e.detail}"
        return None

    def unrestored(self) -> list[str]:
        return sorted(n for n, (ok, _) in self.restores.items() if not ok)

    def restore_summary(self) -> str:
        """How the restore went, for the operation's recorded outcome."""
        failed = self.unrestored()
        if not failed:
            return "previous release restored" if self.restores else "no host had changed"
        why = "; ".join(f"{n}: {self.restores[n][1]}" for n in failed)
        return f"NOT restored on {', '.join(failed)} ({why})"

    def finish(self, status: str, description: str) -> None:
        self.recorder(
            lambda i: i.finish(
                actor=self.recorder.actor,
                op_id=self.recorder.op_id,
                status=status,
                description=scrubbed(description),
            )
        )

    # Ctrl-C.

    @contextmanager
    def interruptible(self) -> Iterator[None]:
        """While the operation works, the first Ctrl-C makes every host stop at
        its next step and fail (so the operation restores them); the second
        raises ``KeyboardInterrupt`` at once. Only the main thread can catch
        signals: elsewhere this changes nothing."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum: int, frame: FrameType | None) -> None:
            if self.interrupted.is_set():
                signal.signal(signal.SIGINT, signal.default_int_handler)
                raise KeyboardInterrupt
            self.interrupted.set()
            self.progress(
                "interrupted: stopping every host at its next step and restoring them "
                "(press Ctrl-C again to stop at once and leave it to 'chassis recover')"
            )

        previous = signal.signal(signal.SIGINT, handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)


class DeployInterrupted(ChassisError):
    """The operator pressed Ctrl-C (exit 130)."""

    exit_code = 130


def run_operation(op: Operation, work: Callable[[], None], *, what: str) -> None:
    """Run ``work`` (the operation's host work, which records its outcome)
    under Ctrl-C handling, ending in one of three ways besides success: an
    interrupt restored like a failure (``DeployInterrupted`` once recorded),
    a second Ctrl-C (``DeployInterrupted``, lease left for ``recover``), or a
    ledger outage (hosts left as last recorded, then ``recover``)."""
    installation = op.recorder.installation
    recover = f"chassis recover {installation.app} --env {installation.environment}"
    try:
        with op.interruptible():
            work()
    except KeyboardInterrupt:
        raise DeployInterrupted(
            f"interrupted twice: {what} is unfinished and its lease is still held; hosts may "
            f"be mid-change. Run '{recover}' to complete it or restore what ran before"
        ) from None
    except StorageError as e:  # the ledger went away: hosts as last recorded, then recover
        raise ledger_outage(e, op.recorder, op.progress) from None
    finally:
        op.recorder.close()
        op.close()
    if op.interrupted.is_set():
        raise DeployInterrupted(
            f"interrupted: {what} was stopped and recorded as failed; {op.restore_summary()}"
        )


def _remove_env_files(
    connector: Connector, root: str, components: list[str], files: list[str]
) -> list[str]:
    """Delete ``.env.<component>`` of ``components`` in every release
    directory under ``root``, and ``files`` (relative to ``root``); returns
    what existed and was deleted, relative to ``root``."""
    base = root.rstrip("/")
    words = [shlex.quote(f"{base}/releases/") + "*" + shlex.quote(f"/.env.{c}") for c in components]
    words += [shlex.quote(f"{base}/{f}") for f in files]
    if not words:
        return []
    listing = connector.run(
        f'for f in {" ".join(words)}; do [ -f "$f" ] && printf \'%s\\n\' "$f"; done; true',
        check=True,
        timeout=30,
    )
    found = sorted({line for line in listing.stdout.splitlines() if line.startswith(base + "/")})
    if found:
        connector.run("rm -f -- " + " ".join(shlex.quote(f) for f in found), check=True, timeout=30)
    return [f.removeprefix(base + "/") for f in found]


def _no_plan(host: str) -> HostPlan:
    raise ChassisError(f"{host}: no plan recorded to restore it with")


def _safely(work: Callable[[str], None], outcomes: dict[str, Any]) -> Callable[[str], None]:
    """``work`` whose unexpected exceptions become the host's outcome (a restore
    worker never lets one escape and strand the other hosts)."""

    def run(name: str) -> None:
        try:
            work(name)
        except LedgerError:
            raise
        except Exception as e:
            outcomes[name] = f"restore failed: unexpected {type(e).__name__}: {e}"

    return run
