"""Where the ledger lives: a SQLite file by default, PostgreSQL when shared.

``StorageConfig.from_url`` accepts ``sqlite:///ABS/PATH``, a plain file path,
or ``postgresql://USER[:PASSWORD]@HOST[:PORT]/DB?schema=NAME[&connect_timeout=S]``.
Problems are found before eventsourcing is involved, so each gets one clear
line; a URL that is malformed or incomplete is a configuration error
(:class:`~ledger.errors.LedgerURLError`, exit 3). Passwords never appear in
messages or ``repr``.

A PostgreSQL URL must name its schema: without one every workspace pointed at
the database would share ``public``, and one that was never initialised there
would read an empty ledger instead of failing.

Only ``open_ledger(..., create=True)`` (``chassis init``) creates a schema or
the ledger's tables. Any other open first checks that the ledger's event
table is there and otherwise fails with "no ledger at URL" (exit 4), having
created nothing.

``connect_timeout`` (whole seconds, default :data:`POSTGRES_CONNECT_TIMEOUT_S`)
bounds how long the ledger may stay silent: a connection attempt, a
statement sent to a server that stopped answering, and the driver's retries
together (:mod:`ledger.postgres`), so an unreachable or vanished server
fails the command (exit 4) within about twice that.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

from ledger.errors import LedgerURLError, StorageError

if TYPE_CHECKING:
    from ledger.application import Ledger
    from ledger.keys import KeyPair

T = TypeVar("T")

SQLITE_MAGIC = b"SQLite format 3\x00"
POSTGRES_CONNECT_TIMEOUT_S = 5
CONNECT_TIMEOUT_RANGE = (2, 300)
"""libpq waits at least 2 s for a connection, whatever it is told."""
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
DDL_XACT_LOCK = "SELECT pg_advisory_xact_lock(hashtext(%s))"
"""Taken first in a transaction that creates tables, with
:func:`ddl_lock_key`: it waits for any other process's DDL on
the schema (and for :meth:`StorageConfig.with_ddl_lock`) and is released at
commit."""


def ddl_lock_key(schema: str) -> str:
    """The advisory lock key that serialises a schema's DDL."""
    return f"chassis:{schema}"


POSTGRES_HANDOVER = "POSTGRES_HANDOVER"
"""The ledger factory's environment key that names a connection handed over
to its pool (:func:`ledger.postgres.handed_over`)."""
EVENTS_TABLES = {"sqlite": "stored_events", "postgresql": "ledger_events"}
"""The ledger's event table per backend (eventsourcing's names): its presence
is what "a ledger is here" means."""


@dataclass(frozen=True)
class StorageConfig:
    kind: str  # "sqlite" or "postgresql"
    path: Path | None = None
    host: str = ""
    port: int = 5432
    user: str = ""
    password: str = field(default="", repr=False)
    dbname: str = ""
    schema: str = "public"
    connect_timeout: int = POSTGRES_CONNECT_TIMEOUT_S
    """Seconds (PostgreSQL): see the module's docstring."""

    @classmethod
    def from_url(cls, url: str) -> StorageConfig:
        """Parse a ledger URL. Raises ``StorageError`` saying what was expected."""
        if url.startswith(("postgresql://", "postgres://")):
            return cls._postgres(url)
        if url.startswith("sqlite:"):
            rest = url.removeprefix("sqlite:")
            if not rest.startswith("///") or not rest.strip("/"):
                raise LedgerURLError(f"ledger URL {url!r}: expected sqlite:///ABSOLUTE/PATH")
            return cls(kind="sqlite", path=Path("/" + rest.lstrip("/")))
        if "://" in url:
            raise LedgerURLError(
                f"ledger URL {redact_url(url)!r}: expected sqlite:///PATH or "
                "postgresql://USER@HOST:PORT/DB?schema=NAME"
            )
        return cls(kind="sqlite", path=Path(url).absolute())

    @classmethod
    def _postgres(cls, url: str) -> StorageConfig:
        parts = urlsplit(url)
        try:
            port = parts.port or 5432
        except ValueError:
            raise LedgerURLError(f"ledger URL {redact_url(url)!r}: port is not a number") from None
        dbname = parts.path.lstrip("/")
        if not parts.hostname or not dbname:
            raise LedgerURLError(
                f"ledger URL {redact_url(url)!r}: expected postgresql://USER@HOST:PORT/DB?schema=NAME"
            )
        query = parse_qs(parts.query, keep_blank_values=True)
        if not query.get("schema", [""])[-1]:
            kept = [(k, v[-1]) for k, v in query.items() if k != "schema"]
            example = (
                redact_url(url.split("?", 1)[0])
                + "?"
                + urlencode([*kept, ("schema", "chassis_prod")])
            )
            raise LedgerURLError(
                f"ledger URL {redact_url(url)!r} names no schema: add ?schema=NAME "
                f"(one per ledger, a lowercase SQL identifier), e.g. {example}"
            )
        schema = query["schema"][-1]
        if not _SCHEMA_NAME.match(schema):
            raise LedgerURLError(
                f"ledger URL schema {schema!r}: expected a lowercase SQL identifier"
            )
        timeout_text = query.get("connect_timeout", [str(POSTGRES_CONNECT_TIMEOUT_S)])[-1]
        low, high = CONNECT_TIMEOUT_RANGE
        if not re.fullmatch(r"[0-9]{1,4}", timeout_text) or not low <= int(timeout_text) <= high:
            raise LedgerURLError(
                f"ledger URL connect_timeout {timeout_text!r}: expected whole seconds {low}-{high}"
            )
        return cls(
            kind="postgresql",
            host=parts.hostname,
            port=port,
            user=unquote(parts.username or "postgres"),
            password=unquote(parts.password or ""),
            dbname=dbname,
            schema=schema,
            connect_timeout=int(timeout_text),
        )

    def describe(self) -> str:
        """Where the ledger is, safe to print."""
        if self.kind == "sqlite":
            return f"sqlite:///{str(self.path).lstrip('/')}"
        return (
            f"postgresql://{self.user}@{self.host}:{self.port}/{self.dbname}?schema={self.schema}"
        )

    def url(self) -> str:
        """A URL that opens this ledger again, never with a password (what a
        workspace may keep): :meth:`describe` plus a non-default connect_timeout."""
        if self.kind == "postgresql" and self.connect_timeout != POSTGRES_CONNECT_TIMEOUT_S:
            return f"{self.describe()}&connect_timeout={self.connect_timeout}"
        return self.describe()

    def eventsourcing_env(self) -> dict[str, str]:
        if self.kind == "sqlite":
            return {
                "PERSISTENCE_MODULE": "eventsourcing.sqlite",
                "SQLITE_DBNAME": str(self.path),
                "SQLITE_LOCK_TIMEOUT": "30",
            }
        return {
            "PERSISTENCE_MODULE": "ledger.postgres:LedgerPostgresFactory",
            "POSTGRES_DBNAME": self.dbname,
            "POSTGRES_HOST": self.host,
            "POSTGRES_PORT": str(self.port),
            "POSTGRES_USER": self.user,
            "POSTGRES_PASSWORD": self.password,
            "POSTGRES_SCHEMA": self.schema,
            "POSTGRES_CONNECT_TIMEOUT": str(self.connect_timeout),
            # One connection kept open; more only while threads need them
            # at once (max overflow). eventsourcing's default keeps five,
            # which a one-shot command opens and never uses.
            "POSTGRES_POOL_SIZE": "1",
        }

    def preflight(self, *, create: bool) -> None:
        """Check the store is what it claims to be; create the schema if asked.
        Without ``create``, also check the ledger is there: its event table
        exists (else ``StorageError`` "no ledger at …"; nothing is created)."""
        if self.kind == "sqlite":
            self._preflight_sqlite(create=create)
        else:
            self.postgres_preflight(create=create).close()

    def postgres_preflight(self, *, create: bool) -> Any:
        """:meth:`preflight` on a PostgreSQL connection that is left open, so
        that the ledger's pool can take it over (:func:`ledger.postgres.handed_over`)
        instead of opening its own: a server-side session costs more than
        the checks on it. The caller closes it if nothing takes it."""
        conn = self._postgres_connection()
        try:
            self._guarded(lambda: self._check_schema(conn, create=create))
        except BaseException:
            conn.close()
            raise
        return conn

    def _preflight_sqlite(self, *, create: bool) -> None:
        assert self.path is not None
        path = self.path
        if not path.exists():
            if not create:
                raise self._no_ledger("the file does not exist")
            if not path.parent.is_dir():
                raise StorageError(f"{path.parent}: directory does not exist")
            return
        if path.is_dir():
            raise StorageError(f"{path}: is a directory, expected a SQLite database file")
        try:
            with path.open("rb") as handle:
                header = handle.read(len(SQLITE_MAGIC))
        except OSError as e:
            raise StorageError(f"{path}: cannot read ({e.strerror})") from None
        if header and header != SQLITE_MAGIC:
            raise StorageError(f"{path}: not a SQLite database")
        if not create and not self._sqlite_has_ledger(path):
            raise self._no_ledger("the file holds no ledger tables")

    def _sqlite_has_ledger(self, path: Path) -> bool:
        """Whether the ledger's event table exists (read only: creates nothing)."""
        import sqlite3

        try:
            conn = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, timeout=30)
            try:
                row = conn.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                    (EVENTS_TABLES["sqlite"],),
                ).fetchone()
            finally:
                conn.close()
        except sqlite3.Error as e:
            raise StorageError(f"{path}: cannot read as a SQLite database ({e})") from None
        return row is not None

    def _no_ledger(self, why: str) -> StorageError:
        return StorageError(
            f"no ledger at {self.describe()}: {why} (run 'chassis init' to create one "
            "there, or check the ledger URL)"
        )

    def _with_postgres(self, action: Callable[[Any], T]) -> T:
        """Run ``action`` on a fresh connection; errors become one clear line."""
        conn = self._postgres_connection()
        with conn:
            return self._guarded(lambda: action(conn))

    def _postgres_connection(self) -> Any:
        """A new autocommit connection with the ledger's connection options."""
        try:
            import psycopg

            from ledger.postgres import connection_options
        except ImportError:
            raise StorageError(
                "PostgreSQL ledger needs the 'postgres' extra: "
                "pip install 'chassis-ledger[postgres]'"
            ) from None
        return self._guarded(
            lambda: psycopg.connect(
                host=self.host,
                port=self.port,
                user=self.user,
                password=self.password or None,
                dbname=self.dbname,
                autocommit=True,
                **connection_options(self.connect_timeout),
            )
        )

    def _guarded(self, action: Callable[[], T]) -> T:
        """``action()``, its PostgreSQL errors as one clear line."""
        import psycopg

        try:
            return action()
        except psycopg.Error as e:
            first_line = (str(e).strip().splitlines() or ["connection failed"])[0]
            first_line = first_line.replace(self.password, "***") if self.password else first_line
            raise StorageError(f"cannot reach PostgreSQL at {self._where}: {first_line}") from None

    @property
    def _where(self) -> str:
        return f"{self.host}:{self.port}/{self.dbname}"

    def _check_schema(self, conn: Any, *, create: bool) -> None:
        from psycopg import sql

        exists = conn.execute(
            "SELECT 1 FROM information_schema.schemata WHERE schema_name = %s", (self.schema,)
        ).fetchone()
        if exists is None:
            if not create:
                raise self._no_ledger(f"schema {self.schema!r} does not exist")
            conn.execute(
                sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema))
            )
        elif not create:
            table = f"{self.schema}.{EVENTS_TABLES['postgresql']}"
            row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()
            if not row[0]:
                raise self._no_ledger(f"schema {self.schema!r} holds no ledger tables")

    def open_postgres(self, build: Callable[[bool], T], conn: Any) -> T:
        """Call ``build(create_tables)``; table creation is serialised across
        processes by an advisory lock, since concurrent DDL on the same
        catalog rows fails ("tuple concurrently updated"). The checks run on
        ``conn`` (the pre-flight's, before the pool takes it)."""

        table = EVENTS_TABLES["postgresql"]
        if self.postgres_table_exists(table, conn):
            return build(False)
        return self.with_ddl_lock(lambda: build(not self.postgres_table_exists(table, conn)))

    def postgres_table_exists(self, table: str, conn: Any) -> bool:
        row = self._guarded(
            lambda: conn.execute(
                "SELECT to_regclass(%s) IS NOT NULL", (f"{self.schema}.{table}",)
            ).fetchone()
        )
        return bool(row[0])

    def with_ddl_lock(self, action: Callable[[], T]) -> T:
        """Run ``action`` holding this schema's advisory lock (DDL from two
        processes at once fails with "tuple concurrently updated"), on a
        connection of its own: for DDL that runs in transactions of its own
        (eventsourcing's tables at ``init``). DDL run in one transaction
        takes :data:`DDL_XACT_LOCK` in it instead, on the connection it has."""

        key = ddl_lock_key(self.schema)

        def locked(conn: Any) -> T:
            conn.execute("SELECT pg_advisory_lock(hashtext(%s))", (key,))
            try:
                return action()
            finally:
                conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (key,))

        return self._with_postgres(locked)


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def open_ledger(config: StorageConfig, signer: KeyPair | None, *, create: bool = False) -> Ledger:
    """Open the ledger store. Raises ``StorageError`` with one clear line.

    Only with ``create`` (``chassis init``) are the schema and the ledger's
    tables made; otherwise a store without the ledger's tables is refused
    ("no ledger at …"), with or without ``signer``, before anything is
    created. (On a ledger that exists, derived tables — views, the Merkle
    log, receipts — are still created on first use.)"""
    from eventsourcing.persistence import PersistenceError

    from ledger.application import Ledger

    try:
        if config.kind == "postgresql":
            return _open_postgres_ledger(config, signer, create=create)
        config.preflight(create=create)  # without create: the ledger's tables are there
        return Ledger(config, signer)
    except (PersistenceError, OSError) as e:
        raise StorageError(f"{config.describe()}: cannot open ledger ({e})") from None


def _open_postgres_ledger(config: StorageConfig, signer: KeyPair | None, *, create: bool) -> Ledger:
    """The pre-flight's connection becomes the ledger pool's first: one
    server session per command where there were two (four for ``init``)."""
    from ledger.application import Ledger
    from ledger.postgres import handed_over

    conn = config.postgres_preflight(create=create)
    with handed_over(conn) as token:
        if not create:  # the pre-flight saw the ledger's tables
            return Ledger(config, signer, create_tables=False, handover=token)
        return config.open_postgres(
            lambda create_tables: Ledger(
                config, signer, create_tables=create_tables, handover=token
            ),
            conn,
        )
