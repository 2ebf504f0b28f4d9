"""Ed25519 verification, once per process for each exact (key, signature, message).

A ledger is verified again each time it is opened (the trust fold, the chain,
each read), so one process checks the same signatures many times over: a
deploy, the rollback after it and the proof of that rollback re-read what
the deploy wrote. Verification is deterministic, so a triple that verified
once verifies again: it is remembered (bounded; forgotten all at once when
full) and only new triples reach libsodium. A signature that fails is never
remembered; a changed byte anywhere makes another triple, checked afresh.
"""

from __future__ import annotations

import nacl.exceptions
import nacl.signing

__all__ = ["forget", "remember", "verifies"]

_LIMIT = 65536
_verified: set[tuple[bytes, bytes, bytes]] = set()
_keys: dict[bytes, nacl.signing.VerifyKey] = {}


def verifies(public: bytes, signature: bytes, message: bytes) -> bool:
    """True when ``signature`` is a valid Ed25519 signature of ``message``
    by ``public`` (raw 32 bytes). Raises ``ValueError`` for a key or
    signature of the wrong size, as PyNaCl does."""
    triple = (public, signature, message)
    if triple in _verified:
        return True
    key = _keys.get(public)
    if key is None:
        key = nacl.signing.VerifyKey(public)
        if len(_keys) < 1024:
            _keys[public] = key
    try:
        key.verify(message, signature)
    except nacl.exceptions.BadSignatureError:
        return False
    remember(public, signature, message)
    return True


def remember(public: bytes, signature: bytes, message: bytes) -> None:
    """Count a triple as verified: one this process has just verified, or a
    signature it has just made itself."""
    if len(_verified) >= _LIMIT:
        _verified.clear()
    _verified.add((public, signature, message))


def forget() -> None:
    """Check every signature again from now on (benchmarks of cold reads)."""
    _verified.clear()
