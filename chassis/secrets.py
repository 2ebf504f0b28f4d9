"""Secret references: ``env.KEY = { from_env = "VAR" }`` or ``{ from_file = "PATH" }``.

The value is read on the machine running chassis when a host step writes the
component's env file (mode 600 on the host); the ledger, plans, receipts and
exports only ever hold the reference (``env:VAR`` / ``file:/abs/path``).
Rolling back re-reads the reference: a rotated secret stays rotated.

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
from collections.abc import Iterable, Mapping
from pathlib import Path

from chassis.errors import ChassisError
from proofs.redaction import register_secret


class SecretUnavailable(ChassisError):
    exit_code = 3


def reference(from_env: str | None, from_file: str | None, base: Path) -> str:
    """The recorded form of a reference (files made absolute against ``base``)."""
    if from_env is not None:
        return f"env:{from_env}"
    assert from_file is not None
    path = Path(from_file).expanduser()
    return f"file:{path if path.is_absolute() else (base / path).resolve()}"


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
