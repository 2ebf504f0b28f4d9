"""Spatial reality and release history, projected from installation events.

The projection folds each event into the installation's state with the
aggregate's own ``mutate`` (one definition of what an event means), then
writes the derived status rows and history document. Catch-up reads events
after the tracked position, in pages, and writes each page's rows with its
last position in one transaction; rebuilding from scratch therefore gives
exactly what incremental catch-up gave.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import msgspec
from eventsourcing.persistence import Tracking

from ledger.application import Ledger
from ledger.events import registered_topics
from ledger.installations import Installation
from projections.store import VIEW_TABLE, SQLiteViewStore, ViewRow, ViewStore

TRACKING_NAME = "ledger.installation-views"
PAGE = 500


def installation_topics() -> list[str]:
    """Every installation topic: folding needs each version, step outcomes included."""
    return sorted(t for t in registered_topics() if t.startswith("chassis.installation."))


def open_views(ledger: Ledger) -> ViewStore:
    """The view store in the ledger's own database (tables created if needed)."""
    if ledger.config.kind == "postgresql":
        from projections.store_postgres import PostgresViewStore

        pg_store = ledger.factory.tracking_recorder(PostgresViewStore)
        assert isinstance(pg_store, PostgresViewStore)
        if not ledger.config.postgres_table_exists(VIEW_TABLE):
            ledger.config.with_ddl_lock(pg_store.create_table)
        return pg_store
    sqlite_store = ledger.factory.tracking_recorder(SQLiteViewStore)
    assert isinstance(sqlite_store, SQLiteViewStore)
    return sqlite_store


def status_of(installation: Installation) -> list[dict[str, Any]]:
    rows = []
    for host, entry in sorted(installation.hosts.items()):
        for component in entry["components"]:
            rows.append(
                {
                    "app": installation.app,
                    "environment": installation.environment,
                    "host": host,
                    "component": component,
                    "label": entry["label"],
                    "release_id": entry["release_id"],
                    "revision": int(entry["revision"]),
                    "state": "running",
                    "health": "passed",
                    "since": entry["since"],
                }
            )
    return rows


def history_of(installation: Installation) -> dict[str, Any]:
    return {
        "app": installation.app,
        "environment": installation.environment,
        "last_successful": installation.last_successful,
        "lease": installation.lease,
        "revisions": [{k: v for k, v in e.items() if k != "plan"} for e in installation.revisions],
    }


def _row(installation: Installation) -> ViewRow:
    return ViewRow(
        installation_id=str(installation.id),
        app=installation.app,
        environment=installation.environment,
        state=msgspec.json.encode(installation.snapshot_state()),
        status=msgspec.json.encode(status_of(installation)),
        history=msgspec.json.encode(history_of(installation)),
    )


def catch_up(ledger: Ledger, store: ViewStore) -> int:
    """Apply every installation event after the tracked position. Returns how many."""
    applied = 0
    position = store.max_tracking_id(TRACKING_NAME) or 0
    while True:
        page = ledger.recorder.select_notifications(
            start=position, limit=PAGE, topics=installation_topics(), inclusive_of_start=False
        )
        if not page:
            return applied
        states: dict[str, Installation] = {}
        for notification in page:
            key = str(UUID(str(notification.originator_id)))
            state = states.get(key) or _load(store, key)
            event = ledger.mapper.to_domain_event(notification)
            states[key] = event.mutate(state)  # type: ignore[attr-defined]
        position = page[-1].id
        store.write([_row(s) for s in states.values()], Tracking(TRACKING_NAME, position))
        applied += len(page)


def _load(store: ViewStore, installation_id: str) -> Installation | None:
    row = store.read(installation_id)
    if row is None:
        return None
    return Installation.restore(msgspec.json.decode(row.state))


def rebuild(ledger: Ledger, store: ViewStore) -> int:
    """Forget the views and their position, then catch up from the start."""
    store.clear(TRACKING_NAME)
    return catch_up(ledger, store)


def read_views(store: ViewStore) -> list[tuple[list[dict[str, Any]], dict[str, Any]]]:
    return [
        (msgspec.json.decode(row.status), msgspec.json.decode(row.history))
        for row in store.read_all()
    ]
