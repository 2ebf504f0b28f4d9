"""Aggregates used only by ``bench/ledger.py``.

Two signed ledger aggregates with the same events and state that differ only
in ``SNAPSHOT_EVERY`` (the Ledger reads it per aggregate class when it is
constructed), and one stock ``eventsourcing`` aggregate with the same payload
fields as the unsigned baseline. KINDs and topics are unique to the bench.
"""

from __future__ import annotations

from typing import ClassVar

from eventsourcing.domain import Aggregate, event

from ledger.aggregate import LedgerAggregate
from ledger.events import LedgerEvent
from ledger.snapshots import SnapshotBinding

SNAPSHOT_INTERVAL = 1000


class _Started(LedgerEvent, frozen=True, kw_only=True):
    """Payload and effect shared by each counter's created event."""

    ROLE: ClassVar[str] = "operator"
    CREATES: ClassVar[bool] = True
    label: str

    def apply(self, aggregate: Counter) -> None:
        aggregate.label = self.label
        aggregate.count = 0


class _Bumped(LedgerEvent, frozen=True, kw_only=True):
    """Payload and effect shared by each counter's bump event."""

    ROLE: ClassVar[str] = "operator"
    note: str
    n: int

    def apply(self, aggregate: Counter) -> None:
        aggregate.count += 1


class Counter(LedgerAggregate):
    """A signed counter that is never snapshotted."""

    KIND = "bench-counter"
    label: str
    count: int

    class Started(_Started, frozen=True, kw_only=True):
        TOPIC: ClassVar[str] = "bench.counter.started.v1"

    class Bumped(_Bumped, frozen=True, kw_only=True):
        TOPIC: ClassVar[str] = "bench.counter.bumped.v1"

    @classmethod
    def open(cls, name: str, *, keyid: str) -> Counter:
        return cls.create(cls.Started, id=cls.id_for(name), keyid=keyid, label=name)

    def bump(self, note: str, n: int, *, keyid: str) -> None:
        self.trigger(self.Bumped, keyid=keyid, note=note, n=n)


class SnapshotCounter(Counter):
    """The same counter, snapshotted every ``SNAPSHOT_INTERVAL`` events."""

    KIND = "bench-counter-snapshotted"
    SNAPSHOT_EVERY = SNAPSHOT_INTERVAL

    # Own events (and topics): a created event names the one class it creates.
    class Started(_Started, frozen=True, kw_only=True):
        TOPIC: ClassVar[str] = "bench.counter-snapshotted.started.v1"

    class Bumped(_Bumped, frozen=True, kw_only=True):
        TOPIC: ClassVar[str] = "bench.counter-snapshotted.bumped.v1"

    class SnapshotBound(SnapshotBinding, frozen=True, kw_only=True):
        """The signed binding that makes each snapshot usable."""

        TOPIC: ClassVar[str] = "bench.counter-snapshotted.snapshot-bound.v1"
        ROLE: ClassVar[str] = "operator"


class RawCounter(Aggregate):
    """The unsigned baseline: a stock eventsourcing aggregate, same payload."""

    @event("Started")
    def __init__(self, label: str) -> None:
        self.label = label
        self.count = 0

    @event("Bumped")
    def bump(self, note: str, n: int) -> None:
        self.count += 1
