"""Folded views: a read model per aggregate, kept by folding its events with
the aggregate's own ``mutate`` (one definition of what an event means).

Catch-up reads the events after the view's tracked position in pages and
writes each page's documents with its last position in one transaction, so
rebuilding from scratch gives exactly what incremental catch-up gave.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from uuid import UUID

import msgspec
from eventsourcing.persistence import Tracking

from ledger.aggregate import LedgerAggregate
from ledger.application import Ledger
from ledger.events import registered_topics
from projections.store import VIEW_TABLE, SQLiteViewStore, ViewRow, ViewStore

A = TypeVar("A", bound=LedgerAggregate)
PAGE = 500


@dataclass(frozen=True)
class FoldedView(Generic[A]):
    name: str
    aggregate: type[A]
    topic_prefix: str
    document: Callable[[A], Any]
    accumulate: Callable[[Any, A], Any] | None = None
    """For aggregates whose state forgets (a bounded window): called after
    every event with the previous document (None at first) and the new
    state; returns the document, keeping what the state no longer holds.
    Per event, so page boundaries never change the result."""

    @property
    def tracking_name(self) -> str:
        return f"ledger.{self.name}"

    def topics(self) -> list[str]:
        """Every topic of the aggregate: folding needs each version."""
        return sorted(t for t in registered_topics() if t.startswith(self.topic_prefix))


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


def catch_up(ledger: Ledger, store: ViewStore, view: FoldedView[A]) -> int:
    """Apply every event after the view's tracked position. Returns how many."""
    applied = 0
    position = store.max_tracking_id(view.tracking_name) or 0
    topics = view.topics()
    while True:
        page = ledger.recorder.select_notifications(
            start=position, limit=PAGE, topics=topics, inclusive_of_start=False
        )
        if not page:
            return applied
        states: dict[str, A] = {}
        docs: dict[str, Any] = {}
        for notification in page:
            key = str(UUID(str(notification.originator_id)))
            if key in states:
                state: A | None = states[key]
            else:
                state, docs[key] = _load(store, view, key)
            event = ledger.mapper.to_domain_event(notification)
            folded = event.mutate(state)  # type: ignore[attr-defined]
            assert isinstance(folded, view.aggregate)
            states[key] = folded
            if view.accumulate is not None:
                docs[key] = view.accumulate(docs.get(key), folded)
        position = page[-1].id
        rows = [
            ViewRow(
                key,
                msgspec.json.encode(state.snapshot_state()),
                msgspec.json.encode(
                    docs[key] if view.accumulate is not None else view.document(state)
                ),
            )
            for key, state in states.items()
        ]
        store.write(view.name, rows, Tracking(view.tracking_name, position))
        applied += len(page)


def _load(store: ViewStore, view: FoldedView[A], key: str) -> tuple[A | None, Any]:
    """The folded state and document stored for ``key`` (None, None if new)."""
    row = store.read(view.name, key)
    if row is None:
        return None, None
    state = view.aggregate.restore(msgspec.json.decode(row.state))
    return state, msgspec.json.decode(row.doc)


def rebuild(ledger: Ledger, store: ViewStore, view: FoldedView[A]) -> int:
    """Forget the view and its position, then catch up from the start."""
    store.clear(view.name, view.tracking_name)
    return catch_up(ledger, store, view)


def documents(ledger: Ledger, view: FoldedView[A]) -> list[Any]:
    """The view's documents, caught up first (what every read command does)."""
    store = open_views(ledger)
    catch_up(ledger, store, view)
    return read_documents(store, view)


def read_documents(store: ViewStore, view: FoldedView[A]) -> list[Any]:
    return [msgspec.json.decode(row.doc) for row in store.read_all(view.name)]
