"""What operators read: status (what runs where) and history, from the
installation projections (caught up before every read)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from typing import Any

from ledger.application import Ledger
from ledger.canonical import parse_timestamp
from projections.fold import documents, open_views, rebuild
from projections.hosts import HOSTS
from projections.installations import INSTALLATIONS
from proofs.vouch import CheckpointVouch


@dataclass(frozen=True)
class StatusRow:
    app: str
    environment: str
    host: str
    component: str
    label: str
    release_id: str
    revision: int
    state: str
    health: str
    since: str
    healthy: bool | None = None
    """True: last seen running and passing; False: seen or recorded down; None: never seen."""
    observed: str | None = None
    """When the state shown was seen (a ledger timestamp), None if never since ``detail`` says."""
    observed_by: str | None = None
    observed_age_s: int | None = None
    """Seconds between ``observed`` and the read (computed then, never stored)."""
    restarts: int | None = None
    """Restarts the supervisor made of the running instance (None: not counted)."""
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_view(cls, row: dict[str, Any], now: datetime) -> StatusRow:
        """A view row plus its age at ``now`` (rows folded by older versions lack
        the observation fields: they read as never observed)."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in row.items() if k in known}
        if "observed" not in row:
            values.update(state="unknown", health="unknown", detail="never observed")
        observed = values.get("observed")
        if observed is not None:
            age = (now - parse_timestamp(str(observed))).total_seconds()
            values["observed_age_s"] = max(0, int(age))
        return cls(**values)

    def observed_text(self) -> str:
        """``3 min ago by status --live``, or why nothing was seen."""
        if self.observed_age_s is None:
            return self.detail or "never observed"
        return f"{age_text(self.observed_age_s)} by {self.observed_by}"


def age_text(seconds: int) -> str:
    """A short, human age: ``just now``, ``42 s ago``, ``3 min ago``, ``5 h ago``, ``2 d ago``."""
    if seconds < 2:
        return "just now"
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


def _views(ledger: Ledger) -> list[tuple[list[dict[str, Any]], dict[str, Any]]]:
    docs = documents(ledger, INSTALLATIONS, CheckpointVouch(ledger))
    return [(doc["status"], doc["history"]) for doc in docs]


def host_documents(ledger: Ledger, *, include_removed: bool = False) -> list[dict[str, Any]]:
    """Registered hosts from the hosts view, in name order."""
    docs = sorted(documents(ledger, HOSTS, CheckpointVouch(ledger)), key=lambda d: d["name"])
    return [d for d in docs if include_removed or not d["removed"]]


def status_rows(
    ledger: Ledger, app: str | None, environment: str | None, now: datetime | None = None
) -> list[StatusRow]:
    """The installations view's rows (caught up first), aged at ``now``."""
    moment = now or datetime.now(UTC)
    return [
        StatusRow.from_view(row, moment)
        for rows, history in _views(ledger)
        if (app is None or history["app"] == app)
        and (environment is None or history["environment"] == environment)
        for row in rows
    ]


def histories(
    ledger: Ledger, app: str | None = None, environment: str | None = None
) -> list[dict[str, Any]]:
    return [
        history
        for _, history in _views(ledger)
        if (app is None or history["app"] == app)
        and (environment is None or history["environment"] == environment)
    ]


def rebuild_views(ledger: Ledger) -> dict[str, int]:
    """Forget every folded view and fold it again from the verified events
    (the exit when a view disagrees with the signed ledger). Returns how many
    events each view folded."""
    store = open_views(ledger)
    vouch = CheckpointVouch(ledger)  # one check of the checkpoint serves both views
    return {
        INSTALLATIONS.name: rebuild(ledger, store, INSTALLATIONS, vouch),
        HOSTS.name: rebuild(ledger, store, HOSTS, vouch),
    }
