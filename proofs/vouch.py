"""Checkpoint-vouched reads: which records a verified checkpoint vouches for.

A reader about to verify many records one by one (projections' first
catch-up, a rebuild) may instead take the records a checkpoint covers on the
checkpoint's word (``ledger.vouched`` says why that is sound): Chassis signs
a checkpoint only over records it verified in full (``chassis ledger
checkpoint`` runs ``proofs.chain.verify_tail`` first).

:class:`CheckpointVouch` finds the latest stored checkpoint, reads the stored
digest of each record it covers (all records, in global order, whatever
their topic), recomputes the RFC 9162 root from them, and checks the note's
signature by a key that held role ``checkpoint`` as of the tree *and* has
not been revoked since (a revoked key vouches for nothing here; ``ledger
verify`` still accepts what it signed while valid). Only when all of that
holds are the digests handed out; otherwise there is nothing vouched and
every record is verified as before. It never fails a read: a checkpoint
that does not hold is the verifier's business (``chassis ledger verify``),
and the records themselves still get every check on the ordinary path.
"""

from __future__ import annotations

import hashlib
from array import array
from binascii import Error as HexError
from binascii import unhexlify
from collections.abc import Sequence

from eventsourcing.persistence import PersistenceError

from ledger.application import Ledger
from ledger.checks import RecordRejected
from ledger.errors import ChainBreakError
from ledger.tables import SideTables
from ledger.vouched import VouchedDigests
from proofs.checkpoint_verify import checkpoint_keys
from proofs.fast import append_leaves
from proofs.merkle import CompactRange
from proofs.note import (
    NoteError,
    NoteVerifier,
    origin_for,
    parse_checkpoint,
    parse_note,
    verify_checkpoint,
)

WORTH = 24
"""Vouching reads and hashes the digest of every record the checkpoint covers
(≈ 1.5 µs each) to spare a signature check (≈ 50 µs) per record read: it is
used when the records to read are at least 1/WORTH of the tree."""

SCAN_PAGE = 16_384
"""Digests read per query (a power of two: whole aligned subtrees at a time)."""


def latest_note(ledger: Ledger) -> str | None:
    """The latest stored checkpoint note, unverified (None: none stored)."""
    tables = SideTables(ledger)
    try:
        with tables.transaction(commit=False) as c:
            c.execute("SELECT note FROM {chassis_checkpoints} ORDER BY size DESC LIMIT 1")
            row = c.fetchone()
    except PersistenceError:  # no checkpoint table yet: nothing was ever checkpointed
        return None
    return None if row is None else str(row[0])


def checkpoint_vouched(ledger: Ledger) -> VouchedDigests | None:
    """The digests the latest stored checkpoint vouches for, once it holds
    (see the module docstring); None when there is none that holds."""
    note = latest_note(ledger)
    if note is None:
        return None
    try:
        text, _ = parse_note(note)
        claimed = parse_checkpoint(text)
    except NoteError:
        return None
    if claimed.size == 0:
        return None
    scanned = _scan(ledger, claimed.size)
    if scanned is None:
        return None
    seqs, digests, root = scanned
    if root != claimed.root:
        return None
    try:
        trust = ledger.trust()
    except (RecordRejected, ChainBreakError):
        return None  # every read refuses this ledger anyway, with the reason
    if trust is None:
        return None
    origin = origin_for(trust.ledger_name)
    verifiers = [
        NoteVerifier(origin, bytes.fromhex(key.public_key))
        for key in checkpoint_keys(trust, seqs[-1] + 1)
        if key.active
    ]
    try:
        checkpoint = verify_checkpoint(note, verifiers, origin=origin)
    except NoteError:
        return None
    if (checkpoint.size, checkpoint.root) != (claimed.size, root):
        return None
    return VouchedDigests(seqs, digests, claimed.size)


def _scan(ledger: Ledger, size: int) -> tuple[array[int], bytes, bytes] | None:
    """Sequence numbers and stored digests of the first ``size`` records, and
    the Merkle root over them; None when there are fewer records or a stored
    digest is not 64 hex digits (the checkpoint cannot hold)."""
    sha256 = hashlib.sha256
    seqs: array[int] = array("q")
    digests = bytearray()
    stack: list[bytes] = []
    tree = 0
    after = 0
    while tree < size:
        batch = ledger.stored_digests(after, limit=min(SCAN_PAGE, size - tree))
        if not batch:
            return None
        try:
            raw = [unhexlify(hexdigest) for _, hexdigest in batch]
        except (HexError, ValueError):
            return None
        if any(len(d) != 32 for d in raw):
            return None
        tree = append_leaves(stack, tree, [sha256(b"\x00" + d).digest() for d in raw])
        seqs.extend(seq for seq, _ in batch)
        digests += b"".join(raw)
        after = batch[-1][0]
    return seqs, bytes(digests), CompactRange(tree, stack).root()


class CheckpointVouch:
    """A ``ledger.vouched.VouchSource`` for one command: checks the latest
    checkpoint at most once (the digests serve every view it catches up), and
    only when the records to read make it worth it (``WORTH``)."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._checked = False
        self._vouched: VouchedDigests | None = None

    def __call__(self, position: int, topics: Sequence[str]) -> VouchedDigests | None:
        if self._checked:
            return self._vouched
        note = latest_note(self.ledger)
        if note is None:
            return None
        try:
            size = parse_checkpoint(parse_note(note)[0]).size
        except NoteError:
            return None
        if self.ledger.count_after(position, topics) * WORTH < size:
            return None
        self._checked = True
        self._vouched = checkpoint_vouched(self.ledger)
        return self._vouched
