"""The base of every ledger event and the registry of topics.

Events are frozen msgspec Structs with an explicit, versioned ``TOPIC``
(``chassis.<aggregate>.<what-happened>.v<N>``) fixed forever once released, so
renaming a class never breaks stored history. Each topic also names the
``ROLE`` a key must hold to append it; verification reads the same table.
"""

from __future__ import annotations

from datetime import datetime
from functools import cache, lru_cache
from typing import Any, ClassVar
from uuid import UUID

import msgspec

from ledger.canonical import GENESIS, canonical_json, event_digest, format_timestamp
from ledger.errors import ChainBreakError

ENVELOPE_FIELDS = ("originator_id", "originator_version", "timestamp", "prev", "keyid")
ROLES = ("admin", "operator", "approver", "checkpoint")
_NO_CANONICAL_FORM = ("float", "datetime", "bytes")

_registry: dict[str, type[LedgerEvent]] = {}


class LedgerEvent(msgspec.Struct, frozen=True, kw_only=True, dict=True):
    """One signed, chained fact. Subclasses add payload fields and ``apply``.

    ``dict=True`` gives each instance a ``__dict__`` used only to cache its
    canonical body and digest, so they are computed once per event object.
    """

    originator_id: UUID
    originator_version: int
    timestamp: datetime
    prev: str
    keyid: str

    TOPIC: ClassVar[str] = ""
    ROLE: ClassVar[str] = "admin"
    CREATES: ClassVar[bool] = False
    """True for the event that starts an aggregate (version 1)."""
    AGGREGATE: ClassVar[type[Any] | None] = None
    """Set by :class:`LedgerAggregate` on its nested created event."""
    OWNER_KIND: ClassVar[str] = ""
    """The ``KIND`` of the aggregate this event is nested in: it applies to no other."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name, kind in cls.__annotations__.items():
            if "ClassVar" in str(kind):
                continue
            if name not in ENVELOPE_FIELDS and hasattr(LedgerEvent, name):
                raise TypeError(f"{cls.__qualname__}.{name}: clashes with LedgerEvent.{name}")
            if any(word in str(getattr(kind, "__name__", kind)) for word in _NO_CANONICAL_FORM):
                raise TypeError(f"{cls.__qualname__}.{name}: {kind} has no canonical form")
        topic = cls.__dict__.get("TOPIC", "")
        if not topic:
            return
        if cls.ROLE not in ROLES:
            raise TypeError(f"{cls.__qualname__}: ROLE must be one of {ROLES}")
        existing = _registry.get(topic)
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            raise TypeError(f"topic {topic!r} is already used by {existing.__qualname__}")
        _registry[topic] = cls

    def payload(self) -> dict[str, Any]:
        """The event's own fields, as canonical-encodable builtins."""
        fields: dict[str, Any] = msgspec.to_builtins(
            {name: getattr(self, name) for name in _payload_fields(type(self))}
        )
        return fields

    def canonical(self) -> bytes:
        """The signed body, canonically encoded (``guides/ledger-format.md`` §3)."""
        return canonical_json(
            {
                "id": _uuid_text(self.originator_id),
                "keyid": self.keyid,
                "payload": {name: getattr(self, name) for name in _payload_fields(type(self))},
                "prev": self.prev,
                "timestamp": format_timestamp(self.timestamp),
                "topic": self.TOPIC,
                "version": self.originator_version,
            }
        )

    def sealing_input(self) -> tuple[bytes, bytes]:
        """(canonical body, digest), computed once per event object."""
        cached: tuple[bytes, bytes] | None = self.__dict__.get("_sealing_input")
        if cached is None:
            body = self.canonical()
            cached = self.__dict__["_sealing_input"] = (body, event_digest(body))
        return cached

    def digest(self) -> bytes:
        return self.sealing_input()[1]

    def apply(self, aggregate: Any) -> None:
        """Evolve ``aggregate``. Pure: it runs again on every replay, so no I/O."""

    def mutate(self, aggregate: Any) -> Any:
        """Check the link, apply, then advance version and chain head.

        Raises ``ChainBreakError`` before anything changes when the event
        does not extend the aggregate it is applied to.
        """
        if self.CREATES:
            if aggregate is not None or self.AGGREGATE is None:
                raise ChainBreakError(f"{self.TOPIC} can only start an aggregate")
            if self.originator_version != 1 or self.prev != GENESIS:
                raise ChainBreakError(f"{self.TOPIC}: version 1 must link to the genesis value")
            aggregate = object.__new__(self.AGGREGATE)
            aggregate.start(self)
        else:
            if aggregate is None:
                raise ChainBreakError(f"{self.TOPIC} needs an existing aggregate")
            if self.OWNER_KIND != aggregate.KIND:
                raise ChainBreakError(f"{self.TOPIC} cannot apply to a {aggregate.KIND}")
            if self.originator_id.int != aggregate.id.int:  # not UUID.__eq__: hot
                raise ChainBreakError(
                    f"{self.TOPIC}: event of {self.originator_id} applied to {aggregate.id}"
                )
            if self.originator_version != aggregate.version + 1:
                raise ChainBreakError(
                    f"{aggregate.id}: version {self.originator_version} "
                    f"does not follow {aggregate.version}"
                )
            if self.prev != aggregate.chain_head:
                raise ChainBreakError(
                    f"{aggregate.id} version {self.originator_version}: prev does not "
                    f"match the digest of version {aggregate.version}"
                )
        self.apply(aggregate)
        aggregate.version = self.originator_version
        aggregate.modified_on = self.timestamp
        aggregate.chain_head = self.digest().hex()
        return aggregate


@lru_cache(maxsize=4096)
def _uuid_text(value: UUID) -> str:
    return str(value)


@cache
def _payload_fields(event_type: type[LedgerEvent]) -> tuple[str, ...]:
    return tuple(f for f in event_type.__struct_fields__ if f not in ENVELOPE_FIELDS)


def event_type_for_topic(topic: str) -> type[LedgerEvent] | None:
    """The registered event class of ``topic``, or None."""
    return _registry.get(topic)


def registered_topics() -> dict[str, type[LedgerEvent]]:
    return dict(_registry)
