"""Offline proof files (c2sp.org/tlog-proof@v1): layout, round trip, failures."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from ledger.keys import KeyPair
from proofs.merkle import (
    LeafHashes,
    ProofError,
    ProofReason,
    inclusion_proof,
    leaf_hash,
    tree_root,
)
from proofs.note import Checkpoint, NoteError, NoteReason, origin_for, sign_checkpoint
from proofs.tlog_proof import (
    HEADER,
    TlogProofError,
    TlogProofReason,
    format_proof,
    parse_proof,
    verify_proof,
)

SPEC_EXAMPLE = json.loads((Path(__file__).parent / "vectors" / "signed-note.json").read_text())[
    "c2sp_tlog_proof_example"
]
ORIGIN = origin_for("shop")
LEAVES = [leaf_hash(bytes([i]) * 32) for i in range(13)]


@pytest.fixture
def log(root_key: KeyPair) -> tuple[str, dict[str, bytes]]:
    """A signed checkpoint of the 13 leaves, and the verifiers that trust it."""
    checkpoint = Checkpoint(ORIGIN, 13, tree_root(13, LeafHashes(LEAVES)))
    return sign_checkpoint(checkpoint, ORIGIN, root_key), {ORIGIN: root_key.public_key}


def proof_file(index: int, note: str, extra: bytes | None = None) -> str:
    return format_proof(index, inclusion_proof(index, 13, LeafHashes(LEAVES)), note, extra)


def test_layout(log: tuple[str, dict[str, bytes]]) -> None:
    note, _ = log
    hashes = inclusion_proof(5, 13, LeafHashes(LEAVES))
    text = format_proof(5, hashes, note, extra=b"release v1")
    expected = [
        HEADER,
        "extra " + base64.b64encode(b"release v1").decode(),
        "index 5",
        *(base64.b64encode(h).decode() for h in hashes),
        "",
    ]
    assert text == "\n".join(expected) + "\n" + note
    assert format_proof(5, hashes, note).split("\n")[1] == "index 5"


def test_spec_example_parses() -> None:
    """The spec's own example (its signatures are elided, so it cannot verify)."""
    proof = parse_proof(SPEC_EXAMPLE)
    assert proof.index == 73894
    assert len(proof.hashes) == 5
    assert proof.extra is not None and proof.extra.startswith(b"age-v1.2.1-darwin-arm64.tar.gz")
    assert proof.checkpoint.startswith("example.com/fancylog\n109482\n")
    with pytest.raises(NoteError) as caught:
        verify_proof(SPEC_EXAMPLE, LEAVES[0], {"example.com/fancylog": bytes(32)})
    assert caught.value.reason is NoteReason.MALFORMED_NOTE


def test_round_trip_for_every_leaf(log: tuple[str, dict[str, bytes]]) -> None:
    note, verifiers = log
    for index in range(13):
        for extra in (None, b"", b"\x00\xff"):
            text = proof_file(index, note, extra)
            parsed = parse_proof(text)
            assert (parsed.index, parsed.checkpoint, parsed.extra) == (index, note, extra)
            checkpoint = verify_proof(text, LEAVES[index], verifiers, origin=ORIGIN)
            assert (checkpoint.size, checkpoint.origin) == (13, ORIGIN)


def test_wrong_leaf_or_index_fails(log: tuple[str, dict[str, bytes]]) -> None:
    note, verifiers = log
    text = proof_file(6, note)
    with pytest.raises(ProofError) as caught:
        verify_proof(text, LEAVES[7], verifiers)
    assert caught.value.reason is ProofReason.ROOT_MISMATCH
    with pytest.raises(ProofError):
        verify_proof(text.replace("index 6\n", "index 7\n"), LEAVES[6], verifiers)
    with pytest.raises(ProofError) as caught:
        verify_proof(text.replace("index 6\n", "index 13\n"), LEAVES[6], verifiers)
    assert caught.value.reason is ProofReason.INDEX_OUT_OF_RANGE


def test_every_proof_line_change_fails(log: tuple[str, dict[str, bytes]]) -> None:
    note, verifiers = log
    text = proof_file(6, note)
    header, _, _ = text.partition("\n\n")
    for position in range(len(header)):
        for replacement in ("A", "7", "\n"):
            if header[position] == replacement:
                continue
            tampered = text[:position] + replacement + text[position + 1 :]
            with pytest.raises(ProofError):
                verify_proof(tampered, LEAVES[6], verifiers)


def test_checkpoint_must_verify(log: tuple[str, dict[str, bytes]], root_key: KeyPair) -> None:
    note, verifiers = log
    text = proof_file(3, note)
    with pytest.raises(NoteError) as caught:
        verify_proof(text, LEAVES[3], {"chassis.ledger/other": root_key.public_key})
    assert caught.value.reason is NoteReason.UNKNOWN_KEY
    with pytest.raises(NoteError) as caught:
        verify_proof(text, LEAVES[3], verifiers, origin=origin_for("other"))
    assert caught.value.reason is NoteReason.WRONG_ORIGIN
    bigger = sign_checkpoint(Checkpoint(ORIGIN, 14, bytes(32)), ORIGIN, root_key)
    with pytest.raises(ProofError):
        verify_proof(format_proof(3, parse_proof(text).hashes, bigger), LEAVES[3], verifiers)


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        ("c2sp.org/tlog-proof@v2\nindex 0\n\nX\n", "first line"),
        ("c2sp.org/tlog-proof@v1\nindex 0\n", "empty line"),
        ("c2sp.org/tlog-proof@v1\nindex 0\n\n", "no checkpoint"),
        ("c2sp.org/tlog-proof@v1\n\nX\n", "index"),
        ("c2sp.org/tlog-proof@v1\nindex 01\n\nX\n", "plain decimal"),
        ("c2sp.org/tlog-proof@v1\nindex -1\n\nX\n", "plain decimal"),
        ("c2sp.org/tlog-proof@v1\nindex  1\n\nX\n", "plain decimal"),
        ("c2sp.org/tlog-proof@v1\nextra !!\nindex 1\n\nX\n", "extra data"),
        ("c2sp.org/tlog-proof@v1\nindex 1\nextra AA==\n\nX\n", "proof hash 0"),
        ("c2sp.org/tlog-proof@v1\nindex 1\nAAAA\n\nX\n", "3 bytes"),
        ("c2sp.org/tlog-proof@v1\nindex 1\n" + "A" * 43 + "B=\n\nX\n", "canonical"),
    ],
)
def test_malformed_proof_files(text: str, detail: str) -> None:
    with pytest.raises(TlogProofError, match=detail) as caught:
        parse_proof(text)
    assert caught.value.reason is TlogProofReason.MALFORMED_PROOF


def test_format_refuses_bad_input(log: tuple[str, dict[str, bytes]]) -> None:
    note, _ = log
    with pytest.raises(ValueError, match="negative"):
        format_proof(-1, [], note)
    with pytest.raises(ValueError, match="32 bytes"):
        format_proof(0, [b"short"], note)
    with pytest.raises(ValueError, match="newline"):
        format_proof(0, [], note.rstrip("\n"))
