"""Model names, sources, and the registry of model assets in the ledger.

A model is recorded under a NAME (the rule of every other name,
:data:`adapters.connectors.base.NAME`); a model from the Hugging Face hub,
``ORG/NAME``, is recorded as ``ORG--NAME`` (:func:`hf_name`). A *source* is
where its files are read from:

- a path: a directory or a single file (a path that is a Hugging Face cache
  entry is read as ``hf-cache:PATH``);
- ``hf-cache:PATH``: a ``models--ORG--NAME`` directory of a Hugging Face
  cache (its ``main`` ref, else its only revision) or a ``snapshots/<commit>``
  directory inside one;
- ``model:hf:ORG/NAME[@REV]`` or ``model:hf:NAME[@REV]``: looked up, offline,
  in the local Hugging Face cache (``--hf-cache``, else ``HF_HUB_CACHE``,
  else ``HF_HOME/hub``, else ``~/.cache/huggingface/hub``). REV is a ref
  name (``main``) or a prefix of a commit hash. The network is never used.

A *reference* to a recorded model is ``NAME``, ``model:NAME`` or
``model:hf:ORG/NAME``, each optionally ``@REV`` (a recorded revision label,
a commit-hash prefix, or a manifest digest prefix).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import UUID

from adapters.connectors.base import name_problem
from adapters.errors import one_line
from chassis.errors import ChassisError, NotFound
from chassis.models.manifest import ManifestError, build_manifest, shown_path
from ledger.application import Ledger
from ledger.errors import NotFoundError
from ledger.models import ModelAsset

if TYPE_CHECKING:
    from huggingface_hub import CachedRepoInfo, CachedRevisionInfo, HFCacheInfo

__all__ = [
    "HF_CACHE_PREFIX",
    "HF_PREFIX",
    "MODEL_PREFIX",
    "ModelError",
    "ModelRef",
    "Source",
    "all_models",
    "check_model_name",
    "ensure_model",
    "find_model",
    "hf_cache_dir",
    "hf_name",
    "parse_ref",
    "register_model",
    "resolve_source",
    "revision_entry",
]

MODEL_PREFIX = "model:"
HF_PREFIX = "model:hf:"
HF_CACHE_PREFIX = "hf-cache:"

_HF_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}\Z")
"""One part of a Hugging Face repo id (``ORG`` or ``NAME``)."""
_REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,127}\Z")
"""A ref name (``main``, ``refs/pr/1``), a commit hash or prefix, a revision label."""
_HEX = re.compile(r"[0-9a-f]{4,64}\Z")
_DIGEST_PREFIX = re.compile(r"[0-9a-f]{8,64}\Z")


class ModelError(ChassisError):
    """A model name, reference or source that cannot be used (exit 3)."""

    exit_code = 3


@dataclass(frozen=True)
class Source:
    """Where a model's files are read from, and what is recorded about it."""

    path: Path
    """A directory or a single file."""
    revision: str | None
    """The commit of a Hugging Face snapshot, a given label, or None."""
    source_text: str
    """Recorded as the manifest's ``source``: the real (absolute) path, or
    ``model:hf:ORG/NAME@<commit>`` for a Hugging Face cache entry."""


@dataclass(frozen=True)
class ModelRef:
    """A parsed reference to a model."""

    name: str
    """The model's NAME in the ledger (``ORG--NAME`` for ``model:hf:ORG/NAME``)."""
    hf_repo: str | None
    """``ORG/NAME`` or ``NAME`` of a ``model:hf:`` reference, else None."""
    revision: str | None
    """The ``@REV`` part, if any."""


# -- names and references --------------------------------------------------------


def hf_name(org_and_name: str) -> str:
    """The model NAME of Hugging Face repo ``ORG/NAME`` (``ORG--NAME``); a bare
    ``NAME`` is itself. :class:`ModelError` when the result is not a valid name."""
    parts = org_and_name.split("/")
    if len(parts) > 2 or not all(_HF_PART.match(part) for part in parts):
        raise ModelError(
            f"Hugging Face repo {org_and_name!r}: expected ORG/NAME or NAME (letters, digits, "
            "'.', '_' or '-', each starting with a letter or digit)"
        )
    name = "--".join(parts)
    problem = name_problem("model", name)
    if problem is not None:
        raise ModelError(f"Hugging Face repo {org_and_name!r} as a model name: {problem}")
    return name


def parse_ref(ref: str) -> ModelRef:
    """``NAME``, ``model:NAME`` or ``model:hf:ORG/NAME``, each with an optional
    ``@REV``; :class:`ModelError` (exit 3) for anything else."""
    if ref.startswith(HF_PREFIX):
        body, at, revision = ref[len(HF_PREFIX) :].partition("@")
        name = hf_name(body)
        hf_repo: str | None = body
    else:
        body = ref[len(MODEL_PREFIX) :] if ref.startswith(MODEL_PREFIX) else ref
        name, at, revision = body.partition("@")
        hf_repo = None
        problem = name_problem("model", name)
        if problem is not None:
            raise ModelError(f"model reference {ref!r}: {problem}")
    if at and not _REVISION.match(revision):
        raise ModelError(
            f"model reference {ref!r}: revision {revision!r}: expected a ref name, a commit "
            "hash prefix or a revision label (letters, digits, '.', '_', '-', '/')"
        )
    return ModelRef(name=name, hf_repo=hf_repo, revision=revision if at else None)


def check_model_name(name: str) -> None:
    """Refuse (:class:`ModelError`, exit 3) a model name outside the NAME rule."""
    problem = name_problem("model", name)
    if problem is not None:
        raise ModelError(problem)


# -- sources ---------------------------------------------------------------------


def hf_cache_dir(explicit: Path | None = None) -> Path:
    """The Hugging Face hub cache: ``explicit``, else ``HF_HUB_CACHE`` (or the
    older ``HUGGINGFACE_HUB_CACHE``), else ``HF_HOME/hub``, else
    ``$XDG_CACHE_HOME/huggingface/hub``, else ``~/.cache/huggingface/hub``."""
    if explicit is not None:
        return explicit.expanduser()
    env = os.environ
    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(variable):
            return Path(env[variable]).expanduser()
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]).expanduser() / "hub"
    if env.get("XDG_CACHE_HOME"):
        return Path(env["XDG_CACHE_HOME"]).expanduser() / "huggingface" / "hub"
    return Path.home() / ".cache" / "huggingface" / "hub"


def resolve_source(spec: str, *, hf_cache: Path | None, revision: str | None = None) -> Source:
    """Where ``spec`` (a path, ``hf-cache:PATH`` or ``model:hf:ORG/NAME[@REV]``)
    reads from. For a Hugging Face source ``revision`` picks the revision (as
    ``@REV``); for a path it is the label recorded with the manifest.

    Raises :class:`ModelError` / :class:`ManifestError` (exit 3) for a spec
    that cannot be used and :class:`~chassis.errors.NotFound` (exit 10) for a
    cache, model or revision that is not there, naming the cache and what it holds.
    """
    if revision is not None and not _REVISION.match(revision):
        raise ModelError(
            f"revision {revision!r}: expected a ref name, a commit hash prefix or a label "
            "(letters, digits, '.', '_', '-', '/')"
        )
    if spec.startswith(HF_PREFIX):
        ref = parse_ref(spec)
        assert ref.hf_repo is not None
        if revision is not None and ref.revision is not None and revision != ref.revision:
            raise ModelError(
                f"{spec}: names revision {ref.revision!r} but --revision is {revision!r}"
            )
        cache = hf_cache_dir(hf_cache)
        repo = _hf_repo(_scan(cache), cache, ref.hf_repo)
        return _hf_source(repo, _hf_revision(repo, cache, ref.revision or revision))
    if spec.startswith(HF_CACHE_PREFIX):
        return _from_hf_path(Path(spec[len(HF_CACHE_PREFIX) :]).expanduser(), revision)
    if spec.startswith(MODEL_PREFIX):
        raise ModelError(
            f"source {spec!r}: expected a path, hf-cache:PATH or model:hf:ORG/NAME[@REV]"
        )
    path = Path(spec).expanduser()
    if not spec or not spec.isprintable():
        raise ModelError(f"source {shown_path(spec)}: not a usable path")
    if _hf_entry(Path(os.path.realpath(path))) is not None:
        return _from_hf_path(path, revision)
    if not path.exists():
        raise ManifestError(f"{shown_path(path)}: model source not found")
    # What is read is what is recorded: the real path, except that a file
    # keeps its own name (a Hugging Face snapshot file links to a blob).
    real = Path(os.path.realpath(path))
    if not real.is_dir():
        real = Path(os.path.realpath(path.parent)) / path.name
    return Source(path=real, revision=revision, source_text=str(real))


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """``HF_HUB_OFFLINE=1`` for the duration: reading the cache never reaches the hub."""
    before = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = before


def _scan(cache: Path) -> HFCacheInfo:
    if not cache.is_dir():
        raise NotFound(
            f"no Hugging Face cache at {shown_path(cache)} (give --hf-cache DIR, or set "
            "HF_HUB_CACHE or HF_HOME)"
        )
    with _offline():
        try:
            from huggingface_hub import scan_cache_dir
        except ImportError:
            raise ModelError(
                "reading a Hugging Face cache needs the huggingface_hub package "
                "(pip install 'huggingface_hub>=0.24')"
            ) from None
        try:
            return scan_cache_dir(cache)
        except (OSError, ValueError) as e:
            problem = one_line(str(e))
            raise ModelError(f"Hugging Face cache {shown_path(cache)}: {problem}") from None


def _unreadable(info: HFCacheInfo) -> str:
    if not info.warnings:
        return ""
    return (
        f"; {len(info.warnings)} entr{'y' if len(info.warnings) == 1 else 'ies'} could not be "
        f"read, the first: {one_line(str(info.warnings[0]), limit=200)}"
    )


def _hf_repo(info: HFCacheInfo, cache: Path, wanted: str) -> CachedRepoInfo:
    models = sorted((r for r in info.repos if r.repo_type == "model"), key=lambda r: r.repo_id)
    matches = [r for r in models if r.repo_id == wanted]
    if not matches and "/" not in wanted:
        matches = [r for r in models if r.repo_id.rsplit("/", 1)[-1] == wanted]
    if not matches:
        found = ", ".join(r.repo_id for r in models) or "no models"
        raise NotFound(
            f"no model {wanted!r} in the Hugging Face cache {shown_path(cache)} (it holds: "
            f"{found}{_unreadable(info)}); download it first, e.g. 'hf download ORG/NAME'"
        )
    if len(matches) > 1:
        raise ModelError(
            f"{wanted!r} matches several models in the Hugging Face cache {shown_path(cache)}: "
            f"{', '.join(r.repo_id for r in matches)}; name one as model:hf:ORG/NAME"
        )
    return matches[0]


def _describe(repo: CachedRepoInfo) -> str:
    revisions = sorted(repo.revisions, key=lambda r: r.commit_hash)
    commits = ", ".join(
        r.commit_hash[:12] + (f" ({', '.join(sorted(r.refs))})" if r.refs else "")
        for r in revisions
    )
    return commits or "no revisions"


def _hf_revision(repo: CachedRepoInfo, cache: Path, wanted: str | None) -> CachedRevisionInfo:
    refs = repo.refs
    revisions = sorted(repo.revisions, key=lambda r: r.commit_hash)
    where = f"{repo.repo_id} in the Hugging Face cache {shown_path(cache)}"
    if not revisions:
        raise NotFound(f"{where}: no revision is downloaded")
    if wanted is None:
        if "main" in refs:
            return refs["main"]
        if len(revisions) == 1:
            return revisions[0]
        raise ModelError(
            f"{where}: no 'main' ref and {len(revisions)} revisions ({_describe(repo)}); "
            "name one with @REV"
        )
    if wanted in refs:
        return refs[wanted]
    hits = [r for r in revisions if r.commit_hash.startswith(wanted)]
    if len(hits) == 1:
        return hits[0]
    if len(hits) > 1:
        raise ModelError(f"{where}: revision {wanted!r} is ambiguous ({_describe(repo)})")
    raise NotFound(f"{where}: no revision {wanted!r} (it holds: {_describe(repo)})")


def _hf_source(repo: CachedRepoInfo, revision: CachedRevisionInfo) -> Source:
    commit = revision.commit_hash
    if not _REVISION.match(commit):
        raise ModelError(f"{shown_path(revision.snapshot_path)}: not a snapshot directory name")
    hf_name(repo.repo_id)  # a repo id that cannot be a model name is refused here
    return Source(
        path=revision.snapshot_path,
        revision=commit,
        source_text=f"{HF_PREFIX}{repo.repo_id}@{commit}",
    )


def _hf_entry(real: Path) -> tuple[Path, str | None] | None:
    """``(models--ORG--NAME directory, snapshot commit or None)`` when ``real``
    is such a directory or a snapshot in one, else None."""
    if real.name.startswith("models--") and (real / "snapshots").is_dir():
        return real, None
    if real.parent.name == "snapshots" and real.parent.parent.name.startswith("models--"):
        return real.parent.parent, real.name
    return None


def _from_hf_path(path: Path, revision: str | None) -> Source:
    real = Path(os.path.realpath(path))
    entry = _hf_entry(real)
    if entry is None:
        raise ModelError(
            f"{shown_path(path)}: not a Hugging Face cache entry (expected a models--ORG--NAME "
            "directory, or a snapshots/<commit> directory inside one)"
        )
    repo_dir, commit = entry
    cache = repo_dir.parent
    info = _scan(cache)
    repo = next((r for r in info.repos if Path(os.path.realpath(r.repo_path)) == repo_dir), None)
    if repo is None or repo.repo_type != "model":
        raise ModelError(
            f"{shown_path(repo_dir)}: not a readable Hugging Face model cache entry"
            f"{_unreadable(info)}"
        )
    if commit is None:
        return _hf_source(repo, _hf_revision(repo, cache, revision))
    chosen = next((r for r in repo.revisions if r.commit_hash == commit), None)
    if chosen is None:
        raise NotFound(f"{shown_path(path)}: not a revision of {repo.repo_id} ({_describe(repo)})")
    if revision is not None and _hf_revision(repo, cache, revision) != chosen:
        raise ModelError(f"{shown_path(path)} is revision {commit[:12]}, not {revision!r}")
    return _hf_source(repo, chosen)


# -- the registry ----------------------------------------------------------------


def register_model(ledger: Ledger, name: str, source: Source) -> tuple[ModelAsset, bool]:
    """Record the manifest of ``source`` as model ``name``: a new model, or a
    new revision of it; nothing when it is the newest manifest already.
    Returns the model and whether anything was appended."""
    check_model_name(name)
    if ledger.signer is None:
        raise ModelError("recording a model needs a signing key")
    files = build_manifest(source.path)
    actor = ledger.signer.keyid
    model_id = ModelAsset.id_for(name)
    if ledger.find(ModelAsset, model_id) is None:
        asset = ModelAsset.register(
            name=name,
            revision=source.revision,
            source=source.source_text,
            files=files,
            actor=actor,
        )
        ledger.append(asset)
        return asset, True
    appended = False

    def revise(asset: ModelAsset) -> None:
        nonlocal appended
        appended = asset.revise(
            revision=source.revision, source=source.source_text, files=files, actor=actor
        )

    return ledger.update(ModelAsset, model_id, revise), appended


def all_models(ledger: Ledger) -> list[ModelAsset]:
    """Every recorded model, by name."""
    models: dict[str, ModelAsset] = {}
    for row in ledger.recorder.select_notifications(
        start=None, limit=1_000_000, topics=[ModelAsset.Registered.TOPIC]
    ):
        try:
            asset = ledger.load(ModelAsset, UUID(str(row.originator_id)))
        except NotFoundError:
            continue
        models[asset.name] = asset
    return [models[name] for name in sorted(models)]


def find_model(ledger: Ledger, ref: str) -> ModelAsset:
    """The model ``ref`` names (``NAME``, ``model:NAME``, ``model:hf:ORG/NAME``;
    with ``@REV`` that revision must be recorded). :class:`NotFound` (exit 10)
    lists the known models."""
    wanted = parse_ref(ref)
    asset = ledger.find(ModelAsset, ModelAsset.id_for(wanted.name))
    if asset is None:
        known = [m.name for m in all_models(ledger)]
        what = f"{wanted.name!r}" + (f" ({ref})" if wanted.hf_repo is not None else "")
        hint = (
            f"known: {', '.join(known)}"
            if known
            else "none recorded yet: add one with 'chassis model add NAME --source …'"
        )
        raise NotFound(f"no model {what} in the ledger ({hint})")
    if wanted.revision is not None:
        revision_entry(asset, wanted.revision)
    return asset


def revision_entry(asset: ModelAsset, revision: str | None = None) -> dict[str, Any]:
    """The recorded manifest ``revision`` selects (``{digest, revision, source,
    files, bytes, at}``): the newest one whose revision label equals it, whose
    commit starts with it, or whose manifest digest starts with it (8+ hex
    digits); the current one for None. A label equal to it wins over prefixes.
    :class:`NotFound` when none selects it, :class:`ModelError` when prefixes
    select several manifests."""
    if revision is None:
        return asset.current

    exact = [entry for entry in asset.revisions if entry.get("revision") == revision]
    if exact:
        return exact[-1]

    def selects(entry: dict[str, Any]) -> bool:
        label = entry.get("revision") or ""
        return (bool(_HEX.match(revision)) and label.startswith(revision)) or (
            bool(_DIGEST_PREFIX.match(revision)) and entry["digest"].startswith(revision)
        )

    hits = [entry for entry in asset.revisions if selects(entry)]
    if len({entry["digest"] for entry in hits}) > 1:
        raise ModelError(
            f"model {asset.name}: revision {revision!r} is ambiguous "
            f"({', '.join(e['digest'][:12] for e in hits)})"
        )
    if not hits:
        recorded = ", ".join(
            f"{(e.get('revision') or '-')[:12]} ({e['digest'][:12]})" for e in asset.revisions
        )
        raise NotFound(
            f"model {asset.name}: no recorded revision {revision!r} (recorded: {recorded})"
        )
    return hits[-1]


def ensure_model(ledger: Ledger, ref: str, *, hf_cache: Path | None) -> ModelAsset:
    """The model ``ref`` names; a ``model:hf:`` reference (or its ``@REV``) not
    recorded yet is resolved from the local Hugging Face cache and recorded
    first (so ``materialize --model model:hf:…`` needs no ``model add``)."""
    wanted = parse_ref(ref)
    if wanted.hf_repo is None:
        return find_model(ledger, ref)
    try:
        return find_model(ledger, ref)
    except NotFound:
        pass
    spec = HF_PREFIX + wanted.hf_repo + (f"@{wanted.revision}" if wanted.revision else "")
    asset, _ = register_model(ledger, wanted.name, resolve_source(spec, hf_cache=hf_cache))
    return asset
