"""The rules one stored record must satisfy, checked the same way everywhere.

The mapper applies them on every read that feeds a decision, and full
verification (``proofs.chain``) applies them to every row: both call
:func:`decode_event`, so the application and ``chassis ledger verify`` can
never read one signed record two ways. ``guides/ledger-format.md`` §8 lists
the reasons in the order they are checked.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any

import msgspec

from ledger.canonical import event_digest, parse_timestamp
from ledger.errors import LedgerError
from ledger.events import LedgerEvent, event_type_for_topic
from ledger.records import SealedRecord

INT_MIN, INT_MAX = -(2**63), 2**63 - 1
"""Every integer in a signed body is a signed 64-bit integer."""

_HEX64 = re.compile(r"[0-9a-f]{64}")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_LONG_DIGITS = re.compile(rb"[0-9]{19}")


class VerifyReason(StrEnum):
    """Why a record (or the ledger around it) was rejected: stable codes."""

    MALFORMED_RECORD = "malformed-record"
    RECORD_MISMATCH = "record-mismatch"
    VERSION_MISMATCH = "version-mismatch"
    BAD_NUMBER = "bad-number"
    BAD_TIMESTAMP = "bad-timestamp"
    UNKNOWN_TOPIC = "unknown-topic"
    BAD_PAYLOAD = "bad-payload"
    NON_CANONICAL = "non-canonical"
    DIGEST_MISMATCH = "digest-mismatch"
    MISSING_VERSION = "missing-version"
    BROKEN_LINK = "broken-link"
    WRONG_AGGREGATE = "wrong-aggregate"
    NO_GENESIS = "no-genesis"
    SECOND_GENESIS = "second-genesis"
    ROOT_MISMATCH = "root-mismatch"
    UNKNOWN_KEY = "unknown-key"
    REVOKED_KEY = "revoked-key"
    ROLE_NOT_ALLOWED = "role-not-allowed"
    BAD_TRUST_PAYLOAD = "bad-trust-payload"
    UNKNOWN_ROLE = "unknown-role"
    KEY_RETRUSTED = "key-retrusted"
    BAD_SIGNATURE = "bad-signature"


class RecordRejected(LedgerError):
    """A stored record breaks a rule of the format; nothing may act on it."""

    exit_code = 8

    def __init__(self, reason: VerifyReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


def _reject_float(text: str) -> Any:
    raise ValueError(f"a number with a fraction or exponent ({text})")


_generic = msgspec.json.Decoder(float_hook=_reject_float)


def _check_ints(value: Any) -> None:
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        if not INT_MIN <= value <= INT_MAX:
            raise RecordRejected(VerifyReason.BAD_NUMBER, f"integer {value} is outside 64 bits")
    elif isinstance(value, dict):
        for item in value.values():
            _check_ints(item)
    elif isinstance(value, list):
        for item in value:
            _check_ints(item)


def decode_event(record: SealedRecord) -> LedgerEvent:
    """The event a parsed record holds, after every rule that needs no context
    (no trust, no neighbours): the stored columns equal the signed body, the
    body is the canonical encoding of a value that uses only 64-bit integers
    and no floats, its fields have their documented forms, its payload has
    exactly the topic's schema, and the digest is sha256 of the body.

    Raises ``RecordRejected`` with the first rule broken, in the order of
    ``guides/ledger-format.md`` §8.
    """
    body = record.body
    if body.id != record.originator_id or body.topic != record.topic:
        raise RecordRejected(
            VerifyReason.RECORD_MISMATCH, "stored columns differ from the signed event"
        )
    if body.version != record.version:
        raise RecordRejected(
            VerifyReason.VERSION_MISMATCH,
            f"stored as version {record.version} but signed as version {body.version}",
        )
    try:
        value = _generic.decode(record.body_bytes)
    except msgspec.ValidationError as e:  # raised through the float hook
        raise RecordRejected(VerifyReason.BAD_NUMBER, str(e)) from None
    except msgspec.DecodeError as e:  # e.g. invalid UTF-8 inside the payload
        raise RecordRejected(VerifyReason.MALFORMED_RECORD, f"body: {e}") from None
    if _LONG_DIGITS.search(record.body_bytes):
        _check_ints(value)
    if not 1 <= body.version <= INT_MAX:
        raise RecordRejected(VerifyReason.BAD_NUMBER, f"version {body.version} is out of range")
    try:
        timestamp = parse_timestamp(body.timestamp)
    except ValueError as e:
        raise RecordRejected(VerifyReason.BAD_TIMESTAMP, str(e)) from None
    if not _UUID.fullmatch(body.id):
        raise RecordRejected(VerifyReason.MALFORMED_RECORD, "id is not a lower-case UUID")
    for name in ("keyid", "prev"):
        if not _HEX64.fullmatch(getattr(body, name)):
            raise RecordRejected(
                VerifyReason.MALFORMED_RECORD, f"{name} is not 64 lower-case hex digits"
            )
    event_type = event_type_for_topic(record.topic)
    if event_type is None:
        raise RecordRejected(
            VerifyReason.UNKNOWN_TOPIC, f"no event type has topic {record.topic!r}"
        )
    payload = value["payload"]
    if not isinstance(payload, dict):
        raise RecordRejected(VerifyReason.BAD_PAYLOAD, "payload is not an object")
    try:
        event = msgspec.convert(
            {
                **payload,
                "originator_id": body.id,
                "originator_version": body.version,
                "timestamp": timestamp,
                "prev": body.prev,
                "keyid": body.keyid,
            },
            event_type,
        )
    except msgspec.ValidationError as e:
        raise RecordRejected(VerifyReason.BAD_PAYLOAD, f"{record.topic}: {e}") from None
    # Fast path: the typed event re-encodes to exactly the signed bytes. Only
    # when it does not, find which rule was broken (schema first).
    if event.canonical() != record.body_bytes:
        if event.payload() != payload:
            raise RecordRejected(
                VerifyReason.BAD_PAYLOAD, f"{record.topic}: members outside the topic's schema"
            )
        raise RecordRejected(
            VerifyReason.NON_CANONICAL, "the signed body is not in canonical form"
        )
    if event_digest(record.body_bytes) != record.digest:
        raise RecordRejected(
            VerifyReason.DIGEST_MISMATCH, "the event's bytes do not hash to its digest"
        )
    # The body re-encodes to itself, so the event's cached digest is the record's.
    event.__dict__["_sealing_input"] = (record.body_bytes, record.digest)
    return event
