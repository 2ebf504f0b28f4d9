"""Models in deploys, ``chassis model swap`` and the host cache, on local
hosts with real processes (``shop``: the example stack on dev-1..3).

Until ``chassis model materialize`` exists here, a model is put on a host by
hand: its files under ``<root>/models/sha256/<digest>/``, the ``by-name``
pointer, and ``Registered``/``Revised`` + ``Materialized`` appended to the
ledger (what materialize records)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from chassis.keyring import load_acting_key
from chassis.workspace import Workspace, keys_dir
from ledger.application import Ledger
from ledger.models import ModelAsset, ModelFile, manifest_digest
from ledger.storage import open_ledger
from tests.conftest import Runner
from tests.engine.conftest import shop  # noqa: F401  (the fixture)
from tests.engine.test_deploy_local import get, port_of

# Long (deploys, health windows, many processes): the parallel run starts
# these first (tests/scheduling.py).
pytestmark = pytest.mark.slow

DEPLOY = ("deploy", "shop", "--env", "dev", "--profile", "ternary-split-3")
SWAP = ("model", "swap", "shop", "--env", "dev")
HOSTS = ("dev-1", "dev-2", "dev-3")


@pytest.fixture
def models_shop(shop: Path) -> Path:  # noqa: F811
    """``shop`` with ``model = "tiny"`` on the api component."""
    stack = shop / "chassis.toml"
    text = stack.read_text()
    stack.write_text(text.replace("[components.api]\n", '[components.api]\nmodel = "tiny"\n', 1))
    return shop


# -- putting models on hosts by hand ----------------------------------------------------


def open_signing(root: Path) -> Ledger:
    ws = Workspace.find(root)
    return open_ledger(ws.storage(), load_acting_key(keys_dir(), ws.settings().default_key))


def model_files(seed: str, size: int = 4096) -> dict[str, bytes]:
    block = hashlib.sha256(seed.encode()).digest()
    return {
        "config.json": json.dumps({"model": seed}).encode(),
        "weights/model.bin": (block * (size // len(block) + 1))[:size],
    }


def record_model(root: Path, name: str, files: dict[str, bytes]) -> str:
    """Record ``files`` as (a new manifest of) model ``name``; its digest."""
    manifest = [
        ModelFile(path=p, size=len(b), sha256=hashlib.sha256(b).hexdigest())
        for p, b in sorted(files.items())
    ]
    ledger = open_signing(root)
    try:
        assert ledger.signer is not None
        actor = ledger.signer.keyid
        found = ledger.find(ModelAsset, ModelAsset.id_for(name))
        if found is None:
            ledger.append(
                ModelAsset.register(
                    name=name, revision=None, source=f"/src/{name}", files=manifest, actor=actor
                )
            )
        else:

            def revise(asset: ModelAsset) -> None:
                asset.revise(revision=None, source=f"/src/{name}", files=manifest, actor=actor)

            ledger.update(ModelAsset, found.id, revise)
    finally:
        ledger.close()
    return manifest_digest(manifest)


def host_root(root: Path, host: str) -> Path:
    return root / ".chassis" / "hosts" / host


def place_model(root: Path, host: str, name: str, files: dict[str, bytes]) -> str:
    """Put ``files`` on ``host`` as materialize does and record ``Materialized``."""
    digest = record_model(root, name, files)
    models = host_root(root, host) / "models"
    target = models / "sha256" / digest
    for path, data in files.items():
        (target / path).parent.mkdir(parents=True, exist_ok=True)
        (target / path).write_bytes(data)
    (models / "by-name").mkdir(parents=True, exist_ok=True)
    link = models / "by-name" / name
    if link.is_symlink():
        link.unlink()
    link.symlink_to(f"../sha256/{digest}")
    ledger = open_signing(root)
    try:
        assert ledger.signer is not None
        keyid = ledger.signer.keyid

        def materialized(asset: ModelAsset) -> None:
            asset.trigger(
                ModelAsset.Materialized,
                keyid=keyid,
                host=host,
                manifest_digest=digest,
                ok=True,
                bytes_sent=sum(len(b) for b in files.values()),
                files_sent=len(files),
                files_skipped=0,
                detail="placed by the test",
            )

        ledger.update(ModelAsset, ModelAsset.id_for(name), materialized)
    finally:
        ledger.close()
    return digest


def place_everywhere(root: Path, name: str, files: dict[str, bytes]) -> str:
    digests = {place_model(root, host, name, files) for host in HOSTS}
    assert len(digests) == 1
    return digests.pop()


# -- what runs ------------------------------------------------------------------------


def api_host(root: Path) -> str:
    found = [h for h in HOSTS if (host_root(root, h) / "run" / "api.pid").is_file()]
    assert len(found) == 1, found
    return found[0]


def group_environ(leader: int, component: str) -> dict[str, str]:
    """The environment of ``component``'s process in the group the direct
    supervisor's pidfile names (the leader may be a supervising shell)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            pgrp = int(stat.rpartition(") ")[2].split()[2])
            if pgrp != leader and int(entry.name) != leader:
                continue
            raw = (entry / "environ").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        env = dict(
            item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item
        )
        if env.get("CHASSIS_COMPONENT") == component:
            return env
    raise AssertionError(f"no process of {component} in process group {leader}")


def api_env(root: Path) -> dict[str, str]:
    host = api_host(root)
    record = json.loads((host_root(root, host) / "run" / "api.pid").read_text())
    return group_environ(int(record["pid"]), "api")


def api_pid(root: Path) -> int:
    record = json.loads((host_root(root, api_host(root)) / "run" / "api.pid").read_text())
    return int(record["pid"])


def model_dir_of(root: Path, host: str, digest: str) -> str:
    return str(host_root(root, host).resolve() / "models" / "sha256" / digest)


def history(run: Runner) -> list[dict[str, Any]]:
    data = json.loads(run.ok("history", "shop", "--env", "dev", "--json").stdout)
    revisions: list[dict[str, Any]] = data["revisions"]
    return revisions


def model_events(root: Path, name: str) -> list[Any]:
    ledger = open_signing(root)
    try:
        asset = ledger.load(ModelAsset, ModelAsset.id_for(name))
        return [event for _, event in ledger.verified_events(asset.id)]
    finally:
        ledger.close()


# -- deploy, swap, rollback ---------------------------------------------------------------


def test_a_component_with_a_model_gets_its_dir_and_a_swap_moves_it_through_the_gate(
    run: Runner, models_shop: Path
) -> None:
    shop_root = models_shop
    missing = run(*DEPLOY, "--release", "v1")
    assert missing.exit_code == 10, missing.output
    assert "no model 'tiny' is recorded" in missing.stderr

    tiny = place_everywhere(shop_root, "tiny", model_files("tiny"))
    plan = json.loads(
        run.ok(
            "plan",
            "shop",
            "--env",
            "dev",
            "--profile",
            "ternary-split-3",
            "--release",
            "v1",
            "--json",
        ).stdout
    )
    (component,) = [c for h in plan["hosts"] for c in h["components"] if c["name"] == "api"]
    assert component["model"] == {"name": "tiny", "digest": tiny}
    assert component["env"]["CHASSIS_MODEL_DIR"].endswith(f"/models/sha256/{tiny}")

    run.ok(*DEPLOY, "--release", "v1")
    host = api_host(shop_root)
    assert api_env(shop_root)["CHASSIS_MODEL_DIR"] == model_dir_of(shop_root, host, tiny)
    assert get(port_of(shop_root, "api"), "/healthz")[0] == 200
    again = json.loads(run.ok(*DEPLOY, "--release", "v1", "--json").stdout)
    assert again["status"] == "noop", "same model, same release: nothing to do"

    # Swap to a model that is recorded but on no host: refused before anything stops.
    huge = record_model(shop_root, "huge", model_files("huge"))
    pid = api_pid(shop_root)
    revisions = len(history(run))
    refused = run(*SWAP, "--component", "api", "--model", "huge")
    assert refused.exit_code == 10, refused.output
    assert f"model huge (digest {huge[:12]}…) is not on host" in refused.stderr
    assert f"is not on host {host}: chassis model materialize --model huge --target {host}" in (
        refused.stderr
    )
    assert api_pid(shop_root) == pid and len(history(run)) == revisions, "nothing stopped"

    # Incomplete on the host (a file cut short): refused the same way.
    small_files = model_files("small")
    small = place_everywhere(shop_root, "small", small_files)
    weights = Path(model_dir_of(shop_root, host, small)) / "weights" / "model.bin"
    weights.write_bytes(small_files["weights/model.bin"][:100])
    cut = run(*SWAP, "--component", "api", "--model", "small")
    assert cut.exit_code == 10 and "1 of 2 files missing or incomplete" in cut.stderr, cut.output
    weights.write_bytes(small_files["weights/model.bin"])

    for wrong, what in (
        (("--component", "nope", "--model", "small"), "no component 'nope'"),
        (("--component", "api", "--model", "nope"), "no model 'nope'"),
    ):
        result = run(*SWAP, *wrong)
        assert result.exit_code == 10 and what in result.stderr, result.output

    swapped = run(*SWAP, "--component", "api", "--model", "small", "--json")
    assert swapped.exit_code == 0, swapped.output
    result = json.loads(swapped.stdout)
    assert result["status"] == "deployed"
    assert api_env(shop_root)["CHASSIS_MODEL_DIR"] == model_dir_of(shop_root, host, small)
    assert api_pid(shop_root) != pid, "restarted through the gate"
    assert get(port_of(shop_root, "api"), "/healthz")[0] == 200
    last = history(run)[-1]
    assert last["status"] == "deployed"
    assert last["description"].startswith("model swap v1 (models: api: small ")

    # The next plain deploy runs the stack file's model again.
    back = json.loads(run.ok(*DEPLOY, "--release", "v1", "--json").stdout)
    assert back["status"] == "deployed"
    assert api_env(shop_root)["CHASSIS_MODEL_DIR"] == model_dir_of(shop_root, host, tiny)
    run.ok("ledger", "verify")


def test_rollback_after_a_swap_restores_the_previous_model_dir(
    run: Runner, models_shop: Path
) -> None:
    shop_root = models_shop
    tiny = place_everywhere(shop_root, "tiny", model_files("tiny"))
    small = place_everywhere(shop_root, "small", model_files("small"))
    run.ok(*DEPLOY, "--release", "v1")
    host = api_host(shop_root)
    run.ok(*SWAP, "--component", "api", "--model", "small")
    assert api_env(shop_root)["CHASSIS_MODEL_DIR"] == model_dir_of(shop_root, host, small)

    done = run("rollback", "shop", "--env", "dev", "--json")
    assert done.exit_code == 0, done.output
    result = json.loads(done.stdout)
    assert result["target_revision"] == 1 and result["status"] == "deployed"
    assert api_env(shop_root)["CHASSIS_MODEL_DIR"] == model_dir_of(shop_root, host, tiny)
    assert get(port_of(shop_root, "api"), "/healthz")[0] == 200
    run.ok("ledger", "verify")


def test_a_rollback_to_a_model_evicted_since_is_refused_before_anything_stops(
    run: Runner, models_shop: Path
) -> None:
    shop_root = models_shop
    tiny = place_everywhere(shop_root, "tiny", model_files("tiny"))
    small = place_everywhere(shop_root, "small", model_files("small"))
    run.ok(*DEPLOY, "--release", "v1")
    host = api_host(shop_root)
    run.ok(*SWAP, "--component", "api", "--model", "small")
    run.ok("model", "cache", "evict", "--host", host, "--model", "tiny")
    pid = api_pid(shop_root)
    refused = run("rollback", "shop", "--env", "dev")
    assert refused.exit_code == 10, refused.output
    assert f"model tiny (digest {tiny[:12]}" in refused.stderr and "materialize" in refused.stderr
    assert api_pid(shop_root) == pid
    assert api_env(shop_root)["CHASSIS_MODEL_DIR"] == model_dir_of(shop_root, host, small)


def test_a_new_manifest_of_the_model_is_deployed_by_a_plain_deploy(
    run: Runner, models_shop: Path
) -> None:
    shop_root = models_shop
    place_everywhere(shop_root, "tiny", model_files("tiny"))
    run.ok(*DEPLOY, "--release", "v1")
    newer = place_everywhere(shop_root, "tiny", model_files("tiny-2"))
    result = json.loads(run.ok(*DEPLOY, "--release", "v1", "--json").stdout)
    assert result["status"] == "deployed", "a new manifest changes the plan"
    host = api_host(shop_root)
    assert api_env(shop_root)["CHASSIS_MODEL_DIR"] == model_dir_of(shop_root, host, newer)


# -- the cache ------------------------------------------------------------------------------


def cache(run: Runner, *args: str) -> dict[str, Any]:
    result = run("model", "cache", *args, "--json")
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def test_eviction_takes_the_oldest_unprotected_copies_down_to_the_watermark(
    run: Runner, models_shop: Path
) -> None:
    shop_root = models_shop
    tiny = place_everywhere(shop_root, "tiny", model_files("tiny"))
    run.ok(*DEPLOY, "--release", "v1")
    host = api_host(shop_root)
    # Oldest first: pinned, old, then fresh (tiny is in use: used now).
    keep = place_model(shop_root, host, "keep", model_files("keep", 8192))
    old = place_model(shop_root, host, "old", model_files("old", 16384))
    fresh = place_model(shop_root, host, "fresh", model_files("fresh"))
    cache(run, "pin", "--host", host, "--model", "keep")
    assert cache(run, "pin", "--host", host, "--model", "keep")["changed"] is False
    sha = host_root(shop_root, host) / "models" / "sha256"
    (sha.parent / ".partial" / ("0" * 64)).mkdir(parents=True)  # materialize's, not the cache's

    listing = cache(run, "list", "--host", host)
    rows = {m["digest"]: m for m in listing["models"]}
    assert set(rows) == {tiny, keep, old, fresh}
    assert rows[keep]["pinned"] is True and rows[keep]["names"] == ["keep"]
    assert rows[tiny]["referenced_by"] == ["shop/dev r1 api"]
    assert rows[old]["bytes"] >= 16384 and rows[old]["state"] == "cached"
    assert listing["disk"]["free"] > 0
    assert [m["digest"] for m in listing["models"]] == [keep, old, fresh, tiny], "in use: now"

    nothing = cache(run, "evict", "--host", host, "--watermark", "0")
    assert nothing["evicted"] == [] and nothing["satisfied"] is True

    dry = cache(run, "evict", "--host", host, "--watermark", "100%", "--dry-run")
    assert [e["digest"] for e in dry["evicted"]] == [old, fresh], "least recently used first"
    assert {s["digest"]: s["why"] for s in dry["skipped"]} == {
        keep: "pinned",
        tiny: "in use by shop/dev r1 api",
    }
    assert {p.name for p in sha.iterdir()} == {tiny, keep, old, fresh}, "--dry-run removes nothing"

    for protected in ("keep", "tiny"):
        refused = run("model", "cache", "evict", "--host", host, "--model", protected)
        assert refused.exit_code == 9, refused.output
    assert run("model", "cache", "evict", "--host", host).exit_code == 2

    one = cache(run, "evict", "--host", host, "--model", "fresh", "--reason", "make room")
    assert [e["digest"] for e in one["evicted"]] == [fresh]
    assert not (host_root(shop_root, host) / "models" / "by-name" / "fresh").is_symlink()

    # Three left: pinned, in use, old. A watermark no disk can meet takes only the old one.
    everything = cache(run, "evict", "--host", host, "--watermark", "100%")
    assert [e["digest"] for e in everything["evicted"]] == [old]
    assert everything["satisfied"] is False
    assert {p.name for p in sha.iterdir()} == {tiny, keep}
    by_name = host_root(shop_root, host) / "models" / "by-name"
    assert not (by_name / "old").is_symlink() and (by_name / "keep").is_symlink()
    assert (sha.parent / ".partial" / ("0" * 64)).is_dir()

    (evicted,) = [e for e in model_events(shop_root, "old") if isinstance(e, ModelAsset.Evicted)]
    assert evicted.host == host and evicted.manifest_digest == old
    assert evicted.bytes_freed >= 16384 and "watermark 100%" in evicted.reason
    (by_hand,) = [e for e in model_events(shop_root, "fresh") if isinstance(e, ModelAsset.Evicted)]
    assert by_hand.reason == "--model fresh: make room"
    assert {m["digest"] for m in cache(run, "list", "--host", host)["models"]} == {tiny, keep}

    cache(run, "unpin", "--host", host, "--model", "keep")
    assert [
        e["digest"] for e in cache(run, "evict", "--host", host, "--model", "keep")["evicted"]
    ] == [keep]
    assert api_env(shop_root)["CHASSIS_MODEL_DIR"] == model_dir_of(shop_root, host, tiny)
    run.ok("ledger", "verify")


def test_the_model_name_follows_the_name_rule(run: Runner, shop: Path) -> None:  # noqa: F811
    stack = shop / "chassis.toml"
    stack.write_text(
        stack.read_text().replace("[components.api]\n", '[components.api]\nmodel = "../x"\n', 1)
    )
    result = run("stack", "validate")
    assert result.exit_code == 3
    assert "components.api.model: model name '../x'" in result.output
