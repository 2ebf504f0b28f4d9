"""Signed notes and checkpoints: published examples byte for byte, tampering, errors."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.keys import KeyPair, keyid_for
from proofs.merkle import ProofError
from proofs.note import (
    Checkpoint,
    NoteError,
    NoteReason,
    NoteVerifier,
    key_id,
    open_note,
    origin_for,
    parse_checkpoint,
    parse_note,
    parse_vkey,
    sign_checkpoint,
    sign_note,
    verify_checkpoint,
    vkey_for,
)

V = json.loads((Path(__file__).parent / "vectors" / "signed-note.json").read_text())
GO = V["golang_sumdb_note"]
C2SP = V["c2sp_signed_note"]


def keypair_from_seed(name: str, seed: bytes) -> KeyPair:
    private = Ed25519PrivateKey.from_private_bytes(seed)
    public = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return KeyPair(name=name, private_key=private, public_key=public, keyid=keyid_for(public))


def peter() -> KeyPair:
    """The private key of Go's ``PRIVATE+KEY+PeterNeumann+c74f20a3+...`` skey."""
    skey = GO["peter_skey"]
    assert skey.startswith("PRIVATE+KEY+PeterNeumann+c74f20a3+")
    raw = base64.b64decode(skey.split("+", 4)[4])
    assert raw[0] == 1 and len(raw) == 33
    return keypair_from_seed("PeterNeumann", raw[1:])


def reason_of(note: str, verifiers: object, **kwargs: str) -> str:
    with pytest.raises(NoteError) as caught:
        verify_checkpoint(note, verifiers, **kwargs)  # type: ignore[arg-type]
    return caught.value.reason


# Published vectors.


def test_go_signature_is_reproduced_byte_for_byte() -> None:
    key = peter()
    assert vkey_for("PeterNeumann", key.public_key) == GO["peter_vkey"]
    assert sign_note(GO["text"], "PeterNeumann", key) == GO["text"] + "\n" + GO["peter_sig_line"]


def test_go_vkeys_parse_and_reject_manglings() -> None:
    verifier = parse_vkey(GO["peter_vkey"])
    assert (verifier.name, verifier.key_id.hex()) == ("PeterNeumann", "c74f20a3")
    assert verifier.vkey() == GO["peter_vkey"]
    vkey = GO["peter_vkey"]
    for cut in range(1, len(vkey)):
        with pytest.raises(NoteError):
            parse_vkey(vkey[:cut])
    for position in range(len(vkey)):
        mangled = vkey[:position] + chr(ord(vkey[position]) + 1) + vkey[position + 1 :]
        with pytest.raises(NoteError):
            parse_vkey(mangled)


def test_go_note_with_a_known_and_an_unknown_signature() -> None:
    note = GO["text"] + "\n" + GO["peter_sig_line"] + GO["enoch_sig_line"]
    text, verified = open_note(note, [parse_vkey(GO["peter_vkey"])])
    assert text == GO["text"]
    assert [v.name for v in verified] == ["PeterNeumann"]  # EnochRoot ignored: unknown
    both = [parse_vkey(GO["peter_vkey"]), parse_vkey(GO["enoch_vkey"])]
    assert [v.name for v in open_note(note, both)[1]] == ["PeterNeumann", "EnochRoot"]
    with pytest.raises(NoteError) as caught:
        open_note(note, [])
    assert caught.value.reason is NoteReason.UNKNOWN_KEY


def test_go_invalid_signature_from_a_known_key_rejects_the_note() -> None:
    line = GO["peter_sig_line"]
    broken = line[:60] + "ABCD" + line[60:]
    with pytest.raises(NoteError) as caught:
        open_note(GO["text"] + "\n" + broken, [parse_vkey(GO["peter_vkey"])])
    assert caught.value.reason is NoteReason.BAD_SIGNATURE


@pytest.mark.parametrize(
    "make",
    [
        lambda t, s: t,
        lambda t, s: t + "\n",
        lambda t, s: t + "\n" + s[:-1],
        lambda t, s: "\x01" + t + "\n" + s,
        lambda t, s: t + "\n" + "— Bad Name " + s.split(" ")[2],
        lambda t, s: t + "\n" + s + "Unexpected line.\n",
        lambda t, s: t + "\n" + s * 101,
    ],
)
def test_go_malformed_notes(make: object) -> None:
    note = make(GO["text"], GO["peter_sig_line"])  # type: ignore[operator]
    with pytest.raises(NoteError) as caught:
        open_note(note, [parse_vkey(GO["peter_vkey"])])
    assert caught.value.reason is NoteReason.MALFORMED_NOTE


def test_c2sp_signed_note_example_verifies() -> None:
    verifier = parse_vkey(C2SP["vkey"])
    assert verifier.key_id == key_id(verifier.name, verifier.public_key)
    text, verified = open_note(C2SP["note"], [verifier])
    assert text == "This is an example message.\n"
    assert verified == [verifier]


def test_c2sp_checkpoint_example_parses() -> None:
    example = V["c2sp_tlog_checkpoint"]
    body, signatures = parse_note(example["note"])
    checkpoint = parse_checkpoint(body)
    assert (checkpoint.origin, checkpoint.size) == ("example.com/behind-the-sofa", 20852163)
    assert checkpoint.body() == body
    assert [s.name for s in signatures] == ["example.com/behind-the-sofa"]
    assert len(signatures[0].signature) == 64  # an Ed25519 signature by the log
    assert reason_of(example["note"], {}) == NoteReason.UNKNOWN_KEY


# Checkpoints signed here.


@pytest.fixture
def signed(root_key: KeyPair) -> tuple[Checkpoint, str]:
    origin = origin_for("shop")
    checkpoint = Checkpoint(origin, 42, bytes(range(32)))
    return checkpoint, sign_checkpoint(checkpoint, origin, root_key)


def test_checkpoint_layout(root_key: KeyPair, signed: tuple[Checkpoint, str]) -> None:
    checkpoint, note = signed
    root_b64 = base64.b64encode(bytes(range(32))).decode()
    assert checkpoint.body() == f"chassis.ledger/shop\n42\n{root_b64}\n"
    body, line = note.split("\n\n")
    assert body + "\n" == checkpoint.body()
    dash, name, sig = line.rstrip("\n").split(" ")
    assert (dash, name) == ("\u2014", "chassis.ledger/shop")
    raw = base64.b64decode(sig)
    assert raw[:4] == key_id("chassis.ledger/shop", root_key.public_key)
    assert len(raw) == 68
    assert note.endswith("\n") and note.count("\n") == 5


def test_checkpoint_round_trip(root_key: KeyPair, signed: tuple[Checkpoint, str]) -> None:
    checkpoint, note = signed
    origin = checkpoint.origin
    for verifiers in (
        {origin: root_key.public_key},
        [(origin, root_key.public_key)],
        [NoteVerifier(origin, root_key.public_key)],
        [parse_vkey(vkey_for(origin, root_key.public_key))],
    ):
        assert verify_checkpoint(note, verifiers, origin=origin) == checkpoint


def test_checkpoint_with_extensions_round_trips(root_key: KeyPair) -> None:
    checkpoint = Checkpoint("chassis.ledger/x", 0, bytes(32), ("ext one", "ext two"))
    note = sign_checkpoint(checkpoint, "chassis.ledger/x", root_key)
    assert checkpoint.body().endswith("ext one\next two\n")
    assert verify_checkpoint(note, {"chassis.ledger/x": root_key.public_key}) == checkpoint


def test_every_single_character_change_fails(
    root_key: KeyPair, signed: tuple[Checkpoint, str]
) -> None:
    checkpoint, note = signed
    verifiers = {checkpoint.origin: root_key.public_key}
    for position, char in enumerate(note):
        for replacement in ("A", "0", "\n", "+"):
            if replacement == char:
                continue
            tampered = note[:position] + replacement + note[position + 1 :]
            with pytest.raises(NoteError):
                verify_checkpoint(tampered, verifiers)
        deleted = note[:position] + note[position + 1 :]
        with pytest.raises(NoteError):
            verify_checkpoint(deleted, verifiers)


def test_every_signature_bit_flip_fails(root_key: KeyPair, signed: tuple[Checkpoint, str]) -> None:
    checkpoint, note = signed
    text, (signature,) = parse_note(note)
    for bit in range(64 * 8):
        raw = bytearray(signature.signature)
        raw[bit // 8] ^= 1 << (bit % 8)
        line = f"\u2014 {signature.name} {base64.b64encode(signature.key_id + raw).decode()}\n"
        assert reason_of(text + "\n" + line, {checkpoint.origin: root_key.public_key}) == (
            NoteReason.BAD_SIGNATURE
        )


def test_wrong_key_wrong_name_wrong_origin(
    root_key: KeyPair, signed: tuple[Checkpoint, str]
) -> None:
    checkpoint, note = signed
    other = keypair_from_seed("other", bytes(32))
    assert reason_of(note, {checkpoint.origin: other.public_key}) == NoteReason.UNKNOWN_KEY
    assert reason_of(note, {"chassis.ledger/else": root_key.public_key}) == NoteReason.UNKNOWN_KEY
    assert (
        reason_of(note, {checkpoint.origin: root_key.public_key}, origin=origin_for("else"))
        == NoteReason.WRONG_ORIGIN
    )


def test_unknown_extra_signatures_are_ignored(
    root_key: KeyPair, signed: tuple[Checkpoint, str]
) -> None:
    checkpoint, note = signed
    witness = keypair_from_seed("w", bytes(range(1, 33)))
    cosigned = note + sign_note(checkpoint.body(), "witness.example", witness).split("\n\n")[1]
    assert verify_checkpoint(cosigned, {checkpoint.origin: root_key.public_key}) == checkpoint
    both = {checkpoint.origin: root_key.public_key, "witness.example": witness.public_key}
    assert verify_checkpoint(cosigned, both) == checkpoint
    assert verify_checkpoint(cosigned, {"witness.example": witness.public_key}) == checkpoint


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ("o\n1\n", "three lines"),
        ("o\n01\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n", "plain decimal"),
        ("o\n-1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n", "plain decimal"),
        ("o\n+1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n", "plain decimal"),
        ("o\n1\nAAAA\n", "32 bytes"),
        ("o\n1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB=\n", "canonical"),
        ("o\n1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n", "base64"),
        ("o\n1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", "newline"),
        ("\n1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n", "origin"),
        ("o\n1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n\n", "non-empty"),
    ],
)
def test_malformed_checkpoints(body: str, detail: str) -> None:
    with pytest.raises(NoteError, match=detail) as caught:
        parse_checkpoint(body)
    assert caught.value.reason is NoteReason.MALFORMED_CHECKPOINT


def test_signed_malformed_checkpoint_is_refused(root_key: KeyPair) -> None:
    note = sign_note("o\n007\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n", "o", root_key)
    assert reason_of(note, {"o": root_key.public_key}) == NoteReason.MALFORMED_CHECKPOINT


def test_origins_and_key_names() -> None:
    assert origin_for("shop") == "chassis.ledger/shop"
    for bad in ("two words", "a+b", ""):
        with pytest.raises(NoteError) as caught:
            origin_for(bad) if bad else NoteVerifier("", bytes(32))
        assert caught.value.reason is NoteReason.MALFORMED_KEY
    with pytest.raises(NoteError, match="32 bytes"):
        NoteVerifier("k", b"short")


def test_note_errors_are_proof_errors() -> None:
    with pytest.raises(ProofError) as caught:
        parse_note("no signatures\n")
    assert str(caught.value).startswith("malformed-note: ")
