"""Leases that cannot be stolen or stranded.

A working operation renews its lease (``lease-renewed`` every ttl/3, naming
the host and pid of its process), so it never expires under it; ``chassis
recover`` refuses a lease that is being renewed, whichever key holds it, and
says what runs where; a holder whose lease was taken over all the same stops
and says what it had recorded, never "nothing was written".
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from chassis.engine.deploy import DeployOptions, deploy
from chassis.engine.recover import recover
from chassis.keyring import load_acting_key
from chassis.stack.spec import load_stack
from chassis.workspace import Workspace, keys_dir
from ledger.application import Ledger
from ledger.canonical import parse_timestamp
from ledger.installations import Installation, LeaseHeldError, LeaseHolder, LeaseLost
from ledger.storage import open_ledger
from tests import crashing
from tests.conftest import Runner
from tests.engine.test_recover import assert_hosts_agree_with_status, events

# Long (deploys, health windows, many processes): the parallel run starts
# these first (tests/scheduling.py).
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
DEPLOY = ("deploy", "shop", "--env", "dev", "--profile", "ternary-split-3")
KEY = Installation.id_for(Installation.key("shop", "dev"))


def open_signing(shop: Path) -> Ledger:
    ws = Workspace.find(shop)
    return open_ledger(ws.storage(), load_acting_key(keys_dir(), ws.settings().default_key))


def lease_of(ledger: Ledger) -> dict[str, Any] | None:
    lease: dict[str, Any] | None = ledger.load(Installation, KEY).lease
    return lease


def wait_for(what: str, check: Callable[[], bool], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"never saw {what}"
        time.sleep(0.02)


@contextmanager
def deploying(shop: Path, label: str, ttl_s: int) -> Iterator[list[BaseException | None]]:
    """``deploy`` of ``label`` in a thread of this process (the engine, with
    lease ttl ``ttl_s``); yields its outcome list, filled when it ends."""
    ws = Workspace.find(shop)
    ledger = open_signing(shop)
    outcome: list[BaseException | None] = []

    def work() -> None:
        try:
            deploy(
                ledger,
                ws,
                load_stack(ws.stack_file),
                app="shop",
                environment="dev",
                profile="ternary-split-3",
                label=label,
                options=DeployOptions(lease_ttl_s=ttl_s),
                progress=lambda _: None,
            )
        except BaseException as e:  # handed to the test
            outcome.append(e)
        else:
            outcome.append(None)

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    try:
        yield outcome
        worker.join(120)
        assert not worker.is_alive(), "the deploy never ended"
    finally:
        worker.join(120)
        ledger.close()


def test_a_working_deploy_renews_its_lease_and_recover_refuses_it(run: Runner, shop: Path) -> None:
    """ttl 3 s, a deploy of ~7 s (v3 fails its 4 s health gate, then restores):
    without renewals its lease would expire half-way and be taken over."""
    run.ok(*DEPLOY, "--release", "v1")
    reader = open_signing(shop)
    try:
        with deploying(shop, "v3", ttl_s=3) as outcome:
            wait_for("the lease", lambda: lease_of(reader) is not None)
            started = parse_timestamp(str(lease_of(reader)["started"]))  # type: ignore[index]
            wait_for("the ttl to pass", lambda: (datetime.now(UTC) - started).total_seconds() > 4)
            assert not outcome, "the deploy is still working"
            with pytest.raises(LeaseHeldError) as refused:  # same key, same process even
                recover(reader, Workspace.find(shop), app="shop", environment="dev", progress=print)
            expires = reader.load(Installation, KEY).lease_expires()
            assert expires is not None and expires > datetime.now(UTC), "renewed, so live"
            lease = lease_of(reader)
            assert lease is not None
            assert lease["hostname"] == socket.gethostname() and lease["pid"] == os.getpid()
            assert parse_timestamp(lease["renewed"]) > started
            text = str(refused.value)
            assert "deploy of revision 2" in text and "is still running" in text
            assert f"pid {os.getpid()} on {socket.gethostname()}" in text
            assert "last renewed" in text
            broke = run("lease", "break", "shop", "--env", "dev", "--reason", "impatient")
            assert broke.exit_code == 7 and "live until" in broke.stderr
    finally:
        reader.close()
    assert outcome == [None], outcome  # the deploy itself finished (failed, restored)
    recorded = events(shop)
    renewals = [e for e in recorded if isinstance(e, Installation.LeaseRenewed)]
    op_renewals = [e for e in renewals if e.op_id == renewals[-1].op_id]
    assert len(op_renewals) >= 3, "one with the intent, then every ttl/3"
    assert not any(isinstance(e, Installation.OperationResumed) for e in recorded)
    history = json.loads(run.ok("history", "shop", "--env", "dev", "--json").stdout)
    assert history["lease"] is None and history["revisions"][-1]["status"] == "failed"
    assert_hosts_agree_with_status(run, shop, "v1")


def test_recover_from_the_same_key_does_not_hijack_a_live_deploy(run: Runner, shop: Path) -> None:
    """The reported case: a deploy running in another process, recover run
    with the same key. It is told what runs where; the deploy finishes."""
    run.ok(*DEPLOY, "--release", "v1")
    deploying = subprocess.Popen(
        [sys.executable, "-m", "chassis", *DEPLOY, "--release", "v3"],
        cwd=shop,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for("the lease", lambda: bool(json.loads(run.ok("lease", "list", "--json").stdout)))
    refused = run("recover", "shop", "--env", "dev")
    assert refused.exit_code == 7, (refused.stdout, refused.stderr)
    (listed,) = json.loads(run.ok("lease", "list", "--json").stdout)
    assert listed["pid"] == deploying.pid and listed["hostname"] == socket.gethostname()
    assert "renewed" in listed and not listed["expired"]
    assert f"pid {deploying.pid} on {socket.gethostname()}" in refused.stderr
    assert "deploy of revision 2" in refused.stderr and "is still running" in refused.stderr
    forced = run("recover", "shop", "--env", "dev", "--force")
    assert forced.exit_code == 7 and "not even with --force" in forced.stderr
    _, err = deploying.communicate(timeout=120)
    assert deploying.returncode == 16, err  # failed its gate and restored: its own outcome
    assert "nothing was written" not in err
    assert not any(isinstance(e, Installation.OperationResumed) for e in events(shop))
    assert_hosts_agree_with_status(run, shop, "v1")


def test_a_dead_holder_on_this_machine_is_recovered_at_once(run: Runner, shop: Path) -> None:
    """Its lease is fresh (renewed at the intent) but its pid is gone."""
    run.ok(*DEPLOY, "--release", "v1")
    crashed = crashing.run("dev-2:start", *DEPLOY, "--release", "v2", cwd=shop)
    assert crashed.returncode == crashing.CRASHED, crashed.stderr
    (listed,) = json.loads(run.ok("lease", "list", "--json").stdout)
    assert not listed["expired"]
    outcome = json.loads(run.ok("recover", "shop", "--env", "dev", "--json").stdout)
    assert outcome["outcome"] in ("restored", "completed"), outcome
    (resumed,) = [e for e in events(shop) if isinstance(e, Installation.OperationResumed)]
    assert f"pid {listed['pid']} on {listed['hostname']}, is gone" in resumed.reason


def test_a_holder_whose_lease_was_taken_over_stops_and_says_what_it_recorded(
    run: Runner, shop: Path
) -> None:
    """A recoverer on another machine (which cannot check this process) takes
    the lease over with --force; the deploy stops at its next append and
    says so. Then recover here refuses that recoverer's live lease until
    --force, since it cannot check that machine either."""
    run.ok(*DEPLOY, "--release", "v1")
    other = open_signing(shop)
    try:
        with deploying(shop, "v3", ttl_s=60) as outcome:
            wait_for("the lease", lambda: lease_of(other) is not None)

            def take_over(installation: Installation) -> None:
                lease = installation.lease
                assert lease is not None
                installation.resume_operation(
                    actor=lease["holder"],
                    op_id=lease["op_id"],
                    reason="recover --force on far-away",
                    lease_ttl_s=60,
                    holder=LeaseHolder("far-away", 4242, "another-boot:1"),
                )

            other.update(Installation, KEY, take_over)  # retried past the deploy's appends
    finally:
        other.close()
    (error,) = outcome
    assert isinstance(error, LeaseLost), error
    text = str(error)
    assert "was taken over while it ran" in text and "host far-away, pid 4242" in text
    assert "recorded up to" in text and "stands" in text
    assert "the event it was recording was not written" in text
    assert "nothing was written" not in text
    recorded = events(shop)
    taken = next(i for i, e in enumerate(recorded) if isinstance(e, Installation.OperationResumed))
    assert all(
        isinstance(e, Installation.LeaseRenewed) and e.hostname == "far-away"
        for e in recorded[taken + 1 :]
    ), "the original holder appended nothing after the takeover"

    refused = run("recover", "shop", "--env", "dev")
    assert refused.exit_code == 7, refused.stderr
    assert "host far-away, pid 4242" in refused.stderr and "--force" in refused.stderr
    assert "cannot be checked from here" in refused.stderr
    outcome_data = json.loads(run.ok("recover", "shop", "--env", "dev", "--force", "--json").stdout)
    assert outcome_data["outcome"] in ("restored", "completed"), outcome_data
    label = "v1" if outcome_data["outcome"] == "restored" else "v3"
    assert_hosts_agree_with_status(run, shop, label)
