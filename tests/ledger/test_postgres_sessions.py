"""A PostgreSQL ledger opens one server session per command: the
pre-flight's connection becomes the pool's (``ledger.postgres.handed_over``).
A session costs the server a process and its catalog caches, more than the
checks made on it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from ledger.keys import KeyPair
from ledger.storage import StorageConfig, open_ledger

pytestmark = pytest.mark.postgres


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The backend pid of every connection opened from here on."""
    import psycopg

    opened: list[int] = []
    original = psycopg.Connection.connect.__func__  # type: ignore[attr-defined]

    def counting(cls: Any, *args: Any, **kwargs: Any) -> Any:
        conn = original(cls, *args, **kwargs)
        opened.append(conn.info.backend_pid)
        return conn

    monkeypatch.setattr(psycopg.Connection, "connect", classmethod(counting))
    monkeypatch.setattr(psycopg, "connect", psycopg.Connection.connect)
    yield opened


def pool_backend(ledger: Any) -> int:
    with ledger.recorder.datastore.get_connection() as conn:
        return int(conn.info.backend_pid)


def test_opening_a_ledger_uses_the_pre_flights_session(
    postgres_url: str, root_key: KeyPair, connects: list[int]
) -> None:
    config = StorageConfig.from_url(postgres_url)
    open_ledger(config, root_key, create=True).close()
    made_by_init = list(connects)
    connects.clear()

    ledger = open_ledger(config, root_key)
    try:
        assert len(connects) == 1, connects
        assert pool_backend(ledger) == connects[0]
        assert ledger.max_seq() == 0  # reads work on the adopted connection
    finally:
        ledger.close()
    # init: the pre-flight's (the pool's) and one holding the DDL lock
    assert len(made_by_init) == 2, made_by_init


def test_a_connection_no_pool_takes_is_closed(postgres_url: str) -> None:
    from ledger.postgres import handed_over

    config = StorageConfig.from_url(postgres_url)
    conn = config.postgres_preflight(create=True)
    with handed_over(conn):
        pass
    assert conn.closed


def test_a_handed_over_session_that_ended_is_replaced(
    postgres_url: str, root_key: KeyPair, monkeypatch: pytest.MonkeyPatch, connects: list[int]
) -> None:
    config = StorageConfig.from_url(postgres_url)
    open_ledger(config, root_key, create=True).close()
    preflight = StorageConfig.postgres_preflight

    def closed_at_once(self: StorageConfig, *, create: bool) -> Any:
        conn = preflight(self, create=create)
        conn.close()
        return conn

    monkeypatch.setattr(StorageConfig, "postgres_preflight", closed_at_once)
    connects.clear()
    ledger = open_ledger(config, root_key)
    try:
        assert len(connects) == 2 and pool_backend(ledger) == connects[1], connects
        assert ledger.max_seq() == 0
    finally:
        ledger.close()


def test_first_use_creates_side_tables_on_the_pooled_session(
    postgres_url: str, root_key: KeyPair, connects: list[int]
) -> None:
    from ledger.tables import SideTables

    config = StorageConfig.from_url(postgres_url)
    open_ledger(config, root_key, create=True).close()
    connects.clear()
    ledger = open_ledger(config, root_key)
    try:
        SideTables(ledger).create("CREATE TABLE IF NOT EXISTS {probe} (n INTEGER)")
        with SideTables(ledger).transaction() as c:
            c.execute("INSERT INTO {probe} (n) VALUES (?)", (1,))
        assert len(connects) == 1, connects  # no session of its own for the DDL lock
    finally:
        ledger.close()


def test_processes_creating_derived_tables_at_once_all_succeed(
    postgres_url: str, root_key: KeyPair
) -> None:
    """Concurrent DDL on one catalog fails ("tuple concurrently updated")
    unless serialised: the schema's lock, taken in each creating transaction."""
    import threading

    from ledger.tables import SideTables
    from projections.fold import open_views

    config = StorageConfig.from_url(postgres_url)
    open_ledger(config, root_key, create=True).close()
    ledgers = [open_ledger(config, root_key) for _ in range(4)]
    start = threading.Barrier(len(ledgers))
    failures: list[BaseException] = []

    def first_use(ledger: Any) -> None:
        try:
            start.wait(timeout=30)
            SideTables(ledger).create(
                "CREATE TABLE IF NOT EXISTS {race_a} (n INTEGER)",
                "CREATE TABLE IF NOT EXISTS {race_b} (n INTEGER)",
            )
            open_views(ledger)
        except BaseException as e:  # reported below
            failures.append(e)

    threads = [threading.Thread(target=first_use, args=(ledger,)) for ledger in ledgers]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    finally:
        for ledger in ledgers:
            ledger.close()
    assert not failures, failures
