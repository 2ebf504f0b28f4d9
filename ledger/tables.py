"""Chassis's own tables beside eventsourcing's, in the ledger's database.

The Merkle log, checkpoints, receipts and the export outbox are derived from
the events (never evidence themselves) but must live where the ledger lives,
so a shared PostgreSQL ledger shares them too. ``SideTables`` runs portable
SQL through the ledger recorder's own datastore: write statements with ``?``
placeholders and ``{name}`` for table names; for PostgreSQL the placeholders
become ``%s`` and names are qualified with the ledger's schema. Portable
types only: ``INTEGER``/``BIGINT``, ``TEXT``, ``BLOB`` (``bytea`` on
PostgreSQL, written ``{blob}``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

from ledger.application import Ledger
from ledger.storage import DDL_XACT_LOCK, ddl_lock_key


class Cursor(Protocol):
    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any: ...
    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...
    def fetchone(self) -> Sequence[Any] | None: ...
    def fetchall(self) -> list[Sequence[Any]]: ...


class _Portable:
    """Rewrites portable SQL for the underlying cursor."""

    def __init__(self, cursor: Any, tables: SideTables) -> None:
        self._cursor = cursor
        self._tables = tables

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._cursor.execute(self._tables.sql(sql), tuple(params))

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """One statement for many rows (one round trip where the driver can)."""
        if rows:
            self._cursor.executemany(self._tables.sql(sql), [tuple(r) for r in rows])

    def fetchone(self) -> Sequence[Any] | None:
        row = self._cursor.fetchone()
        return None if row is None else _values(row)

    def fetchall(self) -> list[Sequence[Any]]:
        return [_values(r) for r in self._cursor.fetchall()]


def _values(row: Any) -> Sequence[Any]:
    """psycopg's DictRow (eventsourcing's row factory) or a sqlite3.Row, as a tuple."""
    if isinstance(row, dict):
        return tuple(bytes(v) if isinstance(v, memoryview) else v for v in row.values())
    return tuple(bytes(v) if isinstance(v, memoryview) else v for v in row)


class SideTables:
    def __init__(self, ledger: Ledger) -> None:
        self.kind = ledger.config.kind
        self.schema = ledger.config.schema
        self.datastore: Any = ledger.recorder.datastore  # type: ignore[attr-defined]
        self.config = ledger.config

    def sql(self, portable: str) -> str:
        if self.kind == "sqlite":
            return portable.replace("{blob}", "BLOB").replace("{", "").replace("}", "")
        text = portable.replace("{blob}", "bytea").replace("?", "%s")
        out, rest = [], text
        while "{" in rest:
            before, _, after = rest.partition("{")
            name, _, rest = after.partition("}")
            out.append(f'{before}"{self.schema}"."{name}"')
        out.append(rest)
        return "".join(out)

    @contextmanager
    def transaction(self, *, commit: bool = True) -> Iterator[Cursor]:
        with self.datastore.transaction(commit=commit) as cursor:
            yield _Portable(cursor, self)

    def create(self, *statements: str) -> None:
        """``CREATE TABLE IF NOT EXISTS …`` statements, once per database
        (under the DDL advisory lock on PostgreSQL, like every other table)."""

        if self.kind == "postgresql":
            names = re.findall(r"CREATE TABLE IF NOT EXISTS \{(\w+)\}", " ".join(statements))
            if names and self._all_exist(names):
                return
        with self.datastore.transaction(commit=True) as cursor:
            if self.kind == "postgresql":  # on the pooled connection, until commit
                cursor.execute(DDL_XACT_LOCK, (ddl_lock_key(self.schema),))
            portable = _Portable(cursor, self)
            for statement in statements:
                portable.execute(statement)

    def _all_exist(self, names: Sequence[str]) -> bool:
        """Whether every table in ``names`` is there (one round trip)."""
        qualified = [f'"{self.schema}"."{name}"' for name in names]
        with self.datastore.transaction(commit=False) as cursor:
            cursor.execute(
                "SELECT bool_and(to_regclass(n) IS NOT NULL) AS found FROM unnest(%s::text[]) n",
                (qualified,),
            )
            row = cursor.fetchone()
        return bool(row and _values(row)[0])
