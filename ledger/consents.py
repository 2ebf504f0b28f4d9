"""Consent: an approver's signed permission to promote one candidate release.

Each grant is its own aggregate (``consent/<app>/<environment>/<release id>/<nonce>``),
found by its topic. Only a key holding ``approver`` may append either event,
so who consented is the event's signer; whether that signer differs from the
key asking for promotion is decided by ``chassis.evolution.gates``, and
checked again by the proof's verifier, from the signed events.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import ClassVar

from ledger.aggregate import LedgerAggregate
from ledger.canonical import format_timestamp, parse_timestamp
from ledger.errors import DomainRuleError
from ledger.events import LedgerEvent


class Consent(LedgerAggregate):
    KIND = "consent"
    app: str
    environment: str
    release_id: str
    label: str
    granted_by: str
    expires: str
    reason: str
    revoked: bool
    revoked_by: str | None
    revoked_reason: str | None

    class Granted(LedgerEvent, frozen=True, kw_only=True):
        TOPIC: ClassVar[str] = "chassis.consent.granted.v1"
        ROLE: ClassVar[str] = "approver"
        CREATES: ClassVar[bool] = True
        app: str
        environment: str
        release_id: str
        label: str
        expires: str
        """When the consent lapses (RFC 3339, UTC, as ``ledger.canonical`` writes)."""
        reason: str

        def apply(self, aggregate: Consent) -> None:
            aggregate.app = self.app
            aggregate.environment = self.environment
            aggregate.release_id = self.release_id
            aggregate.label = self.label
            aggregate.granted_by = self.keyid
            aggregate.expires = self.expires
            aggregate.reason = self.reason
            aggregate.revoked = False
            aggregate.revoked_by = None
            aggregate.revoked_reason = None

    class Revoked(LedgerEvent, frozen=True, kw_only=True):
        TOPIC: ClassVar[str] = "chassis.consent.revoked.v1"
        ROLE: ClassVar[str] = "approver"
        reason: str

        def apply(self, aggregate: Consent) -> None:
            aggregate.revoked = True
            aggregate.revoked_by = self.keyid
            aggregate.revoked_reason = self.reason

    @classmethod
    def grant(
        cls,
        *,
        app: str,
        environment: str,
        release_id: str,
        label: str,
        expires: datetime,
        reason: str,
        actor: str,
    ) -> Consent:
        nonce = secrets.token_hex(8)
        return cls.create(
            cls.Granted,
            id=cls.id_for(f"{app}/{environment}/{release_id}/{nonce}"),
            keyid=actor,
            app=app,
            environment=environment,
            release_id=release_id,
            label=label,
            expires=format_timestamp(expires),
            reason=reason,
        )

    def revoke(self, reason: str, *, actor: str) -> None:
        if self.revoked:
            raise DomainRuleError(f"consent {self.short_id} is already revoked")
        if not reason.strip():
            raise DomainRuleError("revoking a consent needs a reason")
        self.trigger(self.Revoked, keyid=actor, reason=reason)

    @property
    def short_id(self) -> str:
        return self.id.hex[:12]

    def expires_at(self) -> datetime:
        return parse_timestamp(self.expires)

    def standing(self, at: datetime) -> str | None:
        """Why this consent does not stand at ``at``, or None when it does."""
        if self.revoked:
            return f"revoked by {self.revoked_by and self.revoked_by[:16]}: {self.revoked_reason}"
        if at >= self.expires_at():
            return f"expired at {self.expires}"
        return None
