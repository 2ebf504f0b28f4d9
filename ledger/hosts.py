"""Hosts: registration, inventory facts and hardware admission, as events.

A removed host keeps its history; adding it again reconfigures the same
aggregate. Facts are stored as recorded by the probe (plain JSON values, no
floats) together with a digest of their stable part, so an inventory whose
capacity has not changed appends nothing.
"""

from __future__ import annotations

from typing import Any, ClassVar

import msgspec

from ledger.aggregate import LedgerAggregate
from ledger.canonical import format_timestamp
from ledger.errors import DomainRuleError
from ledger.events import LedgerEvent


class HostSettings(msgspec.Struct, frozen=True, kw_only=True):
    """How to reach a host and where its files live. Never holds secrets:
    ``key_file`` is a path, its content stays on the operator's machine."""

    environment: str
    connector: str
    root: str
    address: str | None = None
    port: int = 22
    user: str | None = None
    key_file: str | None = None
    supervisor: str = "direct"
    labels: dict[str, str] = {}


class Host(LedgerAggregate):
    KIND = "host"
    name: str
    settings: HostSettings
    removed: bool
    removed_reason: str | None
    facts: dict[str, Any] | None
    facts_digest: str | None
    inventoried_at: str | None
    admissions: dict[str, dict[str, Any]]

    class Registered(LedgerEvent, frozen=True, kw_only=True):
        TOPIC: ClassVar[str] = "chassis.host.registered.v1"
        ROLE: ClassVar[str] = "operator"
        CREATES: ClassVar[bool] = True
        name: str
        settings: HostSettings

        def apply(self, aggregate: Host) -> None:
            aggregate.name = self.name
            aggregate.settings = self.settings
            aggregate.removed = False
            aggregate.removed_reason = None
            aggregate.facts = None
            aggregate.facts_digest = None
            aggregate.inventoried_at = None
            aggregate.admissions = {}

    class Reconfigured(LedgerEvent, frozen=True, kw_only=True):
        TOPIC: ClassVar[str] = "chassis.host.reconfigured.v1"
        ROLE: ClassVar[str] = "operator"
        settings: HostSettings

        def apply(self, aggregate: Host) -> None:
            aggregate.settings = self.settings
            aggregate.removed = False
            aggregate.removed_reason = None

    class Inventoried(LedgerEvent, frozen=True, kw_only=True):
        TOPIC: ClassVar[str] = "chassis.host.inventoried.v1"
        ROLE: ClassVar[str] = "operator"
        facts: dict[str, Any]
        facts_digest: str

        def apply(self, aggregate: Host) -> None:
            aggregate.facts = self.facts
            aggregate.facts_digest = self.facts_digest
            aggregate.inventoried_at = format_timestamp(self.timestamp)

    class AdmissionEvaluated(LedgerEvent, frozen=True, kw_only=True):
        TOPIC: ClassVar[str] = "chassis.host.admission-evaluated.v1"
        ROLE: ClassVar[str] = "operator"
        runtime: str
        admitted: bool
        reasons: list[str]
        requirements: dict[str, Any]
        facts_digest: str

        def apply(self, aggregate: Host) -> None:
            aggregate.admissions[self.runtime] = {
                "admitted": self.admitted,
                "reasons": list(self.reasons),
                "facts_digest": self.facts_digest,
                "at": format_timestamp(self.timestamp),
            }

    class Removed(LedgerEvent, frozen=True, kw_only=True):
        TOPIC: ClassVar[str] = "chassis.host.removed.v1"
        ROLE: ClassVar[str] = "operator"
        reason: str

        def apply(self, aggregate: Host) -> None:
            aggregate.removed = True
            aggregate.removed_reason = self.reason

    @classmethod
    def register(cls, name: str, settings: HostSettings, *, actor: str) -> Host:
        return cls.create(
            cls.Registered, id=cls.id_for(name), keyid=actor, name=name, settings=settings
        )

    def reconfigure(self, settings: HostSettings, *, actor: str) -> None:
        """Record new settings (or re-add a removed host); no-op when unchanged."""
        if settings != self.settings or self.removed:
            self.trigger(self.Reconfigured, keyid=actor, settings=settings)

    def record_facts(self, facts: dict[str, Any], digest: str, *, actor: str) -> bool:
        """Append facts unless their digest is the one already recorded."""
        if self.removed:
            raise DomainRuleError(f"host {self.name!r} was removed ({self.removed_reason})")
        if digest == self.facts_digest:
            return False
        self.trigger(self.Inventoried, keyid=actor, facts=facts, facts_digest=digest)
        return True

    def record_admission(
        self,
        runtime: str,
        *,
        admitted: bool,
        reasons: list[str],
        requirements: dict[str, Any],
        actor: str,
    ) -> None:
        if self.facts_digest is None:
            raise DomainRuleError(f"host {self.name!r} has no inventory yet")
        self.trigger(
            self.AdmissionEvaluated,
            keyid=actor,
            runtime=runtime,
            admitted=admitted,
            reasons=reasons,
            requirements=requirements,
            facts_digest=self.facts_digest,
        )

    def remove(self, reason: str, *, actor: str) -> None:
        if self.removed:
            raise DomainRuleError(f"host {self.name!r} is already removed")
        if not reason.strip():
            raise DomainRuleError("removing a host needs a reason")
        self.trigger(self.Removed, keyid=actor, reason=reason)
