"""Batch Ed25519 verification through libsodium (PyNaCl).

libsodium calls release the GIL, so batches verify in parallel threads with
no process start-up or pickling.
"""

from __future__ import annotations

from ledger.verified import verifies

SignatureJob = tuple[int, bytes, bytes, bytes]
"""(seq, raw public key, signature, signed message)."""


def failed_signatures(jobs: list[SignatureJob]) -> list[int]:
    """The seqs whose signature does not verify (a triple this process has
    verified before is not checked again: :mod:`ledger.verified`)."""
    return [
        seq for seq, public, signature, message in jobs if not verifies(public, signature, message)
    ]
