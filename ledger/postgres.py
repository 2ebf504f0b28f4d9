"""The PostgreSQL ledger's connections: eventsourcing's PostgreSQL
infrastructure with every wait bounded, so that a server which cannot be
reached, or goes away in the middle of a command, surfaces as a storage
error (exit 4) within seconds instead of after the driver's defaults.

Imported only for a PostgreSQL ledger (psycopg is an optional dependency):
:meth:`ledger.storage.StorageConfig.eventsourcing_env` names
:class:`LedgerPostgresFactory` as the persistence module.

Where the time went before: eventsourcing's recorders try each statement
:data:`RECORDER_ATTEMPTS` times, :data:`RECORDER_PAUSE_S` apart, and each try
waited for a pooled connection as long as ``POSTGRES_CONNECT_TIMEOUT`` (5 s):
about 45 s once the pool's connections were gone. Its pool's own connections
had no libpq ``connect_timeout`` (psycopg's default is 130 s) and no TCP
keepalives, so a server that vanished silently left a statement waiting on
the kernel's retransmissions (many minutes).
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from eventsourcing.persistence import OperationalError
from eventsourcing.postgres import PostgresFactory
from eventsourcing.utils import Environment, EnvType
from psycopg_pool import PoolTimeout

from ledger.storage import POSTGRES_HANDOVER

RECORDER_ATTEMPTS = 10
"""How often eventsourcing's PostgreSQL recorders try a statement (``@retry``)."""
RECORDER_PAUSE_S = 0.2
"""Their pause between tries."""
MIN_POOL_WAIT_S = 0.2

_held: dict[str, Any] = {}
_held_lock = threading.Lock()


@contextmanager
def handed_over(conn: Any) -> Iterator[str]:
    """Offer ``conn`` (open, idle, made with :func:`connection_options`) to
    the pool of a ledger built inside the block, under the token it yields
    (the factory's :data:`ledger.storage.POSTGRES_HANDOVER` setting). A
    connection no pool took is closed when the block ends."""
    token = secrets.token_hex(8)
    with _held_lock:
        _held[token] = conn
    try:
        yield token
    finally:
        with _held_lock:
            left = _held.pop(token, None)
        if left is not None:
            left.close()


def _take(token: str) -> Any:
    with _held_lock:
        return _held.pop(token, None)


class _Adopting:
    """Stands in for the pool's connection class: its first ``connect``
    returns the connection handed over (the pool configures it as one of its
    own); later ones, or one whose session has ended, connect anew."""

    def __init__(self, connection_class: Any, conn: Any) -> None:
        self.connection_class = connection_class
        self.conn: Any = conn

    def connect(self, conninfo: str = "", **kwargs: Any) -> Any:
        conn, self.conn = self.conn, None
        if conn is not None and not conn.closed:
            conn.row_factory = kwargs.get("row_factory", conn.row_factory)
            return conn
        if conn is not None:
            conn.close()
        return self.connection_class.connect(conninfo, **kwargs)


def connection_options(connect_timeout: int) -> dict[str, Any]:
    """libpq parameters for every ledger connection (pooled or not):
    ``connect_timeout`` bounds a connection attempt; TCP keepalives and
    ``tcp_user_timeout`` (ms) close a connection whose server stopped
    answering, so a statement on it fails instead of waiting on the kernel."""
    return {
        "connect_timeout": connect_timeout,
        "keepalives": 1,
        "keepalives_idle": connect_timeout,
        "keepalives_interval": 1,
        "keepalives_count": 3,
        "tcp_user_timeout": connect_timeout * 1000,
    }


def pool_wait(connect_timeout: int) -> float:
    """How long one try waits for a pooled connection: the recorders' tries
    together wait about ``connect_timeout`` (plus their pauses). A slow but
    healthy server is unaffected: the pool keeps connecting in the background
    and the next try takes the connection."""
    return max(MIN_POOL_WAIT_S, connect_timeout / RECORDER_ATTEMPTS)


class LedgerPostgresFactory(PostgresFactory):
    """eventsourcing's ``PostgresFactory`` whose pool connects with
    :func:`connection_options` and waits :func:`pool_wait` per try. It keeps
    one connection (``POSTGRES_POOL_SIZE``), opened here once the options are
    set, so every connection it makes has them."""

    def __init__(self, env: Environment | EnvType | None) -> None:
        super().__init__(env)
        connect_timeout = int(self.env.get(self.POSTGRES_CONNECT_TIMEOUT) or "5")
        pool = self.datastore.pool
        kwargs: Any = pool.kwargs
        if not isinstance(kwargs, dict):  # eventsourcing passes a dict
            raise TypeError(f"unexpected connection pool kwargs: {type(kwargs).__name__}")
        kwargs.update(connection_options(connect_timeout))
        if not kwargs.get("password"):
            # An empty password would be sent as ``password=''``, which keeps
            # libpq from reading PGPASSWORD: a URL without one (as a
            # workspace keeps it) leaves it to PGPASSWORD or ~/.pgpass.
            kwargs.pop("password", None)
        pool.timeout = pool_wait(connect_timeout)
        token = self.env.get(POSTGRES_HANDOVER)
        adopted = _take(token) if token else None
        if adopted is not None:
            adopting: Any = _Adopting(pool.connection_class, adopted)
            pool.connection_class = adopting
        # Open it now, waiting for its first connection as long as a
        # connection attempt may take: under load a healthy server can take
        # longer than one try's pool_wait to accept, and the reads that open
        # the ledger would fail on it. (Not on first use: psycopg's pool may
        # not be opened with a wait from several threads at once.)
        try:
            pool.open(wait=True, timeout=float(connect_timeout))
        except PoolTimeout as e:
            raise OperationalError(str(e)) from None
