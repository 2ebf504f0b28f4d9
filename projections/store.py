"""Where read models live: one row per installation, written in the same
transaction as the tracking position, so each event is applied exactly once.

Built on eventsourcing's tracking recorders (SQLite and PostgreSQL): the view
table sits beside their ``tracking`` table in the ledger's own database.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from eventsourcing.persistence import Tracking
from eventsourcing.sqlite import SQLiteTrackingRecorder

VIEW_TABLE = "installation_views"
_SELECT_ONE = "SELECT * FROM installation_views WHERE installation_id = ?"
_SELECT_ALL = "SELECT * FROM installation_views ORDER BY app, environment"
_UPSERT = "INSERT OR REPLACE INTO installation_views VALUES (?, ?, ?, ?, ?, ?)"
_DELETE_ALL = "DELETE FROM installation_views"


@dataclass(frozen=True)
class ViewRow:
    installation_id: str
    app: str
    environment: str
    state: bytes
    """The installation's state (snapshot form), to fold the next events into."""
    status: bytes
    """JSON list of status rows."""
    history: bytes
    """JSON history document."""


class ViewStore(Protocol):
    def read(self, installation_id: str) -> ViewRow | None: ...
    def read_all(self) -> list[ViewRow]: ...
    def write(self, rows: list[ViewRow], tracking: Tracking) -> None: ...
    def clear(self, tracking_name: str) -> None: ...
    def max_tracking_id(self, application_name: str) -> int | None: ...


def row_from(values: Any) -> ViewRow:
    return ViewRow(
        str(values[0]),
        str(values[1]),
        str(values[2]),
        bytes(values[3]),
        bytes(values[4]),
        bytes(values[5]),
    )


class SQLiteViewStore(SQLiteTrackingRecorder):
    def construct_create_table_statements(self) -> list[str]:
        return [
            *super().construct_create_table_statements(),
            f"CREATE TABLE IF NOT EXISTS {VIEW_TABLE} ("
            "installation_id TEXT PRIMARY KEY, app TEXT, environment TEXT, "
            "state BLOB, status BLOB, history BLOB)",
        ]

    def read(self, installation_id: str) -> ViewRow | None:
        with self.datastore.transaction(commit=False) as c:
            c.execute(_SELECT_ONE, (installation_id,))
            found = c.fetchone()
        return row_from(tuple(found)) if found else None

    def read_all(self) -> list[ViewRow]:
        with self.datastore.transaction(commit=False) as c:
            c.execute(_SELECT_ALL)
            return [row_from(tuple(r)) for r in c.fetchall()]

    def write(self, rows: list[ViewRow], tracking: Tracking) -> None:
        with self.datastore.transaction(commit=True) as c:
            for row in rows:
                c.execute(
                    _UPSERT,
                    (
                        row.installation_id,
                        row.app,
                        row.environment,
                        row.state,
                        row.status,
                        row.history,
                    ),
                )
            self._insert_tracking(c, tracking)

    def clear(self, tracking_name: str) -> None:
        with self.datastore.transaction(commit=True) as c:
            c.execute(_DELETE_ALL)
            c.execute("DELETE FROM tracking WHERE application_name = ?", (tracking_name,))
