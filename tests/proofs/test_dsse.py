"""DSSE envelopes interoperate with securesystemslib in both directions and
fail closed with a named reason."""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st
from securesystemslib.dsse import Envelope
from securesystemslib.exceptions import VerificationError
from securesystemslib.signer import CryptoSigner, SSlibKey

from ledger.canonical import canonical_json
from ledger.keys import KeyPair, generate_keypair, keyid_for
from proofs.dsse import (
    PAYLOAD_TYPE_INTOTO,
    EnvelopeError,
    VerifiedEnvelope,
    envelope_digest,
    pae,
    sign_envelope,
    verify_envelope,
)
from proofs.intoto import RECEIPT_PREDICATE, statement, statement_bytes, subject

RELEASE = "ab" * 32


@pytest.fixture
def signer(tmp_path: Path) -> KeyPair:
    return generate_keypair(tmp_path / "dsse-keys", "signer")


@pytest.fixture
def payload() -> bytes:
    st_ = statement([subject("shop", RELEASE)], RECEIPT_PREDICATE, {"operation": "deploy"})
    return statement_bytes(st_)


def sslib_key(public: bytes, keyid: str) -> SSlibKey:
    return SSlibKey(keyid, "ed25519", "ed25519", {"public": public.hex()})


def sslib_verify(envelope: dict[str, Any], key: SSlibKey) -> None:
    # Envelope.from_dict rewrites the signature dicts it is given.
    Envelope.from_dict(copy.deepcopy(envelope)).verify([key], 1)


def tampered_byte(text: str) -> str:
    raw = bytearray(base64.b64decode(text))
    raw[len(raw) // 2] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


def test_pae_bytes_match_the_spec_example() -> None:
    assert pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )
    assert pae("", b"") == b"DSSEv1 0  0 "
    # Lengths count UTF-8 bytes, not characters.
    assert pae("é", b"\x00") == b"DSSEv1 2 \xc3\xa9 1 \x00"


def test_envelope_shape(signer: KeyPair, payload: bytes) -> None:
    envelope = sign_envelope(payload, PAYLOAD_TYPE_INTOTO, signer)
    assert envelope["payloadType"] == PAYLOAD_TYPE_INTOTO
    assert base64.b64decode(envelope["payload"], validate=True) == payload
    [signature] = envelope["signatures"]
    assert signature["keyid"] == signer.keyid == keyid_for(signer.public_key)
    assert len(base64.b64decode(signature["sig"], validate=True)) == 64


def test_our_envelope_verifies_in_securesystemslib(signer: KeyPair, payload: bytes) -> None:
    envelope = sign_envelope(payload, PAYLOAD_TYPE_INTOTO, signer)
    key = sslib_key(signer.public_key, signer.keyid)
    sslib_verify(envelope, key)
    assert Envelope.from_dict(copy.deepcopy(envelope)).pae() == pae(PAYLOAD_TYPE_INTOTO, payload)
    assert Envelope.from_dict(copy.deepcopy(envelope)).to_dict() == envelope


def test_our_envelope_verifies_in_ours(signer: KeyPair, payload: bytes) -> None:
    envelope = sign_envelope(payload, PAYLOAD_TYPE_INTOTO, signer)
    verified = verify_envelope(envelope, {signer.keyid: signer.public_key})
    assert verified == VerifiedEnvelope(
        payload=payload, keyid=signer.keyid, statement=json.loads(payload)
    )
    # JSON bytes are accepted too, with other spacing.
    as_bytes = json.dumps(envelope, indent=2).encode()
    assert verify_envelope(as_bytes, {signer.keyid: signer.public_key}) == verified


@pytest.mark.parametrize("part", ["payload", "signature", "payloadType"])
def test_tampering_fails_in_both_verifiers(signer: KeyPair, payload: bytes, part: str) -> None:
    envelope = sign_envelope(payload, PAYLOAD_TYPE_INTOTO, signer)
    if part == "payload":
        envelope["payload"] = tampered_byte(envelope["payload"])
    elif part == "signature":
        sig = envelope["signatures"][0]
        sig["sig"] = tampered_byte(sig["sig"])
    else:
        envelope["payloadType"] = "application/vnd.in-toto+jsoN"
    with pytest.raises(VerificationError):
        sslib_verify(envelope, sslib_key(signer.public_key, signer.keyid))
    with pytest.raises(EnvelopeError) as raised:
        verify_envelope(
            envelope, {signer.keyid: signer.public_key}, payload_type=envelope["payloadType"]
        )
    assert raised.value.reason == "bad-signature"
    assert raised.value.exit_code == 8
    assert "bad-signature" in raised.value.diagnostics()


def test_wrong_payload_type_is_named(signer: KeyPair, payload: bytes) -> None:
    envelope = sign_envelope(payload, "application/vnd.example+json", signer)
    with pytest.raises(EnvelopeError) as raised:
        verify_envelope(envelope, {signer.keyid: signer.public_key})
    assert raised.value.reason == "wrong-payload-type"
    other = verify_envelope(
        envelope,
        {signer.keyid: signer.public_key},
        payload_type="application/vnd.example+json",
    )
    assert other.statement is None
    assert other.payload == payload


def test_securesystemslib_envelope_verifies_in_ours(payload: bytes) -> None:
    private = Ed25519PrivateKey.generate()
    sslib_signer = CryptoSigner(private)
    theirs = Envelope(payload, PAYLOAD_TYPE_INTOTO, {})
    theirs.sign(sslib_signer)
    raw_public = bytes.fromhex(sslib_signer.public_key.keyval["public"])
    their_keyid = sslib_signer.public_key.keyid
    verified = verify_envelope(theirs.to_dict(), {their_keyid: raw_public})
    assert verified.keyid == their_keyid
    assert verified.payload == payload


def test_unknown_key(signer: KeyPair, payload: bytes, tmp_path: Path) -> None:
    other = generate_keypair(tmp_path / "other-keys", "other")
    envelope = sign_envelope(payload, PAYLOAD_TYPE_INTOTO, signer)
    with pytest.raises(EnvelopeError) as raised:
        verify_envelope(envelope, {other.keyid: other.public_key})
    assert raised.value.reason == "unknown-key"


def test_keyid_is_only_a_hint(signer: KeyPair, payload: bytes, tmp_path: Path) -> None:
    """A signature claiming a known keyid but made by another key does not verify."""
    other = generate_keypair(tmp_path / "other-keys", "other")
    envelope = sign_envelope(payload, PAYLOAD_TYPE_INTOTO, other)
    envelope["signatures"][0]["keyid"] = signer.keyid
    with pytest.raises(EnvelopeError) as raised:
        verify_envelope(envelope, {signer.keyid: signer.public_key})
    assert raised.value.reason == "bad-signature"
    # An empty keyid tries every known key.
    envelope = sign_envelope(payload, PAYLOAD_TYPE_INTOTO, signer)
    envelope["signatures"][0]["keyid"] = ""
    keys = {other.keyid: other.public_key, signer.keyid: signer.public_key}
    assert verify_envelope(envelope, keys).keyid == signer.keyid


def test_one_good_signature_among_bad_ones(signer: KeyPair, payload: bytes, tmp_path: Path) -> None:
    other = generate_keypair(tmp_path / "other-keys", "other")
    envelope = sign_envelope(payload, PAYLOAD_TYPE_INTOTO, signer)
    forged = sign_envelope(b"something else", PAYLOAD_TYPE_INTOTO, other)["signatures"][0]
    envelope["signatures"].insert(0, forged)
    keys = {other.keyid: other.public_key, signer.keyid: signer.public_key}
    assert verify_envelope(envelope, keys).keyid == signer.keyid


def test_no_signature(signer: KeyPair, payload: bytes) -> None:
    envelope = sign_envelope(payload, PAYLOAD_TYPE_INTOTO, signer)
    envelope["signatures"] = []
    with pytest.raises(EnvelopeError) as raised:
        verify_envelope(envelope, {signer.keyid: signer.public_key})
    assert raised.value.reason == "no-signature"


MALFORMED: list[tuple[str, Any]] = [
    ("not an object", ["payload"]),
    ("missing payload", {"payloadType": PAYLOAD_TYPE_INTOTO, "signatures": []}),
    ("payload type not a string", {"payloadType": 1, "payload": "", "signatures": []}),
    (
        "signatures not a list",
        {"payloadType": PAYLOAD_TYPE_INTOTO, "payload": "", "signatures": {}},
    ),
]


@pytest.mark.parametrize(("case", "envelope"), MALFORMED, ids=[c for c, _ in MALFORMED])
def test_malformed_shapes(signer: KeyPair, case: str, envelope: Any) -> None:
    with pytest.raises(EnvelopeError) as raised:
        verify_envelope(envelope, {signer.keyid: signer.public_key})
    assert raised.value.reason == "malformed", case


@pytest.mark.parametrize(
    "bad",
    [
        "aGVsbG8",  # missing padding
        "aGVs bG8=",  # whitespace
        "aGVsbG9=",  # non-zero trailing bits
        "aGVsbG8=\n",  # trailing newline
        "aGV-bG8/",  # mixed alphabets
        "!!!!",
    ],
)
def test_strict_base64(signer: KeyPair, payload: bytes, bad: str) -> None:
    envelope = sign_envelope(payload, PAYLOAD_TYPE_INTOTO, signer)
    for field in ("payload", "sig"):
        broken = copy.deepcopy(envelope)
        if field == "payload":
            broken["payload"] = bad
        else:
            broken["signatures"][0]["sig"] = bad
        with pytest.raises(EnvelopeError) as raised:
            verify_envelope(broken, {signer.keyid: signer.public_key})
        assert raised.value.reason == "malformed"


def test_url_safe_base64_is_accepted(signer: KeyPair, payload: bytes) -> None:
    envelope = sign_envelope(payload + b" \xfb\xff", "application/octet-stream", signer)
    envelope["payload"] = base64.urlsafe_b64encode(payload + b" \xfb\xff").decode()
    assert "-" in envelope["payload"] or "_" in envelope["payload"]
    verify_envelope(
        envelope, {signer.keyid: signer.public_key}, payload_type="application/octet-stream"
    )


def test_malformed_json_bytes(signer: KeyPair) -> None:
    keys = {signer.keyid: signer.public_key}
    for data in (b"{", b"\xff", b'{"payload": "", "payload": ""}', b"[" * 100_000):
        with pytest.raises(EnvelopeError) as raised:
            verify_envelope(data, keys)
        assert raised.value.reason == "malformed"


def test_signed_payload_that_is_not_a_statement(signer: KeyPair) -> None:
    keys = {signer.keyid: signer.public_key}
    for body in (b"not json", b'{"_type": "https://in-toto.io/Statement/v0.1"}'):
        envelope = sign_envelope(body, PAYLOAD_TYPE_INTOTO, signer)
        with pytest.raises(EnvelopeError) as raised:
            verify_envelope(envelope, keys)
        assert raised.value.reason == "malformed"


def test_bad_key_material_is_a_caller_error(signer: KeyPair, payload: bytes) -> None:
    envelope = sign_envelope(payload, PAYLOAD_TYPE_INTOTO, signer)
    with pytest.raises(ValueError, match="32-byte"):
        verify_envelope(envelope, {signer.keyid: signer.public_key[:31]})


def test_envelope_digest_is_canonical(signer: KeyPair, payload: bytes) -> None:
    envelope = sign_envelope(payload, PAYLOAD_TYPE_INTOTO, signer)
    reordered = json.loads(json.dumps(envelope, sort_keys=True, indent=3))
    assert envelope_digest(envelope) == envelope_digest(reordered)
    import hashlib

    assert envelope_digest(envelope) == hashlib.sha256(canonical_json(envelope)).hexdigest()
    envelope["signatures"][0]["keyid"] = "x"
    assert envelope_digest(envelope) != envelope_digest(reordered)


@given(payload=st.binary(max_size=300), kind=st.text(min_size=1, max_size=40))
def test_round_trip_any_payload(payload: bytes, kind: str) -> None:
    private = Ed25519PrivateKey.generate()
    from cryptography.hazmat.primitives import serialization

    raw = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    keypair = KeyPair(name="k", private_key=private, public_key=raw, keyid=keyid_for(raw))
    envelope = sign_envelope(payload, kind, keypair)
    verified = verify_envelope(envelope, {keypair.keyid: raw}, payload_type=kind)
    assert verified.payload == payload
    sslib_verify(envelope, sslib_key(raw, keypair.keyid))
