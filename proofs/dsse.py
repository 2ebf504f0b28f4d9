"""DSSE v1 envelopes: the signed wrapper around every receipt.

DSSE signs ``PAE(payloadType, payload)`` rather than the JSON envelope, so a
verifier never has to canonicalise JSON before checking a signature, and the
payload type is authenticated (a receipt cannot be replayed as another kind of
document). The pre-authentication encoding is, byte for byte::

    b"DSSEv1" SP LEN(type) SP type SP LEN(body) SP body

where ``SP`` is one space (0x20), ``type`` is the UTF-8 payload type, ``body``
the raw payload bytes and ``LEN`` the byte length in ASCII decimal without
leading zeros. Signatures are Ed25519 over those bytes; ``keyid`` is the
lowercase hex sha256 of the raw 32-byte public key (``ledger.keys``).

Verification fails closed: it returns a result only when at least one
signature by a known key verifies, and otherwise raises ``EnvelopeError`` whose
``reason`` says which step failed. The ``keyid`` of a signature only narrows
the keys tried (DSSE forbids trusting it); an empty ``keyid`` tries every key.
Base64 is decoded strictly: standard or URL-safe alphabet (DSSE allows both),
padding required, no whitespace, no non-zero trailing bits.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from ledger.canonical import canonical_json
from ledger.keys import KeyPair, verify_signature
from proofs.intoto import check_statement

PAYLOAD_TYPE_INTOTO = "application/vnd.in-toto+json"

_STANDARD = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_URLSAFE = re.compile(r"[A-Za-z0-9_-]*={0,2}")


class EnvelopeReason(StrEnum):
    """Why an envelope was refused; values are stable (CLI ``--json`` shows them)."""

    MALFORMED = "malformed"
    WRONG_PAYLOAD_TYPE = "wrong-payload-type"
    UNKNOWN_KEY = "unknown-key"
    BAD_SIGNATURE = "bad-signature"
    NO_SIGNATURE = "no-signature"


class EnvelopeError(Exception):
    """A DSSE envelope did not verify; ``reason`` names the failed step."""

    exit_code = 8

    def __init__(self, reason: EnvelopeReason, message: str) -> None:
        super().__init__(f"DSSE envelope {reason}: {message}")
        self.reason = reason

    def diagnostics(self) -> str:
        return str(self)


@dataclass(frozen=True)
class VerifiedEnvelope:
    """What a verified envelope vouches for; only built after a signature checked out."""

    payload: bytes
    keyid: str
    statement: dict[str, Any] | None


def pae(payload_type: str, payload: bytes) -> bytes:
    """The DSSE v1 pre-authentication encoding: the exact bytes that are signed."""
    kind = payload_type.encode("utf-8")
    return b"DSSEv1 %d %b %d %b" % (len(kind), kind, len(payload), payload)


def _b64encode(data: bytes) -> str:
    return base64.standard_b64encode(data).decode("ascii")


def _b64decode(text: object, what: str) -> bytes:
    """Strict base64: one alphabet, canonical padding and trailing bits."""
    if not isinstance(text, str):
        raise EnvelopeError(EnvelopeReason.MALFORMED, f"{what} is not a string")
    if len(text) % 4 == 0 and _STANDARD.fullmatch(text):
        decoded = _decode(text, base64.standard_b64decode, base64.standard_b64encode)
    elif len(text) % 4 == 0 and _URLSAFE.fullmatch(text):
        decoded = _decode(text, base64.urlsafe_b64decode, base64.urlsafe_b64encode)
    else:
        decoded = None
    if decoded is None:
        raise EnvelopeError(EnvelopeReason.MALFORMED, f"{what} is not strict base64")
    return decoded


def _decode(text: str, decode: Any, encode: Any) -> bytes | None:
    try:
        raw: bytes = decode(text)
    except (binascii.Error, ValueError):
        return None
    # Re-encoding rejects non-zero padding bits, which would give one value two spellings.
    return raw if encode(raw).decode("ascii") == text else None


def sign_envelope(payload: bytes, payload_type: str, signer: KeyPair) -> dict[str, Any]:
    """A one-signature DSSE envelope of ``payload``, signed by ``signer`` over PAE."""
    signature = signer.sign(pae(payload_type, payload))
    return {
        "payloadType": payload_type,
        "payload": _b64encode(payload),
        "signatures": [{"keyid": signer.keyid, "sig": _b64encode(signature)}],
    }


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise EnvelopeError(EnvelopeReason.MALFORMED, f"duplicate JSON key {key!r}")
        result[key] = value
    return result


def _load_json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data, object_pairs_hook=_reject_duplicates)
    except ValueError as e:
        raise EnvelopeError(EnvelopeReason.MALFORMED, f"{what} is not JSON ({e})") from None
    except RecursionError:
        raise EnvelopeError(EnvelopeReason.MALFORMED, f"{what} is nested too deeply") from None


def _signatures(envelope: Mapping[str, Any]) -> list[tuple[str, bytes]]:
    entries = envelope.get("signatures")
    if not isinstance(entries, list):
        raise EnvelopeError(EnvelopeReason.MALFORMED, "'signatures' is not a list")
    if not entries:
        raise EnvelopeError(EnvelopeReason.NO_SIGNATURE, "the envelope carries no signature")
    result: list[tuple[str, bytes]] = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            raise EnvelopeError(EnvelopeReason.MALFORMED, f"signature {index} is not an object")
        keyid = entry.get("keyid", "")
        if not isinstance(keyid, str):
            raise EnvelopeError(EnvelopeReason.MALFORMED, f"signature {index}: keyid not a string")
        result.append((keyid, _b64decode(entry.get("sig"), f"signature {index}")))
    return result


def verify_envelope(
    envelope: Mapping[str, Any] | bytes,
    keys: Mapping[str, bytes],
    *,
    payload_type: str = PAYLOAD_TYPE_INTOTO,
) -> VerifiedEnvelope:
    """Verify ``envelope`` against ``keys`` (keyid -> raw Ed25519 public key).

    Succeeds when at least one signature by one of ``keys`` verifies over PAE;
    the payload is parsed (as an in-toto Statement v1) only after that.
    """
    if isinstance(envelope, bytes | bytearray):
        envelope = _load_json(bytes(envelope), "envelope")
    if not isinstance(envelope, Mapping):
        raise EnvelopeError(EnvelopeReason.MALFORMED, "the envelope is not a JSON object")
    kind = envelope.get("payloadType")
    if not isinstance(kind, str):
        raise EnvelopeError(EnvelopeReason.MALFORMED, "'payloadType' is missing or not a string")
    payload = _b64decode(envelope.get("payload"), "payload")
    signatures = _signatures(envelope)
    if kind != payload_type:
        raise EnvelopeError(
            EnvelopeReason.WRONG_PAYLOAD_TYPE, f"payloadType {kind!r}, expected {payload_type!r}"
        )
    for keyid, public in keys.items():
        if not isinstance(public, bytes) or len(public) != 32:
            raise ValueError(f"key {keyid!r}: expected a raw 32-byte Ed25519 public key")

    message = pae(kind, payload)
    tried = False
    for keyid, signature in signatures:
        candidates = [(keyid, keys[keyid])] if keyid in keys else []
        if not keyid:
            candidates = list(keys.items())
        for candidate_id, public in candidates:
            tried = True
            if verify_signature(public, signature, message):
                return VerifiedEnvelope(
                    payload=payload, keyid=candidate_id, statement=_statement(kind, payload)
                )
    if not tried:
        named = sorted({keyid for keyid, _ in signatures if keyid})
        raise EnvelopeError(
            EnvelopeReason.UNKNOWN_KEY,
            f"no signature is by a known key (signed by {', '.join(named) or 'unnamed keys'})",
        )
    raise EnvelopeError(EnvelopeReason.BAD_SIGNATURE, "no signature verifies over the payload")


def _statement(kind: str, payload: bytes) -> dict[str, Any] | None:
    if kind != PAYLOAD_TYPE_INTOTO:
        return None
    value = _load_json(payload, "payload")
    try:
        return check_statement(value)
    except ValueError as e:
        raise EnvelopeError(EnvelopeReason.MALFORMED, f"payload: {e}") from None


def envelope_digest(envelope: Mapping[str, Any]) -> str:
    """Hex sha256 of the envelope's canonical JSON: the receipt digest.

    Export ids and ``artifact.attestation.hash`` use it, so the same receipt
    has the same digest however its JSON was spaced or ordered on disk.
    """
    return hashlib.sha256(canonical_json(dict(envelope))).hexdigest()
