"""The PostgreSQL view store (imported only for a PostgreSQL ledger, since
psycopg is an optional dependency)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eventsourcing.persistence import Tracking
from eventsourcing.postgres import PostgresTrackingRecorder
from psycopg.sql import SQL, Composed, Identifier

from projections.store import VIEW_TABLE, ViewRow, row_from


class PostgresViewStore(PostgresTrackingRecorder):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sql_create_statements.append(
            SQL(
                "CREATE TABLE IF NOT EXISTS {0} ("
                "view text, key text, state bytea, doc bytea, PRIMARY KEY (view, key))"
            ).format(self._table())
        )

    def table_exists(self) -> bool:
        """Whether the view table is there, asked on the ledger's pooled
        connection (not a connection of its own: one fewer for the server to
        fork on every command that reads a view)."""
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                "SELECT to_regclass(%s) IS NOT NULL AS present",
                (f'"{self.datastore.schema}"."{VIEW_TABLE}"',),
            )
            found: Any = c.fetchone()
        if found is None:
            return False
        return bool(found["present"] if isinstance(found, dict) else found[0])

    def _table(self) -> Composed:
        return SQL("{0}.{1}").format(Identifier(self.datastore.schema), Identifier(VIEW_TABLE))

    def read(self, view: str, key: str) -> ViewRow | None:
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                SQL("SELECT key, state, doc FROM {0} WHERE view = %s AND key = %s").format(
                    self._table()
                ),
                (view, key),
            )
            found = c.fetchone()
        return row_from(_values(found)) if found else None

    def read_many(self, view: str, keys: Sequence[str]) -> dict[str, ViewRow]:
        """The stored rows of ``keys`` (those that exist), in one query."""
        if not keys:
            return {}
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                SQL("SELECT key, state, doc FROM {0} WHERE view = %s AND key = ANY(%s)").format(
                    self._table()
                ),
                (view, list(keys)),
            )
            rows = [row_from(_values(r)) for r in c.fetchall()]
        return {row.key: row for row in rows}

    def read_all(self, view: str) -> list[ViewRow]:
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                SQL("SELECT key, state, doc FROM {0} WHERE view = %s ORDER BY key").format(
                    self._table()
                ),
                (view,),
            )
            return [row_from(_values(r)) for r in c.fetchall()]

    def write(self, view: str, rows: list[ViewRow], tracking: Tracking) -> None:
        with self.datastore.transaction(commit=True) as c:
            if rows:
                c.executemany(
                    SQL(
                        "INSERT INTO {0} VALUES (%s, %s, %s, %s) ON CONFLICT (view, key) "
                        "DO UPDATE SET state = EXCLUDED.state, doc = EXCLUDED.doc"
                    ).format(self._table()),
                    [(view, row.key, row.state, row.doc) for row in rows],
                )
            self._insert_tracking(c, tracking)

    def clear(self, view: str, tracking_name: str) -> None:
        with self.datastore.transaction(commit=True) as c:
            c.execute(SQL("DELETE FROM {0} WHERE view = %s").format(self._table()), (view,))
            c.execute(
                SQL("DELETE FROM {0}.{1} WHERE application_name = %s").format(
                    Identifier(self.datastore.schema), Identifier(self.tracking_table_name)
                ),
                (tracking_name,),
            )


def _values(found: Any) -> tuple[Any, ...]:
    if isinstance(found, dict):
        return (found["key"], found["state"], found["doc"])
    return tuple(found)
