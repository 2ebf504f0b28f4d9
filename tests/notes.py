"""A tiny aggregate for tests: operator-role events that are not about trust."""

from __future__ import annotations

from typing import ClassVar

from ledger.aggregate import LedgerAggregate
from ledger.events import LedgerEvent
from ledger.snapshots import SnapshotBinding


class Notebook(LedgerAggregate):
    KIND = "test-notebook"
    SNAPSHOT_EVERY = 10
    title: str
    lines: list[str]

    class Opened(LedgerEvent, frozen=True, kw_only=True):
        TOPIC: ClassVar[str] = "test.notebook.opened.v1"
        ROLE: ClassVar[str] = "operator"
        CREATES: ClassVar[bool] = True
        title: str

        def apply(self, aggregate: Notebook) -> None:
            aggregate.title = self.title
            aggregate.lines = []

    class Noted(LedgerEvent, frozen=True, kw_only=True):
        TOPIC: ClassVar[str] = "test.notebook.noted.v1"
        ROLE: ClassVar[str] = "operator"
        text: str

        def apply(self, aggregate: Notebook) -> None:
            aggregate.lines.append(self.text)

    class SnapshotBound(SnapshotBinding, frozen=True, kw_only=True):
        TOPIC: ClassVar[str] = "test.notebook.snapshot-bound.v1"
        ROLE: ClassVar[str] = "operator"

    @classmethod
    def open(cls, name: str, *, keyid: str) -> Notebook:
        return cls.create(cls.Opened, id=cls.id_for(name), keyid=keyid, title=name)

    def note(self, text: str, *, keyid: str) -> None:
        self.trigger(self.Noted, keyid=keyid, text=text)
