"""Checking signed checkpoints against a ledger's records, purely.

A checkpoint of tree size ``n`` commits to the first ``n`` records in global
order. It holds when its note is signed by a key that could sign checkpoints
*as of that tree* and the records still give its root (the latest stored
one) or extend it (an RFC 9162 consistency proof, for one kept elsewhere).

Keys are judged at the tree, not today: a key trusted with role
``checkpoint`` by a record inside the tree and not revoked by one. So a
routine rotation (trust a new checkpoint key, revoke the old one) leaves every
checkpoint signed before it valid, and a key trusted later or revoked earlier
cannot vouch for an old tree. The keys come from the one trust fold
(``ledger.trust.TrustState``); nothing here folds trust again.

Nothing here reads a file, the database, or writes anything: callers gather
the notes and keep what was learned (``chassis.checkpoints``).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from ledger.trust import Role, TrustedKey, TrustState
from proofs.merkle import (
    CompactRange,
    NodeSource,
    ProofError,
    SubtreeCache,
    consistency_proof,
    tree_root,
    verify_consistency,
)
from proofs.note import (
    Checkpoint,
    NoteError,
    NoteReason,
    NoteVerifier,
    origin_for,
    parse_checkpoint,
    parse_note,
    verify_checkpoint,
)

LATEST, LAST_SEEN, AGAINST = "latest-stored", "last-seen", "against"


class CheckpointReason(StrEnum):
    TRUNCATED = "truncated"
    ROOT_MISMATCH = "root-mismatch"
    INCONSISTENT = "inconsistent"
    BAD_SIGNATURE = "bad-checkpoint-signature"
    UNKNOWN_KEY = "unknown-checkpoint-key"
    MALFORMED = "malformed-checkpoint"
    WRONG_ORIGIN = "wrong-origin"


class CheckpointError(ProofError):
    """A checkpoint does not hold for this ledger; ``source`` says which one."""

    def __init__(self, reason: CheckpointReason, source: str, detail: str) -> None:
        super().__init__(reason, f"{source}: {detail}")
        self.source = source

    def to_dict(self) -> dict[str, Any]:
        return {"reason": str(self.reason), "checkpoint": self.source, "detail": self.detail}


def describe(kind: str, file: str | None) -> str:
    if kind == LATEST:
        return "the latest stored checkpoint"
    if kind == LAST_SEEN:
        return f"the last-seen checkpoint ({file})"
    return f"the checkpoint in {file}"


def unverified(note: str) -> Checkpoint:
    """The checkpoint in a note, signatures not checked (for sizes only)."""
    text, _ = parse_note(note)
    return parse_checkpoint(text)


@dataclass(frozen=True)
class ClaimedCheckpoint:
    """A note to check, and where it came from."""

    kind: str
    """``latest-stored``, ``last-seen`` or ``against``."""
    file: str | None
    note: str

    @property
    def source(self) -> str:
        return describe(self.kind, self.file)

    def checkpoint(self) -> Checkpoint:
        """Its checkpoint, signatures not checked; ``malformed-checkpoint`` if it is none."""
        try:
            return unverified(self.note)
        except NoteError as e:
            raise CheckpointError(CheckpointReason.MALFORMED, self.source, e.detail) from None


@dataclass(frozen=True)
class CheckedCheckpoint:
    kind: str
    file: str | None
    size: int
    root: bytes
    signer: str
    check: str

    @property
    def source(self) -> str:
        return describe(self.kind, self.file)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "file": self.file,
            "size": self.size,
            "root": base64.b64encode(self.root).decode(),
            "signer": self.signer,
            "check": self.check,
        }


# Keys as of a tree.


def position_after(positions: Sequence[int], size: int) -> int:
    """The position a tree of ``size`` leaves is judged at: just after its
    last leaf (``positions`` holds each leaf's sequence number), so that with
    ``TrustedKey.valid_at`` a key counts when a record inside the tree
    trusted it and none inside revoked it. A tree larger than the records is
    judged at their end: the records that would decide are gone."""
    if size <= 0 or not positions:
        return 0
    return positions[min(size, len(positions)) - 1] + 1


def checkpoint_keys(trust: TrustState, position: int) -> list[TrustedKey]:
    """The keys that may sign a checkpoint judged at ``position``."""
    return [
        key for key in trust.valid_keys(position).values() if Role.CHECKPOINT.value in key.roles
    ]


def _verifier(origin: str, key: TrustedKey) -> NoteVerifier:
    return NoteVerifier(origin, bytes.fromhex(key.public_key))


_NOTE_REASONS = {
    NoteReason.UNKNOWN_KEY: CheckpointReason.UNKNOWN_KEY,
    NoteReason.BAD_SIGNATURE: CheckpointReason.BAD_SIGNATURE,
    NoteReason.AMBIGUOUS_KEY: CheckpointReason.BAD_SIGNATURE,
    NoteReason.WRONG_ORIGIN: CheckpointReason.WRONG_ORIGIN,
}


def verify_signature(
    claimed: ClaimedCheckpoint, trust: TrustState, position: int
) -> tuple[Checkpoint, str]:
    """The checkpoint and the name of the key that signed it, once a key
    that could sign checkpoints at ``position`` signed it for this ledger's
    origin. Raises :class:`CheckpointError` otherwise."""
    if not trust.established:
        raise CheckpointError(
            CheckpointReason.UNKNOWN_KEY, claimed.source, "the ledger has no root of trust"
        )
    origin = origin_for(trust.ledger_name)
    keys = {_verifier(origin, key).key_id: key for key in checkpoint_keys(trust, position)}
    verifiers = [_verifier(origin, key) for key in keys.values()]
    try:
        checkpoint = verify_checkpoint(claimed.note, verifiers, origin=origin)
    except NoteError as e:
        reason = _NOTE_REASONS.get(NoteReason(e.reason), CheckpointReason.MALFORMED)
        detail = e.detail
        if reason is CheckpointReason.UNKNOWN_KEY:
            detail = _not_valid_then(claimed.note, trust, origin, position) or detail
        raise CheckpointError(reason, claimed.source, detail) from None
    _, signatures = parse_note(claimed.note)
    signer = next((keys[s.key_id].name for s in signatures if s.key_id in keys), "?")
    return checkpoint, signer


def _not_valid_then(note: str, trust: TrustState, origin: str, position: int) -> str | None:
    """Why a key the ledger knows did not count for this tree, when one of
    its keys signed the note."""
    last = f"seq {position - 1}" if position > 0 else "none"
    for key in trust.keys.values():
        try:
            verify_checkpoint(note, [_verifier(origin, key)], origin=origin)
        except NoteError:
            continue
        who = f"key {key.name} ({key.keyid[:16]})"
        if Role.CHECKPOINT.value not in key.roles:
            return f"signed by {who}, which does not hold role 'checkpoint'"
        if key.trusted_pos >= position:
            return (
                f"signed by {who}, which was trusted only at seq {key.trusted_pos}, "
                f"after this tree (its last event: {last})"
            )
        if key.revoked_pos is not None and key.revoked_pos < position:
            return (
                f"signed by {who}, which was revoked at seq {key.revoked_pos}, "
                f"within this tree (its last event: {last})"
            )
    return None


# Checkpoints against the records.


@dataclass
class RecordTree:
    """The Merkle tree the records give, which checkpoints are checked against."""

    size: int
    root: bytes
    positions: Sequence[int]
    """The sequence number of each leaf, in order."""
    leaves: Callable[[], NodeSource]
    """The leaf hashes, computed only when a checkpoint is older than the tree."""
    cache: SubtreeCache = field(default_factory=dict)
    """Shared: roots at several sizes reuse their subtrees."""

    def root_at(self, size: int) -> bytes:
        return self.root if size == self.size else tree_root(size, self.leaves(), self.cache)


def verify_checkpoints(
    claimed: Sequence[ClaimedCheckpoint], tree: RecordTree, trust: TrustState
) -> tuple[CheckedCheckpoint, ...]:
    """Check each claimed checkpoint against the records' tree: its signature
    by a key valid as of its tree, its size, and then its root (the latest
    stored one) or a consistency proof to the current tree (any other).

    Raises :class:`CheckpointError` naming the first that does not hold.
    """
    checked: list[CheckedCheckpoint] = []
    for claim in claimed:
        claimed_size = claim.checkpoint().size  # malformed-checkpoint before anything else
        position = position_after(tree.positions, claimed_size)
        checkpoint, signer = verify_signature(claim, trust, position)
        checked.append(_against_tree(claim, checkpoint, signer, tree))
    return tuple(checked)


def _against_tree(
    claim: ClaimedCheckpoint, checkpoint: Checkpoint, signer: str, tree: RecordTree
) -> CheckedCheckpoint:
    kind, file, source = claim.kind, claim.file, claim.source
    if checkpoint.size > tree.size:
        raise CheckpointError(
            CheckpointReason.TRUNCATED,
            source,
            f"it covers {checkpoint.size} events but the ledger now has {tree.size}: "
            "events were removed from the end",
        )
    if kind == LATEST:
        if tree.root_at(checkpoint.size) != checkpoint.root:
            raise CheckpointError(
                CheckpointReason.ROOT_MISMATCH,
                source,
                f"its root for {checkpoint.size} events is not the root recomputed from "
                "the records: events up to it were changed",
            )
        return CheckedCheckpoint(
            kind, file, checkpoint.size, checkpoint.root, signer, "signature, root recomputed"
        )
    if checkpoint.size == 0:
        return CheckedCheckpoint(kind, file, 0, checkpoint.root, signer, "empty tree")
    proof = (
        []
        if checkpoint.size == tree.size
        else consistency_proof(checkpoint.size, tree.size, tree.leaves(), tree.cache)
    )
    try:
        verify_consistency(checkpoint.size, tree.size, checkpoint.root, tree.root, proof)
    except ProofError as e:
        raise CheckpointError(
            CheckpointReason.INCONSISTENT,
            source,
            f"the ledger does not extend it ({e.reason}): its first {checkpoint.size} "
            "events were rewritten or the ledger forked",
        ) from None
    return CheckedCheckpoint(
        kind,
        file,
        checkpoint.size,
        checkpoint.root,
        signer,
        f"signature, consistency proof {checkpoint.size}->{tree.size} ({len(proof)} hashes)",
    )


def verify_anchor(
    note: str, frontier: CompactRange, last_position: int, trust: TrustState
) -> Checkpoint:
    """The latest stored checkpoint as the start of the next one: signed by a
    key valid as of its tree (whose last leaf is at ``last_position``), and
    the stored Merkle frontier at its size leads to its root. Only then may a
    new checkpoint extend that frontier with newly verified records: the
    frontier is derived data anyone with the database could have changed.
    """
    claim = ClaimedCheckpoint(LATEST, None, note)
    claimed = claim.checkpoint()
    checkpoint, _ = verify_signature(claim, trust, last_position + 1 if claimed.size else 0)
    if frontier.size != checkpoint.size or frontier.root() != checkpoint.root:
        raise CheckpointError(
            CheckpointReason.ROOT_MISMATCH,
            claim.source,
            f"the stored Merkle log at {frontier.size} leaves does not lead to its root "
            f"for {checkpoint.size}; not signing ('chassis ledger verify' says more)",
        )
    return checkpoint
