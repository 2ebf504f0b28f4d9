"""``chassis prune``: old release directories go by the ledger's revision
order; what a rollback needs and what the ledger never knew stay."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from chassis.sample_app import build_sample_release
from tests.conftest import Runner
from tests.engine.test_deploy_local import DEPLOY
from tests.engine.test_recover import crash_deploy

# Long (deploys, health windows, many processes): the parallel run starts
# these first (tests/scheduling.py).
pytestmark = pytest.mark.slow

PRUNE = ("prune", "shop", "--env", "dev")
HOSTS = ("dev-1", "dev-2", "dev-3")


def five_revisions(run: Runner, shop: Path) -> dict[str, str]:
    """v1, v2, v3 (fails its gate, restored to v2), v4, v5; label → release dir."""
    for version in ("v4", "v5"):
        bundle, _ = build_sample_release(shop.parent / "dist", version)
        run.ok("release", "add", version, "--artifact", str(bundle))
    for version in ("v1", "v2", "v3", "v4", "v5"):
        result = run(*DEPLOY, "--release", version)
        assert result.exit_code == (16 if version == "v3" else 0), result.stderr
    history = json.loads(run.ok("history", "shop", "--env", "dev", "--json").stdout)
    statuses = [(r["label"], r["status"]) for r in history["revisions"]]
    assert statuses == [
        ("v1", "superseded"),
        ("v2", "superseded"),
        ("v3", "failed"),
        ("v4", "superseded"),
        ("v5", "deployed"),
    ]
    return {r["label"]: r["release_id"][:16] for r in history["revisions"]}


def releases(shop: Path, host: str) -> set[str]:
    return set(os.listdir(shop / ".chassis" / "hosts" / host / "releases"))


def by_label(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["label"]: r for r in rows}


def test_prune_keeps_what_a_rollback_needs(run: Runner, shop: Path) -> None:
    dirs = five_revisions(run, shop)
    # The deploy's own prune kept v3, v4, v5 (by mtime). Put v1 back on
    # dev-1 as an older deploy would have left it, and a directory of no release.
    dev1 = shop / ".chassis" / "hosts" / "dev-1" / "releases"
    (dev1 / dirs["v1"]).mkdir()
    (dev1 / "scratch").mkdir()
    for host in HOSTS:
        assert {dirs["v3"], dirs["v4"], dirs["v5"]} <= releases(shop, host)
    before = {host: releases(shop, host) for host in HOSTS}

    dry = json.loads(run.ok(*PRUNE, "--keep", "1", "--dry-run", "--json").stdout)
    assert dry["dry_run"] and dry["keep"] == 1
    assert {h: releases(shop, h) for h in HOSTS} == before, "--dry-run removes nothing"
    assert sorted(by_label(dry["hosts"]["dev-1"]["removed"])) == ["v1", "v3"]

    done = json.loads(run.ok(*PRUNE, "--keep", "1", "--json").stdout)
    assert done["hosts"] == {**dry["hosts"]}, "the dry run said exactly what happens"
    for host in HOSTS:
        outcome = done["hosts"][host]
        kept = by_label(outcome["kept"])
        assert sorted(kept) == ["v4", "v5"]
        assert kept["v5"]["reasons"][:2] == ["active on this host", "last successful revision 5"]
        assert "among the newest 1" in kept["v5"]["reasons"]
        assert kept["v4"]["reasons"][0] == "rollback target (revision 4)"
        assert "v3" in by_label(outcome["removed"])
        assert outcome["error"] is None
        left = {dirs["v4"], dirs["v5"], f"{dirs['v4']}.tar.gz", f"{dirs['v5']}.tar.gz"}
        assert releases(shop, host) == left | ({"scratch"} if host == "dev-1" else set())
    assert done["hosts"]["dev-1"]["unknown"] == ["scratch"]
    assert set(by_label(done["hosts"]["dev-1"]["removed"])["v3"]["files"]) == {
        dirs["v3"],
        f"{dirs['v3']}.tar.gz",
    }

    # --keep 0 keeps only the protected: here nothing more to remove.
    again = run.ok(*PRUNE, "--keep", "0")
    assert "rollback target (revision 4)" in again.stdout and "scratch" in again.stdout
    assert releases(shop, "dev-2") == {
        dirs["v4"],
        dirs["v5"],
        f"{dirs['v4']}.tar.gz",
        f"{dirs['v5']}.tar.gz",
    }
    assert run(*PRUNE, "--keep", "-1").exit_code == 2
    # The installation still matches the ledger, and rolls back.
    run.ok("reconcile", "shop", "--env", "dev")


def test_prune_default_keeps_three_by_revision_not_mtime(run: Runner, shop: Path) -> None:
    dirs = five_revisions(run, shop)
    dev2 = shop / ".chassis" / "hosts" / "dev-2" / "releases"
    (dev2 / dirs["v2"]).mkdir()
    os.utime(dev2 / dirs["v4"], (1, 1))  # oldest by mtime, second newest by revision
    result = json.loads(run.ok(*PRUNE, "--json").stdout)
    assert result["keep"] == 3
    outcome = result["hosts"]["dev-2"]
    assert sorted(by_label(outcome["kept"])) == ["v3", "v4", "v5"]
    assert sorted(by_label(outcome["removed"])) == ["v2"]
    assert dirs["v2"] not in releases(shop, "dev-2") and dirs["v4"] in releases(shop, "dev-2")


def test_prune_refuses_unknown_installations_and_held_leases(run: Runner, shop: Path) -> None:
    missing = run("prune", "nope", "--env", "dev")
    assert missing.exit_code == 10 and "no installation of nope in dev" in missing.stderr
    run.ok(*DEPLOY, "--release", "v1")
    free = json.loads(run.ok(*PRUNE, "--json").stdout)
    assert all(h["removed"] == [] for h in free["hosts"].values())
    crash_deploy(shop, "intent")
    held = run(*PRUNE)
    assert held.exit_code == 7, held.stderr
    assert "locked by deploy of revision 2" in held.stderr
