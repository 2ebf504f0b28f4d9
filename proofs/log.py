"""The ledger's Merkle log, stored beside it: leaves, frontier and checkpoints.

Leaf ``i`` is the ``i``-th record of the ledger in ascending sequence number;
the stored ``leaf`` is its Merkle leaf *hash*, ``sha256(0x00 || event
digest)`` (guides/proofs.md, "Merkle log"). Sequence numbers may have gaps,
so each leaf keeps its ``seq`` and lookups go both ways.

Everything here is derived from the events and is not evidence: verification
recomputes roots from the records and only uses these tables as a source of
proof hashes, which a verifier checks against roots it trusts.

Appends are incremental (the frontier is resumed, never rehashed) and safe
against a concurrent writer: each extension first takes the state row's write
lock (an ``UPDATE`` of it), then re-reads the state, so a second process waits
and then finds the leaves already there.

Tables (portable SQL, see :mod:`ledger.tables`):

- ``chassis_merkle_leaves(idx BIGINT PRIMARY KEY, seq BIGINT UNIQUE, leaf BLOB)``
- ``chassis_merkle_state(id INTEGER PRIMARY KEY, size, last_seq, frontier BLOB)``:
  one row, ``frontier`` is :meth:`CompactRange.to_bytes`
- ``chassis_checkpoints(size BIGINT PRIMARY KEY, root BLOB, note TEXT,
  keyid TEXT, created TEXT)``: signed notes, one per tree size
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ledger.tables import Cursor, SideTables
from proofs.merkle import (
    CompactRange,
    SubtreeCache,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
)

LEAVES = "chassis_merkle_leaves"
STATE = "chassis_merkle_state"
CHECKPOINTS = "chassis_checkpoints"

_CREATE = (
    "CREATE TABLE IF NOT EXISTS {chassis_merkle_leaves} "
    "(idx BIGINT PRIMARY KEY, seq BIGINT NOT NULL UNIQUE, leaf {blob} NOT NULL)",
    "CREATE TABLE IF NOT EXISTS {chassis_merkle_state} "
    "(id INTEGER PRIMARY KEY, size BIGINT NOT NULL, last_seq BIGINT NOT NULL, "
    "frontier {blob} NOT NULL)",
    "CREATE TABLE IF NOT EXISTS {chassis_checkpoints} "
    "(size BIGINT PRIMARY KEY, root {blob} NOT NULL, note TEXT NOT NULL, "
    "keyid TEXT NOT NULL, created TEXT NOT NULL)",
    "INSERT INTO {chassis_merkle_state} (id, size, last_seq, frontier) VALUES (1, 0, 0, ?) "
    "ON CONFLICT DO NOTHING",
)

ATTEMPTS = 8
INSERT_BATCH = 500


class LogStoreError(Exception):
    """The stored log is unusable (e.g. its state row is missing or malformed)."""

    exit_code = 4


@dataclass(frozen=True)
class StoredCheckpoint:
    """A signed checkpoint as stored: the note is the evidence, the rest an index."""

    size: int
    root: bytes
    note: str
    keyid: str
    created: str


class TransparencyLog:
    """The Merkle log of one ledger, in that ledger's database."""

    def __init__(self, tables: SideTables) -> None:
        self.tables = tables
        self._cache: SubtreeCache = {}
        empty = CompactRange().to_bytes()
        # The last statement seeds the single state row; it needs its parameter.
        *ddl, seed = _CREATE
        tables.create(*ddl)
        with tables.transaction(commit=True) as c:
            c.execute(seed, (empty,))

    # State.

    def _state(self, c: Cursor) -> tuple[int, int, CompactRange]:
        c.execute("SELECT size, last_seq, frontier FROM {chassis_merkle_state} WHERE id = 1")
        row = c.fetchone()
        if row is None:
            raise LogStoreError(f"{STATE} has no state row")
        try:
            frontier = CompactRange.from_bytes(bytes(row[2]))
        except ValueError as e:
            raise LogStoreError(f"{STATE}: {e}") from None
        if frontier.size != int(row[0]):
            raise LogStoreError(f"{STATE}: size {row[0]} but a frontier of {frontier.size}")
        return int(row[0]), int(row[1]), frontier

    def state(self) -> tuple[int, int, CompactRange]:
        """``(size, last_seq, frontier)`` as last committed."""
        with self.tables.transaction(commit=False) as c:
            return self._state(c)

    def size(self) -> int:
        return self.state()[0]

    def last_seq(self) -> int:
        return self.state()[1]

    def root(self) -> bytes:
        return self.state()[2].root()

    # Appending.

    def extend(self, entries: Iterable[tuple[int, bytes]]) -> int:
        """Append ``(seq, event digest)`` pairs given in ascending ``seq``; those
        at or below the stored ``last_seq`` are skipped (another process added
        them). One transaction; returns the new size."""
        pending = list(entries)
        for attempt in range(ATTEMPTS):
            try:
                return self._extend_once(pending)
            except _Retry:
                pass
            except Exception as e:  # a busy database or a lost race: try again
                if attempt == ATTEMPTS - 1 or not _transient(e):
                    raise
            time.sleep(random.uniform(0.01, 0.05) * (attempt + 1))  # noqa: S311
        raise LogStoreError("could not extend the Merkle log after {ATTEMPTS} attempts")

    def _extend_once(self, pending: list[tuple[int, bytes]]) -> int:
        with self.tables.transaction(commit=True) as c:
            # Take the write lock first, so the state read next is the newest.
            c.execute("UPDATE {chassis_merkle_state} SET size = size WHERE id = 1")
            size, last_seq, frontier = self._state(c)
            new = [(seq, digest) for seq, digest in pending if seq > last_seq]
            if not new:
                return size
            rows: list[tuple[int, int, bytes]] = []
            previous = last_seq
            for seq, digest in new:
                if seq <= previous:
                    raise ValueError("sequence numbers must ascend: {seq} after {previous}")
                leaf = leaf_hash(digest)
                rows.append((frontier.size, seq, leaf))
                frontier.append(leaf)
                previous = seq
            for start in range(0, len(rows), INSERT_BATCH):
                chunk = rows[start : start + INSERT_BATCH]
                values = ", ".join("(?, ?, ?)" for _ in chunk)
                c.execute(  # only placeholders are interpolated
                    f"INSERT INTO {{chassis_merkle_leaves}} (idx, seq, leaf) VALUES {values}",  # noqa: S608
                    [v for row in chunk for v in row],
                )
            c.execute(
                "UPDATE {chassis_merkle_state} SET size = ?, last_seq = ?, frontier = ? "
                "WHERE id = 1 AND size = ?",
                (frontier.size, previous, frontier.to_bytes(), size),
            )
            c.execute("SELECT size FROM {chassis_merkle_state} WHERE id = 1")
            check = c.fetchone()
            if check is None or int(check[0]) != frontier.size:
                raise _Retry
            return frontier.size

    # Reading leaves.

    def leaf_index(self, seq: int) -> int | None:
        """The leaf index of the record with sequence number ``seq``."""
        with self.tables.transaction(commit=False) as c:
            c.execute("SELECT idx FROM {chassis_merkle_leaves} WHERE seq = ?", (seq,))
            row = c.fetchone()
        return None if row is None else int(row[0])

    def leaf_indices(self, seqs: Sequence[int]) -> dict[int, int]:
        """Leaf index by sequence number, for those of ``seqs`` that are logged
        (one query per 500)."""
        found: dict[int, int] = {}
        with self.tables.transaction(commit=False) as c:
            for start in range(0, len(seqs), INSERT_BATCH):
                chunk = list(seqs[start : start + INSERT_BATCH])
                marks = ", ".join("?" for _ in chunk)
                c.execute(  # only placeholders are interpolated
                    f"SELECT seq, idx FROM {{chassis_merkle_leaves}} WHERE seq IN ({marks})",  # noqa: S608
                    chunk,
                )
                found.update((int(r[0]), int(r[1])) for r in c.fetchall())
        return found

    def seq_at(self, index: int) -> int | None:
        """The sequence number of leaf ``index``."""
        with self.tables.transaction(commit=False) as c:
            c.execute("SELECT seq FROM {chassis_merkle_leaves} WHERE idx = ?", (index,))
            row = c.fetchone()
        return None if row is None else int(row[0])

    def find_leaf(self, leaf: bytes) -> tuple[int, int] | None:
        """``(index, seq)`` of the leaf with this hash (a full scan of the table)."""
        with self.tables.transaction(commit=False) as c:
            c.execute(
                "SELECT idx, seq FROM {chassis_merkle_leaves} WHERE leaf = ? ORDER BY idx LIMIT 1",
                (leaf,),
            )
            row = c.fetchone()
        return None if row is None else (int(row[0]), int(row[1]))

    def leaf_hashes(self, start: int, end: int) -> Sequence[bytes]:
        """Leaf hashes ``[start, end)``: makes the store a ``NodeSource``."""
        with self.tables.transaction(commit=False) as c:
            c.execute(
                "SELECT idx, leaf FROM {chassis_merkle_leaves} "
                "WHERE idx >= ? AND idx < ? ORDER BY idx",
                (start, end),
            )
            rows = c.fetchall()
        if len(rows) != end - start or (rows and int(rows[0][0]) != start):
            raise IndexError("the stored log lacks leaves in [{start}, {end})")
        return [bytes(r[1]) for r in rows]

    def inclusion(self, index: int, size: int) -> list[bytes]:
        """Audit path of leaf ``index`` in the tree of ``size`` leaves."""
        self._check_size(size)
        return inclusion_proof(index, size, self, self._cache)

    def consistency(self, old: int, new: int) -> list[bytes]:
        """Proof that the tree of ``new`` leaves extends that of ``old``."""
        self._check_size(new)
        return consistency_proof(old, new, self, self._cache)

    def _check_size(self, size: int) -> None:
        stored = self.size()
        if size > stored:
            raise IndexError("the stored log has {stored} leaves, not {size}")

    # Checkpoints.

    def put_checkpoint(self, size: int, root: bytes, note: str, keyid: str, created: str) -> bool:
        """Store a signed checkpoint; False when one of that size is already
        stored (the first one wins: a size has one root)."""
        with self.tables.transaction(commit=True) as c:
            c.execute(
                "INSERT INTO {chassis_checkpoints} (size, root, note, keyid, created) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (size, root, note, keyid, created),
            )
            c.execute("SELECT note FROM {chassis_checkpoints} WHERE size = ?", (size,))
            row = c.fetchone()
        return row is not None and row[0] == note

    def latest_checkpoint(self) -> StoredCheckpoint | None:
        with self.tables.transaction(commit=False) as c:
            c.execute(
                "SELECT size, root, note, keyid, created FROM {chassis_checkpoints} "
                "ORDER BY size DESC LIMIT 1"
            )
            row = c.fetchone()
        return None if row is None else _checkpoint(row)

    def checkpoint_at(self, size: int) -> StoredCheckpoint | None:
        with self.tables.transaction(commit=False) as c:
            c.execute(
                "SELECT size, root, note, keyid, created FROM {chassis_checkpoints} WHERE size = ?",
                (size,),
            )
            row = c.fetchone()
        return None if row is None else _checkpoint(row)


class _Retry(Exception):
    """Another writer moved the state between our read and our update."""


def _checkpoint(row: Sequence[Any]) -> StoredCheckpoint:
    return StoredCheckpoint(int(row[0]), bytes(row[1]), str(row[2]), str(row[3]), str(row[4]))


def _transient(error: Exception) -> bool:
    """A lock timeout, a serialisation failure or a unique-key race."""
    text = "{type(error).__name__} {error}".lower()
    return any(
        word in text
        for word in ("locked", "busy", "unique", "duplicate", "integrity", "serializ", "deadlock")
    )
