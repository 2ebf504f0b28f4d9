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

from eventsourcing.application import AggregateNotFoundError, Application, ProcessingEvent
from eventsourcing.persistence import (
    EventStore,
    IntegrityError,
    Mapper,
    Notification,
    PersistenceError,
    Recording,
)
from eventsourcing.utils import Environment, EnvType

from ledger.aggregate import LedgerAggregate, LedgerSnapshot, _kinds
from ledger.errors import ConflictError, NotAuthorisedError, NotFoundError, StorageError
from ledger.events import LedgerEvent
from ledger.mapper import SealingMapper, SnapshotMapper
from ledger.trust import Trust

if TYPE_CHECKING:
    from ledger.keys import KeyPair
    from ledger.storage import StorageConfig

A = TypeVar("A", bound=LedgerAggregate)

PAGE_SIZE = 2000

RawRow = tuple[int, "UUID | str", int, str, bytes]


class Ledger(Application[UUID]):
    """One ledger store, optionally with a signer for appending."""

    name = "Ledger"
    snapshot_class = LedgerSnapshot

    def __init__(
        self, config: StorageConfig, signer: KeyPair | None, *, create_tables: bool = True
    ) -> None:
        self.config = config
        self.signer = signer
        self._trust: Trust | None = None
        type(self).snapshotting_intervals = {
            kind: kind.SNAPSHOT_EVERY for kind in _kinds.values() if kind.SNAPSHOT_EVERY
        }
        env = dict(
            config.eventsourcing_env(),
            IS_SNAPSHOTTING_ENABLED="y",
            CREATE_TABLE="y" if create_tables else "n",
        )
        try:
            super().__init__(env)
        except sqlite3.Error as e:
            raise StorageError(f"{config.describe()}: {e}") from None

    # The stock construct_env merges os.environ: a stray CIPHER_KEY or
    # PERSISTENCE_MODULE in an operator's shell must not change how we store.
    def construct_env(self, name: str, env: EnvType | None = None) -> Environment:
        return Environment(name, dict(env or {}))

    def construct_mapper(self) -> Mapper[UUID]:
        return SealingMapper(self.signer)

    def construct_snapshot_store(self) -> EventStore[UUID]:
        recorder = self.factory.aggregate_recorder(purpose="snapshots")
        return EventStore(mapper=SnapshotMapper(), recorder=recorder)

    # eventsourcing's save() checks each object against runtime Protocols
    # (slow isinstance calls) and maps events one at a time; ours collects
    # from our own aggregates and seals the whole batch at once.
    def save(self, *objs: Any, **kwargs: Any) -> list[Recording[UUID]]:
        processing: ProcessingEvent[UUID] = ProcessingEvent()
        for obj in objs:
            if isinstance(obj, LedgerAggregate):
                processing.events.extend(obj.collect_events())
                processing.aggregates[obj.id] = obj
            elif obj is not None:
                processing.collect_events(obj)
        recordings = self._record(processing)
        self._take_snapshots(processing)
        self._take_event_snapshots(processing)
        self._notify(recordings)
        return recordings

    def _take_event_snapshots(self, processing: ProcessingEvent[UUID]) -> None:
        """Snapshots an aggregate asks for (release snapshots), beyond intervals."""
        assert self.snapshots is not None
        for event in processing.events:
            aggregate = processing.aggregates.get(event.originator_id)
            if not isinstance(aggregate, LedgerAggregate) or not isinstance(event, LedgerEvent):
                continue
            if not aggregate.wants_snapshot(event):
                continue
            interval = aggregate.SNAPSHOT_EVERY
            if interval and event.originator_version % interval == 0:
                continue  # the interval snapshot already covers this version
            if aggregate.version == event.originator_version:
                self.snapshots.put([LedgerSnapshot.take(aggregate)])
            else:
                self.take_snapshot(event.originator_id, version=event.originator_version)

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
        """The aggregate, optionally as of ``version``. Raises ``NotFoundError``."""
        try:
            aggregate: object = self.repository.get(aggregate_id, version=version)
        except AggregateNotFoundError:
            raise NotFoundError(f"no {kind.KIND} {aggregate_id} in the ledger") from None
        except PersistenceError as e:
            raise StorageError(f"{self.config.describe()}: {e}") from None
        if not isinstance(aggregate, kind):
            raise NotFoundError(
                f"{aggregate_id} is a {type(aggregate).__name__}, not {kind.__name__}"
            )
        return aggregate

    def find(self, kind: type[A], aggregate_id: UUID) -> A | None:
        try:
            return self.load(kind, aggregate_id)
        except NotFoundError:
            return None

    def trust(self) -> Trust | None:
        """Current trust state, cached for this session (refreshed after trust events)."""
        if self._trust is None:
            self._trust = self.find(Trust, Trust.ID)
        return self._trust

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
        uri = f"file:{self.config.path}?mode=ro"
        try:
            conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as e:
            raise StorageError(f"{self.config.describe()}: {e}") from None
        try:
            conn.execute("BEGIN")  # one consistent snapshot for the whole scan
            cursor = conn.execute(
                "SELECT rowid, originator_id, originator_version, topic, state "
                "FROM stored_events WHERE rowid >= ? ORDER BY rowid",
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
        attempts: int = 8,
    ) -> A:
        """Load, run ``command``, append; on a conflict, start again if ``retry``.

        Only pass ``retry=True`` for commands whose decision stays right when
        re-made against newer state: the command runs again from scratch.
        """
        for attempt in range(attempts):
            aggregate = self.load(kind, aggregate_id)
            command(aggregate)
            if not aggregate.pending_events:
                return aggregate
            try:
                self.append(aggregate)
            except ConflictError:
                if not retry or attempt == attempts - 1:
                    raise
                if isinstance(aggregate, Trust):
                    self._trust = None
                time.sleep(random.uniform(0.005, 0.05) * (attempt + 1))  # noqa: S311
                continue
            return aggregate
        raise AssertionError("unreachable")
