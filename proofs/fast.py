"""Fast verification: every digest and chain link, and the Merkle root, but no
signatures (``chassis ledger verify --fast``).

This is steps 1-6 of the verification algorithm (guides/ledger-format.md §8)
plus the RFC 6962 root over the event digests in global order. On its own it
shows only that the stored records hang together; it becomes evidence when
the root is compared with a *signed* checkpoint: the checkpoint's signature
covers the root, the root covers every digest, and each digest covers its
event. (What it does not look at is the ``sig`` field's content, which a
checkpoint does not cover either, nor whether the body holds exactly the
documented keys: both are full verification's job.)

It must run at ≥ 200,000 events/s on one CPython core, so the happy path is
written for speed: rows are cut at fixed offsets (a record has exactly one
spelling), the bodies of a batch are decoded in one msgspec call into a struct
holding only the fields the chain needs, the digest is compared in hex, and
the Merkle frontier is kept in local variables. Any failure is re-examined
through the strict parser of ``proofs.chain`` so that the reason reported is
the one full verification would give for the same record.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import islice
from uuid import UUID

import msgspec

from ledger.canonical import EVENT_DIGEST_TAG, GENESIS
from ledger.checks import RecordRejected, decode_event
from ledger.records import MalformedRecordError, dashed_uuid, parse_record
from proofs.chain import ChainFailure, LedgerVerificationError, StoredRow, VerifyReason
from proofs.merkle import CompactRange

BATCH = 512

_PREFIX = b'{"digest":"'
_MIDDLE = b'","event":'
_SIG = b',"sig":"'
_END = b'"}'
_DIGEST_AT = len(_PREFIX)  # 11
_BODY_AT = _DIGEST_AT + 64 + len(_MIDDLE)  # 85
_TAIL = len(_SIG) + 88 + len(_END)  # 98: the signature is always 88 base64 characters


class _Links(msgspec.Struct):
    """The fields of an event body that the chain needs; the rest is skipped."""

    id: str
    prev: str
    topic: str
    version: int


_one = msgspec.json.Decoder(_Links)
_many = msgspec.json.Decoder(list[_Links])


@dataclass(frozen=True)
class FastVerified:
    """What a fast verification established about the ledger."""

    size: int
    """Number of records: the Merkle tree size."""
    root: bytes
    """RFC 6962 root over the event digests in global order."""
    last_seq: int
    heads: Mapping[str, tuple[int, bytes]]
    """Aggregate id → (last version, last digest)."""
    frontier: CompactRange
    """The Merkle frontier at ``size``, to append later leaves to."""

    @property
    def aggregates(self) -> int:
        return len(self.heads)


class _Failed(Exception):
    def __init__(self, reason: VerifyReason, detail: str) -> None:
        self.reason = reason
        self.detail = detail


def _structure_ok(state: bytes) -> bool:
    return (
        state[:_DIGEST_AT] == _PREFIX
        and state[_DIGEST_AT + 64 : _BODY_AT] == _MIDDLE
        and state[-_TAIL : -_TAIL + len(_SIG)] == _SIG
        and state[-2:] == _END
        and len(state) > _BODY_AT + _TAIL
    )


def _batches(rows: Iterable[StoredRow]) -> Iterator[list[StoredRow]]:
    iterator = iter(rows)
    while batch := list(islice(iterator, BATCH)):
        yield batch


def _decode_one(state: bytes, body: bytes) -> _Links:
    if not _structure_ok(state):
        raise _Failed(VerifyReason.MALFORMED_RECORD, "not a sealed record")
    try:
        return _one.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError) as e:
        raise _Failed(VerifyReason.MALFORMED_RECORD, str(e)) from None


def append_leaves(stack: list[bytes], size: int, leaves: list[bytes]) -> int:
    """Append leaf hashes to the frontier ``stack`` of a tree of ``size``
    leaves; returns the new size. A batch that fills a whole aligned perfect
    subtree is reduced level by level (list comprehensions, no per-leaf loop)
    and joins the frontier as one node; any other batch goes leaf by leaf
    exactly as ``CompactRange.append``."""
    sha256 = hashlib.sha256
    count = len(leaves)
    if count and count & (count - 1) == 0 and size % count == 0:
        level = leaves
        while len(level) > 1:
            level = [
                sha256(b"\x01" + level[i] + level[i + 1]).digest() for i in range(0, len(level), 2)
            ]
        h = level[0]
        s = size // count
        while s & 1:
            h = sha256(b"\x01" + stack.pop() + h).digest()
            s >>= 1
        stack.append(h)
        return size + count
    for h in leaves:
        s = size
        while s & 1:
            h = sha256(b"\x01" + stack.pop() + h).digest()
            s >>= 1
        stack.append(h)
        size += 1
    return size


def fast_verify(rows: Iterable[StoredRow]) -> FastVerified:
    """Check digests and links of every record in global order and compute the
    Merkle root. Raises ``LedgerVerificationError`` naming the first bad record.
    """
    sha256 = hashlib.sha256
    tag = EVENT_DIGEST_TAG
    genesis = GENESIS
    heads: dict[str, tuple[int, str]] = {}
    ids: dict[UUID | str, str] = {}
    stack: list[bytes] = []  # the Merkle frontier, largest subtree first
    size = 0
    last_seq = 0
    try:
        for batch in _batches(rows):
            states = [row[4] for row in batch]
            bodies = [s[_BODY_AT:-_TAIL] for s in states]
            digests = [sha256(tag + b).digest() for b in bodies]
            hexes = [d.hex() for d in digests]
            links: list[_Links] | None = None
            if all(_structure_ok(s) for s in states):
                try:
                    links = _many.decode(b"[" + b",".join(bodies) + b"]")
                except (msgspec.DecodeError, UnicodeDecodeError):
                    links = None
                if links is not None and len(links) != len(batch):
                    links = None  # a body that is really two objects: check one by one
            for position, row in enumerate(batch):
                _, originator, version, topic, state = row
                try:
                    if links is not None:
                        body = links[position]
                    else:
                        body = _decode_one(state, bodies[position])
                    aggregate = ids.get(originator)
                    if aggregate is None:
                        aggregate = ids[originator] = dashed_uuid(originator)
                    if body.id != aggregate or body.topic != topic:
                        raise _Failed(
                            VerifyReason.RECORD_MISMATCH,
                            "stored columns differ from the signed event",
                        )
                    if body.version != version:
                        raise _Failed(
                            VerifyReason.VERSION_MISMATCH,
                            f"stored as version {version} but signed as version {body.version}",
                        )
                    digest_hex = hexes[position]
                    if state[_DIGEST_AT : _DIGEST_AT + 64] != digest_hex.encode():
                        raise _Failed(
                            VerifyReason.DIGEST_MISMATCH,
                            "the event's bytes do not hash to its digest",
                        )
                    last = heads.get(aggregate)
                    if last is None:
                        last_version, last_hex = 0, genesis
                    else:
                        last_version, last_hex = last
                    if version != last_version + 1:
                        missing = (
                            "no earlier version" if last_version == 0 else f"version {last_version}"
                        )
                        raise _Failed(
                            VerifyReason.MISSING_VERSION,
                            f"version {version} follows {missing}; expected {last_version + 1}",
                        )
                    if body.prev != last_hex:
                        raise _Failed(
                            VerifyReason.BROKEN_LINK,
                            "prev is not the digest of the previous version",
                        )
                except _Failed as failed:
                    raise LedgerVerificationError(_failure(row, failed)) from None
                heads[aggregate] = (version, digest_hex)
            size = append_leaves(stack, size, [sha256(b"\x00" + d).digest() for d in digests])
            last_seq = batch[-1][0]
    finally:
        close = getattr(rows, "close", None)
        if callable(close):
            close()  # release the store's read snapshot now, not at garbage collection
    frontier = CompactRange(size, stack)
    return FastVerified(
        size=size,
        root=frontier.root(),
        last_seq=last_seq,
        heads={a: (v, bytes.fromhex(d)) for a, (v, d) in heads.items()},
        frontier=frontier,
    )


def _failure(row: StoredRow, failed: _Failed) -> ChainFailure:
    """The failure full verification would report for this record: the
    record rules (strict parser, then ``decode_event``) come first whatever
    the fast path noticed."""
    seq, originator, version, topic, state = row
    reason, detail = failed.reason, failed.detail
    try:
        decode_event(parse_record(seq, originator, version, topic, state))
    except MalformedRecordError as e:
        reason, detail = VerifyReason.MALFORMED_RECORD, str(e)
    except RecordRejected as e:  # full verification checks the record's rules first
        reason, detail = e.reason, e.detail
    else:
        if reason is VerifyReason.MALFORMED_RECORD:
            detail = f"{detail} (the strict parser accepts it)"
    return ChainFailure(reason, seq, dashed_uuid(originator), version, topic, detail)
