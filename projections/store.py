"""Where read models live: documents keyed by (view, key), written in the
same transaction as the view's tracking position, so each event is applied
exactly once.

Built on eventsourcing's tracking recorders (SQLite and PostgreSQL): the
view table sits beside their ``tracking`` table in the ledger's own database.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from eventsourcing.persistence import Tracking
from eventsourcing.sqlite import SQLiteTrackingRecorder

VIEW_TABLE = "chassis_views"
_SELECT_ONE = "SELECT key, state, doc FROM chassis_views WHERE view = ? AND key = ?"
_SELECT_MANY = "SELECT key, state, doc FROM chassis_views WHERE view = ? AND key IN ({marks})"
_MANY = 500
"""Keys per query (well under SQLite's limit of bound parameters)."""
_SELECT_ALL = "SELECT key, state, doc FROM chassis_views WHERE view = ? ORDER BY key"
_UPSERT = "INSERT OR REPLACE INTO chassis_views VALUES (?, ?, ?, ?)"
_DELETE_VIEW = "DELETE FROM chassis_views WHERE view = ?"


@dataclass(frozen=True)
class ViewRow:
    key: str
    state: bytes
    """The folded aggregate state (snapshot form), to apply the next events to."""
    doc: bytes
    """The JSON document readers get."""


class ViewStore(Protocol):
    def read(self, view: str, key: str) -> ViewRow | None: ...
    def read_many(self, view: str, keys: Sequence[str]) -> dict[str, ViewRow]: ...
    def read_all(self, view: str) -> list[ViewRow]: ...
    def write(self, view: str, rows: list[ViewRow], tracking: Tracking) -> None: ...
    def clear(self, view: str, tracking_name: str) -> None: ...
    def max_tracking_id(self, application_name: str) -> int | None: ...


def row_from(values: Any) -> ViewRow:
    return ViewRow(str(values[0]), bytes(values[1]), bytes(values[2]))


class SQLiteViewStore(SQLiteTrackingRecorder):
    def construct_create_table_statements(self) -> list[str]:
        return [
            *super().construct_create_table_statements(),
            f"CREATE TABLE IF NOT EXISTS {VIEW_TABLE} ("
            "view TEXT, key TEXT, state BLOB, doc BLOB, PRIMARY KEY (view, key))",
        ]

    def read(self, view: str, key: str) -> ViewRow | None:
        with self.datastore.transaction(commit=False) as c:
            c.execute(_SELECT_ONE, (view, key))
            found = c.fetchone()
        return row_from(tuple(found)) if found else None

    def read_many(self, view: str, keys: Sequence[str]) -> dict[str, ViewRow]:
        """The stored rows of ``keys`` (those that exist), in one query per 500."""
        found: dict[str, ViewRow] = {}
        with self.datastore.transaction(commit=False) as c:
            for start in range(0, len(keys), _MANY):
                chunk = keys[start : start + _MANY]
                c.execute(_SELECT_MANY.format(marks=", ".join("?" for _ in chunk)), (view, *chunk))
                for values in c.fetchall():
                    row = row_from(tuple(values))
                    found[row.key] = row
        return found

    def read_all(self, view: str) -> list[ViewRow]:
        with self.datastore.transaction(commit=False) as c:
            c.execute(_SELECT_ALL, (view,))
            return [row_from(tuple(r)) for r in c.fetchall()]

    def write(self, view: str, rows: list[ViewRow], tracking: Tracking) -> None:
        with self.datastore.transaction(commit=True) as c:
            c.executemany(_UPSERT, [(view, row.key, row.state, row.doc) for row in rows])
            self._insert_tracking(c, tracking)

    def clear(self, view: str, tracking_name: str) -> None:
        with self.datastore.transaction(commit=True) as c:
            c.execute(_DELETE_VIEW, (view,))
            c.execute("DELETE FROM tracking WHERE application_name = ?", (tracking_name,))
