"""``chassis model materialize`` with real bytes, to a local host and over
real SSH (sshd on 127.0.0.11): the layout on the host, skipping what is
there, a corrupted byte found with --verify-sha256 and sent again, a
transfer cut mid-file and resumed, admission refusals from recorded facts,
dry runs that append nothing, and a ledger that still verifies."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import random
import sqlite3
import stat
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from adapters.connectors.base import CommandResult, Connector
from adapters.connectors.local import LocalConnector
from adapters.connectors.ssh import SSHConnector
from adapters.errors import ConnectorTimeout
from adapters.facts.model import DiskFacts, GpuFacts, facts_digest, parse_probe_output
from adapters.facts.probe import collect
from chassis.connect import connector_for
from chassis.hosts import get_host, resolve_root, sync_declared
from chassis.keyring import load_acting_key
from chassis.models.materialize import (
    MaterializeError,
    materialize,
    plan_materialize,
)
from chassis.stack.spec import load_stack
from chassis.workspace import Workspace, keys_dir
from ledger.application import Ledger
from ledger.events import LedgerEvent
from ledger.hosts import Host
from ledger.models import ModelAsset, ModelFile, manifest_digest
from ledger.storage import open_ledger
from tests.conftest import Runner
from tests.models.conftest import HfCache
from tests.sshd import SSHTestHost

SEED = 1515
BIG = {"weights/shard-1.bin": 6_000_000, "weights/shard-2.bin": 10_000_000}
SMALL_FILES = 60
CUT_FILE = "weights/shard-1.bin"


# -- a model, a workspace, its hosts ---------------------------------------------------


def write_model(root: Path) -> dict[str, bytes]:
    """~20 MB: three large files of seeded random bytes and many small ones."""
    rng = random.Random(SEED)
    files = {path: rng.randbytes(size) for path, size in BIG.items()}
    files["model.safetensors"] = rng.randbytes(4_000_000)
    files["config.json"] = json.dumps({"hidden_size": 64}).encode()
    for i in range(SMALL_FILES):
        files[f"tokenizer/part-{i:03d}.json"] = rng.randbytes(rng.randrange(10, 3000))
    files["empty.txt"] = b""
    for path, data in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
    return files


def manifest_of(files: dict[str, bytes]) -> list[ModelFile]:
    return sorted(
        (
            ModelFile(path=p, size=len(b), sha256=hashlib.sha256(b).hexdigest())
            for p, b in files.items()
        ),
        key=lambda f: f.path,
    )


def open_signing(root: Path) -> Ledger:
    ws = Workspace.find(root)
    return open_ledger(ws.storage(), load_acting_key(keys_dir(), ws.settings().default_key))


def record_model(root: Path, name: str, source: Path, files: dict[str, bytes]) -> str:
    ledger = open_signing(root)
    try:
        assert ledger.signer is not None
        manifest = manifest_of(files)
        ledger.append(
            ModelAsset.register(
                name=name,
                revision=None,
                source=str(source),
                files=manifest,
                actor=ledger.signer.keyid,
            )
        )
    finally:
        ledger.close()
    return manifest_digest(manifest)


def model_events(root: Path, name: str = "tiny") -> list[LedgerEvent]:
    ledger = open_ledger(Workspace.find(root).storage(), None)
    try:
        return [e for _, e in ledger.verified_events(ModelAsset.id_for(name))]
    finally:
        ledger.close()


def last_run(
    root: Path, name: str = "tiny"
) -> tuple[list[dict[str, Any]], ModelAsset.Materialized]:
    """The outcomes and the ``Materialized`` of the latest materialization."""
    events = model_events(root, name)
    starts = [i for i, e in enumerate(events) if isinstance(e, ModelAsset.MaterializeStarted)]
    run = events[starts[-1] :]
    outcomes = [o for e in run if isinstance(e, ModelAsset.FilesPlaced) for o in e.outcomes]
    (done,) = [e for e in run if isinstance(e, ModelAsset.Materialized)]
    return outcomes, done


def by_outcome(outcomes: list[dict[str, Any]]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for o in outcomes:
        found.setdefault(o["outcome"], set()).add(o["path"])
    return found


def stored_events(root: Path) -> int:
    conn = sqlite3.connect(root / ".chassis" / "ledger.db")
    try:
        return int(conn.execute("SELECT COUNT(*) FROM stored_events").fetchone()[0])
    finally:
        conn.close()


def assert_placed(models: Path, digest: str, files: dict[str, bytes], name: str = "tiny") -> None:
    complete = models / "sha256" / digest
    on_host = {
        p.relative_to(complete).as_posix(): p.read_bytes()
        for p in complete.rglob("*")
        if p.is_file()
    }
    assert on_host == files
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o444 for p in complete.rglob("*") if p.is_file())
    link = models / "by-name" / name
    assert os.readlink(link) == f"../sha256/{digest}"
    assert not (models / ".partial" / digest).exists()


STACK = """\
[app]
name = "lab"

[components.api]
command = "true"
resources = {{ cpu = 0.5, memory = "64MiB" }}

[profiles.one]
groups.a = {{ components = ["api"] }}

[runtimes.small-gpu]
description = "any NVIDIA GPU with 1 MiB"
gpu = "nvidia"
min_vram = "1MiB"
min_compute_capability = "7.0"

[environments.lab]
hosts = [
  {{ name = "local-1", connector = "local", root = "{local_root}" }},
{ssh}]
"""


@pytest.fixture
def lab(run: Runner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A workspace with a local host and the model ``tiny`` (~20 MB) recorded."""
    root = tmp_path / "lab"
    run.ok("init", str(root), "--name", "lab")
    write_stack(root, tmp_path, ssh=None)
    monkeypatch.chdir(root)
    yield root


def write_stack(root: Path, tmp_path: Path, ssh: SSHTestHost | None) -> None:
    entry = ""
    if ssh is not None:
        entry = (
            f'  {{ name = "{ssh.name}", connector = "ssh", address = "{ssh.address}", '
            f'port = {ssh.port}, user = "{ssh.user}", key = "{ssh.client_key}", '
            f'root = "{tmp_path / "root-ssh"}" }},\n'
        )
    (root / "chassis.toml").write_text(STACK.format(local_root=tmp_path / "root-local", ssh=entry))


@pytest.fixture
def model(lab: Path, tmp_path: Path) -> tuple[str, dict[str, bytes]]:
    source = tmp_path / "tiny-src"
    files = write_model(source)
    return record_model(lab, "tiny", source, files), files


@pytest.fixture
def ssh_lab(
    run: Runner, lab: Path, tmp_path: Path, ssh_hosts: list[SSHTestHost]
) -> tuple[Path, Path]:
    """``lab`` with sshd host h1 declared and its key pinned; its models dir."""
    write_stack(lab, tmp_path, ssh_hosts[0])
    run.ok("host", "trust-key", "h1", "--yes")
    return lab, tmp_path / "root-ssh" / "models"


def materialize_json(run: Runner, *args: str) -> dict[str, Any]:
    result = run.ok("model", "materialize", "--model", "model:tiny", *args, "--json")
    data: dict[str, Any] = json.loads(result.stdout)
    return data


# -- local host ------------------------------------------------------------------------


def test_local_host_materialized_then_everything_skipped(
    run: Runner, lab: Path, tmp_path: Path, model: tuple[str, dict[str, bytes]]
) -> None:
    digest, files = model
    models = tmp_path / "root-local" / "models"
    first = materialize_json(run, "--target", "host:local-1")
    assert first["plan"]["files_sent"] == len(files)
    assert first["result"]["bytes_sent"] == sum(len(b) for b in files.values())
    assert first["result"]["placed"] == "renamed"
    assert_placed(models, digest, files)
    outcomes, done = last_run(lab)
    assert by_outcome(outcomes) == {"sent": set(files)}
    assert all(o["sha256"] == hashlib.sha256(files[o["path"]]).hexdigest() for o in outcomes)
    assert done.ok and done.files_sent == len(files) and done.files_skipped == 0
    started = [e for e in model_events(lab) if isinstance(e, ModelAsset.MaterializeStarted)]
    assert started[0].plan["plan_digest"] == first["plan"]["plan_digest"]
    assert len(started[0].plan["send"]) == len(files)

    again = materialize_json(run, "--target", "local-1")
    assert again["result"]["files_skipped"] == len(files)
    assert again["result"]["bytes_sent"] == 0
    outcomes, done = last_run(lab)
    assert by_outcome(outcomes) == {"skipped": set(files)}
    assert done.ok and done.bytes_sent == 0
    asset = open_ledger(Workspace.find(lab).storage(), None).load(
        ModelAsset, ModelAsset.id_for("tiny")
    )
    assert asset.placements[f"local-1/{digest}"]["evicted"] is False
    run.ok("ledger", "verify")


def test_dry_run_appends_nothing_and_sends_nothing(
    run: Runner, lab: Path, tmp_path: Path, model: tuple[str, dict[str, bytes]]
) -> None:
    _, files = model
    run.ok("host", "list")  # registers the declared hosts
    before = stored_events(lab)
    data = materialize_json(run, "--target", "local-1", "--verify-sha256", "--dry-run")
    assert data["dry_run"] is True and data["result"] is None
    plan = data["plan"]
    assert plan["admission"]["admitted"] is True
    assert plan["bytes_to_send"] == sum(len(b) for b in files.values())
    assert {f["action"] for f in plan["files"]} == {"send"}
    human = run.ok("model", "materialize", "--model", "tiny", "--target", "local-1", "--dry-run")
    assert "dry run: nothing sent, nothing recorded" in human.stdout
    assert f"send {len(files)}, resume 0, skip 0" in human.stdout
    assert stored_events(lab) == before
    assert not (tmp_path / "root-local" / "models" / "sha256").exists()


def test_a_symlink_planted_in_the_partial_directory_is_not_followed(
    run: Runner, lab: Path, tmp_path: Path, model: tuple[str, dict[str, bytes]]
) -> None:
    digest, _ = model
    outside = tmp_path / "outside"
    outside.mkdir()
    partial = tmp_path / "root-local" / "models" / ".partial" / digest
    partial.mkdir(parents=True)
    (partial / "weights").symlink_to(outside)
    result = run("model", "materialize", "--model", "tiny", "--target", "local-1")
    assert result.exit_code == 11, result.stderr
    assert "weights/" in result.stderr and "stopped after" in result.stderr
    assert list(outside.iterdir()) == []
    _, done = last_run(lab)
    assert not done.ok and "weights/" in done.detail


def test_a_source_changed_since_it_was_recorded_fails_after_one_resend(
    run: Runner, lab: Path, tmp_path: Path, model: tuple[str, dict[str, bytes]]
) -> None:
    digest, files = model
    path = tmp_path / "tiny-src" / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[1234] ^= 0xFF  # same size, other bytes: only the host's sha256 can tell
    path.write_bytes(bytes(data))
    result = run("model", "materialize", "--model", "tiny", "--target", "local-1", "--json")
    assert result.exit_code == 8, result.stderr
    assert "model.safetensors: still wrong on local-1 after sending it again" in result.stderr
    assert "sending it again from zero" in result.stderr
    outcomes, done = last_run(lab)
    assert not done.ok and "still wrong" in done.detail
    assert by_outcome(outcomes) == {
        "sent": set(files) - {"model.safetensors"},
        "failed": {"model.safetensors"},
    }
    (failed,) = [o for o in outcomes if o["outcome"] == "failed"]
    assert failed["bytes_sent"] == 2 * len(files["model.safetensors"])
    models = tmp_path / "root-local" / "models"
    assert not (models / "sha256" / digest).exists()
    assert not (models / ".partial" / digest / "model.safetensors.part").exists()
    run.ok("ledger", "verify")


# -- admission ---------------------------------------------------------------------------


def record_facts(root: Path, host: str, tmp_path: Path, **changes: Any) -> None:
    """This machine's real facts, with ``changes`` (``gpus``, ``disks``), on ``host``."""
    host_root = str(tmp_path / "root-local")
    facts = parse_probe_output(json.dumps(collect(["/", host_root])))
    facts = msgspec.structs.replace(facts, **changes)
    ledger = open_signing(root)
    try:
        assert ledger.signer is not None
        actor = ledger.signer.keyid
        builtins: dict[str, Any] = msgspec.to_builtins(facts)
        digest = facts_digest(facts)

        def record(h: Host) -> None:
            h.record_facts(builtins, digest, actor=actor)

        ledger.update(Host, Host.id_for(host), record)
    finally:
        ledger.close()


def gpu(memory: int) -> GpuFacts:
    return GpuFacts(
        index=0,
        uuid="GPU-5d5a2a3c-8f1e-6b3c-3a2c-8c8a2b5e4f10",
        name="NVIDIA Test GPU",
        memory_total_bytes=memory,
        memory_free_bytes=memory,
        driver_version="550.54.15",
        cuda_driver_version="12.4",
        compute_capability="8.0",
        power_draw_mw=None,
        power_limit_mw=None,
        temperature_c=None,
    )


def refused(run: Runner, *args: str) -> dict[str, Any]:
    result = run("model", "materialize", "--model", "tiny", "--target", "local-1", *args, "--json")
    assert result.exit_code == 13, result.stderr + result.stdout
    data: dict[str, Any] = json.loads(result.stdout)
    assert data["admitted"] is False
    return data


def codes(data: dict[str, Any]) -> list[str]:
    return [r["code"] for r in data["admission"]["reasons"]]


def test_admission_from_recorded_facts_refuses_with_reason_codes(
    run: Runner, lab: Path, tmp_path: Path, model: tuple[str, dict[str, bytes]]
) -> None:
    _, files = model
    total = sum(len(b) for b in files.values())
    run.ok("host", "list")
    before = stored_events(lab)
    assert codes(refused(run, "--runtime", "runtime:cuda-small")) == ["no-inventory"]

    record_facts(lab, "local-1", tmp_path, gpus=[], gpu_note="no NVIDIA driver")
    before = stored_events(lab)
    assert "no-gpu" in codes(refused(run, "--runtime", "cuda-small"))

    # A stack runtime whose own VRAM needs are met, but the model is larger than the GPU.
    record_facts(lab, "local-1", tmp_path, gpus=[gpu(total // 2)])
    before = stored_events(lab)
    data = refused(run, "--runtime", "small-gpu", "--dry-run")
    assert codes(data) == ["insufficient-vram"]
    assert "the model's" in data["admission"]["reasons"][0]["detail"]
    assert data["admission"]["largest_gpu_bytes"] == total // 2
    human = run(
        "model", "materialize", "--model", "tiny", "--target", "local-1", "--runtime", "small-gpu"
    )
    assert human.exit_code == 13
    assert "insufficient-vram" in human.stdout

    # The recorded free space of the disk holding the host root is too small.
    small_disk = DiskFacts(path=str(tmp_path / "root-local"), total_bytes=10**9, free_bytes=1000)
    record_facts(lab, "local-1", tmp_path, gpus=[gpu(64 * 2**30)], disks=[small_disk])
    before = stored_events(lab)
    data = refused(run, "--runtime", "small-gpu")
    assert codes(data) == ["insufficient-disk"]
    assert data["admission"]["recorded_free_bytes"] == 1000
    assert codes(refused(run)) == ["insufficient-disk"]  # with no runtime, disk still counts
    assert stored_events(lab) == before
    assert not (tmp_path / "root-local" / "models" / "sha256").exists()

    # Enough of everything: admitted, and materialized.
    roomy = DiskFacts(path=str(tmp_path / "root-local"), total_bytes=10**12, free_bytes=10**11)
    record_facts(lab, "local-1", tmp_path, gpus=[gpu(64 * 2**30)], disks=[roomy])
    data = materialize_json(run, "--target", "local-1", "--runtime", "small-gpu")
    assert data["plan"]["admission"]["admitted"] is True
    assert data["result"]["files_sent"] == len(files)
    unknown = run(
        "model",
        "materialize",
        "--model",
        "tiny",
        "--target",
        "local-1",
        "--runtime",
        "no-such-runtime",
    )
    assert unknown.exit_code == 3 and "unknown runtime" in unknown.stderr


# -- over SSH ----------------------------------------------------------------------------


def test_over_ssh_a_corrupted_byte_is_found_with_verify_and_sent_again(
    run: Runner,
    ssh_lab: tuple[Path, Path],
    model: tuple[str, dict[str, bytes]],
) -> None:
    lab, models = ssh_lab
    digest, files = model
    first = materialize_json(run, "--target", "host:h1")
    assert first["result"]["files_sent"] == len(files)
    assert_placed(models, digest, files)

    victim = models / "sha256" / digest / "weights" / "shard-1.bin"
    victim.chmod(0o644)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))

    trusting = materialize_json(run, "--target", "h1")  # name and size only: not noticed
    assert trusting["result"]["files_skipped"] == len(files)

    checked = materialize_json(run, "--target", "h1", "--verify-sha256")
    (repair,) = [f for f in checked["plan"]["files"] if f["action"] != "skip"]
    assert repair["path"] == "weights/shard-1.bin" and "wrong-sha256" in repair["reason"]
    assert checked["result"]["placed"] == "merged"
    outcomes, done = last_run(lab)
    assert by_outcome(outcomes) == {
        "resent": {"weights/shard-1.bin"},
        "skipped": set(files) - {"weights/shard-1.bin"},
    }
    assert done.ok and done.bytes_sent == BIG["weights/shard-1.bin"]
    assert_placed(models, digest, files)
    run.ok("ledger", "verify")


def settled_size(part: Path, timeout: float = 15.0) -> int:
    """The size of ``part`` once its receiver (cut off with the session) has
    exited: it holds an flock on the partial until then."""
    deadline = time.monotonic() + timeout
    with part.open("rb") as fh:
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                assert time.monotonic() < deadline, "the cut-off receiver is still running"
                time.sleep(0.05)
                continue
            fcntl.flock(fh, fcntl.LOCK_UN)
            return part.stat().st_size


class CutAfter:
    """Wraps a connector's ``run_streaming``: once ``limit`` bytes of file data
    went out, the SSH transport is closed from inside the chunk iterator — a
    connection lost mid-stream, everything before it really sent."""

    def __init__(self, connector: Connector, limit: int) -> None:
        self.connector = connector
        self.original = connector.run_streaming
        self.limit = limit

    def __call__(self, command: str, chunks: Iterable[bytes], **kwargs: Any) -> CommandResult:
        def cutting() -> Iterator[bytes]:
            sent = -1  # the first chunk is the receiver's source and header
            for chunk in chunks:
                yield chunk
                sent = 0 if sent < 0 else sent + len(chunk)
                if sent >= self.limit:
                    transport = getattr(self.connector, "transport", None)
                    assert transport is not None
                    transport.close()

        return self.original(command, cutting(), **kwargs)


def test_over_ssh_an_interrupted_transfer_resumes_where_it_stopped(
    run: Runner,
    ssh_lab: tuple[Path, Path],
    model: tuple[str, dict[str, bytes]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lab, models = ssh_lab
    digest, files = model
    ws = Workspace.find(lab)
    ledger = open_signing(lab)
    try:
        sync_declared(ledger, load_stack(ws.stack_file), {"h1"})
        host = get_host(ledger, "h1")
        assert resolve_root(host, ws.root) == str(models.parent)
        asset = ledger.load(ModelAsset, ModelAsset.id_for("tiny"))
        with connector_for(host, ws) as connector:
            plan = plan_materialize(ledger, ws, asset, host, verify=False, connector=connector)
            assert [f.action for f in plan.files] == ["send"] * len(files)
            ahead = sum(len(files[p]) for p in files if p < CUT_FILE)
            cut = CutAfter(connector, ahead + (3 << 20))
            monkeypatch.setattr(connector, "run_streaming", cut)
            lines: list[str] = []
            with pytest.raises(MaterializeError) as failed:
                materialize(ledger, ws, asset, host, plan, lines.append, connector=connector)
    finally:
        ledger.close()
    assert failed.value.exit_code == 11
    assert "run it again to resume" in str(failed.value)
    before_cut = {p for p in files if p < CUT_FILE}
    assert before_cut and {p for p in files if p > CUT_FILE}
    outcomes, done = last_run(lab)
    assert not done.ok and "connection lost" in done.detail
    assert outcomes == []  # the receiver's report was lost with the connection
    partial = models / ".partial" / digest
    kept = settled_size(partial / (CUT_FILE + ".part"))
    assert 0 < kept <= 3 << 20
    assert all((partial / p).exists() for p in before_cut)
    assert files[CUT_FILE].startswith((partial / (CUT_FILE + ".part")).read_bytes())

    dry = materialize_json(run, "--target", "h1", "--dry-run")
    actions = {f["path"]: (f["action"], f["offset"]) for f in dry["plan"]["files"]}
    assert actions[CUT_FILE] == ("resume", kept)
    again = materialize_json(run, "--target", "h1")
    outcomes, done = last_run(lab)
    assert by_outcome(outcomes) == {
        "skipped": before_cut,
        "resumed": {CUT_FILE},
        "sent": set(files) - before_cut - {CUT_FILE},
    }
    (resumed,) = [o for o in outcomes if o["outcome"] == "resumed"]
    assert resumed["bytes_sent"] == len(files[CUT_FILE]) - kept < len(files[CUT_FILE])
    assert resumed["sha256"] == hashlib.sha256(files[CUT_FILE]).hexdigest()
    assert done.ok and again["result"]["files_resumed"] == 1
    assert_placed(models, digest, files)
    run.ok("ledger", "verify")


class FlipOnce:
    """Wraps ``run_streaming``: flips the byte at offset ``at`` of the file
    data of the first stream (corruption on the way): the host's sha256
    refuses that file once."""

    def __init__(self, connector: Connector, at: int) -> None:
        self.original = connector.run_streaming
        self.at = at
        self.done = False

    def __call__(self, command: str, chunks: Iterable[bytes], **kwargs: Any) -> CommandResult:
        if self.done:
            return self.original(command, chunks, **kwargs)
        self.done = True

        def flipped() -> Iterator[bytes]:
            position = -1
            for chunk in chunks:
                if position < 0:
                    position = 0
                elif position <= self.at < position + len(chunk):
                    i = self.at - position
                    position += len(chunk)
                    chunk = chunk[:i] + bytes([chunk[i] ^ 0xFF]) + chunk[i + 1 :]
                else:
                    position += len(chunk)
                yield chunk

        return self.original(command, flipped(), **kwargs)


def test_bytes_corrupted_on_the_way_are_sent_again_from_zero(
    lab: Path,
    tmp_path: Path,
    model: tuple[str, dict[str, bytes]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    digest, files = model
    ws = Workspace.find(lab)
    ledger = open_signing(lab)
    try:
        sync_declared(ledger, load_stack(ws.stack_file), {"local-1"})
        host = get_host(ledger, "local-1")
        asset = ledger.load(ModelAsset, ModelAsset.id_for("tiny"))
        connector = connector_for(host, ws)
        plan = plan_materialize(ledger, ws, asset, host, connector=connector)
        ahead = sum(len(files[p]) for p in files if p < "model.safetensors")
        monkeypatch.setattr(connector, "run_streaming", FlipOnce(connector, ahead + 4321))
        lines: list[str] = []
        result = materialize(ledger, ws, asset, host, plan, lines.append, connector=connector)
    finally:
        ledger.close()
    assert result.files_resent == 1
    (resent,) = [o for o in result.outcomes if o["outcome"] == "resent"]
    assert resent["path"] == "model.safetensors" and "sha256 mismatch" in resent["detail"]
    assert resent["bytes_sent"] == 2 * len(files["model.safetensors"])
    assert any("sending it again from zero" in line for line in lines)
    assert any("MB/s" in line for line in lines)
    assert_placed(tmp_path / "root-local" / "models", digest, files)


# -- a Hugging Face model, recorded by materialize itself -------------------------------


def test_a_hugging_face_model_is_planned_unrecorded_then_recorded_and_placed(
    run: Runner, lab: Path, tmp_path: Path, hf_cache: HfCache
) -> None:
    ref = f"model:hf:{hf_cache.repo}"
    cache = str(hf_cache.path)
    run.ok("host", "list")
    before = stored_events(lab)
    dry = json.loads(
        run.ok(
            "model",
            "materialize",
            "--model",
            ref,
            "--target",
            "local-1",
            "--hf-cache",
            cache,
            "--dry-run",
            "--json",
        ).stdout
    )
    expected = hf_cache.manifests[hf_cache.new_commit]
    assert dry["plan"]["manifest_digest"] == manifest_digest(expected)
    assert dry["plan"]["files_sent"] == len(expected)
    assert stored_events(lab) == before  # not even the model was recorded

    old = f"{ref}@{hf_cache.old_commit[:10]}"
    first = json.loads(
        run.ok(
            "model",
            "materialize",
            "--model",
            old,
            "--target",
            "local-1",
            "--hf-cache",
            cache,
            "--json",
        ).stdout
    )
    assert first["plan"]["manifest_digest"] == manifest_digest(
        hf_cache.manifests[hf_cache.old_commit]
    )
    data = json.loads(
        run.ok(
            "model",
            "materialize",
            "--model",
            f"{ref}@main",  # the recorded model is the old revision; main is newer
            "--target",
            "local-1",
            "--hf-cache",
            cache,
            "--json",
        ).stdout
    )
    digest = manifest_digest(expected)
    assert data["result"]["files_sent"] == len(expected)  # another manifest: its own directory
    models = tmp_path / "root-local" / "models"
    snapshot = hf_cache.snapshot(hf_cache.new_commit)
    files = {f.path: (snapshot / f.path).read_bytes() for f in expected}
    assert_placed(models, digest, files, name="org--tiny-model")
    assert (models / "sha256" / manifest_digest(hf_cache.manifests[hf_cache.old_commit])).is_dir()
    run.ok("ledger", "verify")


# -- Connector.run_streaming ------------------------------------------------------------


@pytest.fixture(params=["local", "ssh"])
def streaming(request: pytest.FixtureRequest) -> Iterator[Connector]:
    """A local connector, and one to the sshd host h1."""
    if request.param == "local":
        yield LocalConnector("local-1")
        return
    host: SSHTestHost = request.getfixturevalue("ssh_hosts")[0]
    with SSHConnector(host.settings(io_timeout=2.0)) as connector:
        yield connector


def blocks(count: int, size: int = 1 << 20) -> Iterator[bytes]:
    rng = random.Random(count)
    for _ in range(count):
        yield rng.randbytes(size)


def test_run_streaming_feeds_stdin_as_it_comes(streaming: Connector) -> None:
    expected = hashlib.sha256(b"".join(blocks(5))).hexdigest()
    result = streaming.run_streaming("sha256sum", blocks(5), timeout=30, display="hash")
    assert result.ok and result.stdout.split()[0] == expected
    assert result.command == "hash" and "chassis-pid" not in result.stderr
    # A command that stops reading early: its own result, no error.
    early = streaming.run_streaming(
        "head -c 10 >/dev/null; echo done; exit 3", blocks(8), timeout=30
    )
    assert (early.exit_code, early.stdout) == (3, "done\n")
    # An error of the chunks themselves propagates; the connector stays usable.

    def failing() -> Iterator[bytes]:
        yield b"x" * 1000
        raise RuntimeError("the source broke")

    with pytest.raises(RuntimeError, match="the source broke"):
        streaming.run_streaming("cat >/dev/null", failing(), timeout=30)
    assert streaming.run("echo still here", timeout=30).stdout == "still here\n"


def test_run_streaming_times_out_when_the_command_stops_reading(streaming: Connector) -> None:
    started = time.monotonic()
    with pytest.raises(ConnectorTimeout):
        streaming.run_streaming("sleep 30", blocks(64), timeout=1.5)
    assert time.monotonic() - started < 20


def test_the_originals_command_runs_as_written(
    run: Runner,
    lab: Path,
    tmp_path: Path,
    hf_cache: HfCache,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`chassis model materialize --runtime runtime:crucible_bumblebee:cuda-small
    --model model:hf:NAME --target host:HOST --verify-sha256 --dry-run`, with
    the model found in the Hugging Face cache by its bare name and admitted by
    the host's recorded GPU facts; then the same without --dry-run."""
    monkeypatch.setenv("HF_HUB_CACHE", str(hf_cache.path))
    run.ok("host", "list")
    record_facts(lab, "local-1", tmp_path, gpus=[gpu(16 * 2**30)])
    original = [
        "model", "materialize", "--runtime", "runtime:crucible_bumblebee:cuda-small",
        "--model", "model:hf:small", "--target", "host:local-1", "--verify-sha256",
    ]  # fmt: skip
    before = stored_events(lab)
    planned = json.loads(run.ok(*original, "--dry-run", "--json").stdout)
    assert planned["plan"]["admission"]["admitted"] is True, planned
    assert stored_events(lab) == before
    placed = json.loads(run.ok(*original, "--json").stdout)
    assert placed["result"]["ok"] is True
    assert placed["result"]["files_sent"] == planned["plan"]["files_sent"] > 0
    run.ok("ledger", "verify")
