"""The PostgreSQL view store (imported only for a PostgreSQL ledger, since
psycopg is an optional dependency)."""

from __future__ import annotations

from typing import Any

from eventsourcing.persistence import Tracking
from eventsourcing.postgres import PostgresTrackingRecorder
from psycopg.sql import SQL, Identifier

from projections.store import VIEW_TABLE, ViewRow, row_from


class PostgresViewStore(PostgresTrackingRecorder):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sql_create_statements.append(
            SQL(
                "CREATE TABLE IF NOT EXISTS {0}.{1} ("
                "installation_id text PRIMARY KEY, app text, environment text, "
                "state bytea, status bytea, history bytea)"
            ).format(Identifier(self.datastore.schema), Identifier(VIEW_TABLE))
        )

    def _table(self) -> Any:
        return SQL("{0}.{1}").format(Identifier(self.datastore.schema), Identifier(VIEW_TABLE))

    def read(self, installation_id: str) -> ViewRow | None:
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                SQL("SELECT * FROM {0} WHERE installation_id = %s").format(self._table()),
                (installation_id,),
            )
            found = c.fetchone()
        return row_from(_values(found)) if found else None

    def read_all(self) -> list[ViewRow]:
        with self.datastore.transaction(commit=False) as c:
            c.execute(SQL("SELECT * FROM {0} ORDER BY app, environment").format(self._table()))
            return [row_from(_values(r)) for r in c.fetchall()]

    def write(self, rows: list[ViewRow], tracking: Tracking) -> None:
        with self.datastore.transaction(commit=True) as c:
            for row in rows:
                c.execute(
                    SQL(
                        "INSERT INTO {0} VALUES (%s, %s, %s, %s, %s, %s) "
                        "ON CONFLICT (installation_id) DO UPDATE SET app = EXCLUDED.app, "
                        "environment = EXCLUDED.environment, state = EXCLUDED.state, "
                        "status = EXCLUDED.status, history = EXCLUDED.history"
                    ).format(self._table()),
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
            c.execute(SQL("DELETE FROM {0}").format(self._table()))
            c.execute(
                SQL("DELETE FROM {0}.{1} WHERE application_name = %s").format(
                    Identifier(self.datastore.schema), Identifier(self.tracking_table_name)
                ),
                (tracking_name,),
            )


def _values(found: Any) -> tuple[Any, ...]:
    if isinstance(found, dict):
        keys = ("installation_id", "app", "environment", "state", "status", "history")
        return tuple(found[k] for k in keys)
    return tuple(found)
