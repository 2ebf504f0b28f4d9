"""Key files: generated safely, refused when exposed, ids derived from the key."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from ledger.errors import KeyFileError
from ledger.keys import generate_keypair, keyid_for, load_keypair, load_public_key, verify_signature


def test_generated_files_and_modes(isolation: Path) -> None:
    key = generate_keypair(isolation, "alice")
    private, public = isolation / "alice.key", isolation / "alice.pub"
    assert private.stat().st_mode & 0o777 == 0o600
    assert isolation.stat().st_mode & 0o777 == 0o700
    assert load_keypair(private).keyid == key.keyid
    assert load_public_key(public) == key.public_key
    assert key.keyid == hashlib.sha256(key.public_key).hexdigest()
    assert "PRIVATE" not in repr(key) and key.keyid[:16] in repr(key)


def test_never_overwrites(isolation: Path) -> None:
    generate_keypair(isolation, "alice")
    with pytest.raises(KeyFileError, match="already exists"):
        generate_keypair(isolation, "alice")


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_key_readable_by_others_is_refused(isolation: Path, mode: int) -> None:
    generate_keypair(isolation, "alice")
    path = isolation / "alice.key"
    os.chmod(path, mode)
    with pytest.raises(KeyFileError, match="readable by group or others") as caught:
        load_keypair(path)
    assert "chmod 600" in str(caught.value)


def test_bad_key_files(isolation: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.key"
    junk.write_text("not a key")
    junk.chmod(0o600)
    with pytest.raises(KeyFileError, match=r"junk\.key: not an unencrypted PEM private key"):
        load_keypair(junk)
    with pytest.raises(KeyFileError, match="no such key file"):
        load_keypair(tmp_path / "missing.key")
    with pytest.raises(KeyFileError, match="expected a PEM Ed25519 public key"):
        load_public_key(junk)
    generate_keypair(isolation, "bob")
    with pytest.raises(KeyFileError, match="this is a private key"):
        load_public_key(isolation / "bob.key")


def test_hex_public_key_files(isolation: Path, tmp_path: Path) -> None:
    key = generate_keypair(isolation, "carol")
    hex_file = tmp_path / "carol.hex"
    hex_file.write_text(key.public_key.hex() + "\n")
    assert load_public_key(hex_file) == key.public_key


@pytest.mark.parametrize("name", ["", "../evil", "a b", "-dash", "x" * 65])
def test_bad_key_names(isolation: Path, name: str) -> None:
    with pytest.raises(KeyFileError, match="key name"):
        generate_keypair(isolation, name)


def test_signatures(isolation: Path) -> None:
    key = generate_keypair(isolation, "dave")
    signature = key.sign(b"m")
    assert verify_signature(key.public_key, signature, b"m")
    assert not verify_signature(key.public_key, signature, b"n")
    with pytest.raises(ValueError, match="32 bytes"):
        keyid_for(b"short")
