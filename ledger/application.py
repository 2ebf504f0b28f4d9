"""The ledger application: eventsourcing's Application with sealing, trust
checks before writing, and conflicts turned into clear errors.
"""

from __future__ import annotations

import random
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar
from uuid import UUID

from eventsourcing.application import Application, ProcessingEvent
from eventsourcing.persistence import (
    EventStore,
    IntegrityError,
    Mapper,
    Notification,
    PersistenceError,
    Recording,
)
from eventsourcing.utils import Environment, EnvType

from ledger.aggregate import LedgerAggregate, LedgerSnapshot
from ledger.canonical import GENESIS
from ledger.errors import (
    ChainBreakError,
    ConflictError,
    NotAuthorisedError,
    NotFoundError,
    StorageError,
)
from ledger.events import LedgerEvent
from ledger.mapper import SealingMapper, SnapshotMapper
from ledger.snapshots import SnapshotBinding, bind_snapshots, restore_bound
from ledger.storage import POSTGRES_HANDOVER
from ledger.trust import TRUST_TOPIC_PREFIX, Trust, TrustState
from ledger.vouched import VouchedDigests

if TYPE_CHECKING:
    from ledger.keys import KeyPair
    from ledger.storage import StorageConfig

A = TypeVar("A", bound=LedgerAggregate)

PAGE_SIZE = 2000
INT_MAX = 2**63 - 1
UPDATE_PATIENCE_S = 30.0
"""How long :meth:`Ledger.update` keeps retrying a command that conflicts."""
_RETRY_BASE_S = 0.01
_RETRY_CAP_S = 0.5

RawRow = tuple[int, "UUID | str", int, str, bytes]


class Ledger(Application[UUID]):
    """One ledger store, optionally with a signer for appending."""

    name = "Ledger"
    snapshot_class = LedgerSnapshot

    def __init__(
        self,
        config: StorageConfig,
        signer: KeyPair | None,
        *,
        create_tables: bool = True,
        handover: str | None = None,
    ) -> None:
        """``handover``: the token of a PostgreSQL connection for the pool to
        take (:func:`ledger.postgres.handed_over`)."""
        self.config = config
        self.signer = signer
        self._trust: TrustState | None = None
        env = dict(
            config.eventsourcing_env(),
            IS_SNAPSHOTTING_ENABLED="y",
            CREATE_TABLE="y" if create_tables else "n",
        )
        if handover is not None:
            env[POSTGRES_HANDOVER] = handover
        try:
            super().__init__(env)
            if create_tables:
                self._create_trust_index()
        except sqlite3.Error as e:
            raise StorageError(f"{config.describe()}: {e}") from None

    # Trust records are found by topic as well as by id (see _trust_rows); a
    # partial index holds only them, so other appends do not pay for it.
    _TRUST_RANGE = f"topic >= '{TRUST_TOPIC_PREFIX}' AND topic < '{TRUST_TOPIC_PREFIX[:-1]}/'"

    def _create_trust_index(self) -> None:
        recorder: Any = self.recorder
        table = recorder.events_table_name
        if self.config.kind == "sqlite":
            statement = f"CREATE INDEX IF NOT EXISTS {table}_trust_topic ON {table} (topic)"
        else:
            statement = (
                f'CREATE INDEX IF NOT EXISTS "{table}_trust_topic" '
                f'ON "{self.config.schema}"."{table}" (topic)'
            )
        with recorder.datastore.transaction(commit=True) as cursor:
            cursor.execute(f"{statement} WHERE {self._TRUST_RANGE}")

    # The stock construct_env merges os.environ: a stray CIPHER_KEY or
    # PERSISTENCE_MODULE in an operator's shell must not change how we store.
    def construct_env(self, name: str, env: EnvType | None = None) -> Environment:
        return Environment(name, dict(env or {}))

    def construct_mapper(self) -> Mapper[UUID]:
        return SealingMapper(self.signer, self._trust_for_reads)

    def construct_snapshot_store(self) -> EventStore[UUID]:
        recorder = self.factory.aggregate_recorder(purpose="snapshots")
        return EventStore(mapper=SnapshotMapper(), recorder=recorder)

    # eventsourcing's save() checks each object against runtime Protocols
    # (slow isinstance calls) and maps events one at a time; ours collects
    # from our own aggregates and seals the whole batch at once. Snapshots
    # are taken only where the batch ends with a signed binding event.
    def save(self, *objs: Any, **kwargs: Any) -> list[Recording[UUID]]:
        processing: ProcessingEvent[UUID] = ProcessingEvent()
        bound: list[LedgerAggregate] = []
        collected: list[tuple[LedgerAggregate, list[LedgerEvent]]] = []
        for obj in objs:
            if isinstance(obj, LedgerAggregate):
                events = obj.collect_events()
                collected.append((obj, events))
                processing.events.extend(events)
                processing.aggregates[obj.id] = obj
                if events and isinstance(events[-1], SnapshotBinding):
                    bound.append(obj)
            elif obj is not None:
                processing.collect_events(obj)
        try:
            recordings = self._record(processing)
        except BaseException:
            # Nothing was written: the events go back to pending, so the
            # aggregate's next append writes them first. Dropped, they would
            # leave a gap in its versions (missing-version to every verifier).
            for aggregate, events in collected:
                aggregate.requeue(events)
            raise
        assert self.snapshots is not None
        for aggregate in bound:
            self.snapshots.put([LedgerSnapshot.take(aggregate)])
        self._notify(recordings)
        return recordings

    def _record(self, processing_event: ProcessingEvent[UUID]) -> list[Recording[UUID]]:
        events = processing_event.events
        stored = self._sealing_mapper.to_stored_events(events)
        ids = self.recorder.insert_events(stored, tracking=processing_event.tracking)
        return [
            Recording(
                event,
                Notification(
                    id=seq,
                    originator_id=record.originator_id,
                    originator_version=record.originator_version,
                    topic=record.topic,
                    state=record.state,
                ),
            )
            for event, record, seq in zip(events, stored, ids or (), strict=True)
        ]

    @property
    def _sealing_mapper(self) -> SealingMapper:
        assert isinstance(self.mapper, SealingMapper)
        return self.mapper

    def close(self) -> None:
        self._sealing_mapper.close()
        super().close()

    # Reading.

    def load(self, kind: type[A], aggregate_id: UUID, *, version: int | None = None) -> A:
        """The aggregate, optionally as of ``version``, from verified records.

        Every record read is checked by the mapper (canonical form, digest,
        signature by a key trusted at its position) and linked by ``mutate``;
        a snapshot is used only when a signed binding event vouches for it,
        and trust is always folded from its events. Raises ``NotFoundError``,
        ``RecordRejected`` or ``ChainBreakError`` (exit 8) on a bad record.
        """
        if kind is Trust or aggregate_id == Trust.ID:
            aggregate: Any = self._load_trust(version)
        else:
            aggregate = self._load_from_snapshot(aggregate_id, version)
        if aggregate is None:
            raise NotFoundError(f"no {kind.KIND} {aggregate_id} in the ledger")
        if not isinstance(aggregate, kind):
            raise NotFoundError(
                f"{aggregate_id} is a {type(aggregate).__name__}, not {kind.__name__}"
            )
        if version is not None and aggregate.version != version:
            raise NotFoundError(f"{kind.KIND} {aggregate_id} has no version {version}")
        return aggregate

    def _load_from_snapshot(self, aggregate_id: UUID, version: int | None) -> Any:
        assert self.snapshots is not None
        # A release snapshot sits one version after the event it follows (its
        # binding event), so look one further: restore_bound steps back.
        limit = None if version is None else version + 1
        try:
            found = list(self.snapshots.get(aggregate_id, desc=True, limit=1, lte=limit))
        except PersistenceError as e:
            raise StorageError(f"{self.config.describe()}: {e}") from None
        except (ValueError, TypeError):  # an undecodable snapshot row: replay
            found = []
        if found and isinstance(found[0], LedgerSnapshot):
            snapshot = found[0]
            at = snapshot.originator_version
            rows = self._rows(aggregate_id, gt=at - 2, lte=at)
            restored = restore_bound(snapshot, [self._verified(row) for row in rows], version)
            if restored is not None:
                start = restored.version
                return self._fold(restored, self._rows(aggregate_id, gt=start, lte=version))
        return self._fold(None, self._rows(aggregate_id, gt=0, lte=version))

    def _load_trust(self, version: int | None) -> Trust | None:
        """The write-side trust aggregate, never from a snapshot: each record
        judged by the trust fold as it stood before that record."""
        self._trust_for_reads(refresh=True)  # fails closed on any misplaced trust record
        fold = TrustState()
        aggregate: Any = None
        for row in self._rows(Trust.ID, gt=0, lte=version):
            event = self._sealing_mapper.verified_event(row, trust=fold)
            aggregate = event.mutate(aggregate)
            fold.apply(event, row[0])
        return aggregate  # type: ignore[no-any-return]

    def _fold(self, state: Any, rows: list[RawRow]) -> Any:
        for row in rows:
            state = self._verified(row).mutate(state)
        return state

    def _verified(self, row: RawRow) -> LedgerEvent:
        return self._sealing_mapper.verified_event(row)

    def read_events(
        self, rows: Sequence[RawRow], vouched: VouchedDigests | None = None
    ) -> list[LedgerEvent]:
        """The events in rows read with :meth:`rows_after`, through the mapper:
        each verified in full, or on a verified checkpoint's word where
        ``vouched`` covers it (``SealingMapper.read_events``)."""
        return self._sealing_mapper.read_events(rows, vouched)

    def verified_events(
        self,
        aggregate_id: UUID,
        *,
        gt: int | None = None,
        lte: int | None = None,
        vouched: VouchedDigests | None = None,
    ) -> list[tuple[int, LedgerEvent]]:
        """(position, event) of one aggregate's records, each verified by the
        mapper (or, where ``vouched`` covers it, taken on a verified
        checkpoint's word: ``SealingMapper.read_events``); links are checked
        here too, so a gap or a fork is an error."""
        rows = self._rows(aggregate_id, gt=gt or 0, lte=lte)
        result: list[tuple[int, LedgerEvent]] = []
        previous: LedgerEvent | None = None
        events = (
            self._sealing_mapper.read_events(rows, vouched)
            if vouched is not None
            else map(self._verified, rows)
        )
        for row, event in zip(rows, events, strict=True):
            if previous is not None and (
                event.originator_version != previous.originator_version + 1
                or event.prev != previous.digest().hex()
            ):
                raise ChainBreakError(
                    f"{aggregate_id} version {event.originator_version} does not link to "
                    f"version {previous.originator_version}"
                )
            result.append((row[0], event))
            previous = event
        return result

    def find(self, kind: type[A], aggregate_id: UUID) -> A | None:
        try:
            return self.load(kind, aggregate_id)
        except NotFoundError:
            return None

    def trust(self) -> TrustState | None:
        """The verified trust fold (None before ``chassis init``), cached for
        this session and refreshed after trust events are appended."""
        state = self._trust_for_reads(refresh=False)
        return state if state.established else None

    def verified_trust(self) -> TrustState:
        """The trust fold over every trust record, re-read and verified now."""
        return self._trust_for_reads(refresh=True)

    def _trust_for_reads(self, *, refresh: bool) -> TrustState:
        """Fold every trust record in global order, each verified against the
        fold so far. Records are found by topic *and* by the trust aggregate's
        id, so a trust record moved to another id (or re-spelt) is read and
        rejected instead of silently hidden."""
        if self._trust is not None and not refresh:
            return self._trust
        state = TrustState()
        mapper = self._sealing_mapper
        head: LedgerEvent | None = None
        for row in self._trust_rows():
            event = mapper.verified_event(row, trust=state)
            if event.originator_id == Trust.ID:
                expected = (1, GENESIS) if head is None else (
                    head.originator_version + 1, head.digest().hex()
                )
                if (event.originator_version, event.prev) != expected:
                    raise ChainBreakError(
                        f"trust version {event.originator_version} does not link to its predecessor"
                    )
                head = event
            state.apply(event, row[0])
        self._trust = state
        return state

    # Rows, read through the recorder's own datastore and table, with their
    # global positions and ids exactly as stored.

    def _rows(self, aggregate_id: UUID, *, gt: int, lte: int | None) -> list[RawRow]:
        where = "originator_id = ? AND originator_version > ? AND originator_version <= ?"
        key: Any = aggregate_id.hex if self.config.kind == "sqlite" else aggregate_id
        return self._select(
            f"{where} ORDER BY originator_version", (key, gt, INT_MAX if lte is None else lte)
        )

    def _trust_rows(self) -> list[RawRow]:
        """The trust aggregate's rows and every row with a trust topic, in
        global order (two indexed reads: the primary key and the partial index,
        whose predicate the second query repeats literally so it is used)."""
        key: Any = Trust.ID.hex if self.config.kind == "sqlite" else Trust.ID
        by_id = self._select("originator_id = ? ORDER BY {position}", (key,))
        by_topic = self._select(f"{self._TRUST_RANGE} ORDER BY {{position}}", ())
        return sorted({row[0]: row for row in (*by_id, *by_topic)}.values(), key=lambda r: r[0])

    def rows_after(self, position: int, *, limit: int, topics: Sequence[str]) -> list[RawRow]:
        """Up to ``limit`` rows of ``topics`` after sequence number
        ``position``, in global order, as stored (read them through the mapper)."""
        if not topics:
            return []
        marks = ", ".join("?" for _ in topics)
        return self._select(
            f"{{position}} > ? AND topic IN ({marks}) ORDER BY {{position}} LIMIT ?",
            (position, *topics, limit),
        )

    def count_after(self, position: int, topics: Sequence[str]) -> int:
        """How many rows of ``topics`` come after sequence number ``position``."""
        if not topics:
            return 0
        recorder: Any = self.recorder
        table = recorder.events_table_name
        sqlite = self.config.kind == "sqlite"
        mark = "?" if sqlite else "%s"
        marks = ", ".join(mark for _ in topics)
        seq = "rowid" if sqlite else "notification_id"
        source = table if sqlite else f'"{self.config.schema}"."{table}"'
        sql = f"SELECT count(*) AS n FROM {source} WHERE {seq} > {mark} AND topic IN ({marks})"  # noqa: S608
        try:
            with recorder.datastore.transaction(commit=False) as cursor:
                cursor.execute(sql, (position, *topics))
                row = cursor.fetchone()
        except PersistenceError as e:
            raise StorageError(f"{self.config.describe()}: {e}") from None
        return int(row["n"] if isinstance(row, dict) else row[0])

    def stored_digests(self, position: int, *, limit: int) -> list[tuple[int, bytes]]:
        """``(seq, stored digest as hex bytes)`` of up to ``limit`` records
        after ``position``, in global order: the digest is read at its fixed
        offset (a record has one spelling) and is *not* checked here."""
        recorder: Any = self.recorder
        table = recorder.events_table_name
        try:
            with recorder.datastore.transaction(commit=False) as cursor:
                if self.config.kind == "sqlite":
                    _plain_rows(cursor)
                    cursor.execute(
                        f"SELECT rowid, substr(state, 12, 64) FROM {table} "  # noqa: S608
                        "WHERE rowid > ? ORDER BY rowid LIMIT ?",
                        (position, limit),
                    )
                    rows: list[tuple[int, bytes]] = cursor.fetchall()
                    return rows
                cursor.execute(
                    "SELECT notification_id, substring(state from 12 for 64) AS digest "  # noqa: S608
                    f'FROM "{self.config.schema}"."{table}" WHERE notification_id > %s '
                    "ORDER BY notification_id LIMIT %s",
                    (position, limit),
                )
                return [(int(r["notification_id"]), bytes(r["digest"])) for r in cursor.fetchall()]
        except PersistenceError as e:
            raise StorageError(f"{self.config.describe()}: {e}") from None

    def _select(self, where: str, params: tuple[Any, ...]) -> list[RawRow]:
        recorder: Any = self.recorder
        table = recorder.events_table_name
        try:
            if self.config.kind == "sqlite":
                # The table name is the recorder's own, the values are bound.
                sql = (
                    f"SELECT rowid, originator_id, originator_version, topic, state FROM {table} "  # noqa: S608
                    "WHERE " + where.replace("{position}", "rowid")
                )
                with recorder.datastore.transaction(commit=False) as cursor:
                    _plain_rows(cursor)
                    cursor.execute(sql, params)
                    raw: list[RawRow] = cursor.fetchall()
                    return raw
            sql = (
                "SELECT notification_id, originator_id, originator_version, topic, state "  # noqa: S608
                f'FROM "{self.config.schema}"."{table}" WHERE '
                + where.replace("{position}", "notification_id").replace("?", "%s")
            )
            with recorder.datastore.transaction(commit=False) as cursor:
                cursor.execute(sql, params)
                return [
                    (r["notification_id"], r["originator_id"], r["originator_version"],
                     r["topic"], bytes(r["state"]))
                    for r in cursor.fetchall()
                ]
        except PersistenceError as e:
            raise StorageError(f"{self.config.describe()}: {e}") from None

    def records(self, *, since: int = 1, limit: int | None = None) -> Iterator[Notification]:
        """Stored records in global order, from sequence number ``since``."""
        remaining = limit
        start = since
        while remaining is None or remaining > 0:
            page = PAGE_SIZE if remaining is None else min(PAGE_SIZE, remaining)
            try:
                batch = self.recorder.select_notifications(start=start, limit=page)
            except PersistenceError as e:
                raise StorageError(f"{self.config.describe()}: {e}") from None
            if not batch:
                return
            yield from batch
            start = batch[-1].id + 1
            if remaining is not None:
                remaining -= len(batch)

    def scan(self, *, since: int = 1) -> Iterator[RawRow]:
        """Stored rows as plain tuples ``(seq, originator_id, version, topic,
        state)`` in global order: the fast path for full verification.

        SQLite is read through its own read-only connection, in one snapshot.
        """
        if self.config.kind != "sqlite":
            for row in self.records(since=since):
                yield (row.id, row.originator_id, row.originator_version, row.topic, row.state)
            return
        assert self.config.path is not None
        # The same file the application opened: as_uri() percent-encodes the
        # path, so a '%' or '?' in it cannot make this read another file.
        uri = f"{self.config.path.absolute().as_uri()}?mode=ro"
        table = self.recorder.events_table_name  # type: ignore[attr-defined]
        try:
            conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as e:
            raise StorageError(f"{self.config.describe()}: {e}") from None
        try:
            conn.execute("BEGIN")  # one consistent snapshot for the whole scan
            cursor = conn.execute(
                "SELECT rowid, originator_id, originator_version, topic, state "  # noqa: S608
                f"FROM {table} WHERE rowid >= ? ORDER BY rowid",
                (since,),
            )
            while batch := cursor.fetchmany(PAGE_SIZE):
                yield from batch
        except sqlite3.Error as e:
            raise StorageError(f"{self.config.describe()}: {e}") from None
        finally:
            conn.close()

    def max_seq(self) -> int:
        return self.recorder.max_notification_id() or 0

    # Writing.

    def authorise(self, events: Sequence[Any]) -> None:
        """Refuse before writing when the signer may not append ``events``."""
        if self.signer is None:
            raise NotAuthorisedError("no signing key selected", reason="unknown-key")
        trust = self.trust()
        for event in events:
            if trust is None and isinstance(event, Trust.Established):
                continue  # the genesis of trust is self-signed
            if trust is None:
                raise NotAuthorisedError(
                    "this ledger has no root of trust yet (run 'chassis init')",
                    reason="unknown-key",
                )
            trust.authorise(self.signer.keyid, event.ROLE)

    def append(self, *aggregates: LedgerAggregate) -> list[Recording[UUID]]:
        """Seal and store the pending events of ``aggregates`` in one transaction.

        Raises ``NotAuthorisedError`` (nothing written), ``ConflictError`` when
        another writer got there first (nothing written), ``StorageError``.
        """
        if self.signer is not None:
            bind_snapshots(aggregates, self.signer.keyid)
        pending = [e for a in aggregates for e in a.pending_events]
        self.authorise(pending)
        try:
            recordings = self.save(*aggregates)
        except IntegrityError:
            names = ", ".join(f"{a.KIND} {a.id}" for a in aggregates)
            raise ConflictError(
                f"{names} changed while this command ran; nothing was written"
            ) from None
        except PersistenceError as e:
            raise StorageError(f"{self.config.describe()}: {e}") from None
        if any(isinstance(a, Trust) for a in aggregates):
            self._trust = None
        return recordings

    def update(
        self,
        kind: type[A],
        aggregate_id: UUID,
        command: Callable[[A], None],
        *,
        retry: bool = True,
        patience_s: float = UPDATE_PATIENCE_S,
    ) -> A:
        """Load, run ``command``, append; on a conflict, start again if ``retry``.

        Only pass ``retry=True`` for commands whose decision stays right when
        re-made against newer state: the command runs again from scratch.
        Every conflict means another writer's append landed, so retrying
        cannot livelock; it is bounded by time (``patience_s``), not by a
        count, because on a loaded machine a load-to-append window grows and
        a fixed count of short waits runs out while the others progress.
        """
        deadline = time.monotonic() + patience_s
        attempt = 0
        while True:
            aggregate = self.load(kind, aggregate_id)
            command(aggregate)
            if not aggregate.pending_events:
                return aggregate
            try:
                self.append(aggregate)
            except ConflictError:
                # Full jitter, growing to a cap: contenders spread out
                # instead of colliding again in step.
                pause = random.uniform(0, min(_RETRY_CAP_S, _RETRY_BASE_S * 2**attempt))  # noqa: S311
                if not retry or time.monotonic() + pause > deadline:
                    raise
                if isinstance(aggregate, Trust):
                    self._trust = None
                time.sleep(pause)
                attempt += 1
                continue
            return aggregate


def _plain_rows(cursor: Any) -> None:
    """Have an SQLite cursor of eventsourcing's give plain tuples: its
    connections make ``sqlite3.Row`` objects, which cost a bulk read about
    a tenth of its time and are copied to tuples anyway."""
    cursor.sqlite_cursor.row_factory = None
