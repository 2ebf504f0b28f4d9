"""Direct SQL on the stored rows, as an attacker with database access would."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ledger.storage import StorageConfig


@dataclass(frozen=True)
class Row:
    seq: int
    originator_id: str
    version: int
    topic: str
    state: bytes


class RawStore:
    def __init__(self, url: str) -> None:
        self.config = StorageConfig.from_url(url)
        self.url = url

    @contextmanager
    def _cursor(self) -> Iterator[Any]:
        if self.config.kind == "sqlite":
            conn = sqlite3.connect(str(self.config.path))
            try:
                yield conn
                conn.commit()
            finally:
                conn.close()
        else:
            import psycopg

            base = self.url.split("?")[0]
            with psycopg.connect(base, autocommit=False) as pg:
                yield pg
                pg.commit()

    @property
    def _table(self) -> str:
        if self.config.kind == "sqlite":
            return "stored_events"
        schema = parse_qs(urlsplit(self.url).query)["schema"][0]
        return f"{schema}.ledger_events"

    @property
    def _seq(self) -> str:
        return "rowid" if self.config.kind == "sqlite" else "notification_id"

    def _p(self, sql: str) -> str:
        return sql if self.config.kind == "sqlite" else sql.replace("?", "%s")

    def rows(self) -> list[Row]:
        with self._cursor() as c:
            result = c.execute(
                f"SELECT {self._seq}, originator_id, originator_version, topic, state "
                f"FROM {self._table} ORDER BY {self._seq}"
            ).fetchall()
        return [Row(r[0], str(r[1]), r[2], r[3], bytes(r[4])) for r in result]

    def set_state(self, seq: int, state: bytes) -> None:
        with self._cursor() as c:
            c.execute(
                self._p(f"UPDATE {self._table} SET state=? WHERE {self._seq}=?"), (state, seq)
            )

    def set_topic(self, seq: int, topic: str) -> None:
        with self._cursor() as c:
            c.execute(
                self._p(f"UPDATE {self._table} SET topic=? WHERE {self._seq}=?"), (topic, seq)
            )

    def set_version(self, seq: int, version: int) -> None:
        with self._cursor() as c:
            c.execute(
                self._p(f"UPDATE {self._table} SET originator_version=? WHERE {self._seq}=?"),
                (version, seq),
            )

    def delete(self, seq: int) -> None:
        with self._cursor() as c:
            c.execute(self._p(f"DELETE FROM {self._table} WHERE {self._seq}=?"), (seq,))

    def swap_versions(self, seq_a: int, seq_b: int) -> None:
        rows = {r.seq: r for r in self.rows()}
        a, b = rows[seq_a], rows[seq_b]
        with self._cursor() as c:
            update = self._p(f"UPDATE {self._table} SET originator_version=? WHERE {self._seq}=?")
            c.execute(update, (-1, seq_a))
            c.execute(update, (a.version, seq_b))
            c.execute(update, (b.version, seq_a))

    def refuse_inserts(self) -> None:
        """Make the store refuse every new record (a trigger), as a store
        that fails one write and then recovers: :meth:`allow_inserts`."""
        with self._cursor() as c:
            if self.config.kind == "sqlite":
                c.execute(
                    f"CREATE TRIGGER refuse_inserts BEFORE INSERT ON {self._table} "
                    "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
                )
            else:
                schema = self._table.split(".")[0]
                c.execute(
                    f"CREATE FUNCTION {schema}.refuse_inserts() RETURNS trigger AS "
                    "$$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$ LANGUAGE plpgsql"
                )
                c.execute(
                    f"CREATE TRIGGER refuse_inserts BEFORE INSERT ON {self._table} "
                    f"FOR EACH ROW EXECUTE FUNCTION {schema}.refuse_inserts()"
                )

    def allow_inserts(self) -> None:
        with self._cursor() as c:
            if self.config.kind == "sqlite":
                c.execute("DROP TRIGGER refuse_inserts")
            else:
                c.execute(f"DROP TRIGGER refuse_inserts ON {self._table}")
