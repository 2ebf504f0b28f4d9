"""Ed25519 key files and key ids.

A key id is ``sha256(raw 32-byte public key)`` in lowercase hex: stable,
derivable by anyone holding the public key, and independent of file format.
Private keys are PKCS#8 PEM files with mode 0600 in a 0700 directory; a file
that group or others can read is refused rather than used.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

import nacl.bindings
import nacl.exceptions
import nacl.signing
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from ledger import verified
from ledger.errors import KeyFileError

KEY_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
PRIVATE_SUFFIX = ".key"
PUBLIC_SUFFIX = ".pub"


def keyid_for(public_key: bytes) -> str:
    """The key id of a raw 32-byte Ed25519 public key."""
    if len(public_key) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    return hashlib.sha256(public_key).hexdigest()


def verify_signature(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """True when ``signature`` is a valid Ed25519 signature of ``message``
    (each exact triple checked once per process: :mod:`ledger.verified`)."""
    try:
        return verified.verifies(public_key, signature, message)
    except (ValueError, TypeError):
        return False


@dataclass(frozen=True)
class KeyPair:
    """A loaded signing key. ``repr`` never shows private material.

    Signing goes through libsodium (PyNaCl): same Ed25519 signatures, but the
    call releases the GIL, so a batch can be signed on every core.
    """

    name: str
    private_key: Ed25519PrivateKey
    public_key: bytes
    keyid: str
    _signing: nacl.signing.SigningKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        seed = self.private_key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        object.__setattr__(self, "_signing", nacl.signing.SigningKey(seed))

    def sign(self, message: bytes) -> bytes:
        signature: bytes = self._signing.sign(message).signature
        return signature

    def __repr__(self) -> str:
        return f"KeyPair(name={self.name!r}, keyid={self.keyid[:16]!r})"


def check_key_name(name: str) -> str:
    """Return ``name`` or raise ``KeyFileError`` when it cannot be a file name."""
    if not KEY_NAME_PATTERN.match(name):
        raise KeyFileError(
            f"key name {name!r}: expected 1-64 characters of letters, digits, '.', '_' or '-'"
        )
    return name


def ensure_key_dir(directory: Path) -> Path:
    """Create the key directory with mode 0700 if needed."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = stat.S_IMODE(directory.stat().st_mode)
    if mode & 0o022:
        raise KeyFileError(
            f"{directory}: key directory is writable by group or others; chmod 700 it"
        )
    return directory


def _write_exclusive(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def generate_keypair(directory: Path, name: str) -> KeyPair:
    """Create ``NAME.key`` (0600) and ``NAME.pub`` in ``directory``; never overwrite."""
    check_key_name(name)
    ensure_key_dir(directory)
    private_path = directory / f"{name}{PRIVATE_SUFFIX}"
    public_path = directory / f"{name}{PUBLIC_SUFFIX}"
    if private_path.exists() or public_path.exists():
        raise KeyFileError(f"{private_path}: a key named {name!r} already exists")
    private_key = Ed25519PrivateKey.generate()
    pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write_exclusive(private_path, pem, 0o600)
    try:
        _write_exclusive(public_path, public_pem, 0o644)
    except OSError:
        private_path.unlink()
        raise
    return _keypair(name, private_key)


def _keypair(name: str, private_key: Ed25519PrivateKey) -> KeyPair:
    raw = private_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return KeyPair(name=name, private_key=private_key, public_key=raw, keyid=keyid_for(raw))


def load_keypair(path: Path) -> KeyPair:
    """Load a private key file. Raises ``KeyFileError`` naming the file and the problem."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise KeyFileError(f"{path}: no such key file") from None
    if stat.S_IMODE(info.st_mode) & 0o077:
        raise KeyFileError(
            f"{path}: private key is readable by group or others "
            f"(mode {stat.S_IMODE(info.st_mode):o}); run 'chmod 600 {path}'"
        )
    try:
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as e:
        raise KeyFileError(f"{path}: not an unencrypted PEM private key") from e
    if not isinstance(loaded, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: expected an Ed25519 private key")
    name = path.name.removesuffix(PRIVATE_SUFFIX)
    return _keypair(name, loaded)


PRIVATE_KEY_FORMS = (
    "an Ed25519 private key: PKCS#8 PEM (what a .key file holds), that PEM in base64, "
    "or the 32-byte seed in base64 or 64 hex digits"
)


def load_private_key_text(text: str, *, name: str, source: str) -> KeyPair:
    """A private key given as text (an environment variable), in any of
    :data:`PRIVATE_KEY_FORMS`; a PEM whose newlines were written as ``\\n``
    is accepted too. Raises ``KeyFileError`` naming ``source`` and what was
    expected, never quoting the text."""
    private_key = _private_key_from_text(text.strip())
    if private_key is None:
        raise KeyFileError(f"{source}: expected {PRIVATE_KEY_FORMS}")
    return _keypair(name, private_key)


def _private_key_from_text(text: str) -> Ed25519PrivateKey | None:
    if "-----BEGIN" in text:
        return _from_pem(text.replace("\\n", "\n").encode())
    if re.fullmatch(r"[0-9a-fA-F]{64}", text):
        return Ed25519PrivateKey.from_private_bytes(bytes.fromhex(text))
    compact = re.sub(r"\s+", "", text)
    if not re.fullmatch(r"[A-Za-z0-9+/_-]+={0,2}", compact):
        return None
    try:
        data = base64.b64decode(
            compact.replace("-", "+").replace("_", "/") + "=" * (-len(compact) % 4),
            validate=True,
        )
    except ValueError:
        return None
    if len(data) == 32:
        return Ed25519PrivateKey.from_private_bytes(data)
    if data.lstrip().startswith(b"-----BEGIN"):
        return _from_pem(data)
    try:
        loaded = serialization.load_der_private_key(data, password=None)
    except (ValueError, TypeError):
        return None
    return loaded if isinstance(loaded, Ed25519PrivateKey) else None


def _from_pem(data: bytes) -> Ed25519PrivateKey | None:
    try:
        loaded = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        return None
    return loaded if isinstance(loaded, Ed25519PrivateKey) else None


def load_public_key(path: Path) -> bytes:
    """Read a public key file (PEM SubjectPublicKeyInfo or 64 hex digits) to raw bytes."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise KeyFileError(f"{path}: cannot read public key file ({e.strerror})") from None
    text = data.strip()
    if re.fullmatch(rb"[0-9a-fA-F]{64}", text):
        return bytes.fromhex(text.decode())
    if b"PRIVATE KEY" in data:
        raise KeyFileError(f"{path}: this is a private key; pass the public key (.pub) instead")
    try:
        loaded = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        raise KeyFileError(f"{path}: expected a PEM Ed25519 public key or 64 hex digits") from None
    if not isinstance(loaded, Ed25519PublicKey):
        raise KeyFileError(f"{path}: expected an Ed25519 public key")
    return loaded.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
