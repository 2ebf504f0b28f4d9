"""Offline inclusion proofs in the C2SP ``tlog-proof`` format.

Layout (https://c2sp.org/tlog-proof, ``@v1``), lines separated by ``\\n``::

    c2sp.org/tlog-proof@v1
    extra <base64 opaque data>          (optional line)
    index <leaf index, decimal>
    <base64 proof hash>                 (zero or more, leaf's sibling first)
                                        (one empty line)
    <the signed checkpoint note, verbatim>

A proof file lets someone holding only the log's public key check that an
event is in the log, with no access to the database. The ``extra`` data is
not authenticated: callers must not trust it.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from proofs.merkle import HASH_SIZE, ProofError, verify_inclusion
from proofs.note import Checkpoint, Verifiers, verify_checkpoint

HEADER = "c2sp.org/tlog-proof@v1"
SUFFIX = ".tlog-proof"
_DECIMAL = re.compile(r"(?:0|[1-9][0-9]*)\Z")


class TlogProofReason(StrEnum):
    MALFORMED_PROOF = "malformed-proof"


class TlogProofError(ProofError):
    """A proof file does not have the tlog-proof layout."""


def _malformed(detail: str) -> TlogProofError:
    return TlogProofError(TlogProofReason.MALFORMED_PROOF, detail)


def _b64(text: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise _malformed(f"{what} is not standard base64") from None
    if base64.b64encode(raw).decode() != text:
        raise _malformed(f"{what} is not canonical base64")
    return raw


@dataclass(frozen=True)
class TlogProof:
    """A parsed proof file; nothing in it is verified yet."""

    index: int
    hashes: tuple[bytes, ...]
    checkpoint: str
    """The signed checkpoint note, verbatim."""
    extra: bytes | None = None


def format_proof(
    index: int, proof_hashes: Sequence[bytes], checkpoint_note: str, extra: bytes | None = None
) -> str:
    """The text of a ``.tlog-proof`` file."""
    if index < 0:
        raise ValueError("a leaf index is never negative")
    if any(len(h) != HASH_SIZE for h in proof_hashes):
        raise ValueError("every proof hash is 32 bytes")
    if not checkpoint_note.endswith("\n"):
        raise ValueError("a signed checkpoint note ends with a newline")
    lines = [HEADER]
    if extra is not None:
        lines.append("extra " + base64.b64encode(extra).decode())
    lines.append(f"index {index}")
    lines += [base64.b64encode(h).decode() for h in proof_hashes]
    return "\n".join(lines) + "\n\n" + checkpoint_note


def parse_proof(text: str) -> TlogProof:
    """Parse a proof file; raises :class:`TlogProofError` naming the bad part."""
    header, blank, rest = text.partition("\n\n")
    if not blank:
        raise _malformed("no empty line before the checkpoint")
    lines = header.split("\n")
    if lines[0] != HEADER:
        raise _malformed(f"the first line is not {HEADER!r}")
    position = 1
    extra: bytes | None = None
    if position < len(lines) and lines[position].startswith("extra "):
        extra = _b64(lines[position][len("extra ") :], "the extra data")
        position += 1
    if position >= len(lines) or not lines[position].startswith("index "):
        raise _malformed("no 'index N' line")
    index_text = lines[position][len("index ") :]
    if not _DECIMAL.match(index_text):
        raise _malformed(f"index {index_text!r} is not a plain decimal")
    hashes: list[bytes] = []
    for number, line in enumerate(lines[position + 1 :]):
        value = _b64(line, f"proof hash {number}")
        if len(value) != HASH_SIZE:
            raise _malformed(f"proof hash {number} is {len(value)} bytes, not {HASH_SIZE}")
        hashes.append(value)
    if not rest:
        raise _malformed("no checkpoint after the proof hashes")
    return TlogProof(int(index_text), tuple(hashes), rest, extra)


def verify_proof(
    text: str, leaf_hash: bytes, verifiers: Verifiers, *, origin: str | None = None
) -> Checkpoint:
    """The checkpoint a proof file commits ``leaf_hash`` to, once (1) the file
    parses, (2) a trusted key signed the checkpoint (of ``origin`` if given),
    and (3) the inclusion proof leads from the leaf to the checkpoint's root.

    ``leaf_hash`` is the Merkle leaf hash (``merkle.leaf_hash(event digest)``
    for a Chassis event). Raises :class:`ProofError` (or a subclass) otherwise.
    """
    proof = parse_proof(text)
    checkpoint = verify_checkpoint(proof.checkpoint, verifiers, origin=origin)
    verify_inclusion(leaf_hash, proof.index, checkpoint.size, proof.hashes, checkpoint.root)
    return checkpoint
