"""Reading an installation as it was: at a revision, a version, or a time.

Read-only: it loads ``Installation`` at a version (from the nearest snapshot)
and the releases it names; nothing is appended.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from chassis.engine.operation import full_history, signed_revision_state
from chassis.errors import ChassisError
from ledger.application import Ledger
from ledger.canonical import format_timestamp
from ledger.installations import Installation
from ledger.records import MalformedRecordError, parse_record
from ledger.releases import Release, config_digest


class ReplayPointError(ChassisError):
    """``--at`` names no point of this installation's history."""

    exit_code = 10


@dataclass(frozen=True)
class Position:
    """One stored event: where it is in the global order, and its digest."""

    seq: int
    originator_id: str
    version: int
    topic: str
    digest: str
    timestamp: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "originator_id": self.originator_id,
            "version": self.version,
            "topic": self.topic,
            "digest": self.digest,
            "timestamp": self.timestamp,
        }


def positions(
    ledger: Ledger, aggregate_id: UUID, versions: set[int] | None = None
) -> list[Position]:
    """The stored positions of an aggregate's events (all, or ``versions``)."""
    wanted = str(aggregate_id)
    found: list[Position] = []
    for seq, originator, version, topic, state in ledger.scan():
        if str(originator).replace("-", "") != wanted.replace("-", ""):
            continue
        if versions is not None and version not in versions:
            continue
        try:
            record = parse_record(seq, originator, version, topic, state)
        except MalformedRecordError as e:
            raise ChassisError(f"stored event {seq} is malformed: {e}") from None
        found.append(
            Position(seq, wanted, version, topic, record.digest.hex(), record.body.timestamp)
        )
    return found


def replay_from_events(ledger: Ledger, aggregate_id: UUID, version: int) -> Installation:
    """The installation at ``version`` folded from its signed events alone.

    Snapshots are a cache, never evidence: verifiers use this instead."""
    state: Any = None
    for _, event in ledger.verified_events(aggregate_id, lte=version):
        state = event.mutate(state)
    if not isinstance(state, Installation) or state.version != version:
        raise ReplayPointError(f"installation {aggregate_id} has no version {version}")
    return state


def resolve_at(ledger: Ledger, installation: Installation, at: str) -> tuple[int, str]:
    """``--at`` → (version, what it named). Forms: ``N`` or ``rev:N`` (the
    version at which revision N finished), ``v:N`` (an aggregate version),
    an ISO-8601 time (the last version recorded at or before it)."""
    name = f"{installation.app}/{installation.environment}"
    text = at.strip()
    if text.isdigit() or text.startswith("rev:"):
        number = int(text.removeprefix("rev:")) if text.removeprefix("rev:").isdigit() else -1
        for entry in full_history(ledger, installation):
            if entry["revision"] == number:
                if "version" not in entry:
                    raise ReplayPointError(f"revision {number} of {name} never finished")
                # The version comes from the view: it must be the signed one.
                signed_revision_state(ledger, installation, entry, "replay", deployed=False)
                return int(entry["version"]), f"revision {number}"
        raise ReplayPointError(
            f"--at {at}: {name} has no revision {number} (revisions 1..{installation.revision})"
        )
    if text.startswith("v:"):
        digits = text.removeprefix("v:")
        if not digits.isdigit() or not 1 <= int(digits) <= installation.version:
            raise ReplayPointError(
                f"--at {at}: expected a version between 1 and {installation.version}"
            )
        return int(digits), f"version {digits}"
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ReplayPointError(
            f"--at {at!r}: expected a revision (N or rev:N), a version (v:N) or an ISO-8601 time"
        ) from None
    if moment.tzinfo is None:
        raise ReplayPointError(f"--at {at!r}: give the time zone (e.g. 2026-11-27T10:00:00Z)")
    stamp = format_timestamp(moment)
    version = 0
    for _, event in ledger.verified_events(installation.id):  # this aggregate's events only
        if format_timestamp(event.timestamp) <= stamp:
            version = max(version, event.originator_version)
    if version == 0:
        raise ReplayPointError(f"--at {at}: {name} did not exist yet")
    return version, f"time {stamp}"


def replay(ledger: Ledger, installation: Installation, at: str) -> dict[str, Any]:
    version, named = resolve_at(ledger, installation, at)
    state = ledger.load(Installation, installation.id, version=version)
    spatial = state.spatial_state()
    releases: dict[str, dict[str, Any]] = {}
    hosts: dict[str, Any] = {}
    for host, entry in sorted(state.hosts.items()):
        label = str(entry["label"])
        if label not in releases:
            found = ledger.find(Release, Release.id_for(Release.key(state.app, label)))
            releases[label] = {
                "release_id": entry["release_id"],
                "bundle_sha256": found.bundle_sha256 if found else None,
                "config_digest": config_digest(found.config) if found else None,
            }
        hosts[host] = {
            "label": label,
            "release_id": entry["release_id"],
            "revision": entry["revision"],
            "since": entry["since"],
            "components": dict.fromkeys(sorted(entry["components"]), label),
        }
    return {
        "app": state.app,
        "environment": state.environment,
        "at": named,
        "version": version,
        "revision": state.revision,
        "last_successful": state.last_successful,
        "time": format_timestamp(state.modified_on),
        "profile": spatial["profile"],
        "placement": spatial["placement"],
        "hosts": hosts,
        "releases": releases,
        "lease": state.lease,
        "state_digest": state.state_digest(),
    }
