"""Model assets (issue 15): ``chassis model add|list|show``, manifests, the registry."""

from __future__ import annotations

import hashlib
import json
import os
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from chassis.models.manifest import CHUNK_BYTES, ManifestError, build_manifest, path_problem
from chassis.models.registry import (
    ModelError,
    hf_cache_dir,
    hf_name,
    parse_ref,
    resolve_source,
)
from ledger.models import ModelFile, manifest_digest
from tests.conftest import Runner
from tests.models.conftest import OTHER_REPO, TINY_REPO, WEIGHTS_BYTES, HfCache, tiny_weights


def expected_files(source: Path) -> list[ModelFile]:
    """The manifest of ``source`` computed here, independently."""
    if source.is_file():
        data = source.read_bytes()
        return [
            ModelFile(path=source.name, size=len(data), sha256=hashlib.sha256(data).hexdigest())
        ]
    files = []
    for folder, _, names in os.walk(source):
        for name in names:
            path = Path(folder) / name
            data = path.read_bytes()
            files.append(
                ModelFile(
                    path=path.relative_to(source).as_posix(),
                    size=len(data),
                    sha256=hashlib.sha256(data).hexdigest(),
                )
            )
    return sorted(files, key=lambda f: f.path)


def add(run: Runner, name: str, *args: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(run.ok("model", "add", name, *args, "--json").stdout)
    return result


def show(run: Runner, ref: str, *args: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(run.ok("model", "show", ref, *args, "--json").stdout)
    return result


def event_count(run: Runner) -> int:
    return len(json.loads(run.ok("ledger", "log", "--json").stdout))


# -- chassis model add / list / show ----------------------------------------------


def test_add_a_directory_records_its_manifest(
    run: Runner, workspace: Path, model_dir: Path
) -> None:
    files = expected_files(model_dir)
    added = add(run, "tiny", "--source", str(model_dir), "--revision", "v1")
    assert added["manifest_digest"] == manifest_digest(files)
    assert added["files"] == 4
    assert added["bytes"] == sum(f.size for f in files)
    assert added["appended"] is True
    assert added["revision"] == "v1"
    assert added["source"] == os.path.realpath(model_dir)

    shown = show(run, "tiny", "--files")
    assert [m["digest"] for m in shown["manifests"]] == [manifest_digest(files)]
    assert shown["manifest_files"] == [
        {"path": f.path, "size": f.size, "sha256": f.sha256} for f in files
    ]
    assert "weights/part-00001.bin" in [f["path"] for f in shown["manifest_files"]]
    assert shown["placements"] == []

    before = event_count(run)
    again = run.ok("model", "add", "tiny", "--source", str(model_dir))
    assert "already recorded" in again.stdout
    assert event_count(run) == before
    run.ok("ledger", "verify")


def test_a_single_file_is_one_entry_named_by_its_file_name(
    run: Runner, workspace: Path, model_dir: Path
) -> None:
    weights = model_dir / "weights" / "part-00002.bin"
    added = add(run, "shard", "--source", str(weights))
    assert added["manifest_digest"] == manifest_digest(expected_files(weights))
    assert added["files"] == 1
    shown = show(run, "model:shard", "--files")
    assert [f["path"] for f in shown["manifest_files"]] == ["part-00002.bin"]


def test_a_changed_file_is_a_new_revision(run: Runner, workspace: Path, model_dir: Path) -> None:
    first = add(run, "tiny", "--source", str(model_dir), "--revision", "v1")
    (model_dir / "config.json").write_text('{"hidden_size": 128, "layers": 2}\n')
    second = add(run, "tiny", "--source", str(model_dir), "--revision", "v2")
    assert second["appended"] is True
    assert second["revisions"] == 2
    assert second["manifest_digest"] == manifest_digest(expected_files(model_dir))
    assert second["manifest_digest"] != first["manifest_digest"]

    shown = show(run, "tiny")
    assert [m["revision"] for m in shown["manifests"]] == ["v1", "v2"]
    assert [m["current"] for m in shown["manifests"]] == [False, True]
    assert shown["current"] == second["manifest_digest"]
    assert show(run, "tiny@v1")["selected"] == first["manifest_digest"]
    assert (
        show(run, f"tiny@{first['manifest_digest'][:12]}")["selected"] == first["manifest_digest"]
    )

    listed = json.loads(run.ok("model", "list", "--json").stdout)
    assert [(m["name"], m["revisions"], m["manifest_digest"]) for m in listed] == [
        ("tiny", 2, second["manifest_digest"])
    ]
    human = run.ok("model", "show", "tiny").stdout
    assert "not materialized on any host" in human
    assert f"* {second['manifest_digest'][:16]}" in human
    run.ok("ledger", "verify")


def test_hf_cache_paths(run: Runner, workspace: Path, hf_cache: HfCache) -> None:
    # The repository directory: its main ref, the newer revision.
    added = add(run, "org--tiny-model", "--source", f"hf-cache:{hf_cache.repo_dir}")
    assert added["revision"] == hf_cache.new_commit
    assert added["manifest_digest"] == manifest_digest(hf_cache.manifests[hf_cache.new_commit])
    assert added["source"] == f"model:hf:{TINY_REPO}@{hf_cache.new_commit}"
    assert added["bytes"] > WEIGHTS_BYTES

    # A snapshot directory: that revision; as a plain path it is read the same way.
    old = hf_cache.snapshot(hf_cache.old_commit)
    for name, spec in (("tiny-old", f"hf-cache:{old}"), ("tiny-old-path", str(old))):
        added = add(run, name, "--source", spec)
        assert added["revision"] == hf_cache.old_commit
        assert added["manifest_digest"] == manifest_digest(hf_cache.manifests[hf_cache.old_commit])

    # One file of a snapshot (a link to its blob) keeps its own name.
    weights = old / "model.safetensors"
    added = add(run, "weights-only", "--source", str(weights))
    assert added["source"] == str(weights)
    [entry] = show(run, "weights-only", "--files")["manifest_files"]
    assert entry["path"] == "model.safetensors"
    assert entry["sha256"] == weights.resolve().name  # an LFS blob is named by its sha256
    run.ok("ledger", "verify")


def test_model_hf_references_resolve_offline_in_the_cache(
    run: Runner, workspace: Path, hf_cache: HfCache
) -> None:
    cache = ["--hf-cache", str(hf_cache.path)]
    new = add(run, "org--tiny-model", "--source", f"model:hf:{TINY_REPO}", *cache)
    assert new["revision"] == hf_cache.new_commit
    assert new["manifest_digest"] == manifest_digest(hf_cache.manifests[hf_cache.new_commit])

    prefix = hf_cache.old_commit[:7]
    old = add(run, "org--tiny-model", "--source", f"model:hf:{TINY_REPO}@{prefix}", *cache)
    assert old["appended"] is True
    assert old["revision"] == hf_cache.old_commit
    assert old["manifest_digest"] == manifest_digest(hf_cache.manifests[hf_cache.old_commit])

    # A bare NAME matching one repo, and --revision as @REV.
    again = add(
        run, "org--tiny-model", "--source", "model:hf:tiny-model", "--revision", prefix, *cache
    )
    assert again["appended"] is False

    # Found by its Hugging Face reference, revision by commit prefix.
    shown = show(run, f"model:hf:{TINY_REPO}@{hf_cache.new_commit[:10]}")
    assert shown["name"] == "org--tiny-model"
    assert shown["selected"] == new["manifest_digest"]
    run.ok("ledger", "verify")


def test_the_default_cache_comes_from_the_environment(
    run: Runner, workspace: Path, hf_hub_cache: HfCache
) -> None:
    added = add(run, "small", "--source", f"model:hf:{OTHER_REPO}")  # its only revision
    assert added["files"] == 1


def test_missing_hf_models_and_revisions_exit_10_naming_the_cache(
    run: Runner, workspace: Path, hf_cache: HfCache
) -> None:
    cache = ["--hf-cache", str(hf_cache.path)]
    result = run("model", "add", "x", "--source", "model:hf:org/absent", *cache)
    assert result.exit_code == 10
    assert str(hf_cache.path) in result.stderr
    assert TINY_REPO in result.stderr and OTHER_REPO in result.stderr

    result = run("model", "add", "x", "--source", f"model:hf:{TINY_REPO}@deadbeef", *cache)
    assert result.exit_code == 10
    assert "deadbeef" in result.stderr and hf_cache.new_commit[:12] in result.stderr

    result = run("model", "add", "x", "--source", f"model:hf:{TINY_REPO}")  # empty default cache
    assert result.exit_code == 10
    assert "no Hugging Face cache at" in result.stderr
    assert json.loads(run.ok("model", "list", "--json").stdout) == []


def test_a_symlink_out_of_the_source_is_refused_and_nothing_recorded(
    run: Runner, workspace: Path, model_dir: Path, tmp_path: Path
) -> None:
    (tmp_path / "secret.txt").write_text("not a model file\n")
    (model_dir / "weights" / "inside.bin").symlink_to("part-00001.bin")
    (model_dir / "weights" / "escape").symlink_to(tmp_path / "secret.txt")
    before = event_count(run)
    result = run("model", "add", "tiny", "--source", str(model_dir))
    assert result.exit_code == 3
    assert f"{model_dir}/weights/escape: a symlink out of the model" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert event_count(run) == before
    assert json.loads(run.ok("model", "list", "--json").stdout) == []

    (model_dir / "weights" / "escape").unlink()
    added = add(run, "tiny", "--source", str(model_dir))
    shown = show(run, "tiny", "--files")
    paths = [f["path"] for f in shown["manifest_files"]]
    assert "weights/inside.bin" in paths  # a link inside the source is followed
    assert added["files"] == 5
    run.ok("ledger", "verify")


def test_unknown_models_exit_10_naming_the_known_ones(
    run: Runner, workspace: Path, model_dir: Path
) -> None:
    result = run("model", "show", "tiny")
    assert result.exit_code == 10
    assert "none recorded yet" in result.stderr
    assert "no models recorded" in run.ok("model", "list").stdout

    add(run, "tiny", "--source", str(model_dir))
    add(run, "other", "--source", str(model_dir / "config.json"))
    result = run("model", "show", "model:hf:org/absent")
    assert result.exit_code == 10
    assert "no model 'org--absent'" in result.stderr
    assert "known: other, tiny" in result.stderr

    result = run("model", "show", "tiny@nosuchrev")
    assert result.exit_code == 10
    assert "no recorded revision 'nosuchrev'" in result.stderr

    assert run("model", "add", "-bad", "--source", str(model_dir)).exit_code == 2  # an option
    result = run("model", "add", "bad/name", "--source", str(model_dir))
    assert result.exit_code == 3
    assert "model name 'bad/name'" in result.stderr
    listed = run.ok("model", "list").stdout
    assert listed.splitlines()[0].split() == [
        "NAME", "MANIFEST", "REVISION", "FILES", "BYTES", "REVISIONS", "HOSTS"
    ]  # fmt: skip
    assert [line.split()[0] for line in listed.splitlines()[1:]] == ["other", "tiny"]


def test_ensure_model_records_a_hf_reference_once(
    run: Runner, workspace: Path, hf_cache: HfCache
) -> None:
    from chassis.cli.app import App
    from chassis.models.registry import all_models, ensure_model, find_model, revision_entry

    app = App()
    try:
        ledger = app.ledger(signing=True)
        ref = f"model:hf:{TINY_REPO}"
        asset = ensure_model(ledger, ref, hf_cache=hf_cache.path)
        assert asset.name == "org--tiny-model"
        assert asset.current["revision"] == hf_cache.new_commit
        version = asset.version
        assert ensure_model(ledger, ref, hf_cache=None).version == version  # recorded: no cache
        older = ensure_model(ledger, f"{ref}@{hf_cache.old_commit[:8]}", hf_cache=hf_cache.path)
        assert older.version == version + 1
        entry = revision_entry(older, hf_cache.old_commit[:8])
        assert entry["digest"] == manifest_digest(hf_cache.manifests[hf_cache.old_commit])
        assert find_model(ledger, "model:org--tiny-model").version == version + 1
        assert [m.name for m in all_models(ledger)] == ["org--tiny-model"]
    finally:
        app.close()
    run.ok("ledger", "verify")


# -- manifests ---------------------------------------------------------------------


def test_build_manifest_streams_a_large_file(tmp_path: Path) -> None:
    big = tmp_path / "sparse.bin"
    size = 50 * 1024 * 1024
    with big.open("wb") as f:
        f.truncate(size)  # sparse: no disk blocks, reads as zeros
    expected = hashlib.sha256()
    zeros = bytes(CHUNK_BYTES)
    for _ in range(size // CHUNK_BYTES):
        expected.update(zeros)
    tracemalloc.start()
    try:
        [entry] = build_manifest(big)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert entry == ModelFile(path="sparse.bin", size=size, sha256=expected.hexdigest())
    assert peak < 3 * CHUNK_BYTES, f"peak {peak} bytes: the file was not streamed"


def test_refused_entries_name_the_path(tmp_path: Path) -> None:
    source = tmp_path / "m"
    source.mkdir()
    (source / "ok.bin").write_bytes(b"x")

    def refused(path: Path) -> str:
        with pytest.raises(ManifestError) as caught:
            build_manifest(source)
        message = str(caught.value)
        assert "\n" not in message
        path.unlink() if path.is_symlink() or not path.is_dir() else path.rmdir()
        return message

    os.mkfifo(source / "pipe")
    assert refused(source / "pipe") == f"{source}/pipe: a FIFO; a model holds regular files only"
    (source / "bad\nname").write_bytes(b"")
    assert "holds a control character" in refused(source / "bad\nname")
    raw = os.fsencode(source) + b"/\xff.bin"
    with open(raw, "wb"):
        pass
    assert "is not UTF-8" in refused(Path(os.fsdecode(raw)))
    (source / "dangling").symlink_to(tmp_path / "absent")
    assert "a dangling or looping symlink" in refused(source / "dangling")
    (source / "loop").symlink_to(".")
    assert "a symlink loop" in refused(source / "loop")
    (source / "up").symlink_to(tmp_path)
    assert "a symlink out of the model" in refused(source / "up")

    (source / "sub").mkdir()
    (source / "sub" / "w.bin").write_bytes(b"w")
    (source / "alias").symlink_to("sub")  # a directory link inside: followed
    assert [f.path for f in build_manifest(source)] == ["alias/w.bin", "ok.bin", "sub/w.bin"]

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ManifestError, match="no files to record"):
        build_manifest(empty)
    with pytest.raises(ManifestError, match="model source not found"):
        build_manifest(tmp_path / "absent")


def test_hf_snapshot_links_may_reach_their_own_blobs_only(
    hf_cache: HfCache, tmp_path: Path
) -> None:
    snapshot = hf_cache.snapshot(hf_cache.new_commit)
    assert build_manifest(snapshot) == hf_cache.manifests[hf_cache.new_commit]

    # A snapshot whose link points into another repository's blobs.
    blob = next((hf_cache.path / "models--other--small" / "blobs").iterdir())
    rogue = tmp_path / "hub" / "models--a--b"
    (rogue / "blobs").mkdir(parents=True)
    (rogue / "snapshots" / "c0ffee").mkdir(parents=True)
    (rogue / "snapshots" / "c0ffee" / "config.json").symlink_to(blob)
    with pytest.raises(ManifestError, match=r"config\.json: a symlink out of the model"):
        build_manifest(rogue / "snapshots" / "c0ffee")


def test_path_rules() -> None:
    assert path_problem("weights/part-1.bin") is None
    for bad in ("", "/etc/passwd", "a/../b", "./a", "a//b", "a\x1bb", "a\u2028b"):
        assert path_problem(bad) is not None, bad


# -- names, references, sources ---------------------------------------------------------


def test_names_and_references() -> None:
    assert hf_name("org/tiny-model") == "org--tiny-model"
    assert hf_name("tiny") == "tiny"
    for bad in ("a/b/c", "org/", "-x/y", "o/" + "n" * 70, "a b"):
        with pytest.raises(ModelError):
            hf_name(bad)
    assert parse_ref("tiny").name == "tiny"
    assert parse_ref("model:tiny@v2").revision == "v2"
    ref = parse_ref("model:hf:org/tiny@main")
    assert (ref.name, ref.hf_repo, ref.revision) == ("org--tiny", "org/tiny", "main")
    for bad in ("", "model:", "model:hf:", "tiny@", "tiny@-x", "../x", "model:hf:o/n@a b"):
        with pytest.raises(ModelError):
            parse_ref(bad)


def test_the_default_hf_cache_follows_the_hub(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert hf_cache_dir(tmp_path / "x") == tmp_path / "x"
    assert hf_cache_dir() == tmp_path / "xdg-cache" / "huggingface" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert hf_cache_dir() == tmp_path / "home" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert hf_cache_dir() == tmp_path / "hub"


def test_source_errors(hf_cache: HfCache, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="expected a path, hf-cache:PATH"):
        resolve_source("model:tiny", hf_cache=None)
    with pytest.raises(ModelError, match="not a Hugging Face cache entry"):
        resolve_source(f"hf-cache:{tmp_path}", hf_cache=None)
    with pytest.raises(ManifestError, match="model source not found"):
        resolve_source(str(tmp_path / "absent"), hf_cache=None)
    with pytest.raises(ModelError, match="names revision 'main' but --revision is 'v1'"):
        resolve_source(f"model:hf:{TINY_REPO}@main", hf_cache=hf_cache.path, revision="v1")
    source = resolve_source(f"model:hf:{TINY_REPO}", hf_cache=hf_cache.path, revision="main")
    assert source.revision == hf_cache.new_commit
    assert source.path == hf_cache.snapshot(hf_cache.new_commit)
    assert "HF_HUB_OFFLINE" not in os.environ  # set only around the cache scan


def test_the_fixture_weights_are_the_same_bytes_every_run() -> None:
    first, second = tiny_weights(1), tiny_weights(1)
    assert hashlib.sha256(first).digest() == hashlib.sha256(second).digest()
    assert WEIGHTS_BYTES < len(first) < WEIGHTS_BYTES + 4096
    assert tiny_weights(2) != first
