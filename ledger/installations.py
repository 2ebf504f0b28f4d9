"""Installations: one app in one environment, and every operation on it.

An operation (deploy, rollback, recover) starts with its signed intent,
which also takes the installation's lease (and, in the same save, a
``LeaseRenewed`` naming the host and pid of the process holding it); each host
step's outcome follows, and the holder renews the lease while it works; it
ends with a finished event that releases the lease. Revision numbers only
grow. ``last_successful`` is the newest revision whose operation deployed.
"""

from __future__ import annotations

import hashlib
import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

from ledger.aggregate import LedgerAggregate
from ledger.canonical import canonical_json, format_timestamp, parse_timestamp
from ledger.errors import ConflictError, DomainRuleError
from ledger.events import LedgerEvent
from ledger.snapshots import SnapshotBinding

OPERATIONS = ("deploy", "rollback", "recover", "repair", "restart", "remove", "expire-lease")
_HOLDER_KEYS = ("renewed", "hostname", "pid", "process")
"""Lease keys that describe the holding process (``LeaseRenewed``)."""
STATE_TAG = b"chassis.installation.state.v1\x00"
FINAL_STATUSES = ("deployed", "failed", "noop")


def _active_entry(
    release_id: str, label: str, revision: int, components: list[str], since: datetime
) -> dict[str, Any]:
    """What ``Installation.hosts`` holds for a host: the release active there."""
    return {
        "release_id": release_id,
        "label": label,
        "revision": revision,
        "components": list(components),
        "since": format_timestamp(since),
    }


def _activation_seen(
    aggregate: Installation, host: str, revision: int, components: list[str], at: datetime
) -> dict[str, Any]:
    """What an activation saw: every component running and through its health
    gate (``none`` for a component without a check). Restart counts start at
    0 where the plan's supervisor keeps them (``direct``), unknown elsewhere."""
    plan = aggregate.plans.get(str(revision)) or {}
    host_plan: dict[str, Any] = next(
        (h for h in plan.get("hosts", []) if h.get("host") == host), {}
    )
    checks = {c.get("name"): c.get("health") for c in host_plan.get("components", [])}
    restarts = 0 if host_plan.get("supervisor", "direct") == "direct" else None
    operation = aggregate.lease["operation"] if aggregate.lease else "deploy"
    stamp = format_timestamp(at)
    return {
        "at": stamp,
        "since": stamp,
        "by": f"{operation} r{revision}",
        "components": {
            name: {
                "state": "running",
                "health": "none" if name in checks and checks[name] is None else "passed",
                "restarts": restarts,
                "detail": "started and through its health gate",
            }
            for name in components
        },
    }


def _unseen(aggregate: Installation, at: datetime, what: str) -> dict[str, Any]:
    """An entry saying nothing has been seen since ``what`` (in the lease's operation)."""
    lease = aggregate.lease
    during = f" in {lease['operation']} r{lease['revision']}" if lease else ""
    return {"at": None, "since": format_timestamp(at), "by": f"{what}{during}", "components": {}}


class LeaseHeldError(DomainRuleError):
    """Another operation holds the installation's lease."""

    exit_code = 7


class LeaseLost(ConflictError):
    """This process's operation no longer holds the lease: it was taken over
    (``chassis recover``) or broken (``chassis lease break``) while it ran. What
    it recorded before stands; it must stop acting on hosts (exit 7)."""


@dataclass(frozen=True)
class LeaseHolder:
    """Where the process holding a lease runs: recorded with every renewal so
    that ``chassis recover`` can say what is running where, and, on the same
    machine, tell a live holder from a dead one. ``process`` is the kernel boot
    id and the process start time (Linux ``/proc``; empty elsewhere), so a pid
    reused after a crash or a reboot is not mistaken for the holder."""

    hostname: str
    pid: int
    process: str

    @classmethod
    def here(cls) -> LeaseHolder:
        """This process (read once per command, never in an event's ``apply``)."""
        return cls(socket.gethostname(), os.getpid(), process_token(os.getpid()))

    @classmethod
    def of(cls, lease: dict[str, Any]) -> LeaseHolder | None:
        """The holder a lease recorded (None for a lease from before renewals)."""
        if "pid" not in lease:
            return None
        return cls(str(lease["hostname"]), int(lease["pid"]), str(lease["process"]))

    def describe(self) -> str:
        return f"host {self.hostname}, pid {self.pid}"


def process_token(pid: int) -> str:
    """``BOOT_ID:START_TICKS`` of ``pid`` from ``/proc`` ("" if unreadable or not Linux)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    # Field 22 (start time); the command name (field 2) may hold spaces and ')'.
    fields = stat[stat.rfind(")") + 2 :].split()
    return f"{boot}:{fields[19]}" if len(fields) > 19 else ""


class Installation(LedgerAggregate):
    """State stays bounded however long the history: revision entries beyond
    the last ``REVISION_WINDOW`` are dropped unless still referenced (active on
    a host, holding the lease, last successful), and a plan is kept only while
    its revision is referenced. Snapshots are then O(1) each, and the full
    history lives in the installations projection."""

    KIND = "installation"
    SNAPSHOT_EVERY = 100
    REVISION_WINDOW: ClassVar[int] = 32
    app: str
    environment: str
    revision: int
    last_successful: int | None
    lease: dict[str, Any] | None
    revisions: list[dict[str, Any]]
    """The recent and still-referenced revisions (see REVISION_WINDOW), oldest first."""
    plans: dict[str, dict[str, Any]]
    """str(revision) → the plan it recorded, for referenced revisions only."""
    hosts: dict[str, dict[str, Any]]
    """host → {release_id, label, revision, components, since}: what is active."""
    drift: dict[str, dict[str, Any]]
    """host → {observed, differences}: the last drift reconcile saw there."""
    observed: dict[str, dict[str, Any]]
    """host → {at, since, by, components}: the last state *seen* there (see
    :func:`_seen`). ``at`` is null when nothing has looked since ``by``
    changed the host without looking (a restore): status must then say
    "unknown", never repeat an older "running"."""

    class Created(LedgerEvent, frozen=True, kw_only=True):
        TOPIC: ClassVar[str] = "chassis.installation.created.v1"
        ROLE: ClassVar[str] = "operator"
        CREATES: ClassVar[bool] = True
        app: str
        environment: str

        def apply(self, aggregate: Installation) -> None:
            aggregate.app = self.app
            aggregate.environment = self.environment
            aggregate.revision = 0
            aggregate.last_successful = None
            aggregate.lease = None
            aggregate.revisions = []
            aggregate.plans = {}
            aggregate.hosts = {}
            aggregate.drift = {}
            aggregate.observed = {}

    class OperationStarted(LedgerEvent, frozen=True, kw_only=True):
        TOPIC: ClassVar[str] = "chassis.installation.operation-started.v1"
        ROLE: ClassVar[str] = "operator"
        op_id: str
        operation: str
        revision: int
        label: str
        release_id: str
        profile: str
        placement: dict[str, str]
        host_components: dict[str, list[str]]
        plan_digest: str
        plan: dict[str, Any]
        lease_ttl_s: int
        description: str

        def apply(self, aggregate: Installation) -> None:
            started = format_timestamp(self.timestamp)
            aggregate.revision = self.revision
            aggregate.lease = {
                "op_id": self.op_id,
                "holder": self.keyid,
                "operation": self.operation,
                "revision": self.revision,
                "started": started,
                "ttl_s": self.lease_ttl_s,
                # What the hosts ran: a failure restores them there, so
                # these plans are kept until the operation ends.
                "restores": sorted({int(e["revision"]) for e in aggregate.hosts.values()}),
            }
            aggregate.revisions.append(
                {
                    "revision": self.revision,
                    "op_id": self.op_id,
                    "operation": self.operation,
                    "label": self.label,
                    "release_id": self.release_id,
                    "profile": self.profile,
                    "placement": dict(self.placement),
                    "status": "pending",
                    "started": started,
                    "finished": None,
                    "description": self.description,
                    "plan_digest": self.plan_digest,
                    "started_version": self.originator_version,
                    "actor": self.keyid,
                }
            )
            aggregate.plans[str(self.revision)] = self.plan
            aggregate.compact()

    class StepRecorded(LedgerEvent, frozen=True, kw_only=True):
        TOPIC: ClassVar[str] = "chassis.installation.step-recorded.v1"
        ROLE: ClassVar[str] = "operator"
        op_id: str
        host: str
        step: str
        ok: bool
        detail: str
        data: dict[str, Any]

    class HostActivated(LedgerEvent, frozen=True, kw_only=True):
        TOPIC: ClassVar[str] = "chassis.installation.host-activated.v1"
        ROLE: ClassVar[str] = "operator"
        op_id: str
        host: str
        release_id: str
        label: str
        revision: int
        components: list[str]

        def apply(self, aggregate: Installation) -> None:
            aggregate.hosts[self.host] = _active_entry(
                self.release_id, self.label, self.revision, self.components, self.timestamp
            )
            aggregate.drift.pop(self.host, None)
            # Activation follows a passed health gate: that gate is an observation.
            aggregate.observed[self.host] = _activation_seen(
                aggregate, self.host, self.revision, self.components, self.timestamp
            )
            aggregate.compact()

    class HostRestored(LedgerEvent, frozen=True, kw_only=True):
        TOPIC: ClassVar[str] = "chassis.installation.host-restored.v1"
        ROLE: ClassVar[str] = "operator"
        op_id: str
        host: str
        release_id: str | None
        label: str | None
        revision: int | None
        components: list[str]
        ok: bool
        detail: str

        def apply(self, aggregate: Installation) -> None:
            aggregate.drift.pop(self.host, None)
            # A restore's own report is not an observation (one that said
            # "restored" while the processes were gone is how status lied).
            aggregate.observed[self.host] = _unseen(aggregate, self.timestamp, "restore")
            if self.release_id is None or self.revision is None or self.label is None:
                aggregate.hosts.pop(self.host, None)
                aggregate.observed.pop(self.host, None)
            else:
                aggregate.hosts[self.host] = _active_entry(
                    self.release_id, self.label, self.revision, self.components, self.timestamp
                )
            aggregate.compact()

    class HostRetired(LedgerEvent, frozen=True, kw_only=True):
        """The operation's target runs nothing on ``host`` any more: its
        ``components`` were stopped and ``current`` unlinked. Recorded as
        what it is (not as a restore), after a ``retire`` step recorded
        before anything was stopped."""

        TOPIC: ClassVar[str] = "chassis.installation.host-retired.v1"
        ROLE: ClassVar[str] = "operator"
        op_id: str
        host: str
        components: list[str]
        detail: str

        def apply(self, aggregate: Installation) -> None:
            aggregate.hosts.pop(self.host, None)
            aggregate.observed.pop(self.host, None)
            aggregate.drift.pop(self.host, None)
            aggregate.compact()

    class ComponentsStopped(LedgerEvent, frozen=True, kw_only=True):
        """The operation stopped ``components`` on ``host``, which keeps
        running its others: the host now runs the operation's ``revision``
        (whose plan no longer places them there). Recorded after a step that
        says why (``expire-secret``: a secret version's lease expired) written
        before anything was stopped. A host left with nothing is retired
        instead (``host-retired``)."""

        TOPIC: ClassVar[str] = "chassis.installation.components-stopped.v1"
        ROLE: ClassVar[str] = "operator"
        op_id: str
        host: str
        revision: int
        components: list[str]
        detail: str

        def apply(self, aggregate: Installation) -> None:
            entry = aggregate.hosts.get(self.host)
            if entry is None:
                return
            stopped = set(self.components)
            remaining = [c for c in entry["components"] if c not in stopped]
            if not remaining:
                aggregate.hosts.pop(self.host, None)
                aggregate.observed.pop(self.host, None)
                aggregate.drift.pop(self.host, None)
            else:
                aggregate.hosts[self.host] = {
                    **entry,
                    "revision": self.revision,
                    "components": remaining,
                }
                seen = aggregate.observed.get(self.host)
                if seen is not None:
                    aggregate.observed[self.host] = {
                        **seen,
                        "components": {
                            k: v for k, v in seen["components"].items() if k not in stopped
                        },
                    }
                drift = aggregate.drift.get(self.host)
                if drift is not None:
                    left = [d for d in drift["differences"] if d.get("component") not in stopped]
                    if left:
                        aggregate.drift[self.host] = {**drift, "differences": left}
                    else:
                        aggregate.drift.pop(self.host, None)
            aggregate.compact()

    class OperationFinished(LedgerEvent, frozen=True, kw_only=True):
        TOPIC: ClassVar[str] = "chassis.installation.operation-finished.v1"
        ROLE: ClassVar[str] = "operator"
        op_id: str
        revision: int
        status: str
        description: str

        def apply(self, aggregate: Installation) -> None:
            aggregate.lease = None
            undone = None
            if self.status == "deployed":
                undone = aggregate.revision_entry(self.revision).get("rollback_from")
            for entry in aggregate.revisions:
                if entry["revision"] == undone and entry["status"] == "deployed":
                    entry["status"] = "rolled-back"
                elif entry["revision"] == self.revision:
                    entry["status"] = self.status
                    entry["finished"] = format_timestamp(self.timestamp)
                    entry["description"] = self.description
                    entry["version"] = self.originator_version
                elif self.status == "deployed" and entry["status"] == "deployed":
                    entry["status"] = "superseded"
            if self.status == "deployed":
                aggregate.last_successful = self.revision
            aggregate.compact()

    class RollbackTargeted(LedgerEvent, frozen=True, kw_only=True):
        """A rollback's target, fixed with its intent: the revision, the version
        its state was replayed at, and that state's digest."""

        TOPIC: ClassVar[str] = "chassis.installation.rollback-targeted.v1"
        ROLE: ClassVar[str] = "operator"
        op_id: str
        from_revision: int | None
        target_revision: int
        target_version: int
        target_state_digest: str

        def apply(self, aggregate: Installation) -> None:
            for entry in aggregate.revisions:
                if entry["op_id"] == self.op_id:
                    entry["rollback_to"] = self.target_revision
                    entry["rollback_from"] = self.from_revision

    class DriftObserved(LedgerEvent, frozen=True, kw_only=True):
        """``chassis reconcile`` found a host that differs from the ledger (or,
        with no differences, that a host recorded as drifted matches again)."""

        TOPIC: ClassVar[str] = "chassis.installation.drift-observed.v1"
        ROLE: ClassVar[str] = "operator"
        host: str
        differences: list[dict[str, Any]]

        def apply(self, aggregate: Installation) -> None:
            if not self.differences:  # observed clean again
                aggregate.drift.pop(self.host, None)
                return
            aggregate.drift[self.host] = {
                "observed": format_timestamp(self.timestamp),
                "differences": list(self.differences),
            }

    class StateObserved(LedgerEvent, frozen=True, kw_only=True):
        """What a probe (``chassis status --live``, ``chassis reconcile``) saw
        on a host, recorded only when it differs from what was recorded
        before, so status can say what was seen and when instead of assuming
        "running". ``components``: name → {state, health, restarts, detail,
        last_exit}; ``differences`` as in ``drift-observed`` (an empty list
        clears recorded drift: the host was seen matching the ledger)."""

        TOPIC: ClassVar[str] = "chassis.installation.state-observed.v1"
        ROLE: ClassVar[str] = "operator"
        host: str
        by: str
        release_id: str
        components: dict[str, dict[str, Any]]
        differences: list[dict[str, Any]]

        def apply(self, aggregate: Installation) -> None:
            if self.host not in aggregate.hosts:
                return  # retired since it was probed: nothing runs there to describe
            at = format_timestamp(self.timestamp)
            aggregate.observed[self.host] = {
                "at": at,
                "since": at,
                "by": self.by,
                "release_id": self.release_id,
                "components": {k: dict(v) for k, v in self.components.items()},
            }
            if self.differences:
                aggregate.drift[self.host] = {"observed": at, "differences": list(self.differences)}
            else:
                aggregate.drift.pop(self.host, None)

    class LeaseBroken(LedgerEvent, frozen=True, kw_only=True):
        TOPIC: ClassVar[str] = "chassis.installation.lease-broken.v1"
        ROLE: ClassVar[str] = "operator"
        op_id: str
        reason: str
        forced: bool

        def apply(self, aggregate: Installation) -> None:
            aggregate.lease = None
            for entry in aggregate.revisions:
                if entry["op_id"] == self.op_id and entry["status"] == "pending":
                    entry["status"] = "failed"
                    entry["finished"] = format_timestamp(self.timestamp)
                    entry["description"] += f" (lease broken: {self.reason})"
            aggregate.compact()

    class OperationResumed(LedgerEvent, frozen=True, kw_only=True):
        """A recovering process takes over an interrupted operation: the lease
        stays with the operation (same op_id, same revision) and passes to the
        signing key, restarted with ``lease_ttl_s``."""

        TOPIC: ClassVar[str] = "chassis.installation.operation-resumed.v1"
        ROLE: ClassVar[str] = "operator"
        op_id: str
        reason: str
        lease_ttl_s: int

        def apply(self, aggregate: Installation) -> None:
            lease = aggregate.lease
            if lease is None or lease["op_id"] != self.op_id:
                return
            # The previous holder's process and renewals are not the recoverer's.
            kept = {k: v for k, v in lease.items() if k not in _HOLDER_KEYS}
            aggregate.lease = {
                **kept,
                "holder": self.keyid,
                "started": format_timestamp(self.timestamp),
                "ttl_s": self.lease_ttl_s,
            }

    class LeaseRenewed(LedgerEvent, frozen=True, kw_only=True):
        """The lease holder is still working on ``op_id``: the lease now runs
        ``ttl_s`` from this event. Appended with every intent (and every
        takeover) to say where the holding process runs, then by its heartbeat
        every ``ttl_s / 3``, so a lease is live exactly while it is renewed."""

        TOPIC: ClassVar[str] = "chassis.installation.lease-renewed.v1"
        ROLE: ClassVar[str] = "operator"
        op_id: str
        hostname: str
        """Of the machine the holding process runs on (not a target host)."""
        pid: int
        process: str
        ttl_s: int

        def apply(self, aggregate: Installation) -> None:
            lease = aggregate.lease
            if lease is None or lease["op_id"] != self.op_id:
                return
            aggregate.lease = {
                **lease,
                "renewed": format_timestamp(self.timestamp),
                "ttl_s": self.ttl_s,
                "hostname": self.hostname,
                "pid": self.pid,
                "process": self.process,
            }

    class SnapshotBound(SnapshotBinding, frozen=True, kw_only=True):
        """Vouches for the snapshot taken at this version (ledger/snapshots.py)."""

        TOPIC: ClassVar[str] = "chassis.installation.snapshot-bound.v1"
        ROLE: ClassVar[str] = "operator"

    def wants_snapshot(self, event: LedgerEvent) -> bool:
        """A release snapshot whenever a release becomes active."""
        return isinstance(event, self.OperationFinished) and event.status == "deployed"

    @classmethod
    def restore(cls, state: dict[str, Any]) -> Installation:
        state.setdefault("drift", {})  # snapshots taken before drift was kept
        state.setdefault("observed", {})  # ... or before observations were
        state.setdefault("plans", {})
        return super().restore(state)

    def referenced(self) -> set[int]:
        """Revisions the state still needs: active on a host, leased, last successful."""
        keep = {int(e["revision"]) for e in self.hosts.values()}
        if self.lease is not None:
            keep.add(int(self.lease["revision"]))
            keep.update(int(r) for r in self.lease.get("restores", ()))
        if self.last_successful is not None:
            keep.add(self.last_successful)
        return keep

    def compact(self) -> None:
        """Drop plans no longer referenced and revisions beyond the window."""
        keep = self.referenced()
        self.plans = {k: v for k, v in self.plans.items() if int(k) in keep}
        if len(self.revisions) > self.REVISION_WINDOW:
            recent = self.revisions[-self.REVISION_WINDOW :]
            older = [e for e in self.revisions[: -self.REVISION_WINDOW] if e["revision"] in keep]
            self.revisions = older + recent

    def plan_of(self, revision: int) -> dict[str, Any]:
        """The plan a referenced revision recorded."""
        try:
            return self.plans[str(revision)]
        except KeyError:
            raise DomainRuleError(
                f"{self.app}/{self.environment}: revision {revision} is no longer referenced; "
                "its plan is in its operation-started event"
            ) from None

    # Commands.

    @classmethod
    def key(cls, app: str, environment: str) -> str:
        return f"{app}/{environment}"

    @classmethod
    def open(cls, app: str, environment: str, *, actor: str) -> Installation:
        return cls.create(
            cls.Created,
            id=cls.id_for(cls.key(app, environment)),
            keyid=actor,
            app=app,
            environment=environment,
        )

    def lease_expires(self) -> datetime | None:
        """The last renewal (or the start) plus the ttl."""
        if self.lease is None:
            return None
        last = parse_timestamp(self.lease.get("renewed") or self.lease["started"])
        return last + timedelta(seconds=int(self.lease["ttl_s"]))

    def lease_text(self, now: datetime) -> str:
        """What holds the lease, for messages: operation, revision, key, where
        its process runs, when it started and was last renewed, and expiry."""
        lease = self.lease
        if lease is None:
            return "no operation"
        expires = self.lease_expires()
        holder = LeaseHolder.of(lease)
        where = f", {holder.describe()}" if holder else ""
        renewed = f", last renewed {lease['renewed']}" if lease.get("renewed") else ""
        state = "expired" if expires is not None and now > expires else "expires"
        return (
            f"{lease['operation']} of revision {lease['revision']} (key {lease['holder'][:16]}"
            f"{where}, started {lease['started']}{renewed}, {state} "
            f"{format_timestamp(expires) if expires else '?'})"
        )

    def check_lease_free(self, now: datetime) -> None:
        """Raise ``LeaseHeldError`` naming holder, where it runs, start and expiry."""
        if self.lease is None:
            return
        raise LeaseHeldError(
            f"{self.app}/{self.environment} is locked by {self.lease_text(now)}; wait, run "
            f"'chassis recover', or 'chassis lease break'"
        )

    def start_operation(
        self,
        *,
        actor: str,
        op_id: str,
        operation: str,
        label: str,
        release_id: str,
        profile: str,
        placement: dict[str, str],
        host_components: dict[str, list[str]],
        plan_digest: str,
        plan: dict[str, Any],
        lease_ttl_s: int,
        description: str,
        now: datetime,
        holder: LeaseHolder | None = None,
    ) -> int:
        """Record the intent, which takes the lease, and (in the same save)
        where the process holding it runs (``holder``, default this one)."""
        if operation not in OPERATIONS:
            raise DomainRuleError(f"unknown operation {operation!r}")
        self.check_lease_free(now)
        revision = self.revision + 1
        self.trigger(
            self.OperationStarted,
            keyid=actor,
            op_id=op_id,
            operation=operation,
            revision=revision,
            label=label,
            release_id=release_id,
            profile=profile,
            placement=placement,
            host_components=host_components,
            plan_digest=plan_digest,
            plan=plan,
            lease_ttl_s=lease_ttl_s,
            description=description,
        )
        self._renewed(actor, op_id, holder or LeaseHolder.here(), lease_ttl_s)
        return revision

    def _renewed(self, actor: str, op_id: str, holder: LeaseHolder, ttl_s: int) -> None:
        self.trigger(
            self.LeaseRenewed,
            keyid=actor,
            op_id=op_id,
            hostname=holder.hostname,
            pid=holder.pid,
            process=holder.process,
            ttl_s=ttl_s,
        )

    def renew_lease(self, *, actor: str, op_id: str, holder: LeaseHolder) -> None:
        """The heartbeat: only the key and process that hold the lease renew it."""
        self._require_operation(op_id)
        assert self.lease is not None
        if self.lease["holder"] != actor or LeaseHolder.of(self.lease) != holder:
            raise LeaseLost(
                f"the lease of {self.app}/{self.environment} is held by "
                f"{self.lease_text(datetime.now(UTC))}, not by this process"
            )
        self._renewed(actor, op_id, holder, int(self.lease["ttl_s"]))

    def _require_operation(self, op_id: str) -> None:
        if self.lease is None or self.lease["op_id"] != op_id:
            raise DomainRuleError(
                f"operation {op_id} does not hold the lease of {self.app}/{self.environment}"
            )

    def record_step(
        self,
        *,
        actor: str,
        op_id: str,
        host: str,
        step: str,
        ok: bool,
        detail: str,
        data: dict[str, Any],
    ) -> None:
        self._require_operation(op_id)
        self.trigger(
            self.StepRecorded,
            keyid=actor,
            op_id=op_id,
            host=host,
            step=step,
            ok=ok,
            detail=detail,
            data=data,
        )

    def activate_host(
        self,
        *,
        actor: str,
        op_id: str,
        host: str,
        release_id: str,
        label: str,
        components: list[str],
    ) -> None:
        self._require_operation(op_id)
        assert self.lease is not None
        self.trigger(
            self.HostActivated,
            keyid=actor,
            op_id=op_id,
            host=host,
            release_id=release_id,
            label=label,
            revision=int(self.lease["revision"]),
            components=components,
        )

    def restore_host(
        self,
        *,
        actor: str,
        op_id: str,
        host: str,
        previous: dict[str, Any] | None,
        ok: bool,
        detail: str,
    ) -> None:
        self._require_operation(op_id)
        self.trigger(
            self.HostRestored,
            keyid=actor,
            op_id=op_id,
            host=host,
            release_id=previous["release_id"] if previous else None,
            label=previous["label"] if previous else None,
            revision=int(previous["revision"]) if previous else None,
            components=list(previous["components"]) if previous else [],
            ok=ok,
            detail=detail,
        )

    def retire_host(
        self, *, actor: str, op_id: str, host: str, components: list[str], detail: str
    ) -> None:
        self._require_operation(op_id)
        self.trigger(
            self.HostRetired,
            keyid=actor,
            op_id=op_id,
            host=host,
            components=components,
            detail=detail,
        )

    def stop_components(
        self, *, actor: str, op_id: str, host: str, components: list[str], detail: str
    ) -> None:
        """Record ``components`` stopped on ``host`` by the operation holding
        the lease; the host then runs that operation's revision."""
        self._require_operation(op_id)
        assert self.lease is not None
        entry = self.hosts.get(host)
        if entry is None:
            raise DomainRuleError(f"{self.app}/{self.environment} runs nothing on {host}")
        if not components:
            raise DomainRuleError("stopping components needs at least one")
        unknown = sorted(set(components) - set(entry["components"]))
        if unknown:
            raise DomainRuleError(
                f"{self.app}/{self.environment} does not run {', '.join(unknown)} on {host}"
            )
        self.trigger(
            self.ComponentsStopped,
            keyid=actor,
            op_id=op_id,
            host=host,
            revision=int(self.lease["revision"]),
            components=sorted(components),
            detail=detail,
        )

    def finish(self, *, actor: str, op_id: str, status: str, description: str) -> None:
        self._require_operation(op_id)
        if status not in FINAL_STATUSES:
            raise DomainRuleError(f"unknown final status {status!r}")
        assert self.lease is not None
        self.trigger(
            self.OperationFinished,
            keyid=actor,
            op_id=op_id,
            revision=int(self.lease["revision"]),
            status=status,
            description=description,
        )

    def resume_operation(
        self,
        *,
        actor: str,
        op_id: str,
        reason: str,
        lease_ttl_s: int,
        holder: LeaseHolder | None = None,
    ) -> None:
        """Take over the operation holding the lease (``chassis recover``),
        recording where the recovering process runs in the same save."""
        self._require_operation(op_id)
        if not reason.strip():
            raise DomainRuleError("resuming an operation needs a reason")
        self.trigger(
            self.OperationResumed,
            keyid=actor,
            op_id=op_id,
            reason=reason,
            lease_ttl_s=lease_ttl_s,
        )
        self._renewed(actor, op_id, holder or LeaseHolder.here(), lease_ttl_s)

    def break_lease(self, *, actor: str, reason: str, force: bool, now: datetime) -> dict[str, Any]:
        if self.lease is None:
            raise DomainRuleError(f"{self.app}/{self.environment} holds no lease")
        expires = self.lease_expires()
        if not force and expires is not None and now <= expires:
            raise LeaseHeldError(
                f"the lease of {self.app}/{self.environment} is live until "
                f"{format_timestamp(expires)}; pass --force to break it anyway"
            )
        if not reason.strip():
            raise DomainRuleError("breaking a lease needs a reason")
        lease = dict(self.lease)
        self.trigger(
            self.LeaseBroken, keyid=actor, op_id=lease["op_id"], reason=reason, forced=force
        )
        return lease

    def revision_entry(self, revision: int) -> dict[str, Any]:
        for entry in self.revisions:
            if entry["revision"] == revision:
                return entry
        raise DomainRuleError(f"{self.app}/{self.environment} has no revision {revision}")

    def target_rollback(
        self, *, actor: str, op_id: str, target_revision: int, target_version: int, digest: str
    ) -> None:
        self._require_operation(op_id)
        self.trigger(
            self.RollbackTargeted,
            keyid=actor,
            op_id=op_id,
            from_revision=self.last_successful,
            target_revision=target_revision,
            target_version=target_version,
            target_state_digest=digest,
        )

    def observe_drift(self, *, actor: str, host: str, differences: list[dict[str, Any]]) -> None:
        self.trigger(self.DriftObserved, keyid=actor, host=host, differences=differences)

    def observe_state(
        self,
        *,
        actor: str,
        host: str,
        by: str,
        release_id: str,
        components: dict[str, dict[str, Any]],
        differences: list[dict[str, Any]],
    ) -> None:
        """Record what a probe saw on ``host`` (the caller records only changes)."""
        if host not in self.hosts:
            raise DomainRuleError(f"{self.app}/{self.environment} runs nothing on {host}")
        self.trigger(
            self.StateObserved,
            keyid=actor,
            host=host,
            by=by,
            release_id=release_id,
            components=components,
            differences=differences,
        )

    # Reading.

    def spatial_state(self) -> dict[str, Any]:
        """What runs where, without times or revision numbers: the part of the
        state a rollback must restore exactly (profile and placement are those
        of the last successful revision; the release id covers the config)."""
        profile: str | None = None
        placement: dict[str, str] = {}
        if self.last_successful is not None:
            plan = self.plan_of(self.last_successful)
            profile = str(plan["profile"])
            placement = {g: str(h["host"]) for h in plan["hosts"] for g in h["groups"]}
        return {
            "app": self.app,
            "environment": self.environment,
            "profile": profile,
            "placement": placement,
            "hosts": {
                host: {
                    "release_id": e["release_id"],
                    "label": e["label"],
                    "components": sorted(e["components"]),
                }
                for host, e in sorted(self.hosts.items())
            },
        }

    def state_digest(self) -> str:
        """``sha256(STATE_TAG ‖ canonical(spatial_state()))``, hex."""
        return hashlib.sha256(STATE_TAG + canonical_json(self.spatial_state())).hexdigest()

    def successful_revisions(self) -> list[dict[str, Any]]:
        """Revisions whose operation deployed, oldest first (noops excluded)."""
        return [e for e in self.revisions if e["status"] in ("deployed", "superseded")]
