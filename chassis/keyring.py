"""Choosing the acting key from the key directory."""

from __future__ import annotations

from pathlib import Path

from ledger.errors import KeyFileError, UnknownKeyError
from ledger.keys import PRIVATE_SUFFIX, KeyPair, load_keypair, load_public_key


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
