"""Proofs for strangers: inclusion of one event, consistency of two sizes.

A proof handed out is evidence, so it is issued only for what was verified:
the event itself (through the application's verified read, linked to its
predecessor) and a checkpoint signed by a key valid as of its tree, which
Chassis signs only over verified records (``chassis.checkpoints``). Each
proof is checked against that root before it leaves. Checking a proof file
offline is ``proofs.tlog_verify``; this module only reads the key for it.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

from chassis.checkpoints import can_sign, checkpoint_now, malformed, open_log, sync_log
from chassis.errors import ChassisError, WorkspaceError
from chassis.workspace import Workspace
from ledger.application import Ledger
from ledger.checks import RecordRejected
from ledger.errors import ChainBreakError, KeyFileError, NotFoundError
from ledger.keys import KeyPair, load_public_key
from ledger.records import MalformedRecordError, SealedRecord, parse_record
from proofs.chain import ChainFailure, LedgerVerificationError, VerifyReason
from proofs.checkpoint_verify import (
    LATEST,
    CheckpointError,
    CheckpointReason,
    ClaimedCheckpoint,
    describe,
    unverified,
    verify_signature,
)
from proofs.ledger_verify import verified_trust
from proofs.log import StoredCheckpoint, TransparencyLog
from proofs.merkle import (
    ProofError,
    SubtreeCache,
    consistency_proof,
    leaf_hash,
    tree_root,
    verify_consistency,
    verify_inclusion,
)
from proofs.note import Checkpoint, NoteError, NoteVerifier, parse_vkey
from proofs.tlog_proof import format_proof
from proofs.tlog_verify import ProvenInclusion, verify_tlog_proof


class NoCheckpointError(ChassisError):
    """Nothing signed covers what was asked for yet."""

    exit_code = 10


@dataclass(frozen=True)
class Inclusion:
    seq: int
    index: int
    digest: bytes
    proof: tuple[bytes, ...]
    checkpoint: StoredCheckpoint

    def text(self) -> str:
        """The ``.tlog-proof`` file: ``extra`` is the event digest (the leaf input)."""
        return format_proof(self.index, self.proof, self.checkpoint.note, extra=self.digest)

    def to_dict(self) -> dict[str, Any]:
        checkpoint = unverified(self.checkpoint.note)
        return {
            "seq": self.seq,
            "index": self.index,
            "digest": self.digest.hex(),
            "leaf_hash": leaf_hash(self.digest).hex(),
            "tree_size": checkpoint.size,
            "root": base64.b64encode(checkpoint.root).decode(),
            "proof": [base64.b64encode(h).decode() for h in self.proof],
            "checkpoint": self.checkpoint.note,
            "tlog_proof": self.text(),
        }


def _find_event(ledger: Ledger, log: TransparencyLog, ref: str) -> tuple[int, int, bytes]:
    """``(seq, leaf index, digest)`` of the event named by a sequence number or
    hex digest, once the event is verified."""
    if re.fullmatch(r"[0-9]{1,19}", ref):
        seq = int(ref)
        index = log.leaf_index(seq)
    elif re.fullmatch(r"[0-9a-fA-F]{64}", ref):
        found = log.find_leaf(leaf_hash(bytes.fromhex(ref)))
        if found is None:
            raise NotFoundError(f"no event with digest {ref.lower()} in the ledger")
        index, seq = found
    else:
        raise WorkspaceError(f"{ref!r}: expected a sequence number or a 64-hex-digit event digest")
    if index is None:
        raise NotFoundError(f"no event with sequence number {seq} in the ledger")
    row = next(ledger.scan(since=seq), None)
    if row is None or row[0] != seq:
        raise NotFoundError(f"no event with sequence number {seq} in the ledger")
    try:
        record = parse_record(*row)
    except MalformedRecordError as e:
        raise malformed(row, e) from None
    _verify_event(ledger, record)
    return seq, index, record.digest


def _verify_event(ledger: Ledger, record: SealedRecord) -> None:
    """The record is the verified event of its aggregate at its version (the
    mapper's checks, signer judged at its position) and links to the one before."""
    where = (record.seq, record.originator_id, record.version, record.topic)
    try:
        found = ledger.verified_events(
            UUID(record.originator_id), gt=max(0, record.version - 2), lte=record.version
        )
    except RecordRejected as e:
        # The mapper's detail starts with the place this failure names already.
        detail = e.detail.split("): ", 1)[-1] if e.detail.startswith("seq ") else e.detail
        raise LedgerVerificationError(ChainFailure(e.reason, *where, detail)) from None
    except ChainBreakError as e:
        raise LedgerVerificationError(
            ChainFailure(VerifyReason.BROKEN_LINK, *where, str(e))
        ) from None
    if not found or found[-1][0] != record.seq or found[-1][1].digest() != record.digest:
        raise LedgerVerificationError(
            ChainFailure(
                VerifyReason.RECORD_MISMATCH,
                *where,
                "not the verified event of its aggregate at that version",
            )
        )


def _signed_checkpoint(
    ledger: Ledger, ws: Workspace, log: TransparencyLog, stored: StoredCheckpoint
) -> Checkpoint:
    """The stored checkpoint, once a key valid as of its tree signed it."""
    seq = log.seq_at(stored.size - 1) if stored.size else None
    position = 0 if seq is None else seq + 1  # just after its last leaf
    trust = verified_trust(ledger, ws.settings().root_keyid)
    checkpoint, _ = verify_signature(ClaimedCheckpoint(LATEST, None, stored.note), trust, position)
    return checkpoint


def inclusion_for(ledger: Ledger, ws: Workspace, signer: KeyPair | None, ref: str) -> Inclusion:
    """An inclusion proof of one verified event against the latest checkpoint,
    signing a new checkpoint first (over verified records) when the key may
    and the event is not yet covered. The proof is checked before it is
    handed out."""
    log = open_log(ledger)
    sync_log(ledger, log)
    seq, index, digest = _find_event(ledger, log, ref)
    latest = log.latest_checkpoint()
    if (latest is None or latest.size <= index) and signer is not None and can_sign(ledger, signer):
        latest = checkpoint_now(ledger, ws, signer).checkpoint
    if latest is None or latest.size <= index:
        covered = "no checkpoint yet" if latest is None else f"the latest covers {latest.size}"
        raise NoCheckpointError(
            f"event {seq} (leaf {index}) is not covered by a checkpoint ({covered}); "
            "sign one with a key holding 'checkpoint' ('chassis ledger checkpoint')"
        )
    checkpoint = _signed_checkpoint(ledger, ws, log, latest)
    proof = log.inclusion(index, latest.size)
    try:
        verify_inclusion(leaf_hash(digest), index, checkpoint.size, proof, checkpoint.root)
    except ProofError as e:
        raise CheckpointError(
            CheckpointReason.ROOT_MISMATCH,
            describe(LATEST, None),
            f"the stored Merkle log does not lead to its root ({e.detail}); "
            "run 'chassis ledger verify'",
        ) from None
    return Inclusion(seq, index, digest, tuple(proof), latest)


@dataclass(frozen=True)
class Consistency:
    old_size: int
    new_size: int
    old_root: bytes
    new_root: bytes
    proof: tuple[bytes, ...]

    def to_dict(self) -> dict[str, Any]:
        def b64(h: bytes) -> str:
            return base64.b64encode(h).decode()

        return {
            "old_size": self.old_size,
            "new_size": self.new_size,
            "old_root": b64(self.old_root),
            "new_root": b64(self.new_root),
            "old_root_hex": self.old_root.hex(),
            "new_root_hex": self.new_root.hex(),
            "proof": [b64(h) for h in self.proof],
        }


def consistency_for(ledger: Ledger, old_size: int, new_size: int) -> Consistency:
    """The RFC 9162 consistency proof between two sizes of the log, and both
    roots, computed from the stored leaves and checked before it is returned."""
    log = open_log(ledger)
    size, _ = sync_log(ledger, log)
    if not 1 <= old_size <= new_size <= size:
        raise WorkspaceError(
            f"sizes {old_size} and {new_size}: need 1 <= OLD_SIZE <= NEW_SIZE <= {size} "
            "(the number of events)"
        )
    cache: SubtreeCache = {}
    old_root = tree_root(old_size, log, cache)
    new_root = tree_root(new_size, log, cache)
    proof = consistency_proof(old_size, new_size, log, cache)
    verify_consistency(old_size, new_size, old_root, new_root, proof)
    return Consistency(old_size, new_size, old_root, new_root, tuple(proof))


def load_verifier(key_file: Path, origin: str) -> NoteVerifier:
    """``key_file`` holds a signed-note verifier key (``name+id+key``) or a
    Chassis ``.pub`` key, which is then named after the checkpoint's origin."""
    try:
        text = key_file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise KeyFileError(f"{key_file}: cannot read the key ({e})") from None
    if "+" in text and "BEGIN" not in text:
        try:
            return parse_vkey(text)
        except NoteError as e:
            raise KeyFileError(f"{key_file}: not a verifier key: {e.detail}") from None
    return NoteVerifier(origin, load_public_key(key_file))


def verify_tlog_file(text: str, key_file: Path) -> ProvenInclusion:
    """``chassis proof verify FILE.tlog-proof --key KEYFILE``: the file and one key."""
    return verify_tlog_proof(text, lambda origin: load_verifier(key_file, origin))
