"""Fixtures for model assets: a real Hugging Face cache and a plain model directory.

``hf_cache`` (session) builds the on-disk layout huggingface_hub itself
writes, checked with ``huggingface_hub.scan_cache_dir``::

    <cache>/models--org--tiny-model/
        blobs/<sha256>               model.safetensors of each revision (LFS: sha256)
        blobs/<git blob sha1>        tokenizer.json, shared by both revisions
        snapshots/<old>/model.safetensors -> ../../blobs/<sha256 v1>
        snapshots/<old>/tokenizer.json    -> ../../blobs/<sha1>
        snapshots/<new>/…                 (model.safetensors v2)
        refs/main                    <new>
    <cache>/models--other--small/    one revision, no refs (config.json only)

The weights are written with ``safetensors`` from a seeded numpy generator:
the same bytes on every run (:func:`tiny_weights`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ledger.models import ModelFile

TINY_REPO = "org/tiny-model"
"""The Hugging Face repo id of the cached test model (model NAME ``org--tiny-model``)."""
OTHER_REPO = "other/small"
WEIGHTS_BYTES = 24 * 1024 * 1024
"""Tensor bytes in each ``model.safetensors`` (the file is this plus its small header)."""
SEED = 20240615
_SHAPE = (WEIGHTS_BYTES // 4 // 3 // 1024, 1024)
_SHAPES = dict.fromkeys(("embed.weight", "layers.0.weight", "layers.1.weight"), _SHAPE)

TOKENIZER = json.dumps(
    {"version": "1.0", "model": {"type": "WordLevel", "vocab": {"<unk>": 0, "hello": 1}}},
    sort_keys=True,
).encode()


def tiny_weights(version: int) -> bytes:
    """``model.safetensors`` of revision ``version`` (1 or 2): float32 tensors
    from a generator seeded with :data:`SEED`; version 2 changes one tensor."""
    import numpy as np
    from safetensors.numpy import save

    rng = np.random.default_rng(SEED)
    tensors = {name: rng.random(shape, dtype=np.float32) for name, shape in _SHAPES.items()}
    if version == 2:
        tensors["layers.1.weight"] = np.random.default_rng(SEED + 2).random(
            _SHAPES["layers.1.weight"], dtype=np.float32
        )
    return save(tensors, metadata={"format": "np"})


def commit_for(label: str) -> str:
    """A stable 40-hex commit hash."""
    return hashlib.sha1(f"tiny-model {label}".encode()).hexdigest()


@dataclass(frozen=True)
class HfCache:
    path: Path
    """The hub cache directory (``--hf-cache DIR`` or ``HF_HUB_CACHE``)."""
    repo: str
    """``org/tiny-model``."""
    repo_dir: Path
    """``<path>/models--org--tiny-model``."""
    old_commit: str
    new_commit: str
    """What ``refs/main`` holds."""
    manifests: dict[str, list[ModelFile]] = field(default_factory=dict)
    """commit → the expected manifest of its snapshot (sorted by path)."""

    def snapshot(self, commit: str) -> Path:
        return self.repo_dir / "snapshots" / commit


def _write_blob(blobs: Path, name: str, data: bytes) -> Path:
    path = blobs / name
    if not path.exists():
        path.write_bytes(data)
    return path


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _snapshot(repo_dir: Path, commit: str, files: dict[str, bytes], lfs: set[str]) -> None:
    """Blobs named as the hub names them (sha256 for LFS files, the git blob
    sha1 otherwise) and the snapshot's relative symlinks to them."""
    blobs = repo_dir / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, data in files.items():
        blob = hashlib.sha256(data).hexdigest() if name in lfs else _git_blob_sha1(data)
        _write_blob(blobs, blob, data)
        depth = "../" * (name.count("/") + 2)
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / name).symlink_to(f"{depth}blobs/{blob}")


def _manifest(files: dict[str, bytes]) -> list[ModelFile]:
    return sorted(
        (
            ModelFile(path=name, size=len(data), sha256=hashlib.sha256(data).hexdigest())
            for name, data in files.items()
        ),
        key=lambda f: f.path,
    )


@pytest.fixture(scope="session")
def hf_cache(tmp_path_factory: pytest.TempPathFactory) -> HfCache:
    """A real Hugging Face hub cache with ``org/tiny-model`` (two revisions,
    ``main`` the newer) and ``other/small`` (one revision, no refs)."""
    from huggingface_hub import scan_cache_dir

    root = tmp_path_factory.mktemp("hf") / "hub"
    repo_dir = root / "models--org--tiny-model"
    old, new = commit_for("v1"), commit_for("v2")
    contents = {
        old: {"model.safetensors": tiny_weights(1), "tokenizer.json": TOKENIZER},
        new: {"model.safetensors": tiny_weights(2), "tokenizer.json": TOKENIZER},
    }
    for commit, files in contents.items():
        _snapshot(repo_dir, commit, files, lfs={"model.safetensors"})
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(new)  # the hub writes no newline
    _snapshot(
        root / "models--other--small",
        commit_for("small"),
        {"config.json": b'{"hidden_size": 8}'},
        lfs=set(),
    )

    info = scan_cache_dir(root)
    assert not info.warnings, info.warnings
    repos = {r.repo_id: r for r in info.repos}
    assert set(repos) == {TINY_REPO, OTHER_REPO}
    tiny = repos[TINY_REPO]
    assert tiny.repo_type == "model"
    assert {r.commit_hash for r in tiny.revisions} == {old, new}
    assert tiny.refs["main"].commit_hash == new
    assert tiny.nb_files == 3  # two weights, one shared tokenizer blob

    return HfCache(
        path=root,
        repo=TINY_REPO,
        repo_dir=repo_dir,
        old_commit=old,
        new_commit=new,
        manifests={commit: _manifest(files) for commit, files in contents.items()},
    )


@pytest.fixture
def hf_hub_cache(hf_cache: HfCache, monkeypatch: pytest.MonkeyPatch) -> HfCache:
    """``hf_cache`` as the default cache (``HF_HUB_CACHE``) for the test."""
    monkeypatch.setenv("HF_HUB_CACHE", str(hf_cache.path))
    return hf_cache


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A plain model directory: a config, two weight shards in a subdirectory, a readme."""
    import random

    rng = random.Random(SEED)
    root = tmp_path / "tiny"
    (root / "weights").mkdir(parents=True)
    (root / "config.json").write_text('{"hidden_size": 64, "layers": 2}\n')
    (root / "README.md").write_text("# tiny\n")
    for index in (1, 2):
        (root / "weights" / f"part-{index:05d}.bin").write_bytes(rng.randbytes(256 * 1024))
    return root


@pytest.fixture(autouse=True)
def _model_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No Hugging Face settings inherited (the default cache is under tmp)."""
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    yield
