"""What operators read: status (what runs where) and history, from the
installation projections (caught up before every read)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ledger.application import Ledger
from projections.installations import catch_up, open_views, read_views


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
    store = open_views(ledger)
    catch_up(ledger, store)
    return read_views(store)


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
