"""Releases: bundles in a content-addressed store, registered in the ledger.

A release comes from ``[releases.LABEL]`` in ``chassis.toml`` (registered on
first use) or ``chassis release add``. The bundle is copied into
``.chassis/bundles/<sha256>.tar.gz`` so a later rollback never depends on the
original file still being there.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

from adapters.connectors.base import name_problem
from adapters.supervisors.envfile import value_problem
from chassis.bundles import check_bundle, sha256_file
from chassis.errors import ChassisError
from chassis.release_store import store_for
from chassis.stack.spec import SECRET_KEY, Stack, looks_secret
from chassis.workspace import Workspace
from ledger.application import Ledger
from ledger.errors import NotFoundError
from ledger.releases import Release, release_id_for


class ReleaseError(ChassisError):
    exit_code = 3


def bundle_store(ws: Workspace) -> Path:
    return ws.state_dir / "bundles"


def bundle_path(ws: Workspace, sha256: str) -> Path:
    return bundle_store(ws) / f"{sha256}.tar.gz"


def add_release(
    ledger: Ledger, ws: Workspace, app: str, label: str, artifact: Path, config: dict[str, str]
) -> Release:
    """Store the bundle and register the release; the same content again is a no-op."""
    if ledger.signer is None:
        raise ReleaseError("registering a release needs a signing key")
    source, sha256 = _checked_artifact(label, artifact, config)
    existing = ledger.find(Release, Release.id_for(Release.key(app, label)))
    if existing is not None:
        existing.check_same(sha256, config)
        # The same content again: put the bundle back where it is missing
        # (a teammate's store, a fresh CI runner), its sha256 just checked.
        _store(ledger, ws, sha256, source)
        return existing
    stored = _store(ledger, ws, sha256, source)
    release = Release.register(
        app=app,
        label=label,
        bundle_sha256=sha256,
        bundle_size=stored.stat().st_size,
        config=config,
        source=str(source),
        actor=ledger.signer.keyid,
    )
    ledger.append(release)
    return release


def check_release_input(label: str, config: dict[str, str]) -> None:
    """Refuse a release label or config key outside its rule (exit 3), before anything.

    Config keys become environment variables of every component on every
    host (DESIGN.md §1 principle 10: names are data), so they follow the one
    environment variable name rule; the env-file writer checks it again.
    """
    problem = name_problem("release label", label)
    if problem is not None:
        raise ReleaseError(problem)
    for key, value in config.items():
        problem = name_problem("env", key)
        if problem is not None:
            raise ReleaseError(f"release {label}: config key: {problem}")
        problem = value_problem(value)
        if problem is not None:
            raise ReleaseError(f"release {label}: config {key}: {problem}")


def _checked_artifact(label: str, artifact: Path, config: dict[str, str]) -> tuple[Path, str]:
    """Validate label, config keys and bundle; return the artifact and its sha256."""
    check_release_input(label, config)
    for key, value in config.items():
        if SECRET_KEY.search(key) or looks_secret(value):
            what = f"config key {key!r}" if SECRET_KEY.search(key) else f"the value of {key!r}"
            raise ReleaseError(
                f"release {label}: {what} looks like a secret; release config is recorded in "
                'the ledger, so give the component a secret reference ({ from_env = "VAR" })'
            )
    source = artifact.expanduser()
    if not source.is_file():
        raise ReleaseError(f"{source}: release {label}: artifact not found")
    check_bundle(source)
    return source, sha256_file(source)


@dataclass(frozen=True)
class ReleaseRef:
    """A release as it would be registered: planning must not register it."""

    label: str
    release_id: str
    bundle_sha256: str
    bundle_size: int
    config: dict[str, str]


def peek_release(
    ledger: Ledger, ws: Workspace, stack: Stack, label: str
) -> tuple[Release | ReleaseRef, Path]:
    """The release and its bundle, registering and copying nothing."""
    app = stack.app.name
    found = ledger.find(Release, Release.id_for(Release.key(app, label)))
    declared = stack.releases.get(label)
    if declared is not None:
        artifact = Path(declared.artifact)
        artifact = artifact if artifact.is_absolute() else ws.root / artifact
        if found is None or artifact.is_file():
            source, sha256 = _checked_artifact(label, artifact, dict(declared.config))
            if found is not None:
                found.check_same(sha256, dict(declared.config))
                return found, source
            config = dict(declared.config)
            ref = ReleaseRef(
                label, release_id_for(sha256, config), sha256, source.stat().st_size, config
            )
            return ref, source
    if found is None:
        known = sorted({*stack.releases, *(r.label for r in all_releases(ledger, app))})
        raise ReleaseError(
            f"no release {label!r} of {app} (releases: {', '.join(known) or 'none'})"
        )
    return found, require_bundle(ws, found, ledger)


def resolve_release(ledger: Ledger, ws: Workspace, stack: Stack, label: str) -> Release:
    """A registered release, registering one declared in the stack file on first use."""
    app = stack.app.name
    found = ledger.find(Release, Release.id_for(Release.key(app, label)))
    declared = stack.releases.get(label)
    if declared is not None:
        artifact = Path(declared.artifact)
        if not artifact.is_absolute():
            artifact = ws.root / artifact
        if found is None or artifact.is_file():
            release = add_release(ledger, ws, app, label, artifact, dict(declared.config))
            if declared.sha256 and declared.sha256 != release.bundle_sha256:
                raise ReleaseError(
                    f"{stack.path}: releases.{label}.sha256: expected {declared.sha256}, "
                    f"the artifact has {release.bundle_sha256}"
                )
            return release
    if found is None:
        known = sorted({*stack.releases, *(r.label for r in all_releases(ledger, app))})
        raise ReleaseError(
            f"no release {label!r} of {app} (releases: {', '.join(known) or 'none'})"
        )
    return found


def all_releases(ledger: Ledger, app: str) -> list[Release]:
    releases: list[Release] = []
    for row in ledger.recorder.select_notifications(
        start=None, limit=1_000_000, topics=[Release.Registered.TOPIC]
    ):
        try:
            release = ledger.load(Release, UUID(str(row.originator_id)))
        except NotFoundError:
            continue
        if release.app == app:
            releases.append(release)
    return releases


def _store(ledger: Ledger, ws: Workspace, sha256: str, source: Path) -> Path:
    """Copy a checked bundle into the workspace store, and into the store
    kept beside the ledger (see :func:`chassis.release_store.store_for`);
    the stored path. Raises before anything is registered when the shared
    store cannot take it."""
    stored = bundle_path(ws, sha256)
    if not stored.exists():
        stored.parent.mkdir(parents=True, exist_ok=True)
        tmp = stored.with_name(f".{stored.name}.tmp")
        shutil.copyfile(source, tmp)
        tmp.replace(stored)
    store = store_for(ledger, ws)
    if store is not None:
        store.put(sha256, stored)
    return stored


def require_bundle(ws: Workspace, release: Release, ledger: Ledger | None = None) -> Path:
    """The bundle of ``release`` in the workspace store, fetched (and its
    sha256 checked) from the store beside the ledger when this workspace
    lacks it."""
    path = bundle_path(ws, release.bundle_sha256)
    if path.is_file():
        return path
    why = ""
    store = store_for(ledger, ws) if ledger is not None else None
    if store is not None:
        problem = store.fetch(release.bundle_sha256, path)
        if problem is None:
            return path
        why = f" ({problem})"
    raise ReleaseError(
        f"{path}: the bundle of release {release.label} is gone from the store{why}; "
        f"add it again with 'chassis release add {release.label} --artifact FILE'"
    )
