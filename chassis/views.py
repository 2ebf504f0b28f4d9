"""What operators read: status (what runs where) and history, from the
installation projections (caught up before every read)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ledger.application import Ledger
from projections.fold import documents, open_views, rebuild
from projections.hosts import HOSTS
from projections.installations import INSTALLATIONS


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _views(ledger: Ledger) -> list[tuple[list[dict[str, Any]], dict[str, Any]]]:
    return [(doc["status"], doc["history"]) for doc in documents(ledger, INSTALLATIONS)]


def host_documents(ledger: Ledger, *, include_removed: bool = False) -> list[dict[str, Any]]:
    """Registered hosts from the hosts view, in name order."""
    docs = sorted(documents(ledger, HOSTS), key=lambda d: d["name"])
    return [d for d in docs if include_removed or not d["removed"]]


def status_rows(ledger: Ledger, app: str | None, environment: str | None) -> list[StatusRow]:
    return [
        StatusRow(**row)
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
    return {
        INSTALLATIONS.name: rebuild(ledger, store, INSTALLATIONS),
        HOSTS.name: rebuild(ledger, store, HOSTS),
    }
