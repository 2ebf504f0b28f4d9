"""Workspace creation and key administration: the service layer behind
``chassis init`` and ``chassis key …``. Each function checks everything it
can before writing, so a refused command leaves nothing behind.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import msgspec

from chassis.errors import WorkspaceError
from chassis.keyring import env_signing_key, load_acting_key
from chassis.stack.example import example_stack
from chassis.workspace import (
    SETTINGS_FILE,
    STACK_FILE,
    STATE_DIR,
    Workspace,
    WorkspaceSettings,
)
from ledger.application import Ledger
from ledger.errors import NotAuthorisedError
from ledger.keys import KeyPair, check_key_name, generate_keypair, keyid_for, load_public_key
from ledger.storage import StorageConfig, open_ledger
from ledger.trust import Role, Trust, TrustedKey, TrustState, parse_roles

WORKSPACE_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")

STACK_TEMPLATE = """\
# Chassis stack file. See guides/deployment.md for every section.
[app]
name = "{name}"

# The ledger defaults to .chassis/ledger.db (SQLite). For a shared ledger:
# [ledger]
# url = "postgresql://chassis@db.internal:5432/chassis?schema={schema}"
"""


@dataclass(frozen=True)
class InitResult:
    workspace: Path
    name: str
    root_keyid: str
    key_name: str
    created_key: bool
    joined_existing_ledger: bool
    ledger: str
    remembered_ledger: str | None = None
    """The URL kept in workspace.json (given with --ledger or CHASSIS_LEDGER)."""
    dropped_password: bool = False
    """The URL given had a password, which workspace.json does not keep."""


def init_workspace(
    directory: Path,
    *,
    name: str | None,
    key_name: str | None,
    keys: Path,
    ledger_url: str | None,
    example: bool = False,
) -> InitResult:
    """Create a workspace and, on a new ledger, its root of trust.

    The ledger is ``ledger_url`` (``--ledger`` or ``CHASSIS_LEDGER``), else
    ``[ledger] url`` of an existing stack file, else ``.chassis/ledger.db``;
    a ``ledger_url`` is kept in ``workspace.json`` without any password. With
    ``CHASSIS_SIGNING_KEY`` set, that key joins (or roots) the ledger instead
    of a key file."""
    root = directory.expanduser().absolute()
    if (root / STATE_DIR / SETTINGS_FILE).exists():
        raise WorkspaceError(f"{root}: already a chassis workspace")
    if example and (root / STACK_FILE).exists():
        raise WorkspaceError(f"{root / STACK_FILE}: already exists; --example would overwrite it")
    name = name or re.sub(r"[^a-z0-9-]+", "-", root.name.lower()).strip("-") or "chassis"
    if not WORKSPACE_NAME.match(name):
        raise WorkspaceError(f"workspace name {name!r}: expected lowercase letters, digits and '-'")
    check_key_name(key_name or f"{name}-root")

    created_dirs = [p for p in (root, root / STATE_DIR) if not p.exists()]
    (root / STATE_DIR).mkdir(parents=True, exist_ok=True)
    generated: KeyPair | None = None
    try:
        ws = Workspace(root)
        storage = StorageConfig.from_url(
            ledger_url or ws.stack_ledger_url() or ws.default_ledger_url
        )
        default = StorageConfig.from_url(ws.default_ledger_url)
        remembered = storage.url() if ledger_url and storage != default else None
        from_env = env_signing_key()
        probe = open_ledger(storage, None, create=True)
        trust = probe.trust()
        probe.close()
        if trust is not None:
            signer = from_env or _join_existing(trust, keys, key_name)
            _check_joining(trust, signer)
            root_keyid = trust.root_keyid
        else:
            if from_env is not None:  # the root of trust, under the root key's name
                signer = KeyPair(
                    name=key_name or f"{name}-root",
                    private_key=from_env.private_key,
                    public_key=from_env.public_key,
                    keyid=from_env.keyid,
                )
            elif key_name is not None and (keys / f"{key_name}.key").exists():
                signer = load_acting_key(keys, key_name)
            else:
                signer = generated = generate_keypair(keys, key_name or f"{name}-root")
            ledger = open_ledger(storage, signer)
            ledger.append(
                Trust.establish(
                    keyid=signer.keyid,
                    name=signer.name,
                    public_key=signer.public_key,
                    ledger_name=name,
                )
            )
            ledger.close()
            root_keyid = signer.keyid
        default_key = signer.keyid[:16] if from_env is not None else signer.name
        _write_workspace_files(
            root, name, root_keyid, default_key, example=example, ledger=remembered
        )
    except BaseException:
        if generated is not None:
            for suffix in (".key", ".pub"):
                (keys / f"{generated.name}{suffix}").unlink(missing_ok=True)
        for path in reversed(created_dirs):
            shutil.rmtree(path, ignore_errors=True)
        raise
    return InitResult(
        workspace=root,
        name=name,
        root_keyid=root_keyid,
        key_name=signer.name,
        created_key=generated is not None,
        joined_existing_ledger=trust is not None,
        ledger=storage.describe(),
        remembered_ledger=remembered,
        dropped_password=remembered is not None and bool(storage.password),
    )


def _join_existing(trust: TrustState, keys: Path, key_name: str | None) -> KeyPair:
    if key_name is None:
        raise NotAuthorisedError(
            f"this ledger already has a root of trust (key {trust.root_keyid[:16]}); "
            "pass --key NAME with a key it trusts, or ask an admin to 'chassis key trust' yours",
            reason="unknown-key",
        )
    return load_acting_key(keys, key_name)


def _check_joining(trust: TrustState, signer: KeyPair) -> None:
    if signer.keyid not in trust.keys or not trust.keys[signer.keyid].active:
        raise NotAuthorisedError(
            f"key {signer.keyid[:16]} ({signer.name}) is not trusted by this ledger",
            reason="unknown-key",
        )


def _write_workspace_files(
    root: Path,
    name: str,
    root_keyid: str,
    default_key: str,
    *,
    example: bool,
    ledger: str | None = None,
) -> None:
    stack = root / STACK_FILE
    if not stack.exists():
        text = (
            example_stack(name)
            if example
            else STACK_TEMPLATE.format(name=name, schema=name.replace("-", "_"))
        )
        stack.write_text(text)
        if example:  # the example deploys as written: its release's bundle exists
            from chassis.sample_app import build_sample_release

            build_sample_release(root / "dist", "v1")
    settings = WorkspaceSettings(
        name=name, root_keyid=root_keyid, default_key=default_key, ledger=ledger
    )
    tmp = root / STATE_DIR / f"{SETTINGS_FILE}.tmp"
    tmp.write_bytes(msgspec.json.format(msgspec.json.encode(settings)) + b"\n")
    tmp.replace(root / STATE_DIR / SETTINGS_FILE)


# Key administration.


def require_trust(ledger: Ledger) -> TrustState:
    trust = ledger.trust()
    if trust is None:
        raise WorkspaceError("the ledger has no root of trust (run 'chassis init')")
    return trust


def new_key(ledger: Ledger, keys: Path, *, name: str, roles: list[str]) -> TrustedKey:
    """Generate a key in the key directory and trust it; remove it if trusting fails."""
    assert ledger.signer is not None
    require_trust(ledger).authorise(ledger.signer.keyid, Role.ADMIN)
    roles = parse_roles(",".join(roles))
    keypair = generate_keypair(keys, name)
    try:
        trusted = _trust(ledger, name=name, public_key=keypair.public_key, roles=roles)
    except BaseException:
        for suffix in (".key", ".pub"):
            (keys / f"{name}{suffix}").unlink(missing_ok=True)
        raise
    return trusted


def trust_public_key(
    ledger: Ledger, path: Path, *, name: str | None, roles: list[str]
) -> TrustedKey:
    assert ledger.signer is not None
    require_trust(ledger).authorise(ledger.signer.keyid, Role.ADMIN)
    public_key = load_public_key(path)
    name = check_key_name(name or path.stem)
    return _trust(ledger, name=name, public_key=public_key, roles=parse_roles(",".join(roles)))


def _trust(ledger: Ledger, *, name: str, public_key: bytes, roles: list[str]) -> TrustedKey:
    signer = ledger.signer
    assert signer is not None
    trust = ledger.update(
        Trust,
        Trust.ID,
        lambda t: t.trust_key(actor=signer.keyid, name=name, public_key=public_key, roles=roles),
    )
    return trust.keys[keyid_for(public_key)]


def revoke_key(ledger: Ledger, ref: str, *, reason: str) -> TrustedKey:
    signer = ledger.signer
    assert signer is not None
    trust = require_trust(ledger)
    trust.authorise(signer.keyid, Role.ADMIN)
    keyid = trust.find(ref).keyid
    updated = ledger.update(
        Trust, Trust.ID, lambda t: t.revoke_key(actor=signer.keyid, keyid=keyid, reason=reason)
    )
    return updated.keys[keyid]
