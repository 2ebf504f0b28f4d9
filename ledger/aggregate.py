"""A small aggregate base whose commands are its events.

We use eventsourcing's Application, Repository, EventStore and recorders,
but not its ``@event`` metaclass: there an event's stored schema is inferred
from a method signature, and a renamed parameter would silently change what
is signed. Here every event is an explicit Struct with a fixed topic.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar, Self, TypeVar, get_type_hints
from uuid import UUID, uuid5

import msgspec

from ledger.canonical import GENESIS
from ledger.events import LedgerEvent

CHASSIS_NAMESPACE = UUID("6c1f3e4a-5b8e-5d0e-9a43-6f2b1c0d7e21")
"""UUID5 namespace of aggregate ids: ``uuid5(CHASSIS_NAMESPACE, f"{KIND}/{name}")``."""

E = TypeVar("E", bound=LedgerEvent)

_kinds: dict[str, type[LedgerAggregate]] = {}


def now() -> datetime:
    return datetime.now(UTC)


class LedgerAggregate:
    """Identity, version and chain head; subclasses add state and commands."""

    KIND: ClassVar[str] = ""
    SNAPSHOT_EVERY: ClassVar[int | None] = None
    """Take a snapshot when the version is a multiple of this (None: never)."""

    id: UUID
    version: int
    chain_head: str
    created_on: datetime
    modified_on: datetime

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.KIND:
            return
        if cls.KIND in _kinds and _kinds[cls.KIND].__qualname__ != cls.__qualname__:
            raise TypeError(f"aggregate kind {cls.KIND!r} is already used")
        _kinds[cls.KIND] = cls
        for value in vars(cls).values():
            if isinstance(value, type) and issubclass(value, LedgerEvent):
                value.OWNER_KIND = cls.KIND
                if value.CREATES:
                    value.AGGREGATE = cls

    @classmethod
    def id_for(cls, name: str) -> UUID:
        """The stable id of the aggregate of this kind called ``name``."""
        return uuid5(CHASSIS_NAMESPACE, f"{cls.KIND}/{name}")

    def start(self, event: LedgerEvent) -> None:
        """Initialise identity from the created event (called by ``mutate``)."""
        self.id = event.originator_id
        self.version = 0
        self.chain_head = GENESIS
        self.created_on = event.timestamp
        self.modified_on = event.timestamp
        self._pending: list[LedgerEvent] = []

    @classmethod
    def create(
        cls, event_class: type[LedgerEvent], *, id: UUID, keyid: str, **payload: Any
    ) -> Self:
        event = event_class(
            originator_id=id,
            originator_version=1,
            timestamp=now(),
            prev=GENESIS,
            keyid=keyid,
            **payload,
        )
        aggregate = event.mutate(None)
        if not isinstance(aggregate, cls):
            raise TypeError(f"{event_class.__qualname__} does not create a {cls.__qualname__}")
        aggregate._pending.append(event)
        return aggregate

    def trigger(self, event_class: type[E], *, keyid: str, **payload: Any) -> E:
        """Make the next event, apply it, and queue it for saving."""
        event = event_class(
            originator_id=self.id,
            originator_version=self.version + 1,
            timestamp=now(),
            prev=self.chain_head,
            keyid=keyid,
            **payload,
        )
        event.mutate(self)
        self._pending.append(event)
        return event

    def collect_events(self) -> list[LedgerEvent]:
        collected, self._pending = self._pending, []
        return collected

    def requeue(self, events: list[LedgerEvent]) -> None:
        """Put back ``events`` from :meth:`collect_events` that were not
        stored, ahead of any triggered since, so they are saved first."""
        self._pending[:0] = events

    @property
    def pending_events(self) -> list[LedgerEvent]:
        return list(self._pending)

    def wants_snapshot(self, event: LedgerEvent) -> bool:
        """Snapshot after ``event`` besides every ``SNAPSHOT_EVERY`` events."""
        return False

    def snapshot_state(self) -> dict[str, Any]:
        state = {k: v for k, v in vars(self).items() if k != "_pending"}
        result: dict[str, Any] = msgspec.to_builtins(state)
        return result

    @classmethod
    def restore(cls, state: dict[str, Any]) -> Self:
        """Rebuild from :meth:`snapshot_state`, typing each value by annotation."""
        hints = _hints(cls)
        aggregate = cls.__new__(cls)
        for name, value in state.items():
            kind = hints.get(name)
            setattr(aggregate, name, msgspec.convert(value, kind) if kind else value)
        aggregate._pending = []
        return aggregate


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type[LedgerAggregate]) -> dict[str, Any]:
    """The annotations of an aggregate class, resolved once (``get_type_hints``
    costs more than the rest of a restore)."""
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = get_type_hints(cls)
    return hints


def aggregate_kind(kind: str) -> type[LedgerAggregate] | None:
    return _kinds.get(kind)


class LedgerSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """Aggregate state at a version: a cache for fast loads, never evidence."""

    originator_id: UUID
    originator_version: int
    timestamp: datetime
    kind: str
    state: dict[str, Any]

    @classmethod
    def take(cls, aggregate: LedgerAggregate) -> LedgerSnapshot:
        return cls(
            originator_id=aggregate.id,
            originator_version=aggregate.version,
            timestamp=now(),
            kind=aggregate.KIND,
            state=aggregate.snapshot_state(),
        )

    def mutate(self, _: object) -> LedgerAggregate:
        kind = aggregate_kind(self.kind)
        if kind is None:
            raise TypeError(f"snapshot of unknown aggregate kind {self.kind!r}")
        return kind.restore(self.state)
