"""Checking a ``.tlog-proof`` file with one key and nothing else.

A stranger holds the proof file and the log's public key: no workspace, no
database. Each step fails closed and names itself (``proof-format``,
``checkpoint-signature``, ``inclusion``) so the one-line error says which
part of the file is wrong. Reading the key is the caller's job: it is handed
the checkpoint's claimed origin (a Chassis ``.pub`` key is named after it).
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from proofs.checkpoint_verify import unverified
from proofs.merkle import HASH_SIZE, ProofError, leaf_hash, verify_inclusion
from proofs.note import NoteError, NoteVerifier, verify_checkpoint
from proofs.tlog_proof import parse_proof


class TlogCheckError(ProofError):
    """A ``.tlog-proof`` check failed; ``check`` names which."""

    def __init__(self, check: str, error: ProofError) -> None:
        super().__init__(error.reason, error.detail)
        self.check = check

    def diagnostics(self) -> str:
        return f"{self.check} check failed ({self.reason}): {self.detail}"


@dataclass(frozen=True)
class ProvenInclusion:
    origin: str
    index: int
    tree_size: int
    root: bytes
    digest: bytes
    key: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": True,
            "origin": self.origin,
            "index": self.index,
            "tree_size": self.tree_size,
            "root": base64.b64encode(self.root).decode(),
            "root_hex": self.root.hex(),
            "digest": self.digest.hex(),
            "leaf_hash": leaf_hash(self.digest).hex(),
            "key": self.key,
            "checks": ["proof-format", "checkpoint-signature", "inclusion"],
        }


def verify_tlog_proof(text: str, verifier_for: Callable[[str], NoteVerifier]) -> ProvenInclusion:
    """Check a proof file: its layout, the checkpoint's signature by the key
    ``verifier_for(origin)`` gives, then that the event digest it carries is
    the leaf at its index under the checkpoint's root."""
    try:
        parsed = parse_proof(text)
        claimed = unverified(parsed.checkpoint)
    except ProofError as e:
        raise TlogCheckError("proof-format", e) from None
    if parsed.extra is None or len(parsed.extra) != HASH_SIZE:
        raise TlogCheckError(
            "proof-format",
            ProofError("malformed-proof", "no 32-byte event digest on the 'extra' line"),
        )
    verifier = verifier_for(claimed.origin)
    try:
        checkpoint = verify_checkpoint(parsed.checkpoint, [verifier])
    except NoteError as e:
        raise TlogCheckError("checkpoint-signature", e) from None
    try:
        verify_inclusion(
            leaf_hash(parsed.extra), parsed.index, checkpoint.size, parsed.hashes, checkpoint.root
        )
    except ProofError as e:
        raise TlogCheckError("inclusion", e) from None
    return ProvenInclusion(
        checkpoint.origin,
        parsed.index,
        checkpoint.size,
        checkpoint.root,
        parsed.extra,
        verifier.vkey(),
    )
