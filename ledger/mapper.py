"""The one place events become stored bytes, and stored bytes become events.

``SealingMapper.to_stored_event`` digests the event's canonical body and
signs the digest with the ledger's signer. eventsourcing routes every event
of the application through its mapper, so no code path can store an unsigned
or unchained event (chaining itself is enforced by ``LedgerEvent.mutate``).

On the way back, :meth:`SealingMapper.verified_event` is the only way a row
becomes an event: the record rules of ``ledger.checks``, then the signer
judged by the trust fold *at the row's global position*, then the Ed25519
signature. A row without a position cannot be judged, so it is refused.
"""

from __future__ import annotations

import base64
import os
from bisect import bisect_left
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from uuid import UUID

import msgspec
from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import (
    Mapper,
    MapperDeserialisationError,
    Notification,
    StoredEvent,
    Transcoder,
)

from ledger import verified
from ledger.aggregate import LedgerSnapshot
from ledger.checks import RecordRejected, VerifyReason, decode_event
from ledger.errors import SigningError
from ledger.events import LedgerEvent
from ledger.keys import KeyPair
from ledger.records import MalformedRecordError, dashed_uuid, parse_record, sealed_state
from ledger.trust import TrustState
from ledger.vouched import VouchedDigests, decode_vouched, vouched_body

Row = tuple[int, Any, int, str, bytes]
"""(position, originator_id as stored, version, topic, state)."""
TrustSource = Callable[..., TrustState]

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
    """Every event of the ledger passes here on its way to storage and back."""

    def __init__(self, signer: KeyPair | None, trust: TrustSource | None = None) -> None:
        super().__init__(transcoder=MsgspecTranscoder())
        self.signer = signer
        self._trust = trust
        self._pool: ThreadPoolExecutor | None = None
        self._workers = os.cpu_count() or 1
        self._stored_ids: dict[Any, UUID | None] = {}
        """An ``originator_id`` as stored → the aggregate id it spells exactly
        as a signed ``id`` would (None: no signed id equals it)."""

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
        signer = self._signer()
        stored = seal_all(ledger_events, signer, self._pool, self._workers)
        for record in stored:  # our own signatures need no checking when read back
            state = record.state
            digest = bytes.fromhex(state[11:75].decode())
            verified.remember(signer.public_key, base64.b64decode(state[-90:-2]), digest)
        return stored

    def forget_verified(self) -> None:
        """Drop the signatures remembered as good (:mod:`ledger.verified`, the
        whole process's): the next reads check every signature again
        (benchmarks measure cold reads with this)."""
        verified.forget()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def verified_event(self, row: Row, trust: TrustState | None = None) -> LedgerEvent:
        """The event in ``row`` after every check; raises ``RecordRejected``
        naming the row. ``trust`` defaults to the ledger's verified fold."""
        seq, originator_id, version, topic, state = row
        try:
            try:
                record = parse_record(seq, originator_id, version, topic, state)
            except MalformedRecordError as e:
                raise RecordRejected(VerifyReason.MALFORMED_RECORD, str(e)) from None
            event = decode_event(record)
            public = self._signer_key(event, seq, trust)
            self._check_signature(public, record.digest, record.signature)
        except RecordRejected as e:
            where = f"seq {seq} ({topic} of {dashed_uuid(originator_id)} v{version})"
            raise RecordRejected(e.reason, f"{where}: {e.detail}") from None
        return event

    def _signer_key(self, event: LedgerEvent, seq: int, trust: TrustState | None) -> bytes:
        if trust is not None:
            return trust.signer(event, seq)
        if self._trust is None:
            raise RecordRejected(VerifyReason.UNKNOWN_KEY, "no trust to judge the signer by")
        try:
            return self._trust(refresh=False).signer(event, seq)
        except RecordRejected as e:
            if e.reason not in (VerifyReason.UNKNOWN_KEY, VerifyReason.NO_GENESIS):
                raise
            # Another process may have trusted the key since trust was read.
            return self._trust(refresh=True).signer(event, seq)

    def _check_signature(self, public: bytes, digest: bytes, signature: bytes) -> None:
        if not verified.verifies(public, signature, digest):
            raise RecordRejected(
                VerifyReason.BAD_SIGNATURE, "the signature does not verify with the signing key"
            )

    def read_events(
        self, rows: Sequence[Row], vouched: VouchedDigests | None = None
    ) -> list[LedgerEvent]:
        """The events in ``rows`` (ascending positions): each taken on a
        verified checkpoint's word when ``vouched`` holds a digest for its
        position and its body hashes to it (``ledger.vouched``), else after
        every check (:meth:`verified_event`), which also names what is wrong
        with a record the checkpoint does not vouch for as it is stored.
        Either way the stored columns must equal the signed body."""
        if vouched is None or not rows or rows[0][0] > vouched.last_seq:
            return [self.verified_event(row) for row in rows]
        seqs, digests, covered = vouched.seqs, vouched.digests, len(vouched.seqs)
        events: list[LedgerEvent] = []
        append, vouched_read, verified = events.append, self._vouched_event, self.verified_event
        index = 0
        for row in rows:
            seq = row[0]
            # Rows ascend: the position after the last match is the usual one,
            # else search from the last (a match or where ``seq`` would go).
            after = index + 1
            if after < covered and seqs[after] == seq:
                index = after
            else:
                index = bisect_left(seqs, seq, index)
            event = None
            if index < covered and seqs[index] == seq:
                event = vouched_read(row, digests[32 * index : 32 * index + 32])
            append(event if event is not None else verified(row))
        return events

    def _vouched_event(self, row: Row, digest: bytes) -> LedgerEvent | None:
        """None whenever anything differs from the vouched record: the caller
        then reads it the ordinary way."""
        _, originator_id, version, topic, state = row
        body = vouched_body(state, digest)
        if body is None:
            return None
        event = decode_vouched(topic, body)
        if event is None or event.originator_version != version:
            return None
        stored_id = self._stored_ids.get(originator_id, _UNSEEN)
        if stored_id is _UNSEEN:
            stored_id = self._stored_ids[originator_id] = _exact_uuid(originator_id)
        # UUIDs compared by value without UUID.__eq__ (a Python call per record).
        if stored_id is None or event.originator_id.int != stored_id.int:
            return None
        # The body is the vouched one, so its digest is the record's.
        event.__dict__["_sealing_input"] = (body, digest)
        return event

    def to_domain_event(self, stored_event: StoredEvent) -> DomainEventProtocol[UUID]:
        if not isinstance(stored_event, Notification):
            # Without its global position a record's signer cannot be judged.
            raise MapperDeserialisationError(
                f"record {stored_event.originator_id} version {stored_event.originator_version} "
                "was read without its position; read it through Ledger.load or verified_events"
            )
        return self.verified_event(
            (
                stored_event.id,
                stored_event.originator_id,
                stored_event.originator_version,
                stored_event.topic,
                stored_event.state,
            )
        )


_UNSEEN: Any = object()


def _exact_uuid(stored: UUID | str) -> UUID | None:
    """The aggregate id the stored column names, when it is spelt exactly as
    the signed body's ``id`` is (``dashed_uuid``); None for any other spelling."""
    if isinstance(stored, UUID):
        return stored
    dashed = dashed_uuid(stored)
    try:
        value = UUID(dashed)
    except ValueError:
        return None
    return value if str(value) == dashed else None


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
