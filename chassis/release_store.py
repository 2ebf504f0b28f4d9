"""Where release bundles are kept beside the ledger, so that any operator
or CI runner joined to a shared ledger can deploy and roll back any recorded
release, not only the one who added it.

:func:`store_for` picks the store: ``[releases] store`` in ``chassis.toml``
(``ledger``, ``workspace`` or ``s3://…``, see :mod:`chassis.stack.store_url`),
else the ledger's database for a PostgreSQL ledger and none for SQLite.
:class:`SharedBundles` keeps them in the ledger's database;
:class:`chassis.s3_bundles.S3Bundles` in an S3-compatible object store.

Content-addressed and chunked (``chassis_bundles``: sha256, size, chunks;
``chassis_bundle_chunks``: sha256, index, bytes, 1 MiB each), written once
per sha256 in one transaction, and verified by sha256 whenever it is read
back into the workspace's store (``.chassis/bundles``), which stays the
cache every host step uploads from. A SQLite ledger is one machine's: its
bundles stay in the workspace store alone.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Protocol

from chassis.stack.spec import release_store
from chassis.stack.store_url import StoreURL
from chassis.workspace import Workspace
from ledger.application import Ledger
from ledger.tables import SideTables

CHUNK_BYTES = 1 << 20


def shared(ledger: Ledger) -> bool:
    """Whether this ledger is shared, so its bundles belong beside it."""
    return ledger.config.kind == "postgresql"


class BundleStore(Protocol):
    def describe(self) -> str: ...

    def put(self, sha256: str, path: Path) -> bool:
        """Store ``path`` (sha256 checked by the caller) unless it is there."""
        ...

    def fetch(self, sha256: str, dest: Path) -> str | None:
        """Write the bundle to ``dest`` if held and intact; else why not."""
        ...


def configured_store(ws: Workspace) -> StoreURL | None:
    """``[releases] store`` of the workspace's stack file, if it names one."""
    return release_store(ws.stack(), ws.stack_file)


def store_for(ledger: Ledger, ws: Workspace) -> BundleStore | None:
    """The store bundles of this workspace are kept in beside its own cache."""
    location = configured_store(ws)
    if location is None:
        return SharedBundles(ledger) if shared(ledger) else None
    if location.kind == "workspace":
        return None
    if location.kind == "ledger":
        return SharedBundles(ledger)
    from chassis.s3_bundles import S3Bundles  # boto3 loads only for such a store

    return S3Bundles(location)


class SharedBundles:
    def __init__(self, ledger: Ledger) -> None:
        self.config = ledger.config
        self.tables = SideTables(ledger)
        self.tables.create(
            "CREATE TABLE IF NOT EXISTS {chassis_bundles} (sha256 TEXT PRIMARY KEY, "
            "size BIGINT, chunks INTEGER)",
            "CREATE TABLE IF NOT EXISTS {chassis_bundle_chunks} (sha256 TEXT, idx INTEGER, "
            "data {blob}, PRIMARY KEY (sha256, idx))",
        )

    def describe(self) -> str:
        return "the shared ledger" if self.config.kind == "postgresql" else "the ledger"

    def has(self, sha256: str) -> bool:
        with self.tables.transaction(commit=False) as c:
            c.execute("SELECT 1 FROM {chassis_bundles} WHERE sha256 = ?", (sha256,))
            return c.fetchone() is not None

    def put(self, sha256: str, path: Path) -> bool:
        """Store ``path`` (whose sha256 the caller checked) unless it is there;
        returns whether it was written now."""
        if self.has(sha256):
            return False
        with self.tables.transaction(commit=True) as c:
            c.execute("SELECT 1 FROM {chassis_bundles} WHERE sha256 = ?", (sha256,))
            if c.fetchone() is not None:
                return False  # another writer got there first
            size, index = 0, 0
            with path.open("rb") as source:
                while chunk := source.read(CHUNK_BYTES):
                    c.execute(
                        "INSERT INTO {chassis_bundle_chunks} VALUES (?, ?, ?)",
                        (sha256, index, chunk),
                    )
                    size, index = size + len(chunk), index + 1
            c.execute("INSERT INTO {chassis_bundles} VALUES (?, ?, ?)", (sha256, size, index))
        return True

    def fetch(self, sha256: str, dest: Path) -> str | None:
        """Write the bundle to ``dest`` (atomically) if it is stored and its
        bytes hash to ``sha256``; returns why not, or None."""
        with self.tables.transaction(commit=False) as c:
            c.execute("SELECT size, chunks FROM {chassis_bundles} WHERE sha256 = ?", (sha256,))
            row = c.fetchone()
            if row is None:
                return "the shared ledger does not hold it either"
            size, chunks = int(row[0]), int(row[1])
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.{os.getpid()}.fetch")
            digest = hashlib.sha256()
            written = 0
            try:
                with tmp.open("wb") as out:
                    for index in range(chunks):
                        c.execute(
                            "SELECT data FROM {chassis_bundle_chunks} WHERE sha256 = ? AND idx = ?",
                            (sha256, index),
                        )
                        part = c.fetchone()
                        if part is None:
                            return f"chunk {index} of {chunks} is missing from the shared ledger"
                        data = bytes(part[0])
                        digest.update(data)
                        out.write(data)
                        written += len(data)
                if written != size or digest.hexdigest() != sha256:
                    return (
                        f"the shared ledger's copy does not match: sha256 {digest.hexdigest()}, "
                        f"{written} bytes (expected {sha256}, {size} bytes)"
                    )
                tmp.replace(dest)
                return None
            finally:
                tmp.unlink(missing_ok=True)
