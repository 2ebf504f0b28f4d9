"""What every operation on an installation shares: the recorder that appends
its events (one writer at a time, under the lease, which it keeps renewed),
the supervisor a host's plan names, and the plan a host's active release was
deployed with.

The recorder is also where an operation learns that it must stop: when its
lease was taken over (``LeaseLost``) or the ledger cannot be written any more
(``LedgerUnavailable``), every later append by any of its threads raises the
same error, so no thread goes on changing hosts it can no longer record.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, cast

import msgspec

from adapters.connectors.base import Connector
from adapters.supervisors.base import Supervisor
from adapters.supervisors.direct import DirectSupervisor
from adapters.supervisors.systemd import SystemdSupervisor
from chassis.engine.executor import HostDeployment, scrubbed, scrubbed_data
from chassis.engine.lease import LeaseKeeper
from chassis.engine.plan import HostPlan, Plan
from chassis.engine.restore import restore_host
from chassis.errors import ChassisError
from chassis.views import histories
from ledger.application import Ledger
from ledger.errors import (
    ConflictError,
    DomainRuleError,
    LedgerError,
    NotFoundError,
    StorageError,
)
from ledger.installations import Installation, LeaseHolder, LeaseLost
from ledger.releases import release_dir_name
from proofs.redaction import scrub_values_data

Previous = tuple[HostPlan | None, dict[str, Any] | None]


class LedgerUnavailable(StorageError):
    """The ledger could not be written in the middle of an operation: nothing
    more is recorded and the lease stays held for ``chassis recover`` (exit 4)."""


class OperationRecorder:
    """Appends an operation's events, one writer at a time, to an aggregate
    it keeps in memory (the lease makes this process the only writer), and
    renews the lease every ttl/3 while the operation works.

    After a failed append the aggregate in memory is ahead of the ledger, so
    the recorder halts: it appends nothing more, and every caller gets the
    same error (``halted``), naming what happened and what to run.
    """

    def __init__(self, ledger: Ledger, installation: Installation, op_id: str) -> None:
        assert ledger.signer is not None
        self.ledger = ledger
        self.installation = installation
        self.op_id = op_id
        self.actor = ledger.signer.keyid
        self.lock = threading.Lock()
        self.holder = LeaseHolder.here()
        self.halted: LedgerError | None = None
        self.last_recorded = "its intent"
        self.recorded_hosts: dict[str, str] = {}
        """host → ``activated`` or ``restored``: its last event this recorder saved."""
        self.deployments: dict[str, tuple[HostDeployment, Previous]] = {}
        """The hosts this operation started to change, and what each ran before."""
        lease = installation.lease or {}
        self.keeper = LeaseKeeper(
            self, op_id, OperationRecorder._renew, int(lease.get("ttl_s", 0)) / 3
        )

    def __call__(self, *commands: Callable[[Installation], None]) -> None:
        """Run ``commands`` on the installation, then append their events in one save."""
        with self.lock:
            self.check()
            installation = cast(Installation, _ValuesScrubbed(self.installation))
            for command in commands:
                command(installation)
            self._save()

    def close(self) -> None:
        """Stop renewing the lease (the operation ended, one way or another)."""
        self.keeper.stop()

    def _renew(self) -> float | None:
        """One heartbeat: renew while this process holds the operation's lease
        (a recoverer's recorder starts renewing once its takeover is saved)."""
        with self.lock:
            lease = self.installation.lease
            if self.halted is not None or lease is None or lease["op_id"] != self.op_id:
                return None
            if lease["holder"] == self.actor and LeaseHolder.of(lease) == self.holder:
                self.installation.renew_lease(
                    actor=self.actor, op_id=self.op_id, holder=self.holder
                )
                self._save()
            return int(lease["ttl_s"]) / 3

    def check(self) -> None:
        """Raise the error the recorder halted with, if it did."""
        if self.halted is not None:
            raise type(self.halted)(str(self.halted))

    def _save(self) -> None:
        events = list(self.installation.pending_events)
        try:
            self.ledger.append(self.installation)
        except ConflictError as e:
            self.halted = self._conflict(e)
        except StorageError as e:
            self.halted = self._outage(e)
        if self.halted is not None:
            self.keeper.stop()
            raise type(self.halted)(str(self.halted)) from None
        if self.installation.lease is None or self.installation.lease["op_id"] != self.op_id:
            self.keeper.stop()  # finished (or broken): nothing more to renew
        for event in events:
            self.last_recorded = _describe(event)
            if isinstance(event, Installation.HostActivated):
                self.recorded_hosts[event.host] = "activated"
            elif isinstance(event, Installation.HostRestored):
                self.recorded_hosts[event.host] = "restored"

    def halt(self, error: StorageError) -> LedgerError:
        """Stop recording after ``error`` (a failed read, say) and return the
        recorder's error: the first one wins."""
        with self.lock:
            if self.halted is None:
                self.halted = self._outage(error)
                self.keeper.stop()
            return self.halted

    def _what(self) -> str:
        lease = self.installation.lease or {}
        operation, revision = lease.get("operation", "operation"), lease.get("revision")
        name = f"{self.installation.app}/{self.installation.environment}"
        return f"{operation} of revision {revision} of {name}"

    def _outage(self, error: StorageError) -> LedgerUnavailable:
        app, env = self.installation.app, self.installation.environment
        return LedgerUnavailable(
            f"the ledger became unreachable during {self._what()} ({error}); this process "
            f"recorded up to {self.last_recorded} and stops recording; the lease stays held. "
            f"Once the ledger is reachable run 'chassis recover {app} --env {env}': it probes "
            "every host, completes the operation if every host runs its release, healthy, and "
            "otherwise puts every host back on the release it ran before, recording each step"
        )

    def _conflict(self, error: ConflictError) -> LedgerError:
        """Someone else appended first: say who holds the lease now, and what
        this process had recorded (which stands), never "nothing was written"."""
        app, env = self.installation.app, self.installation.environment
        what = self._what()
        try:
            now = self.ledger.load(Installation, self.installation.id)
        except StorageError as e:
            return self._outage(e)
        lease = now.lease
        stands = (
            f"what this process recorded up to {self.last_recorded} stands; the event it was "
            "recording was not written, and it stops here without touching the hosts again"
        )
        if lease is None or lease["op_id"] != self.op_id:
            try:
                entry = now.revision_entry(int((self.installation.lease or {})["revision"]))
                why = f"revision {entry['revision']} is now {entry['status']}: " + str(
                    entry["description"]
                )
            except (LedgerError, KeyError, ValueError):
                why = "the lease was released"
            return LeaseLost(f"{what} lost its lease while it ran ({why}); {stands}")
        if lease["holder"] != self.actor or LeaseHolder.of(lease) != self.holder:
            return LeaseLost(
                f"{what} was taken over while it ran: the lease is now held by "
                f"{now.lease_text(datetime.now(UTC))}; {stands}. The new holder probes the "
                "hosts and completes or undoes the operation"
            )
        return ConflictError(
            f"another writer appended to {app}/{env} while {what} ran ({error}); this process "
            f"recorded up to {self.last_recorded}, and stops; the lease stays held: run "
            f"'chassis recover {app} --env {env}' to complete or undo the operation"
        )

    def step(self, host: str) -> Callable[[str, bool, str, dict[str, Any]], None]:
        def record(step: str, ok: bool, detail: str, data: dict[str, Any]) -> None:
            self(
                lambda i: i.record_step(
                    actor=self.actor,
                    op_id=self.op_id,
                    host=host,
                    step=step,
                    ok=ok,
                    detail=scrubbed(detail),
                    data=scrubbed_data(data),
                )
            )

        return record


class _ValuesScrubbed:
    """The installation as a recorder's commands see it: each method (an event)
    is called with the secret values this command resolved scrubbed from every
    argument, so neither the signed event nor the state it folds into (and
    snapshots) ever holds one, whichever detail or description carried it.
    Only exact values are removed here: the patterns belong to the free text
    of step outcomes (``scrubbed``), not to names and ids."""

    def __init__(self, installation: Installation) -> None:
        self._installation = installation

    def __getattr__(self, name: str) -> Any:
        found = getattr(self._installation, name)
        if not callable(found):
            return found

        def call(*args: Any, **kwargs: Any) -> Any:
            return found(*scrub_values_data(args), **scrub_values_data(kwargs))

        return call


def supervisor_for(plan: Plan, host: HostPlan, connector: Connector) -> Supervisor:
    if host.supervisor == "systemd":
        return SystemdSupervisor(connector, host.root, unit_prefix=f"chassis-{plan.app}")
    return DirectSupervisor(connector, host.root)


def previous_plan(
    installation: Installation, entry: dict[str, Any] | None, host: str
) -> tuple[HostPlan | None, dict[str, Any] | None]:
    if entry is None:
        return None, None
    plan = msgspec.convert(installation.plan_of(int(entry["revision"])), Plan)
    for host_plan in plan.hosts:
        if host_plan.host == host:
            return host_plan, {**entry, "release_dir": release_dir_name(str(entry["release_id"]))}
    return None, None


def load_installation(ledger: Ledger, app: str, environment: str) -> Installation:
    """The installation of ``app`` in ``environment``; ``NotFoundError`` (exit 10)."""
    found = ledger.find(Installation, Installation.id_for(Installation.key(app, environment)))
    if found is None:
        raise NotFoundError(
            f"no installation of {app} in {environment} (it has never been deployed)"
        )
    return found


def full_history(ledger: Ledger, installation: Installation) -> list[dict[str, Any]]:
    """Every revision, from the installations view (the aggregate keeps a window)."""
    found = histories(ledger, installation.app, installation.environment)
    return list(found[0]["revisions"]) if found else list(installation.revisions)


class ViewMismatch(ChassisError):
    """A derived view disagrees with the signed ledger it was folded from."""

    exit_code = 8


def signed_revision_state(
    ledger: Ledger,
    installation: Installation,
    entry: dict[str, Any],
    refusing: str,
    *,
    deployed: bool = True,
    operation: str | None = None,
) -> Installation:
    """The signed state at the version a :func:`full_history` ``entry`` gives.

    The history comes from the installations view, a derived table anyone
    with database access can edit: the revision and version it names must be
    what the signed state at that version says (the revision finished there,
    with ``deployed`` finished deployed, with ``operation`` was that
    operation), else ``ViewMismatch`` says what is refused."""
    version = int(entry["version"])
    state = ledger.load(Installation, installation.id, version=version)
    try:
        signed = state.revision_entry(int(entry["revision"]))
    except DomainRuleError:
        signed = {}
    if (
        signed.get("version") != version
        or (deployed and signed.get("status") != "deployed")
        or (operation is not None and signed.get("operation") != operation)
    ):
        finished = "finished deployed" if deployed else "finished"
        what = f"{operation} " if operation else ""
        raise ViewMismatch(
            f"{installation.app}/{installation.environment}: the installations view says "
            f"{what}revision {entry['revision']} {finished} at version {version}, but the signed "
            f"ledger does not; refusing to {refusing} (nothing was recorded or changed; run "
            "'chassis ledger verify', then 'chassis ledger rebuild-views' if it passes)"
        )
    return state


def restored(
    recorder: OperationRecorder,
    host: str,
    previous: dict[str, Any] | None,
    ok: bool,
    detail: str,
) -> Callable[[Installation], None]:
    """The command recording ``host`` put back on ``previous`` (None: nothing)."""

    def command(installation: Installation) -> None:
        installation.restore_host(
            actor=recorder.actor,
            op_id=recorder.op_id,
            host=host,
            previous=previous,
            ok=ok,
            detail=scrubbed(detail),
        )

    return command


def _describe(event: Any) -> str:
    """An event as "what was recorded last" in a message."""
    if isinstance(event, Installation.StepRecorded):
        return f"step {event.step!r} on {event.host}"
    if isinstance(event, Installation.HostActivated):
        return f"the activation of {event.host}"
    if isinstance(event, Installation.HostRestored):
        return f"the restore of {event.host}"
    if isinstance(event, Installation.HostRetired):
        return f"the retirement of {event.host}"
    if isinstance(event, Installation.LeaseRenewed):
        return "a lease renewal"
    return f"its {type(event).__name__} event"


def settle_outage(recorder: OperationRecorder, progress: Callable[[str], None]) -> dict[str, str]:
    """After the ledger went away, leave every host as the ledger last recorded
    it: a host recorded active on the new release keeps it; a host changed
    since its last recorded event goes back to what it ran before (nothing can
    be recorded now: ``chassis recover`` records what it finds later).
    Returns host → what was done, in parallel, one line each."""
    outcomes: dict[str, str] = {}

    def one(name: str) -> None:
        deployment, (prev_plan, prev_entry) = recorder.deployments[name]
        recorded = recorder.recorded_hosts.get(name)
        if recorded == "activated":
            outcome = f"keeps {deployment.plan.label} (recorded active)"
        elif recorded == "restored":
            outcome = "back on its previous release (recorded)"
        elif not deployment.touched:
            outcome = "untouched"
        else:
            ok, detail, _ = restore_host(
                deployment.connector, deployment.supervisor, deployment.host, prev_plan, prev_entry
            )
            was = prev_entry["label"] if prev_entry else "nothing"
            outcome = f"back on {was} (not recorded)" if ok else f"NOT restored: {detail}"
            deployment.connector.close()
        outcomes[name] = outcome
        progress(f"{name}: {scrubbed(outcome)}")

    with ThreadPoolExecutor(max_workers=max(1, len(recorder.deployments))) as pool:
        list(pool.map(one, sorted(recorder.deployments)))
    return outcomes


def ledger_outage(
    error: StorageError, recorder: OperationRecorder, progress: Callable[[str], None]
) -> LedgerError:
    """The error an operation ends with when the ledger went away mid-way,
    after its hosts were settled (``settle_outage``): what happened, where
    each host was left, and what ``chassis recover`` will do. If the
    operation had lost its lease first, the hosts are not its to settle:
    that error is returned as it was."""
    halted = recorder.halt(error)
    if not isinstance(halted, LedgerUnavailable):
        return halted
    progress("the ledger is unreachable: leaving every host as the ledger last recorded it")
    outcomes = settle_outage(recorder, progress)
    hosts = "; ".join(f"{name} {what}" for name, what in sorted(outcomes.items()))
    return LedgerUnavailable(f"{halted}" + (f". Hosts: {hosts}" if hosts else ""))
