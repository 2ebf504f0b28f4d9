"""Records vouched for by a verified checkpoint, and reading them without
checking each signature again.

Chassis signs a checkpoint only over records it verified in full first
(``chassis ledger checkpoint``: every rule of ``guides/ledger-format.md`` §8,
each signature included). A checkpoint's signature covers its Merkle root,
the root covers the digest of every record in the tree, and each digest
covers the record's signed body. So once a checkpoint is verified (its note
signed by a key holding role ``checkpoint``) and its root recomputed from
the stored digests of exactly its records, each of those digests is one the
checkpoint's signer verified: a body that hashes to it is, byte for byte,
the body that was verified, with its signature, its signer's trust at its
position and its format. Reading it again needs its digest recomputed, not
its signature.

Nothing here verifies a checkpoint: ``proofs.vouch`` does, and hands the
digests it vouched for to readers as :class:`VouchedDigests`. What a reader
may skip for a body whose hash is one of them is exactly what the digest
proves was checked before; everything else (the stored columns against the
body, the links between versions) is still checked on every read, and a
record that does not hash to its vouched digest is read the ordinary way
(``SealingMapper.verified_event``), which refuses it with its reason.
"""

from __future__ import annotations

from array import array
from binascii import hexlify
from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from hashlib import sha256
from typing import Any
from uuid import UUID

import msgspec

from ledger.canonical import EVENT_DIGEST_TAG
from ledger.events import ENVELOPE_FIELDS, LedgerEvent, event_type_for_topic

# A record has one spelling (guides/ledger-format.md §2), so its parts sit at
# fixed offsets: '{"digest":"' HEX64 '","event":' BODY ',"sig":"' B64(88) '"}'.
_PREFIX = b'{"digest":"'
_MIDDLE = b'","event":'
_SIG = b',"sig":"'
_END = b'"}'
DIGEST_AT = len(_PREFIX)  # 11
BODY_AT = DIGEST_AT + 64 + len(_MIDDLE)  # 85
TAIL = len(_SIG) + 88 + len(_END)  # 98


@dataclass(frozen=True)
class VouchedDigests:
    """The digests of the records a verified checkpoint covers, by sequence
    number: ``seqs`` ascending, ``digests`` their 32-byte digests end to end."""

    seqs: array[int]
    digests: bytes
    tree_size: int
    """The checkpoint's tree size (``len(seqs)``)."""

    @property
    def last_seq(self) -> int:
        return self.seqs[-1] if self.seqs else 0

    def digest(self, seq: int) -> bytes | None:
        """The vouched digest of the record at ``seq`` (None: not covered)."""
        index = bisect_left(self.seqs, seq)
        if index == len(self.seqs) or self.seqs[index] != seq:
            return None
        return self.digests[32 * index : 32 * index + 32]


VouchSource = Callable[[int, Sequence[str]], "VouchedDigests | None"]
"""``(position, topics)`` → the digests a verified checkpoint vouches for, or
None when there is none (or checking one would cost more than it saves for
the records of ``topics`` after ``position``)."""


def vouched_body(state: bytes, digest: bytes) -> bytes | None:
    """The signed body of a stored ``state`` when it hashes to ``digest``
    (and the record is laid out as one with that digest is); None otherwise."""
    if (
        len(state) <= BODY_AT + TAIL
        or state[:BODY_AT] != _PREFIX + hexlify(digest) + _MIDDLE
        or state[-TAIL : -TAIL + len(_SIG)] != _SIG
        or state[-2:] != _END
    ):
        return None
    body = state[BODY_AT:-TAIL]
    if sha256(EVENT_DIGEST_TAG + body).digest() != digest:
        return None
    return body


def vouched_event(topic: str, state: bytes, digest: bytes) -> LedgerEvent | None:
    """The event of a stored ``state`` whose body hashes to the vouched
    ``digest``, decoded as ``topic``'s (None: read it the ordinary way)."""
    body = vouched_body(state, digest)
    return None if body is None else decode_vouched(topic, body)


@cache
def _body_decoder(event_type: type[LedgerEvent]) -> tuple[msgspec.json.Decoder[Any], bool]:
    """A typed decoder of the whole body of ``event_type``'s records: the
    envelope members and the payload as a Struct of the event's own fields
    (same types, same defaults), so one msgspec call does what
    ``decode_event``'s generic decode and ``msgspec.convert`` do together."""
    payload_fields: list[Any] = []
    for info in msgspec.structs.fields(event_type):
        if info.name in ENVELOPE_FIELDS:
            continue
        if info.required:
            payload_fields.append((info.name, info.type))
        elif info.default is not msgspec.NODEFAULT:
            payload_fields.append((info.name, info.type, info.default))
        else:
            factory = info.default_factory
            payload_fields.append((info.name, info.type, msgspec.field(default_factory=factory)))
    payload = msgspec.defstruct(
        f"{event_type.__qualname__}.Payload", payload_fields, forbid_unknown_fields=True
    )
    body = msgspec.defstruct(
        f"{event_type.__qualname__}.Body",
        [
            ("id", UUID),
            ("keyid", str),
            ("payload", payload),
            ("prev", str),
            ("timestamp", datetime),
            ("topic", str),
            ("version", int),
        ],
        forbid_unknown_fields=True,
    )
    return msgspec.json.Decoder(body), bool(payload_fields)


_DECODERS: dict[str, tuple[type[LedgerEvent], msgspec.json.Decoder[Any], bool]] = {}


def decode_vouched(topic: str, body: bytes) -> LedgerEvent | None:
    """The event of a vouched ``body`` (None when it does not decode as
    ``topic``'s event: then the caller reads the record the ordinary way).

    The body was verified when the checkpoint was signed, so it is canonical
    and within its schema; this decodes it into the same event
    ``ledger.checks.decode_event`` gives (tests compare the two)."""
    known = _DECODERS.get(topic)
    if known is None:
        event_type = event_type_for_topic(topic)
        if event_type is None:
            return None
        known = _DECODERS[topic] = (event_type, *_body_decoder(event_type))
    event_type, decoder, has_payload = known
    try:
        wire = decoder.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None
    if wire.topic != topic:
        return None
    fields = msgspec.structs.asdict(wire.payload) if has_payload else {}
    try:
        event = event_type(
            originator_id=wire.id,
            originator_version=wire.version,
            timestamp=wire.timestamp,
            prev=wire.prev,
            keyid=wire.keyid,
            **fields,
        )
    except (TypeError, ValueError):
        return None
    return event
