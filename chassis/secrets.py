"""Secret references: ``env.KEY = { from_env = "VAR" }`` or ``{ from_file = "PATH" }``.

The value is read on the machine running chassis when a host step writes the
component's env file (mode 600 on the host); the ledger, plans, receipts and
exports only ever hold the reference (``env:VAR`` / ``file:/abs/path``).
Rolling back re-reads the reference: a rotated secret stays rotated.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from chassis.errors import ChassisError


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
    kind, _, target = ref.partition(":")
    where = f"component {component}: env {name}"
    if kind == "env":
        value = os.environ.get(target)
        if value is None:
            raise SecretUnavailable(f"{where}: environment variable {target} is not set")
        return value
    if kind == "file":
        try:
            return Path(target).read_text().rstrip("\n")
        except OSError as e:
            raise SecretUnavailable(f"{where}: cannot read {target}: {e.strerror}") from None
    raise SecretUnavailable(f"{where}: unknown secret reference {ref!r}")


def resolve_all(secrets: Mapping[str, str], *, component: str) -> dict[str, str]:
    return {name: resolve(name, ref, component=component) for name, ref in secrets.items()}


def check_available(components: Iterable[tuple[str, Mapping[str, str]]]) -> None:
    """Raise before anything is recorded if a referenced secret cannot be read."""
    for component, secrets in components:
        resolve_all(secrets, component=component)
