"""C2SP signed notes and transparency-log checkpoints, Ed25519 only.

Formats (https://c2sp.org/signed-note, https://c2sp.org/tlog-checkpoint):

- checkpoint body: ``<origin>\\n<size in decimal>\\n<base64 root>\\n`` then
  optional non-empty extension lines, each ending in ``\\n``;
- note: ``<body>\\n`` then one or more signature lines
  ``— <key name> <base64(key id (4 bytes) || Ed25519 signature (64 bytes))>\\n``
  (the dash is U+2014), signatures over the body bytes exactly;
- key id: ``sha256(<key name> || 0x0A || 0x01 || <32-byte public key>)[:4]``;
- verifier key (vkey): ``<key name>+<hex key id>+<base64(0x01 || public key)>``.

A checkpoint is written in a standard format so that tools that know nothing
of Chassis (witnesses, ``litetlog``, Go's ``sumdb/note``) can check it.
Verification fails closed: :func:`verify_checkpoint` returns a checkpoint only
when a known key signed it and every known key's signature verifies; unknown
signatures are ignored as the spec requires (they may be witnesses' cosignatures
or a rotated key).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from ledger.keys import KeyPair, verify_signature
from proofs.merkle import HASH_SIZE, ProofError

ED25519_TYPE = 0x01
"""Signature type byte of Ed25519 in the signed-note spec."""

DASH = "\u2014"
ORIGIN_PREFIX = "chassis.ledger/"
MAX_SIGNATURES = 100
"""The spec asks verifiers to bound signatures and to accept at least 16."""

_DECIMAL = re.compile(r"(?:0|[1-9][0-9]*)\Z")
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")


class NoteReason(StrEnum):
    MALFORMED_NOTE = "malformed-note"
    MALFORMED_CHECKPOINT = "malformed-checkpoint"
    MALFORMED_KEY = "malformed-key"
    UNKNOWN_KEY = "unknown-key"
    AMBIGUOUS_KEY = "ambiguous-key"
    BAD_SIGNATURE = "bad-signature"
    WRONG_ORIGIN = "wrong-origin"


class NoteError(ProofError):
    """A note or checkpoint is malformed or not signed by a trusted key."""


def origin_for(ledger_name: str) -> str:
    """The checkpoint origin of a Chassis ledger: ``chassis.ledger/<ledger_name>``."""
    origin = ORIGIN_PREFIX + ledger_name
    check_key_name(origin)
    return origin


def check_key_name(name: str) -> str:
    """Return ``name`` or raise: key names are non-empty, without spaces or ``+``."""
    if not name or "+" in name or any(c.isspace() for c in name) or _CONTROL.search(name):
        raise NoteError(
            NoteReason.MALFORMED_KEY, f"key name {name!r}: must be non-empty, no spaces, no '+'"
        )
    return name


def key_id(name: str, public_key: bytes) -> bytes:
    """The 4-byte key id of an Ed25519 key under ``name`` (signed-note §Ed25519)."""
    if len(public_key) != 32:
        raise NoteError(NoteReason.MALFORMED_KEY, "an Ed25519 public key is 32 bytes")
    return hashlib.sha256(name.encode() + b"\n" + bytes([ED25519_TYPE]) + public_key).digest()[:4]


@dataclass(frozen=True)
class NoteVerifier:
    """A trusted key: its name, raw Ed25519 public key and derived key id."""

    name: str
    public_key: bytes
    key_id: bytes = field(init=False)

    def __post_init__(self) -> None:
        check_key_name(self.name)
        object.__setattr__(self, "key_id", key_id(self.name, self.public_key))

    def vkey(self) -> str:
        """``name+hex(key id)+base64(0x01 || public key)``, for ``--key`` files."""
        encoded = base64.b64encode(bytes([ED25519_TYPE]) + self.public_key).decode()
        return f"{self.name}+{self.key_id.hex()}+{encoded}"

    def verifies(self, message: bytes, signature: bytes) -> bool:
        return len(signature) == 64 and verify_signature(self.public_key, signature, message)


def vkey_for(name: str, public_key: bytes) -> str:
    """The verifier-key string of an Ed25519 key."""
    return NoteVerifier(name, public_key).vkey()


def parse_vkey(text: str) -> NoteVerifier:
    """Parse ``name+hexid+base64key``; the key id must match the key and name."""
    parts = text.strip().split("+", 2)
    if len(parts) != 3:
        raise NoteError(NoteReason.MALFORMED_KEY, "a verifier key is name+keyid+key")
    name, hex_id, encoded = parts
    check_key_name(name)
    if not re.fullmatch(r"[0-9a-f]{8}", hex_id):
        raise NoteError(NoteReason.MALFORMED_KEY, "the key id is not 8 lowercase hex digits")
    raw = _b64(encoded, NoteReason.MALFORMED_KEY, "verifier key")
    if len(raw) != 33 or raw[0] != ED25519_TYPE:
        raise NoteError(NoteReason.MALFORMED_KEY, "not an Ed25519 verifier key")
    verifier = NoteVerifier(name, raw[1:])
    if verifier.key_id.hex() != hex_id:
        raise NoteError(NoteReason.MALFORMED_KEY, "the key id does not match the key")
    return verifier


def _b64(text: str, reason: NoteReason, what: str) -> bytes:
    """Strict standard base64: right alphabet, padding, and zero unused bits."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise NoteError(reason, f"{what} is not standard base64") from None
    if base64.b64encode(raw).decode() != text:
        raise NoteError(reason, f"{what} is not canonical base64")
    return raw


# Checkpoints.


@dataclass(frozen=True)
class Checkpoint:
    """A log's tree head: who (origin), how many leaves, and their root."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "extensions", tuple(self.extensions))
        if not self.origin or "\n" in self.origin or _CONTROL.search(self.origin):
            raise NoteError(
                NoteReason.MALFORMED_CHECKPOINT, "the origin must be one non-empty line"
            )
        if self.size < 0:
            raise NoteError(NoteReason.MALFORMED_CHECKPOINT, "the tree size is negative")
        if len(self.root) != HASH_SIZE:
            raise NoteError(NoteReason.MALFORMED_CHECKPOINT, "the root hash is not 32 bytes")
        for line in self.extensions:
            if not line or "\n" in line or _CONTROL.search(line):
                raise NoteError(
                    NoteReason.MALFORMED_CHECKPOINT, "extension lines must be non-empty lines"
                )

    def body(self) -> str:
        """The note text, exactly as tlog-checkpoint lays it out."""
        lines = [self.origin, str(self.size), base64.b64encode(self.root).decode()]
        return "".join(line + "\n" for line in (*lines, *self.extensions))


def parse_checkpoint(body: str) -> Checkpoint:
    """Parse checkpoint note *text* (no signatures). Trusts nothing: to read a
    signed checkpoint use :func:`verify_checkpoint`."""
    if not body.endswith("\n"):
        raise NoteError(NoteReason.MALFORMED_CHECKPOINT, "the checkpoint must end with a newline")
    lines = body[:-1].split("\n")
    if len(lines) < 3:
        raise NoteError(NoteReason.MALFORMED_CHECKPOINT, "a checkpoint has at least three lines")
    origin, size_text, root_text, *extensions = lines
    if not _DECIMAL.match(size_text):
        raise NoteError(
            NoteReason.MALFORMED_CHECKPOINT, f"tree size {size_text!r} is not a plain decimal"
        )
    root = _b64(root_text, NoteReason.MALFORMED_CHECKPOINT, "the root hash")
    checkpoint = Checkpoint(origin, int(size_text), root, tuple(extensions))
    if checkpoint.body() != body:  # one spelling only
        raise NoteError(NoteReason.MALFORMED_CHECKPOINT, "the checkpoint is not in canonical form")
    return checkpoint


# Notes.


@dataclass(frozen=True)
class NoteSignature:
    """One signature line: the signer's name, its 4-byte key id, the signature."""

    name: str
    key_id: bytes
    signature: bytes

    def line(self) -> str:
        encoded = base64.b64encode(self.key_id + self.signature).decode()
        return f"{DASH} {self.name} {encoded}\n"


def sign_note(text: str, name: str, keypair: KeyPair) -> str:
    """``text`` plus a blank line and one Ed25519 signature line by ``keypair``."""
    _check_text(text)
    check_key_name(name)
    signature = NoteSignature(name, key_id(name, keypair.public_key), keypair.sign(text.encode()))
    return text + "\n" + signature.line()


def sign_checkpoint(checkpoint: Checkpoint, name: str, keypair: KeyPair) -> str:
    """The signed checkpoint note. ``name`` should be the checkpoint's origin."""
    return sign_note(checkpoint.body(), name, keypair)


def _check_text(text: str) -> None:
    if not text.endswith("\n"):
        raise NoteError(NoteReason.MALFORMED_NOTE, "the note text must end with a newline")
    if _CONTROL.search(text):
        raise NoteError(NoteReason.MALFORMED_NOTE, "the note contains control characters")


def parse_note(note: str) -> tuple[str, list[NoteSignature]]:
    """Split a signed note into its text and signature lines. Checks the form
    only: nothing is verified, so the text must not be used yet."""
    _check_text(note)
    split = note.rfind("\n\n")
    if split < 0:
        raise NoteError(NoteReason.MALFORMED_NOTE, "no blank line before the signatures")
    text, block = note[: split + 1], note[split + 2 :]
    lines = block[:-1].split("\n") if block else []
    if not lines:
        raise NoteError(NoteReason.MALFORMED_NOTE, "the note has no signature lines")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError(NoteReason.MALFORMED_NOTE, f"more than {MAX_SIGNATURES} signatures")
    signatures: list[NoteSignature] = []
    for number, line in enumerate(lines, 1):
        parts = line.split(" ")
        if len(parts) != 3 or parts[0] != DASH:
            raise NoteError(
                NoteReason.MALFORMED_NOTE, f"signature line {number} is not '— name signature'"
            )
        name = parts[1]
        try:
            check_key_name(name)
        except NoteError:
            raise NoteError(
                NoteReason.MALFORMED_NOTE, f"signature line {number} has a bad key name"
            ) from None
        raw = _b64(parts[2], NoteReason.MALFORMED_NOTE, f"signature {number}")
        if len(raw) < 5:
            raise NoteError(NoteReason.MALFORMED_NOTE, f"signature {number} is too short")
        signatures.append(NoteSignature(name, raw[:4], raw[4:]))
    return text, signatures


Verifiers = Mapping[str, bytes] | Iterable[tuple[str, bytes] | NoteVerifier]
"""Trusted keys: ``{name: public_key}``, or ``(name, public_key)`` pairs or
:class:`NoteVerifier` s (several keys may share a name, e.g. during rotation)."""


def _verifier_list(verifiers: Verifiers) -> list[NoteVerifier]:
    items = verifiers.items() if isinstance(verifiers, Mapping) else verifiers
    return [v if isinstance(v, NoteVerifier) else NoteVerifier(v[0], v[1]) for v in items]


def open_note(note: str, verifiers: Verifiers) -> tuple[str, list[NoteVerifier]]:
    """The note's text and the known keys whose signatures verified.

    Unknown signatures are ignored; a known key whose signature fails rejects
    the whole note (``bad-signature``); no verified known key is
    ``unknown-key``.
    """
    text, signatures = parse_note(note)
    known: dict[tuple[str, bytes], list[NoteVerifier]] = {}
    for v in _verifier_list(verifiers):
        entries = known.setdefault((v.name, v.key_id), [])
        if v not in entries:
            entries.append(v)
    message = text.encode()
    verified: list[NoteVerifier] = []
    for signature in signatures:
        matches = known.get((signature.name, signature.key_id))
        if not matches:
            continue
        if len(matches) > 1:
            raise NoteError(
                NoteReason.AMBIGUOUS_KEY,
                f"two trusted keys are named {signature.name}+{signature.key_id.hex()}",
            )
        verifier = matches[0]
        if not verifier.verifies(message, signature.signature):
            raise NoteError(
                NoteReason.BAD_SIGNATURE,
                f"the signature by {signature.name}+{signature.key_id.hex()} does not verify",
            )
        if verifier not in verified:
            verified.append(verifier)
    if not verified:
        names = ", ".join(f"{s.name}+{s.key_id.hex()}" for s in signatures)
        raise NoteError(
            NoteReason.UNKNOWN_KEY, f"no signature by a trusted key (signed by {names})"
        )
    return text, verified


def verify_checkpoint(note: str, verifiers: Verifiers, *, origin: str | None = None) -> Checkpoint:
    """The checkpoint in ``note`` once a trusted key's signature verifies and,
    when ``origin`` is given, the checkpoint is that log's."""
    text, _ = open_note(note, verifiers)
    checkpoint = parse_checkpoint(text)
    if origin is not None and checkpoint.origin != origin:
        raise NoteError(
            NoteReason.WRONG_ORIGIN,
            f"checkpoint of {checkpoint.origin!r}, expected {origin!r}",
        )
    return checkpoint
