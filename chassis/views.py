"""What operators read: status (what runs where) and history, derived from
the installations in the ledger."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any
from uuid import UUID

from ledger.application import Ledger
from ledger.installations import Installation


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


def installations(
    ledger: Ledger, app: str | None = None, environment: str | None = None
) -> list[Installation]:
    found: list[Installation] = []
    for row in ledger.recorder.select_notifications(
        start=None, limit=1_000_000, topics=[Installation.Created.TOPIC]
    ):
        installation = ledger.find(Installation, UUID(str(row.originator_id)))
        if installation is None:
            continue
        if app is not None and installation.app != app:
            continue
        if environment is not None and installation.environment != environment:
            continue
        found.append(installation)
    return found


def status_rows(ledger: Ledger, app: str | None, environment: str | None) -> list[StatusRow]:
    rows: list[StatusRow] = []
    for inst in installations(ledger, app, environment):
        for host, entry in sorted(inst.hosts.items()):
            for component in entry["components"]:
                rows.append(
                    StatusRow(
                        app=inst.app,
                        environment=inst.environment,
                        host=host,
                        component=component,
                        label=entry["label"],
                        release_id=entry["release_id"],
                        revision=int(entry["revision"]),
                        state="running",
                        health="passed",
                        since=entry["since"],
                    )
                )
    return rows


def history(inst: Installation) -> dict[str, Any]:
    return {
        "app": inst.app,
        "environment": inst.environment,
        "last_successful": inst.last_successful,
        "lease": inst.lease,
        "revisions": [{k: v for k, v in entry.items() if k != "plan"} for entry in inst.revisions],
    }
