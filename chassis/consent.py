"""Two-person consent for promoting a candidate release (``chassis consent``).

A grant is a signed ``consent-granted`` event by a key holding ``approver``
(the ledger refuses any other key, exit 6). Whether a grant lets a given
key promote is :func:`consent_verdict`: it must name this app, environment
and candidate release, be neither expired nor revoked, and come from a key
other than the one asking for promotion.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from chassis.errors import ChassisError, NotFound
from ledger.application import Ledger
from ledger.consents import Consent
from ledger.errors import NotFoundError
from ledger.releases import Release

_DURATION = re.compile(r"(\d+)\s*([smhd])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_TTL = timedelta(days=30)


class ConsentError(ChassisError):
    """A consent request or reference that cannot be honoured (exit 9)."""

    exit_code = 9


class ConsentInputError(ConsentError):
    exit_code = 2


def parse_ttl(text: str) -> timedelta:
    """``90m``, ``1h``, ``2h30m``, ``7d``: at least a minute, at most 30 days."""
    parts = _DURATION.findall(text.replace(" ", ""))
    if not parts or "".join(n + u for n, u in parts) != text.replace(" ", ""):
        raise ConsentInputError(f"--ttl: expected a duration such as 30m, 1h or 2d, found {text!r}")
    ttl = timedelta(seconds=sum(int(n) * _UNIT_S[u] for n, u in parts))
    if not timedelta(minutes=1) <= ttl <= MAX_TTL:
        raise ConsentInputError(f"--ttl: expected 1m to 30d, found {text!r}")
    return ttl


def find_release(ledger: Ledger, app: str, label: str) -> Release:
    found = ledger.find(Release, Release.id_for(Release.key(app, label)))
    if found is None:
        raise NotFound(f"no release {label!r} of {app} is registered (chassis release add)")
    return found


def grant(
    ledger: Ledger,
    *,
    app: str,
    environment: str,
    label: str,
    ttl: timedelta,
    reason: str,
    at: datetime,
) -> Consent:
    assert ledger.signer is not None
    release = find_release(ledger, app, label)
    consent = Consent.grant(
        app=app,
        environment=environment,
        release_id=release.release_id,
        label=label,
        expires=at + ttl,
        reason=reason,
        actor=ledger.signer.keyid,
    )
    ledger.append(consent)
    return consent


def consents(ledger: Ledger, app: str, environment: str) -> list[Consent]:
    """Every grant for APP in ENV, oldest first."""
    found: list[Consent] = []
    for row in ledger.recorder.select_notifications(
        start=None, limit=1_000_000, topics=[Consent.Granted.TOPIC]
    ):
        try:
            consent = ledger.load(Consent, UUID(str(row.originator_id)))
        except NotFoundError:
            continue
        if consent.app == app and consent.environment == environment:
            found.append(consent)
    return found


def find_consent(ledger: Ledger, app: str, environment: str, ref: str) -> Consent:
    matches = [c for c in consents(ledger, app, environment) if c.id.hex.startswith(ref)]
    if len(ref) < 6 or len(matches) != 1:
        known = ", ".join(c.short_id for c in consents(ledger, app, environment)) or "none"
        raise NotFound(
            f"no single consent {ref!r} for {app} in {environment} "
            f"(give 6+ digits of its id; consents: {known})"
        )
    return matches[0]


def revoke(ledger: Ledger, consent: Consent, reason: str) -> None:
    assert ledger.signer is not None
    consent.revoke(reason, actor=ledger.signer.keyid)
    ledger.append(consent)


@dataclass(frozen=True)
class ConsentVerdict:
    passed: bool
    reason: str
    consent: Consent | None
    """The grant that lets the promotion happen, when one does."""
    considered: list[dict[str, Any]]


def consent_verdict(
    ledger: Ledger, *, app: str, environment: str, release_id: str, requester: str, at: datetime
) -> ConsentVerdict:
    """Whether a grant lets ``requester`` promote ``release_id`` at ``at``, and
    why not: each grant for this candidate is named with what disqualifies it."""
    considered: list[dict[str, Any]] = []
    standing: Consent | None = None
    for consent in consents(ledger, app, environment):
        if consent.release_id != release_id:
            continue
        why = consent.standing(at)
        if why is None and consent.granted_by == requester:
            why = "granted by the key requesting promotion (two different keys are needed)"
        considered.append(
            {"consent": consent.id.hex, "granted_by": consent.granted_by, "refused": why}
        )
        if why is None and standing is None:
            standing = consent
    if standing is not None:
        return ConsentVerdict(
            True, f"consent {standing.short_id} by {standing.granted_by[:16]}", standing, considered
        )
    if not considered:
        return ConsentVerdict(False, "no consent for this candidate", None, considered)
    reasons = "; ".join(f"{c['consent'][:12]}: {c['refused']}" for c in considered)
    return ConsentVerdict(False, f"no standing consent ({reasons})", None, considered)
