"""Sealing: the one place an event becomes stored bytes.

``SealingMapper.to_stored_event`` digests the event's canonical body and
signs the digest with the ledger's signer. eventsourcing routes every event
of the application through its mapper, so no code path can store an unsigned
or unchained event (chaining itself is enforced by ``LedgerEvent.mutate``).
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import msgspec
from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import (
    Mapper,
    MapperDeserialisationError,
    StoredEvent,
    Transcoder,
)

from ledger.aggregate import LedgerSnapshot
from ledger.canonical import event_digest, parse_timestamp
from ledger.errors import SigningError
from ledger.events import LedgerEvent, event_type_for_topic
from ledger.keys import KeyPair
from ledger.records import MalformedRecordError, parse_record, sealed_state

SNAPSHOT_TOPIC = "chassis.snapshot.v1"


class MsgspecTranscoder(Transcoder):
    """JSON via msgspec; the stock JSONTranscoder neither sorts keys nor knows Structs."""

    def encode(self, obj: Any) -> bytes:
        return msgspec.json.encode(obj)

    def decode(self, data: bytes) -> Any:
        return msgspec.json.decode(data)


def seal(event: LedgerEvent, signer: KeyPair) -> bytes:
    """The stored ``state`` bytes of ``event``: canonical, digested, signed."""
    if event.keyid != signer.keyid:
        raise SigningError(
            f"event {event.TOPIC} is attributed to key {event.keyid[:16]} "
            f"but the signer is {signer.keyid[:16]}"
        )
    body = event.canonical()
    digest = event_digest(body)
    return sealed_state(digest, body, signer.sign(digest))


class SealingMapper(Mapper[UUID]):
    def __init__(self, signer: KeyPair | None) -> None:
        super().__init__(transcoder=MsgspecTranscoder())
        self.signer = signer

    def to_stored_event(self, domain_event: DomainEventProtocol[UUID]) -> StoredEvent:
        if not isinstance(domain_event, LedgerEvent):
            raise SigningError(f"{type(domain_event).__qualname__} is not a ledger event")
        if self.signer is None:
            raise SigningError("this ledger was opened without a signing key")
        return StoredEvent(
            originator_id=domain_event.originator_id,
            originator_version=domain_event.originator_version,
            topic=domain_event.TOPIC,
            state=seal(domain_event, self.signer),
        )

    def to_domain_event(self, stored_event: StoredEvent) -> DomainEventProtocol[UUID]:
        event_class = event_type_for_topic(stored_event.topic)
        if event_class is None:
            raise MapperDeserialisationError(f"unknown event topic {stored_event.topic!r}")
        try:
            record = parse_record(
                0,
                stored_event.originator_id,
                stored_event.originator_version,
                stored_event.topic,
                stored_event.state,
            )
            fields = record.payload()
            fields.update(
                originator_id=stored_event.originator_id,
                originator_version=stored_event.originator_version,
                timestamp=parse_timestamp(record.body.timestamp),
                prev=record.body.prev,
                keyid=record.body.keyid,
            )
            return msgspec.convert(fields, event_class)
        except (MalformedRecordError, msgspec.ValidationError, ValueError) as e:
            raise MapperDeserialisationError(
                f"record {stored_event.originator_id} version "
                f"{stored_event.originator_version}: {e}"
            ) from e


class SnapshotMapper(Mapper[UUID]):
    """Snapshots are a cache, stored as plain JSON in their own table."""

    def __init__(self) -> None:
        super().__init__(transcoder=MsgspecTranscoder())

    def to_stored_event(self, domain_event: DomainEventProtocol[UUID]) -> StoredEvent:
        if not isinstance(domain_event, LedgerSnapshot):
            raise TypeError(f"{type(domain_event).__qualname__} is not a snapshot")
        return StoredEvent(
            originator_id=domain_event.originator_id,
            originator_version=domain_event.originator_version,
            topic=SNAPSHOT_TOPIC,
            state=msgspec.json.encode(domain_event),
        )

    def to_domain_event(self, stored_event: StoredEvent) -> DomainEventProtocol[UUID]:
        return msgspec.json.decode(stored_event.state, type=LedgerSnapshot)
