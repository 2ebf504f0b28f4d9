"""Signing checkpoints of the ledger's Merkle log, and keeping them.

Chains alone cannot show that the tail of the ledger was cut off or that its
past was rewritten by someone holding a key: a checkpoint (a signed note of
tree size and root, guides/proofs.md) commits to every event up to its size,
and a later ledger must extend it. A signature is worth something only over
bytes that were verified first, so a new checkpoint extends the last one that
holds (signed by a key valid as of its tree, its stored frontier leading to
its root) with records verified here, incrementally
(``proofs.chain.verify_tail``): a forged row is never signed over.

This module is the service around the pure checks of
``proofs.checkpoint_verify``: it reads and writes the stored log, signs, and
keeps the workspace's ``.chassis/last-checkpoint`` (the newest checkpoint it
signed or verified, which a ledger rewritten behind its back must still be
consistent with). Checkpoints live in three places: the ledger's
``chassis_checkpoints`` table, that file, and files the operator kept
(``chassis ledger verify --against FILE``).
"""

from __future__ import annotations

import base64
from binascii import unhexlify
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chassis.workspace import Workspace
from ledger.aggregate import now
from ledger.application import Ledger, RawRow
from ledger.canonical import format_timestamp
from ledger.errors import ConflictError, NotAuthorisedError
from ledger.keys import KeyPair
from ledger.records import MalformedRecordError, dashed_uuid, parse_record
from ledger.tables import SideTables
from ledger.trust import Role, TrustState
from proofs.chain import ChainFailure, LedgerVerificationError, VerifyReason, verify_tail
from proofs.checkpoint_verify import (
    LAST_SEEN,
    LATEST,
    CheckpointError,
    CheckpointReason,
    describe,
    unverified,
    verify_anchor,
)
from proofs.ledger_verify import verified_trust
from proofs.log import StoredCheckpoint, TransparencyLog
from proofs.merkle import CompactRange, leaf_hash, perfect_subtree_root
from proofs.note import Checkpoint, NoteError, NoteVerifier, origin_for, sign_checkpoint

LAST_SEEN_FILE = "last-checkpoint"
_DIGEST = slice(11, 75)
"""Where a sealed record keeps its digest (hex): a record has one spelling."""


# The log.


def open_log(ledger: Ledger) -> TransparencyLog:
    return TransparencyLog(SideTables(ledger))


def malformed(row: RawRow, error: MalformedRecordError) -> LedgerVerificationError:
    seq, originator, version, topic, _ = row
    return LedgerVerificationError(
        ChainFailure(
            VerifyReason.MALFORMED_RECORD, seq, dashed_uuid(originator), version, topic, str(error)
        )
    )


def sync_log(ledger: Ledger, log: TransparencyLog) -> tuple[int, str | None]:
    """Append the records not yet in the log; returns the log size and the key
    id that signed the newest record (None for an empty ledger).

    The log is derived data and may hold unverified records: a checkpoint
    never signs its root without checking it (:func:`checkpoint_now`)."""
    size, last, _ = log.state()
    entries: list[tuple[int, bytes]] = []
    newest_keyid: str | None = None
    for row in ledger.scan(since=max(1, last)):
        try:
            record = parse_record(*row)
        except MalformedRecordError as e:
            raise malformed(row, e) from None
        if not entries and size:
            _check_last_leaf(log, size, last, record.seq, record.digest)
        entries.append((record.seq, record.digest))
        newest_keyid = record.body.keyid
    if not entries and size:
        _check_last_leaf(log, size, last, None, None)
    size = log.extend(entries) if entries and entries[-1][0] > last else log.size()
    return size, newest_keyid


def _check_last_leaf(
    log: TransparencyLog, size: int, last: int, seq: int | None, digest: bytes | None
) -> None:
    """The last logged event must still be there, unchanged: otherwise the log
    would go on from records that no longer exist, and a checkpoint of it
    would bless (or hide) a cut or rewritten ledger."""
    source = "the stored Merkle log"
    if seq != last or digest is None:
        raise CheckpointError(
            CheckpointReason.TRUNCATED,
            source,
            f"its last event (seq {last}, leaf {size - 1}) is no longer in the ledger; "
            "not extending it ('chassis ledger verify' says more)",
        )
    if leaf_hash(digest) != log.leaf_hashes(size - 1, size)[0]:
        raise CheckpointError(
            CheckpointReason.ROOT_MISMATCH,
            source,
            f"its last event (seq {last}, leaf {size - 1}) has changed; "
            "not extending it ('chassis ledger verify' says more)",
        )


# Signing.


def checkpoint_origin(ledger: Ledger) -> str:
    trust = ledger.trust()
    if trust is None:
        raise NotAuthorisedError(
            "this ledger has no root of trust yet (run 'chassis init')", reason="unknown-key"
        )
    return origin_for(trust.ledger_name)


def _require_role(ledger: Ledger, signer: KeyPair) -> None:
    trust = ledger.trust()
    if trust is None:
        raise NotAuthorisedError("this ledger has no root of trust yet", reason="unknown-key")
    try:
        trust.authorise(signer.keyid, Role.CHECKPOINT)
    except NotAuthorisedError as e:
        raise NotAuthorisedError(
            f"key {signer.name} ({signer.keyid[:16]}) cannot sign checkpoints: {e}",
            reason=e.reason,
        ) from None


def can_sign(ledger: Ledger, signer: KeyPair) -> bool:
    try:
        _require_role(ledger, signer)
    except NotAuthorisedError:
        return False
    return True


@dataclass(frozen=True)
class Checkpointed:
    checkpoint: StoredCheckpoint
    new: bool
    """False when nothing was appended since: the latest checkpoint is returned."""


@dataclass(frozen=True)
class _Anchor:
    """The last checkpoint that holds, which the next one extends."""

    checkpoint: StoredCheckpoint | None
    frontier: CompactRange
    last_seq: int
    """Sequence number of its last leaf (0: no checkpoint yet)."""


def _anchor(ledger: Ledger, log: TransparencyLog, pinned_root: str | None) -> _Anchor:
    """The latest stored checkpoint, checked (``verify_anchor``) with the
    stored frontier at its size: the log's own state when the log has not
    grown since (the usual case), else rebuilt from its leaves."""
    latest = log.latest_checkpoint()
    if latest is None:
        return _Anchor(None, CompactRange(), 0)
    size, last_seq, frontier = log.state()
    if size > latest.size:
        frontier = _frontier_at(log, latest.size)
        last_seq = log.seq_at(latest.size - 1) or 0
    elif size < latest.size:
        raise CheckpointError(
            CheckpointReason.TRUNCATED,
            "the stored Merkle log",
            f"it has {size} leaves but the latest checkpoint covers {latest.size}; "
            "not signing ('chassis ledger verify' says more)",
        )
    try:
        verify_anchor(latest.note, frontier, last_seq, _trust(ledger, pinned_root, fresh=False))
    except CheckpointError:  # another process may have changed trust since it was read
        verify_anchor(latest.note, frontier, last_seq, _trust(ledger, pinned_root, fresh=True))
    return _Anchor(latest, frontier, last_seq)


def _trust(ledger: Ledger, pinned_root: str | None, *, fresh: bool) -> TrustState:
    """The verified trust fold: this session's (read for the command's own
    authorisation), or re-read now."""
    cached = None if fresh else ledger.trust()
    if cached is not None and (pinned_root is None or cached.root_keyid == pinned_root):
        return cached
    return verified_trust(ledger, pinned_root)


def _frontier_at(log: TransparencyLog, size: int) -> CompactRange:
    hashes: list[bytes] = []
    start = 0
    for bit in reversed(range(size.bit_length())):
        width = 1 << bit
        if size & width:
            hashes.append(perfect_subtree_root(log, start, width))
            start += width
    return CompactRange(size, hashes)


def _verified_leaves(ledger: Ledger, since: int, pinned_root: str | None) -> list[bytes]:
    """Leaf hashes of the records from ``since`` on, each verified in full
    first (``verify_tail``: trust as of its position, linked to its verified
    predecessor). Raises ``LedgerVerificationError`` naming the first bad
    record."""
    verified = verify_tail(ledger, since, pinned_root=pinned_root)
    leaves: list[bytes] = []
    rows = ledger.scan(since=since)
    try:
        for row in rows:
            if row[0] > verified.last_seq:
                break
            try:
                leaves.append(leaf_hash(unhexlify(row[4][_DIGEST])))
            except ValueError:
                break  # changed since it was verified: counted below
    finally:
        close = getattr(rows, "close", None)
        if callable(close):
            close()  # release the store's read snapshot now
    if len(leaves) != verified.events:
        raise ConflictError("the ledger changed while its new events were verified; not signing")
    return leaves


def checkpoint_now(ledger: Ledger, ws: Workspace, signer: KeyPair) -> Checkpointed:
    """Verify what was appended since the last checkpoint that holds, then
    sign a checkpoint of it (exit 6 without role ``checkpoint``, exit 8 when
    a new record or the stored log does not verify). Refuses to sign a tree
    smaller than one already signed or seen: that would bless a truncated
    ledger."""
    _require_role(ledger, signer)
    origin = checkpoint_origin(ledger)
    pinned = ws.settings().root_keyid
    log = open_log(ledger)
    for attempt in range(2):
        anchor = _anchor(ledger, log, pinned)
        synced, last = sync_log(ledger, log)[0], log.last_seq()
        latest = anchor.checkpoint
        if latest is not None and (synced, last) == (latest.size, anchor.last_seq):
            return Checkpointed(latest, new=False)
        leaves = _verified_leaves(ledger, anchor.last_seq + 1, pinned)
        frontier = anchor.frontier.copy()
        frontier.extend(leaves)
        size, root = frontier.size, frontier.root()
        _agrees_with_log(ledger, log, anchor.frontier.size, leaves, root)
        latest = log.latest_checkpoint()
        if latest is not None and latest.size == size:
            return Checkpointed(_same_root(latest, root), new=False)
        try:
            _refuse_smaller(size, latest, read_last_seen(ws))
            break
        except CheckpointError:
            if attempt:
                raise  # not another writer that signed a larger tree meanwhile
    note = sign_checkpoint(Checkpoint(origin, size, root), origin, signer)
    log.put_checkpoint(size, root, note, signer.keyid, format_timestamp(now()))
    stored = log.checkpoint_at(size)
    assert stored is not None
    remember(ws, _same_root(stored, root).note)
    return Checkpointed(stored, new=stored.note == note)


def _same_root(stored: StoredCheckpoint, root: bytes) -> StoredCheckpoint:
    """A checkpoint of this size stored by another writer must have the root
    just verified here."""
    if unverified(stored.note).root != root:
        raise CheckpointError(
            CheckpointReason.ROOT_MISMATCH,
            describe(LATEST, None),
            f"its root for {stored.size} events is not the root of the verified records; "
            "not signing ('chassis ledger verify' says more)",
        )
    return stored


def _agrees_with_log(
    ledger: Ledger, log: TransparencyLog, start: int, leaves: list[bytes], root: bytes
) -> None:
    """The stored log must hold the leaves just verified, or the proofs it
    serves would not lead to the root about to be signed."""
    end = start + len(leaves)
    if log.size() < end:
        sync_log(ledger, log)  # records appended between the sync and the verification
    size, _, frontier = log.state()
    try:
        stored = list(log.leaf_hashes(start, end))
    except IndexError:
        stored = []
    if stored != leaves or (size == end and frontier.root() != root):
        raise CheckpointError(
            CheckpointReason.ROOT_MISMATCH,
            "the stored Merkle log",
            f"its leaves {start}..{end} are not the verified records; "
            "not signing ('chassis ledger verify' says more)",
        )


def _refuse_smaller(size: int, latest: StoredCheckpoint | None, seen: str | None) -> None:
    if latest is not None and latest.size > size:
        raise CheckpointError(
            CheckpointReason.TRUNCATED,
            describe(LATEST, None),
            f"it covers {latest.size} events but the ledger has {size}; not signing",
        )
    if seen is not None:
        seen_size = unverified(seen).size
        if seen_size > size:
            raise CheckpointError(
                CheckpointReason.TRUNCATED,
                describe(LAST_SEEN, "workspace"),
                f"it covers {seen_size} events but the ledger has {size}; not signing",
            )


def checkpoint_after(
    ledger: Ledger, ws: Workspace, signer: KeyPair, note: Callable[[str], None]
) -> StoredCheckpoint | None:
    """After a command: checkpoint whatever it appended, if the key may.

    Never fails the command for lack of a role; says so in one line when the
    acting key signed the newest, uncovered event.
    """
    if can_sign(ledger, signer):
        result = checkpoint_now(ledger, ws, signer)
        return result.checkpoint if result.new else None
    log = open_log(ledger)
    size, newest_keyid = sync_log(ledger, log)
    latest = log.latest_checkpoint()
    if size == 0 or (latest is not None and latest.size >= size):
        return None
    if newest_keyid == signer.keyid:
        waiting = size - (latest.size if latest else 0)
        note(
            f"chassis: note: no checkpoint signed: key {signer.name} "
            f"({signer.keyid[:16]}) does not hold role 'checkpoint'; {waiting} event(s) "
            "await one ('chassis --key KEY ledger checkpoint' with a key that does)"
        )
    return None


# The workspace's last-seen checkpoint.


def last_seen_path(ws: Workspace) -> Path:
    return ws.state_dir / LAST_SEEN_FILE


def read_last_seen(ws: Workspace) -> str | None:
    path = last_seen_path(ws)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


def remember(ws: Workspace, note: str) -> None:
    """Make ``note`` the last-seen checkpoint unless a larger one is remembered."""
    seen = read_last_seen(ws)
    if seen is not None:
        try:
            if unverified(seen).size > unverified(note).size:
                return
        except NoteError:
            pass  # an unreadable file is replaced
    path = last_seen_path(ws)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(note, encoding="utf-8")
    tmp.replace(path)


def checkpoint_json(stored: StoredCheckpoint, ledger: Ledger) -> dict[str, Any]:
    """``ledger checkpoint --json``: everything a stranger needs to check it."""
    checkpoint = unverified(stored.note)
    vkey = None
    trust = ledger.trust()
    if trust is not None and stored.keyid in trust.keys:
        public = bytes.fromhex(trust.keys[stored.keyid].public_key)
        vkey = NoteVerifier(checkpoint.origin, public).vkey()
    return {
        "origin": checkpoint.origin,
        "size": checkpoint.size,
        "root": base64.b64encode(checkpoint.root).decode(),
        "root_hex": checkpoint.root.hex(),
        "note": stored.note,
        "keyid": stored.keyid,
        "vkey": vkey,
        "created": stored.created,
    }
