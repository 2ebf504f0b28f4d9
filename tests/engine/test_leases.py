"""Leases: one operation at a time; a crashed one leaves its lease for an operator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tests import crashing
from tests.conftest import Runner

REPO = Path(__file__).resolve().parents[2]
DEPLOY = ("deploy", "shop", "--env", "dev", "--profile", "ternary-split-3")


def chassis(*args: str, cwd: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "chassis", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_second_deploy_is_refused_while_one_runs(run: Runner, shop: Path) -> None:
    # v3 fails its health gate after the window, then restores: a long operation.
    first = chassis(*DEPLOY, "--release", "v3", cwd=shop)
    deadline = time.monotonic() + 60
    while not json.loads(run.ok("lease", "list", "--json").stdout):
        assert first.poll() is None, first.communicate()
        assert time.monotonic() < deadline, "the first deploy never took its lease"
        time.sleep(0.05)
    second = chassis(*DEPLOY, "--release", "v2", cwd=shop)
    _, err = second.communicate(timeout=120)
    assert second.returncode == 7, err
    assert "is locked by deploy of revision 1" in err and "started" in err and "expires" in err
    _, err = first.communicate(timeout=120)
    assert first.returncode == 16, err
    history = json.loads(run.ok("history", "shop", "--env", "dev", "--json").stdout)
    assert [(r["revision"], r["status"]) for r in history["revisions"]] == [(1, "failed")]
    run.ok("ledger", "verify")


def test_crashed_deploy_leaves_a_lease_that_can_be_broken(run: Runner, shop: Path) -> None:
    crashed = crashing.popen("start", *DEPLOY, "--release", "v1", cwd=shop)
    crashed.communicate(timeout=120)
    assert crashed.returncode == crashing.CRASHED
    (lease,) = json.loads(run.ok("lease", "list", "--json").stdout)
    assert lease["operation"] == "deploy" and lease["revision"] == 1 and not lease["expired"]
    refused = run(*DEPLOY, "--release", "v1")
    assert refused.exit_code == 7 and "lease break" in refused.stderr
    live = run("lease", "break", "shop", "--env", "dev", "--reason", "runner died")
    assert live.exit_code == 7 and "--force" in live.stderr
    run.ok("lease", "break", "shop", "--env", "dev", "--reason", "runner died", "--force")
    assert json.loads(run.ok("lease", "list", "--json").stdout) == []
    history = json.loads(run.ok("history", "shop", "--env", "dev", "--json").stdout)
    (entry,) = history["revisions"]
    assert entry["status"] == "failed" and "lease broken: runner died" in entry["description"]
    receipts = json.loads(run.ok("receipts", "list", "--json").stdout)
    assert receipts[-1]["operation"] == "lease-break" and receipts[-1]["revision"] == 1
    statement = json.loads(
        run.ok("receipts", "show", receipts[-1]["digest"], "--statement").stdout
    )
    predicate = statement["predicate"]
    assert predicate["reason"] == "runner died" and predicate["forced"] is True
    assert predicate["broken"]["operation"] == "deploy"
    run.ok(*DEPLOY, "--release", "v1")
    run.ok("ledger", "verify")
