"""Batch Ed25519 verification, run in worker processes.

Kept apart from the rest of ``proofs`` so a worker has nothing else to do.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

SignatureJob = tuple[int, bytes, bytes, bytes]
"""(seq, raw public key, signature, signed message)."""


def failed_signatures(jobs: list[SignatureJob]) -> list[int]:
    """The seqs whose signature does not verify."""
    bad: list[int] = []
    keys: dict[bytes, Ed25519PublicKey] = {}
    for seq, public, signature, message in jobs:
        key = keys.get(public)
        if key is None:
            key = keys[public] = Ed25519PublicKey.from_public_bytes(public)
        try:
            key.verify(signature, message)
        except InvalidSignature:
            bad.append(seq)
    return bad
