"""Leases: one operation at a time; a crashed one leaves its lease for an operator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast

import pytest

from chassis.engine.lease import when_lease_free
from ledger.installations import Installation, LeaseHeldError
from tests import crashing
from tests.conftest import Runner

# Long (deploys, health windows, many processes): the parallel run starts
# these first (tests/scheduling.py).
pytestmark = pytest.mark.slow


REPO = Path(__file__).resolve().parents[2]
DEPLOY = ("deploy", "shop", "--env", "dev", "--profile", "ternary-split-3")


def hold_longer(shop: Path) -> None:
    """v3 fails its health gate when the window ends: 10 s instead of the
    fixture's 4 s, so that the lease is certainly still held when a second
    command has started (a Python start takes seconds on a loaded machine)."""
    stack = shop / "chassis.toml"
    stack.write_text(stack.read_text().replace("window_ms = 4000", "window_ms = 10000"))


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
    hold_longer(shop)
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


def test_wait_lock_waits_for_a_live_holder_then_deploys(run: Runner, shop: Path) -> None:
    """--wait-lock (issue 13): the second deploy waits for the first instead of
    exiting 7; with too short a wait it exits 7 saying how long it waited."""
    hold_longer(shop)
    first = chassis(*DEPLOY, "--release", "v3", cwd=shop)
    deadline = time.monotonic() + 60
    while not json.loads(run.ok("lease", "list", "--json").stdout):
        assert first.poll() is None, first.communicate()
        assert time.monotonic() < deadline, "the first deploy never took its lease"
        time.sleep(0.05)
    waiter = chassis(*DEPLOY, "--release", "v2", "--wait-lock", cwd=shop)
    hurried = run(*DEPLOY, "--release", "v2", "--wait-lock=1")
    assert hurried.exit_code == 7, hurried.stderr
    assert (
        "waiting up to 1 s for the lease of shop/dev, held by deploy of revision 1"
        in hurried.stderr
    )
    assert "is locked by deploy of revision 1" in hurried.stderr
    assert "or 'chassis lease break' (waited 1 s)\n" in hurried.stderr
    _, err = first.communicate(timeout=120)
    assert first.returncode == 16, err
    out, err = waiter.communicate(timeout=120)
    assert waiter.returncode == 0, err
    assert "waiting up to 600 s for the lease of shop/dev, held by deploy of revision 1" in err
    assert "revision 2: " in out
    history = json.loads(run.ok("history", "shop", "--env", "dev", "--json").stdout)
    statuses = [(r["revision"], r["status"]) for r in history["revisions"]]
    assert statuses[0] == (1, "failed") and statuses[1][0] == 2 and statuses[1][1] != "failed"
    run.ok("ledger", "verify")


def test_wait_lock_does_not_wait_for_a_holder_that_is_gone(run: Runner, shop: Path) -> None:
    """A crashed holder never frees its lease: deploy, rollback and reconcile
    with --wait-lock refuse at once (exit 7), saying waiting cannot help."""
    crashed = crashing.popen("start", *DEPLOY, "--release", "v1", cwd=shop)
    crashed.communicate(timeout=120)
    assert crashed.returncode == crashing.CRASHED
    for command in (
        (*DEPLOY, "--release", "v1"),
        ("rollback", "shop", "--env", "dev"),
        ("reconcile", "shop", "--env", "dev", "--repair"),
    ):
        started = time.monotonic()
        refused = run(*command, "--wait-lock=60")
        assert refused.exit_code == 7, (command, refused.stderr)
        assert "is locked by deploy of revision 1" in refused.stderr
        assert "its holder is gone: waiting cannot free it (waited 0 s)" in refused.stderr
        assert time.monotonic() - started < 30


def test_wait_lock_means_the_same_default_everywhere() -> None:
    from chassis.cli.deploy_cmd import deploy_command
    from chassis.cli.reconcile_cmd import reconcile_command
    from chassis.cli.rollback_cmd import rollback_command
    from chassis.engine.lease import DEFAULT_WAIT_LOCK_S

    for command in (deploy_command, rollback_command, reconcile_command):
        (option,) = [p for p in command.params if p.name == "wait_lock"]
        assert getattr(option, "flag_value", None) == DEFAULT_WAIT_LOCK_S, command.name


class _Stub:
    """Just what ``when_lease_free`` reads of an installation."""

    def __init__(self, op_id: str | None) -> None:
        self.app, self.environment = "shop", "dev"
        self.lease = None if op_id is None else {"op_id": op_id}

    def lease_expires(self) -> datetime | None:
        return None if self.lease is None else datetime.now(UTC) + timedelta(minutes=2)

    def lease_text(self, now: datetime) -> str:
        return f"deploy {self.lease and self.lease['op_id']}"

    def check_lease_free(self, now: datetime) -> None:
        if self.lease is not None:
            raise LeaseHeldError(f"shop/dev is locked by {self.lease_text(now)}")


def test_wait_lock_waits_again_when_another_command_takes_the_lease_first() -> None:
    reads = iter([None, "b", "b", None])
    calls: list[str] = []
    notes: list[str] = []

    def action() -> str:
        calls.append("action")
        if len(calls) == 1:  # free when looked at, taken before our intent
            raise LeaseHeldError("shop/dev is locked by deploy b")
        return "deployed"

    done = when_lease_free(
        lambda: cast(Installation, _Stub(next(reads))),
        action,
        wait_s=30,
        progress=notes.append,
        poll_s=0.01,
    )
    assert done == "deployed" and len(calls) == 2
    assert notes == ["waiting up to 30 s for the lease of shop/dev, held by deploy b"]


def test_wait_lock_gives_up_after_its_time() -> None:
    notes: list[str] = []
    started = time.monotonic()
    with pytest.raises(LeaseHeldError) as caught:
        when_lease_free(
            lambda: cast(Installation, _Stub("a")),
            lambda: "never",
            wait_s=1,
            progress=notes.append,
            poll_s=0.05,
        )
    assert 1 <= time.monotonic() - started < 5
    assert str(caught.value) == "shop/dev is locked by deploy a (waited 1 s)"
    assert caught.value.exit_code == 7 and len(notes) == 1
