"""Where the ledger lives: a SQLite file by default, PostgreSQL when shared.

``StorageConfig.from_url`` accepts ``sqlite:///ABS/PATH``, a plain file path,
or ``postgresql://USER[:PASSWORD]@HOST[:PORT]/DB[?schema=NAME][&connect_timeout=S]``.
Problems are found before eventsourcing is involved, so each gets one clear
line. Passwords never appear in messages or ``repr``.

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
from urllib.parse import parse_qs, unquote, urlsplit

from ledger.errors import StorageError

if TYPE_CHECKING:
    from ledger.application import Ledger
    from ledger.keys import KeyPair

T = TypeVar("T")

SQLITE_MAGIC = b"SQLite format 3\x00"
POSTGRES_CONNECT_TIMEOUT_S = 5
CONNECT_TIMEOUT_RANGE = (2, 300)
"""libpq waits at least 2 s for a connection, whatever it is told."""
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


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
                raise StorageError(f"ledger URL {url!r}: expected sqlite:///ABSOLUTE/PATH")
            return cls(kind="sqlite", path=Path("/" + rest.lstrip("/")))
        if "://" in url:
            raise StorageError(
                f"ledger URL {redact_url(url)!r}: expected sqlite:///PATH or postgresql://USER@HOST:PORT/DB"
            )
        return cls(kind="sqlite", path=Path(url).absolute())

    @classmethod
    def _postgres(cls, url: str) -> StorageConfig:
        parts = urlsplit(url)
        try:
            port = parts.port or 5432
        except ValueError:
            raise StorageError(f"ledger URL {redact_url(url)!r}: port is not a number") from None
        dbname = parts.path.lstrip("/")
        if not parts.hostname or not dbname:
            raise StorageError(
                f"ledger URL {redact_url(url)!r}: expected postgresql://USER@HOST:PORT/DB"
            )
        query = parse_qs(parts.query)
        schema = query.get("schema", ["public"])[-1]
        if not _SCHEMA_NAME.match(schema):
            raise StorageError(f"ledger URL schema {schema!r}: expected a lowercase SQL identifier")
        timeout_text = query.get("connect_timeout", [str(POSTGRES_CONNECT_TIMEOUT_S)])[-1]
        low, high = CONNECT_TIMEOUT_RANGE
        if not re.fullmatch(r"[0-9]{1,4}", timeout_text) or not low <= int(timeout_text) <= high:
            raise StorageError(
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
        }

    def preflight(self, *, create: bool) -> None:
        """Check the store is what it claims to be; create the schema if asked."""
        if self.kind == "sqlite":
            self._preflight_sqlite(create=create)
        else:
            self._with_postgres(lambda conn: self._check_schema(conn, create=create))

    def _preflight_sqlite(self, *, create: bool) -> None:
        assert self.path is not None
        path = self.path
        if not path.exists():
            if not create:
                raise StorageError(f"{path}: no ledger database here (run 'chassis init')")
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

    def _with_postgres(self, action: Callable[[Any], T]) -> T:
        """Run ``action`` on a fresh connection; errors become one clear line."""
        try:
            import psycopg

            from ledger.postgres import connection_options
        except ImportError:
            raise StorageError(
                "PostgreSQL ledger needs the 'postgres' extra: "
                "pip install 'chassis-ledger[postgres]'"
            ) from None
        try:
            with psycopg.connect(
                host=self.host,
                port=self.port,
                user=self.user,
                password=self.password or None,
                dbname=self.dbname,
                autocommit=True,
                **connection_options(self.connect_timeout),
            ) as conn:
                return action(conn)
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
                raise StorageError(
                    f"PostgreSQL {self._where}: schema {self.schema!r} does not exist "
                    "(run 'chassis init')"
                )
            conn.execute(
                sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema))
            )

    def open_postgres(self, build: Callable[[bool], T]) -> T:
        """Call ``build(create_tables)``; table creation is serialised across
        processes by an advisory lock, since concurrent DDL on the same
        catalog rows fails ("tuple concurrently updated")."""

        table = "ledger_events"
        if self.postgres_table_exists(table):
            return build(False)
        return self.with_ddl_lock(lambda: build(not self.postgres_table_exists(table)))

    def postgres_table_exists(self, table: str) -> bool:
        def exists(conn: Any) -> bool:
            row = conn.execute(
                "SELECT to_regclass(%s) IS NOT NULL", (f"{self.schema}.{table}",)
            ).fetchone()
            return bool(row[0])

        return self._with_postgres(exists)

    def with_ddl_lock(self, action: Callable[[], T]) -> T:
        """Run ``action`` holding this schema's advisory lock (DDL from two
        processes at once fails with "tuple concurrently updated")."""

        def locked(conn: Any) -> T:
            conn.execute("SELECT pg_advisory_lock(hashtext(%s))", (f"chassis:{self.schema}",))
            try:
                return action()
            finally:
                conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (f"chassis:{self.schema}",))

        return self._with_postgres(locked)


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def open_ledger(config: StorageConfig, signer: KeyPair | None, *, create: bool = False) -> Ledger:
    """Open the ledger store. Raises ``StorageError`` with one clear line."""
    from eventsourcing.persistence import PersistenceError

    from ledger.application import Ledger

    config.preflight(create=create)
    try:
        if config.kind == "postgresql":
            return config.open_postgres(
                lambda create_tables: Ledger(config, signer, create_tables=create_tables)
            )
        return Ledger(config, signer)
    except (PersistenceError, OSError) as e:
        raise StorageError(f"{config.describe()}: cannot open ledger ({e})") from None
