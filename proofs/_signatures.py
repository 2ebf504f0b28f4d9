"""Batch Ed25519 verification through libsodium (PyNaCl).

libsodium calls release the GIL, so batches verify in parallel threads with
no process start-up or pickling.
"""

from __future__ import annotations

import nacl.exceptions
import nacl.signing

SignatureJob = tuple[int, bytes, bytes, bytes]
"""(seq, raw public key, signature, signed message)."""


def failed_signatures(jobs: list[SignatureJob]) -> list[int]:
    """The seqs whose signature does not verify."""
    bad: list[int] = []
    keys: dict[bytes, nacl.signing.VerifyKey] = {}
    for seq, public, signature, message in jobs:
        key = keys.get(public)
        if key is None:
            key = keys[public] = nacl.signing.VerifyKey(public)
        try:
            key.verify(message, signature)
        except nacl.exceptions.BadSignatureError:
            bad.append(seq)
    return bad
