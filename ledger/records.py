"""The stored record of one event, parsed strictly.

A record is the row eventsourcing stores: ``(originator_id,
originator_version, topic, state)`` plus its position in the global order.
``state`` is the canonical JSON ``{"digest": HEX, "event": BODY, "sig": B64}``
where ``BODY`` is the canonical encoding that was digested and signed.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import msgspec


class MalformedRecordError(ValueError):
    """A stored row does not have the documented shape."""


class _State(msgspec.Struct, forbid_unknown_fields=True):
    digest: str
    event: msgspec.Raw
    sig: str


class EventBody(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    id: str
    keyid: str
    payload: msgspec.Raw
    prev: str
    timestamp: str
    topic: str
    version: int


_state_decoder = msgspec.json.Decoder(_State)
_body_decoder = msgspec.json.Decoder(EventBody)


@dataclass(frozen=True, slots=True)
class SealedRecord:
    """A parsed record. Nothing here is verified yet."""

    seq: int
    originator_id: str
    version: int
    topic: str
    body: EventBody
    body_bytes: bytes
    digest: bytes
    signature: bytes

    def payload(self) -> dict[str, Any]:
        result: dict[str, Any] = msgspec.json.decode(self.body.payload)
        return result


def _hex32(text: str, what: str) -> bytes:
    if len(text) != 64:
        raise MalformedRecordError(f"{what} is not 64 hex digits")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise MalformedRecordError(f"{what} is not 64 hex digits") from None


def sealed_state(digest: bytes, body: bytes, signature: bytes) -> bytes:
    """The stored ``state``: canonical JSON of digest, event body and signature."""
    return (
        b'{"digest":"'
        + digest.hex().encode()
        + b'","event":'
        + body
        + b',"sig":"'
        + base64.b64encode(signature)
        + b'"}'
    )


def dashed_uuid(value: UUID | str) -> str:
    """The aggregate id column exactly as stored, in the signed body's form.

    SQLite stores 32 lower-case hex digits and PostgreSQL a ``uuid``. Any
    other spelling (upper case, say) is kept as it is, so it differs from the
    signed ``id`` and is rejected, instead of being read as the aggregate by
    one reader while the application's exact-match queries never see it."""
    if isinstance(value, UUID):
        return str(value)
    if len(value) == 32:
        return f"{value[:8]}-{value[8:12]}-{value[12:16]}-{value[16:20]}-{value[20:]}"
    return value


def parse_record(
    seq: int, originator_id: UUID | str, version: int, topic: str, state: bytes
) -> SealedRecord:
    """Parse a stored row. Raises ``MalformedRecordError`` naming what is wrong."""
    try:
        outer = _state_decoder.decode(state)
        body_bytes = bytes(outer.event)
        body = _body_decoder.decode(body_bytes)
        signature = base64.b64decode(outer.sig, validate=True)
    except (msgspec.DecodeError, binascii.Error, UnicodeDecodeError) as e:
        raise MalformedRecordError(f"state is not a sealed ledger record: {e}") from None
    if len(signature) != 64:
        raise MalformedRecordError("signature is not 64 bytes")
    digest = _hex32(outer.digest, "digest")
    _hex32(body.prev, "prev")
    # Only one byte string is a valid record for these parts: reject any other
    # spelling (whitespace, key order, upper-case hex, non-canonical base64).
    if state != sealed_state(digest, body_bytes, signature):
        raise MalformedRecordError("state is not in canonical form")
    return SealedRecord(
        seq=seq,
        originator_id=dashed_uuid(originator_id),
        version=version,
        topic=topic,
        body=body,
        body_bytes=body_bytes,
        digest=digest,
        signature=signature,
    )
