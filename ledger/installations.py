"""Installations: one app in one environment, and every operation on it.

An operation (deploy, rollback, recover) starts with its signed intent,
which also takes the installation's lease; each host step's outcome follows;
it ends with a finished event that releases the lease. Revision numbers only
grow. ``last_successful`` is the newest revision whose operation deployed.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, ClassVar

from ledger.aggregate import LedgerAggregate
from ledger.canonical import format_timestamp, parse_timestamp
from ledger.errors import DomainRuleError
from ledger.events import LedgerEvent

OPERATIONS = ("deploy", "rollback", "recover")
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


class LeaseHeldError(DomainRuleError):
    """Another operation holds the installation's lease."""

    exit_code = 7


class Installation(LedgerAggregate):
    KIND = "installation"
    SNAPSHOT_EVERY = 100
    app: str
    environment: str
    revision: int
    last_successful: int | None
    lease: dict[str, Any] | None
    revisions: list[dict[str, Any]]
    hosts: dict[str, dict[str, Any]]
    """host → {release_id, label, revision, components, since}: what is active."""

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
            aggregate.hosts = {}

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
                    "plan": self.plan,
                }
            )

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
            if self.release_id is None or self.revision is None or self.label is None:
                aggregate.hosts.pop(self.host, None)
            else:
                aggregate.hosts[self.host] = _active_entry(
                    self.release_id, self.label, self.revision, self.components, self.timestamp
                )

    class OperationFinished(LedgerEvent, frozen=True, kw_only=True):
        TOPIC: ClassVar[str] = "chassis.installation.operation-finished.v1"
        ROLE: ClassVar[str] = "operator"
        op_id: str
        revision: int
        status: str
        description: str

        def apply(self, aggregate: Installation) -> None:
            aggregate.lease = None
            for entry in aggregate.revisions:
                if entry["revision"] == self.revision:
                    entry["status"] = self.status
                    entry["finished"] = format_timestamp(self.timestamp)
                    entry["description"] = self.description
                elif self.status == "deployed" and entry["status"] == "deployed":
                    entry["status"] = "superseded"
            if self.status == "deployed":
                aggregate.last_successful = self.revision

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
            aggregate.lease = {
                **lease,
                "holder": self.keyid,
                "started": format_timestamp(self.timestamp),
                "ttl_s": self.lease_ttl_s,
            }

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
        if self.lease is None:
            return None
        started = parse_timestamp(self.lease["started"])
        return started + timedelta(seconds=int(self.lease["ttl_s"]))

    def check_lease_free(self, now: datetime) -> None:
        """Raise ``LeaseHeldError`` naming holder, operation, start and expiry."""
        if self.lease is None:
            return
        expires = self.lease_expires()
        lease = self.lease
        state = "expired" if expires is not None and now > expires else "expires"
        raise LeaseHeldError(
            f"{self.app}/{self.environment} is locked by {lease['operation']} of revision "
            f"{lease['revision']} (key {lease['holder'][:16]}, started {lease['started']}, "
            f"{state} {format_timestamp(expires) if expires else '?'}); wait, run "
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
    ) -> int:
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
        return revision

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

    def resume_operation(self, *, actor: str, op_id: str, reason: str, lease_ttl_s: int) -> None:
        """Take over the operation holding the lease (``chassis recover``)."""
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
