"""Canonical bytes, digests and the fixed values of the hash chain.

The canonical encoding is JSON with object keys sorted by code point, no
insignificant whitespace, UTF-8 output and only strings, integers, booleans,
null, arrays and objects (never floats). For that value space it equals
RFC 8785 (JCS) whenever keys are in the Basic Multilingual Plane.
``guides/ledger-format.md`` documents every byte.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import msgspec

EVENT_DIGEST_TAG = b"chassis.ledger.event.v1\x00"
"""Domain-separation prefix of every event digest input."""

GENESIS = "0" * 64
"""The ``prev`` value of version 1 of every aggregate (32 zero bytes, hex)."""

_encoder = msgspec.json.Encoder(order="sorted")


def canonical_json(value: Any) -> bytes:
    """Encode ``value`` canonically. Raises ``TypeError`` for unsupported types."""
    return _encoder.encode(value)


def format_timestamp(moment: datetime) -> str:
    """UTC, always six fractional digits, ``Z`` suffix: one string per instant."""
    if moment.tzinfo is None:
        raise ValueError("ledger timestamps must be timezone-aware")
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    return f"{moment.isoformat(timespec='microseconds')[:26]}Z"


def parse_timestamp(text: str) -> datetime:
    """Inverse of :func:`format_timestamp`. Raises ``ValueError`` on other forms."""
    if len(text) != 27 or text[-1] != "Z" or text[10] != "T":
        raise ValueError(f"not a canonical ledger timestamp: {text!r}")
    moment = datetime.fromisoformat(text[:26]).replace(tzinfo=UTC)
    if format_timestamp(moment) != text:
        raise ValueError(f"not a canonical ledger timestamp: {text!r}")
    return moment


def event_body(
    *,
    originator_id: UUID,
    version: int,
    timestamp: datetime,
    topic: str,
    payload: dict[str, Any],
    prev: str,
    keyid: str,
) -> dict[str, Any]:
    """The signed object of one event, before encoding."""
    return {
        "id": str(originator_id),
        "keyid": keyid,
        "payload": payload,
        "prev": prev,
        "timestamp": format_timestamp(timestamp),
        "topic": topic,
        "version": version,
    }


def event_digest(canonical_body: bytes) -> bytes:
    """``sha256(EVENT_DIGEST_TAG || canonical_body)``, 32 raw bytes."""
    return hashlib.sha256(EVENT_DIGEST_TAG + canonical_body).digest()
