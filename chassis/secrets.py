"""Secret references: ``env.KEY = { from_env = "VAR" }``, ``{ from_file = "PATH" }``
or ``{ secret = "NAME" }`` (a secret of the workspace's store, ``chassis secret``).

The value is read on the machine running chassis when a host step writes the
component's env file (mode 600 on the host); the ledger, plans, receipts and
exports only ever hold the reference (``env:VAR`` / ``file:/abs/path`` /
``store:NAME@VERSION``). A store reference is pinned to the secret's current
version when the plan is made (:func:`pin_refs`), so rolling back to a plan
restores the version it ran; ``env:`` and ``file:`` references are re-read:
a rotated value stays rotated.

Store references are revealed through the process-wide active store
(:func:`use_store`, set by the CLI once the acting key and the ledger meet):
without one, or when the store cannot reveal the version (unknown secret,
the acting key not a recipient, tampered), resolving fails with the store's
exit code before anything is recorded.

Every value read here is registered with ``proofs.redaction`` for the rest of
the command, so that the value (and its base64 and percent-encoded forms) is
scrubbed from whatever Chassis records or prints: a component that echoes its
secret into the log tail of a failed health gate must not put it in a signed,
hash-chained record that can never be rewritten. A value under
``MIN_WORD_CHARS`` characters cannot be told from ordinary text and is not
scrubbed; the CLI warns about it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Protocol

from chassis.errors import ChassisError
from proofs.redaction import register_secret

STORE = "store"
"""The kind of a reference to the secret store: ``store:NAME@VERSION``."""


class SecretUnavailable(ChassisError):
    """A referenced secret cannot be read; exit 3, or the store's own code
    (5 no recipient key, 8 tampered, 10 unknown secret) where it said why."""

    exit_code = 3

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class RevealingStore(Protocol):
    """What resolving needs of ``chassis.secret_store.SecretStore``."""

    def current_version(self, name: str) -> int: ...

    def reveal(self, name: str, version: int) -> str: ...


_active: RevealingStore | None = None
_active_lock = threading.Lock()


def use_store(store: RevealingStore | None) -> None:
    """Make ``store`` the one store references are revealed through, for the
    whole process (host steps run in threads); ``None`` forgets it."""
    global _active
    with _active_lock:
        _active = store


def active_store() -> RevealingStore | None:
    return _active


def reference(
    from_env: str | None, from_file: str | None, base: Path, *, secret: str | None = None
) -> str:
    """The recorded form of a reference (files made absolute against ``base``;
    a store secret unpinned, ``store:NAME``, until :func:`pin_refs`)."""
    if secret is not None:
        return f"{STORE}:{secret}"
    if from_env is not None:
        return f"env:{from_env}"
    assert from_file is not None
    path = Path(from_file).expanduser()
    return f"file:{path if path.is_absolute() else (base / path).resolve()}"


def store_ref(ref: str) -> tuple[str, int | None] | None:
    """(NAME, VERSION or None when unpinned) of a ``store:`` reference, else None."""
    kind, _, target = ref.partition(":")
    if kind != STORE:
        return None
    name, at, version = target.partition("@")
    if not at:
        return name, None
    return name, int(version) if version.isdigit() else -1


def pin_refs(
    secrets: Mapping[str, str],
    current_version: Callable[[str], int],
    *,
    component: str,
    strict: bool,
) -> dict[str, str]:
    """``secrets`` with each unpinned store reference pinned to its secret's
    current version: ``store:NAME`` → ``store:NAME@3``. ``strict``: a secret
    the store does not hold raises (exit 10); otherwise (a plan that records
    nothing) its reference is left unpinned."""
    pinned: dict[str, str] = {}
    for env, ref in secrets.items():
        found = store_ref(ref)
        if found is not None and found[1] is None:
            try:
                ref = f"{ref}@{current_version(found[0])}"
            except ChassisError as e:
                if strict:
                    raise SecretUnavailable(
                        f"component {component}: env {env}: {e.diagnostics()}",
                        exit_code=e.exit_code,
                    ) from None
        pinned[env] = ref
    return pinned


def describe(ref: str) -> str:
    """A reference as said to the operator: ``db_password@3`` for the store."""
    found = store_ref(ref)
    if found is None:
        return ref
    name, version = found
    return name if version is None else f"{name}@{version}"


def _reveal(ref: str, where: str) -> str:
    found = store_ref(ref)
    assert found is not None
    name, version = found
    if version is None or version < 1:
        raise SecretUnavailable(f"{where}: {ref!r} names no version of secret {name}")
    store = active_store()
    if store is None:
        raise SecretUnavailable(
            f"{where}: secret {name}@{version} is in the secret store, which only a "
            "command acting with a key can read"
        )
    try:
        return store.reveal(name, version)
    except ChassisError as e:
        raise SecretUnavailable(f"{where}: {e.diagnostics()}", exit_code=e.exit_code) from None


def resolve(name: str, ref: str, *, component: str) -> str:
    """The value behind ``ref``, registered for scrubbing before it is returned."""
    kind, _, target = ref.partition(":")
    where = f"component {component}: env {name}"
    if kind == "env":
        value = os.environ.get(target)
        if value is None:
            raise SecretUnavailable(f"{where}: environment variable {target} is not set")
    elif kind == "file":
        try:
            value = Path(target).read_text().rstrip("\n")
        except OSError as e:
            raise SecretUnavailable(f"{where}: cannot read {target}: {e.strerror}") from None
    elif kind == STORE:
        value = _reveal(ref, where)
    else:
        raise SecretUnavailable(f"{where}: unknown secret reference {ref!r}")
    register_secret(value, f"{where} ({ref})")
    return value


def resolve_all(secrets: Mapping[str, str], *, component: str) -> dict[str, str]:
    return {name: resolve(name, ref, component=component) for name, ref in secrets.items()}


def check_available(components: Iterable[tuple[str, Mapping[str, str]]]) -> None:
    """Raise before anything is recorded if a referenced secret cannot be read."""
    for component, secrets in components:
        resolve_all(secrets, component=component)


def fingerprint(ref: str, value: str, key: bytes) -> str:
    """What a plan records of a resolved secret: ``KEYID:DIGEST``, an HMAC of
    the reference and value under the workspace's redaction key (never the
    value; ``KEYID`` names the key, so two workspaces' fingerprints are never
    compared as if they could be)."""
    keyid = hashlib.sha256(b"chassis.secret-key.v1\x00" + key).hexdigest()[:8]
    mac = hmac.new(key, ref.encode() + b"\x00" + value.encode(), hashlib.sha256)
    return f"{keyid}:{mac.hexdigest()[:32]}"


def fingerprints(secrets: Mapping[str, str], *, component: str, key: bytes) -> dict[str, str]:
    """env name → fingerprint of each of ``component``'s secrets, resolved now."""
    return {
        name: fingerprint(ref, resolve(name, ref, component=component), key)
        for name, ref in secrets.items()
    }


def changed_secrets(
    before: Mapping[str, str], now: Mapping[str, str]
) -> tuple[list[str], list[str]]:
    """(changed, unknown) env names between two fingerprint maps: changed
    when both were taken with the same key and differ (or the reference is
    new); unknown when the key differs (another workspace recorded them)."""
    changed: list[str] = []
    unknown: list[str] = []
    for name, mark in sorted(now.items()):
        old = before.get(name)
        if old is None:
            changed.append(name)
        elif old.split(":", 1)[0] != mark.split(":", 1)[0]:
            unknown.append(name)
        elif old != mark:
            changed.append(name)
    return changed, unknown
