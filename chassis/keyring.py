"""Choosing the acting key: ``CHASSIS_SIGNING_KEY`` when set (CI), else a
file in the key directory.

The environment variable holds the private key itself. For one CLI command
(:func:`signing_key_taken`) its value is taken out of the process
environment, so no process Chassis starts (a local host's steps, health
checks, components) inherits it, and registered as a secret value, so no
output, error, log line, receipt or ledger record carries it in any
encoding. Messages about it name the variable, never the value.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from chassis.config.env import EnvVars
from ledger.errors import KeyFileError, UnknownKeyError
from ledger.keys import (
    PRIVATE_SUFFIX,
    KeyPair,
    load_keypair,
    load_private_key_text,
    load_public_key,
)

ENV_KEY_NAME = EnvVars.SIGNING_KEY
"""The name an environment key acts under in messages (``KeyPair.name``)."""

_taken: list[str | None] = []
"""The values taken out of the environment by the commands running (innermost last)."""


@contextlib.contextmanager
def signing_key_taken() -> Iterator[None]:
    """For one command: take ``CHASSIS_SIGNING_KEY`` out of ``os.environ``
    (put back afterwards) and register its value, and the key's PEM, as
    secret values (after the command's registry was cleared)."""
    value = os.environ.pop(EnvVars.SIGNING_KEY, None)
    _taken.append(value)
    try:
        if value is not None:
            _register(value)
        yield
    finally:
        _taken.pop()
        if value is not None:
            os.environ[EnvVars.SIGNING_KEY] = value


def env_signing_key_text() -> str | None:
    """``CHASSIS_SIGNING_KEY``'s value (taken for this command, or still in
    the environment), None when unset or empty."""
    value = _taken[-1] if _taken else os.environ.get(EnvVars.SIGNING_KEY)
    return value if value and value.strip() else None


def env_signing_key(name: str = ENV_KEY_NAME) -> KeyPair | None:
    """The key in ``CHASSIS_SIGNING_KEY``, if set, acting as ``name``. Raises
    ``KeyFileError`` naming the variable and the forms expected (never the value)."""
    value = env_signing_key_text()
    if value is None:
        return None
    return load_private_key_text(value, name=name, source=EnvVars.SIGNING_KEY)


def _register(value: str) -> None:
    from cryptography.hazmat.primitives import serialization

    from proofs.redaction import register_secret

    register_secret(value, EnvVars.SIGNING_KEY)
    with contextlib.suppress(KeyFileError):
        key = load_private_key_text(value, name=ENV_KEY_NAME, source=EnvVars.SIGNING_KEY)
        pem = key.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        raw = key.private_key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        register_secret(pem.decode(), EnvVars.SIGNING_KEY)
        register_secret(raw.hex(), EnvVars.SIGNING_KEY)


def acting_key(directory: Path, ref: str) -> KeyPair:
    """``CHASSIS_SIGNING_KEY`` when set, else the key file ``ref`` names."""
    return env_signing_key() or load_acting_key(directory, ref)


def local_key_path(directory: Path, ref: str) -> Path | None:
    """The private key file for a name or key-id prefix (8+ hex digits), if local."""
    by_name = directory / f"{ref}{PRIVATE_SUFFIX}"
    if by_name.is_file():
        return by_name
    if len(ref) < 8 or not directory.is_dir():
        return None
    from ledger.keys import keyid_for

    matches = []
    for public in sorted(directory.glob("*.pub")):
        try:
            keyid = keyid_for(load_public_key(public))
        except KeyFileError:
            continue
        if keyid.startswith(ref.lower()):
            matches.append(public.with_suffix(PRIVATE_SUFFIX))
    if len(matches) > 1:
        raise UnknownKeyError(f"key id prefix {ref!r} matches {len(matches)} keys in {directory}")
    return matches[0] if matches else None


def load_acting_key(directory: Path, ref: str) -> KeyPair:
    """Load the private key named or identified by ``ref``. Raises ``KeyFileError``."""
    path = local_key_path(directory, ref)
    if path is None:
        raise UnknownKeyError(f"no private key {ref!r} in {directory} (see 'chassis key list')")
    return load_keypair(path)


def local_keyids(directory: Path) -> set[str]:
    """Key ids whose private key is present locally (by their .pub files)."""
    from ledger.keys import keyid_for

    found: set[str] = set()
    if not directory.is_dir():
        return found
    for public in directory.glob("*.pub"):
        if public.with_suffix(PRIVATE_SUFFIX).is_file():
            try:
                found.add(keyid_for(load_public_key(public)))
            except KeyFileError:
                continue
    return found
