"""Sealing: the one place an event becomes stored bytes.

``SealingMapper.to_stored_event`` digests the event's canonical body and
signs the digest with the ledger's signer. eventsourcing routes every event
of the application through its mapper, so no code path can store an unsigned
or unchained event (chaining itself is enforced by ``LedgerEvent.mutate``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
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
from ledger.canonical import parse_timestamp
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


PARALLEL_SIGNING_MIN = 64
"""Batches at least this large are signed on every core."""


def seal(event: LedgerEvent, signer: KeyPair) -> bytes:
    """The stored ``state`` bytes of ``event``: canonical, digested, signed."""
    return seal_all([event], signer)[0].state


def seal_all(
    events: Sequence[LedgerEvent],
    signer: KeyPair,
    pool: ThreadPoolExecutor | None = None,
    workers: int = 1,
) -> list[StoredEvent]:
    """Seal ``events`` in order; with a pool, large batches sign on ``workers`` threads."""
    for event in events:
        if event.keyid != signer.keyid:
            raise SigningError(
                f"event {event.TOPIC} is attributed to key {event.keyid[:16]} "
                f"but the signer is {signer.keyid[:16]}"
            )
    inputs = [event.sealing_input() for event in events]
    digests = [digest for _, digest in inputs]
    if pool is not None and workers > 1 and len(digests) >= PARALLEL_SIGNING_MIN:
        # The calling thread signs the first share itself while the pool signs the rest.
        share = -(-len(digests) // workers)
        sign_many = _sign_many(signer)
        rest = [
            pool.submit(sign_many, digests[i : i + share])
            for i in range(share, len(digests), share)
        ]
        signatures = sign_many(digests[:share])
        for future in rest:
            signatures.extend(future.result())
    else:
        signatures = [signer.sign(digest) for digest in digests]
    return [
        StoredEvent(
            originator_id=event.originator_id,
            originator_version=event.originator_version,
            topic=event.TOPIC,
            state=sealed_state(digest, body, signature),
        )
        for event, (body, digest), signature in zip(events, inputs, signatures, strict=True)
    ]


def _sign_many(signer: KeyPair) -> Callable[[list[bytes]], list[bytes]]:
    def sign(digests: list[bytes]) -> list[bytes]:
        return [signer.sign(digest) for digest in digests]

    return sign


class SealingMapper(Mapper[UUID]):
    """Every event of the ledger passes here on its way to storage."""

    def __init__(self, signer: KeyPair | None) -> None:
        super().__init__(transcoder=MsgspecTranscoder())
        self.signer = signer
        self._pool: ThreadPoolExecutor | None = None
        self._workers = os.cpu_count() or 1

    def _signer(self) -> KeyPair:
        if self.signer is None:
            raise SigningError("this ledger was opened without a signing key")
        return self.signer

    def to_stored_event(self, domain_event: DomainEventProtocol[UUID]) -> StoredEvent:
        return self.to_stored_events([domain_event])[0]

    def to_stored_events(self, events: Sequence[DomainEventProtocol[UUID]]) -> list[StoredEvent]:
        ledger_events: list[LedgerEvent] = []
        for event in events:
            if not isinstance(event, LedgerEvent):
                raise SigningError(f"{type(event).__qualname__} is not a ledger event")
            ledger_events.append(event)
        if self._pool is None and self._workers > 1 and len(ledger_events) >= PARALLEL_SIGNING_MIN:
            self._pool = ThreadPoolExecutor(self._workers - 1, thread_name_prefix="sign")
        return seal_all(ledger_events, self._signer(), self._pool, self._workers)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

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
