"""One operation lifecycle: every host an operation touched (deployed,
evicted, retired) is put back when it fails, the restore is verified by the
health gate, and what is reported is what runs.

Each case was reproduced against the engine before it shared one lifecycle:
a failed placement change left the components it evicted stopped while
reporting "previous release restored"; compaction dropped the plan a restore
pointed back to, so ``reconcile`` and ``prune`` failed for good afterwards.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from adapters.connectors.local import LocalConnector
from adapters.connectors.ssh import SSHConnector
from adapters.supervisors.direct import DirectSupervisor
from ledger.installations import Installation
from tests.conftest import Runner
from tests.engine.test_deploy_local import DEPLOY, get, port_of
from tests.engine.test_deploy_ssh import DEPLOY as LAB_DEPLOY
from tests.engine.test_deploy_ssh import lab  # noqa: F401 - the lab fixture
from tests.engine.test_reconcile import events, kill_group
from tests.sshd import SSHTestHost

# Long (deploys, health windows, many processes): the parallel run starts
# these first (tests/scheduling.py).
pytestmark = pytest.mark.slow

MONOLITH = ("deploy", "shop", "--env", "dev", "--profile", "monolith")
COMPONENTS = ("gateway", "api", "worker")


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Requested before ``shop``: the workspace's ledger is SQLite or PostgreSQL."""
    if request.param == "postgres":
        monkeypatch.setenv("CHASSIS_LEDGER", request.getfixturevalue("postgres_url"))
    return str(request.param)


@pytest.fixture
def quick(backend: str, shop: Path) -> Iterator[Path]:
    """``shop`` (on ``backend``) with health probes every 100 ms."""
    stack = shop / "chassis.toml"
    text = stack.read_text().replace("window_ms = 4000", "window_ms = 4000, interval_ms = 100")
    stack.write_text(text.replace("interval_ms = 250", "interval_ms = 100"))
    yield shop


def running(shop: Path) -> dict[str, dict[str, str]]:
    """host → component → release id of what really runs (pidfile and /proc)."""
    found: dict[str, dict[str, str]] = {}
    for host in ("dev-1", "dev-2", "dev-3"):
        supervisor = DirectSupervisor(LocalConnector(host), str(shop / ".chassis" / "hosts" / host))
        for component in COMPONENTS:
            state = supervisor.state(component)
            if state.running:
                found.setdefault(host, {})[component] = str(state.release_id)
    return found


def recorded(run: Runner) -> dict[str, dict[str, str]]:
    """host → component → release id, as ``status`` reports it."""
    rows = json.loads(run.ok("status", "shop", "--env", "dev", "--json").stdout)
    found: dict[str, dict[str, str]] = {}
    for row in rows:
        found.setdefault(row["host"], {})[row["component"]] = row["release_id"]
    return found


def release_id(run: Runner, label: str) -> str:
    releases = json.loads(run.ok("release", "list", "--json").stdout)
    return str(next(r["release_id"] for r in releases if r["label"] == label))


def assert_serving(run: Runner, shop: Path, label: str) -> None:
    """Every component runs ``label`` where the ledger says, and answers."""
    wanted = release_id(run, label)
    assert recorded(run) == running(shop), "status must be what runs"
    assert {c for comps in running(shop).values() for c in comps} == set(COMPONENTS)
    assert all(r == wanted for comps in running(shop).values() for r in comps.values())
    for component in ("gateway", "api"):
        code, body = get(port_of(shop, component), "/healthz")
        assert code == 200 and label in body, (component, code, body)
    run.ok("ledger", "verify")


def test_a_failed_placement_change_restores_the_components_it_evicted(
    run: Runner, quick: Path
) -> None:
    run.ok(*MONOLITH, "--release", "v1")
    (kept,) = running(quick)
    result = run(*DEPLOY, "--release", "v3", "--json")
    assert result.exit_code != 0
    outcome = json.loads(result.stdout)
    assert outcome["status"] == "failed"
    assert_serving(run, quick, "v1")
    assert set(running(quick)) == {kept}
    assert outcome["hosts"][kept]["restored"] is True


def test_a_failed_rollback_across_placements_restores_what_it_evicted(
    run: Runner, quick: Path
) -> None:
    run.ok(*DEPLOY, "--release", "v1")
    split = running(quick)
    run.ok(*MONOLITH, "--release", "v2")
    (kept,) = running(quick)
    # The rollback target's api is broken on its host (its release directory
    # is still there, so rollback reuses it): the rollback must fail and undo.
    api_host = next(h for h, comps in split.items() if "api" in comps)
    v1_dir = quick / ".chassis" / "hosts" / api_host / "releases" / release_id(run, "v1")[:16]
    (v1_dir / "app" / "api.py").write_text("raise SystemExit(3)\n")
    result = run("rollback", "shop", "--env", "dev", "--to", "1", "--json")
    assert result.exit_code != 0, result.stdout
    assert_serving(run, quick, "v2")
    assert set(running(quick)) == {kept}
    history = json.loads(run.ok("history", "shop", "--env", "dev", "--json").stdout)
    assert history["revisions"][-1]["status"] == "failed"


def test_a_restore_that_fails_is_not_reported_restored(run: Runner, quick: Path) -> None:
    run.ok(*DEPLOY, "--release", "v1")
    api_host = next(h for h, comps in running(quick).items() if "api" in comps)
    # v1's api cannot start again on its host: the restore after v3 fails.
    v1_dir = quick / ".chassis" / "hosts" / api_host / "releases" / release_id(run, "v1")[:16]
    (v1_dir / "app" / "api.py").write_text("raise SystemExit(3)\n")  # loaded already
    result = run(*DEPLOY, "--release", "v3", "--json")
    assert result.exit_code != 0
    outcome = json.loads(result.stdout)
    assert outcome["hosts"][api_host]["restored"] is False
    assert "NOT restored" in outcome["description"], outcome["description"]
    assert api_host in outcome["description"]
    # What the ledger says runs there is not "running": nothing was seen.
    rows = json.loads(run.ok("status", "shop", "--env", "dev", "--json").stdout)
    api = next(r for r in rows if r["component"] == "api")
    assert api["state"] != "running", api


def test_compaction_keeps_the_plans_a_restore_returns_to(run: Runner, quick: Path) -> None:
    run.ok(*DEPLOY, "--release", "v1")
    hosts = running(quick)
    worker_host = next(h for h, comps in hosts.items() if "worker" in comps)
    for host, comps in hosts.items():  # drift everywhere but the worker's host
        if host != worker_host:
            (component,) = comps
            kill_group(LocalConnector(host), quick / ".chassis" / "hosts" / host, component)
    run.ok("reconcile", "shop", "--env", "dev", "--repair")
    # v3 fails its HTTP gates; the worker (a file check) activates first.
    result = run(*DEPLOY, "--release", "v3")
    assert result.exit_code != 0
    activated = [e.host for e in events(quick) if isinstance(e, Installation.HostActivated)]
    assert worker_host in activated[-1:], "the scenario needs one host activated, then restored"
    run.ok("reconcile", "shop", "--env", "dev")
    run.ok("prune", "shop", "--env", "dev")
    assert_serving(run, quick, "v1")


def _entries(run: Runner) -> list[dict[str, Any]]:
    history = json.loads(run.ok("history", "shop", "--env", "dev", "--json").stdout)
    revisions: list[dict[str, Any]] = history["revisions"]
    return revisions


SHRINK = """
[profiles.shrink]
description = "worker alone on the batch host, the rest together"
groups.batch = { components = ["worker"], labels = { role = "batch" } }
groups.rest = { components = ["gateway", "api"] }
"""


def test_a_failure_before_any_host_starts_restores_the_evicted_hosts(
    run: Runner, quick: Path
) -> None:
    """Evicting and retiring come before the new release starts anywhere; a
    retire that fails half-way must still undo the evictions (and say which
    host could not be put back), not skip them and report "restored"."""
    with (quick / "chassis.toml").open("a") as stack:
        stack.write(SHRINK)
    run.ok(*DEPLOY, "--release", "v1")
    before = running(quick)
    plan = json.loads(
        run.ok(
            "plan", "shop", "--env", "dev", "--profile", "shrink", "--release", "v2", "--json"
        ).stdout
    )
    placed = {h["host"]: {c["name"] for c in h["components"]} for h in plan["hosts"]}
    evicting = [h for h, comps in before.items() if h in placed and set(comps) - placed[h]]
    (leaving,) = set(before) - set(placed)
    assert evicting, (before, placed)
    current = quick / ".chassis" / "hosts" / leaving / "current"
    current.unlink()
    current.mkdir()
    (current / "in-the-way").write_text("x")  # retiring cannot unlink it
    result = run(
        "deploy", "shop", "--env", "dev", "--profile", "shrink", "--release", "v2", "--json"
    )
    assert result.exit_code != 0
    outcome = json.loads(result.stdout)
    assert outcome["status"] == "failed"
    now = running(quick)
    for host in evicting:
        assert now.get(host) == before[host], f"{host}: evicted components not restored"
    for component in ("gateway", "api"):
        code, body = get(port_of(quick, component), "/healthz")
        assert code == 200 and "v1" in body, (component, code, body)
    assert outcome["hosts"][leaving]["ok"] is False
    run.ok("ledger", "verify")
    history = json.loads(run.ok("history", "shop", "--env", "dev", "--json").stdout)
    assert history["lease"] is None


def _started(shop: Path) -> set[str]:
    return {e.op_id for e in events(shop) if isinstance(e, Installation.OperationStarted)}


def _deploy_in_background(shop: Path, label: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "chassis", *DEPLOY, "--release", label],
        cwd=shop,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_step(shop: Path, step: str, process: subprocess.Popen[str], known: set[str]) -> None:
    """Until the operation ``process`` started (not one of ``known``) has
    recorded ``step`` on some host."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        found = events(shop)
        ours = {
            e.op_id
            for e in found
            if isinstance(e, Installation.OperationStarted) and e.op_id not in known
        }
        if any(
            isinstance(e, Installation.StepRecorded) and e.op_id in ours and e.step == step
            for e in found
        ):
            return
        time.sleep(0.05)
    raise AssertionError(f"no {step!r} step recorded within 60 s")


@pytest.fixture
def slow_gate(quick: Path) -> Path:
    """``quick`` whose api gate takes a few seconds (three passes, 1.5 s apart):
    long enough for a test to see the step before it, and to interrupt it,
    while the machine is loaded (with 700 ms, a loaded CI run once saw the
    whole deploy finish before its first look at the ledger came back)."""
    stack = quick / "chassis.toml"
    text = stack.read_text()
    api = text.index("[components.api]")
    health = text.index("health = {", api)
    end = text.index("}", health)
    stack.write_text(
        text[:end] + ", interval_ms = 1500" + text[end:]
        if "interval_ms" not in text[health:end]
        else text
    )
    return quick


def test_ctrl_c_restores_like_a_failure(run: Runner, slow_gate: Path) -> None:
    run.ok(*DEPLOY, "--release", "v1")
    known = _started(slow_gate)
    process = _deploy_in_background(slow_gate, "v2")
    _wait_for_step(slow_gate, "start", process, known)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, (out, err)
    assert "interrupted" in err and "recorded as failed" in err, err
    assert_serving(run, slow_gate, "v1")
    history = json.loads(run.ok("history", "shop", "--env", "dev", "--json").stdout)
    assert history["lease"] is None
    last = history["revisions"][-1]
    assert last["status"] == "failed" and "interrupted" in last["description"], last


def test_a_second_ctrl_c_leaves_the_operation_to_recover(run: Runner, slow_gate: Path) -> None:
    run.ok(*DEPLOY, "--release", "v1")
    known = _started(slow_gate)
    process = _deploy_in_background(slow_gate, "v2")
    _wait_for_step(slow_gate, "start", process, known)
    assert process.stderr is not None
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stderr or []), daemon=True)
    reader.start()
    process.send_signal(signal.SIGINT)
    # The second Ctrl-C once the first is handled: two signals sent before
    # Python runs its handler count as one (a loaded machine showed it).
    deadline = time.monotonic() + 60
    while not any(line.startswith("interrupted: ") for line in lines):
        assert time.monotonic() < deadline and process.poll() is None, lines
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    process.wait(timeout=120)
    reader.join(timeout=30)
    if process.stdout is not None:
        process.stdout.close()
    err = "".join(lines)
    assert process.returncode == 130, err
    assert "chassis recover shop --env dev" in err, err
    history = json.loads(run.ok("history", "shop", "--env", "dev", "--json").stdout)
    assert history["lease"] is not None
    run.ok("recover", "shop", "--env", "dev")
    history = json.loads(run.ok("history", "shop", "--env", "dev", "--json").stdout)
    assert history["lease"] is None
    rows = recorded(run)
    assert rows == running(slow_gate)
    run.ok("ledger", "verify")


def _lab_running(hosts: list[SSHTestHost], roots: dict[str, Path]) -> dict[str, dict[str, str]]:
    found: dict[str, dict[str, str]] = {}
    for host in hosts:
        with SSHConnector(host.settings()) as connector:
            supervisor = DirectSupervisor(connector, str(roots[host.name]))
            for component in COMPONENTS:
                state = supervisor.state(component)
                if state.running:
                    found.setdefault(host.name, {})[component] = str(state.release_id)
    return found


def test_over_ssh_a_placement_change_failing_half_way_puts_every_host_back(
    run: Runner,
    lab: tuple[Path, list[SSHTestHost], dict[str, Path]],  # noqa: F811 - the fixture
) -> None:
    """sshd hosts: split → one host; one retiring host cannot be retired
    (its ``current`` is in the way). The host already retired and stopped
    gets its release back, healthy; the one that failed half-way is reported
    as not restored, never as "restored"."""
    root, hosts, roots = lab
    with (root / "chassis.toml").open("a") as stack:
        stack.write(
            '\n[profiles.mono]\ngroups.all = { components = ["gateway", "api", "worker"] }\n'
        )
    run.ok(*LAB_DEPLOY, "--release", "v1")
    before = _lab_running(hosts, roots)
    plan = json.loads(
        run.ok(
            "plan", "lab", "--env", "lab", "--profile", "mono", "--release", "v2", "--json"
        ).stdout
    )
    (kept,) = (h["host"] for h in plan["hosts"])
    blocked, retired = sorted(set(before) - {kept})[::-1]  # retired first, by name
    current = roots[blocked] / "current"
    current.unlink()
    current.mkdir()
    (current / "in-the-way").write_text("x")
    result = run("deploy", "lab", "--env", "lab", "--profile", "mono", "--release", "v2", "--json")
    assert result.exit_code == 16, result.stderr
    outcome = json.loads(result.stdout)
    assert outcome["hosts"][retired]["restored"] is True, outcome["hosts"]
    assert outcome["hosts"][blocked]["ok"] is False
    now = _lab_running(hosts, roots)
    assert now[retired] == before[retired] and now[kept] == before[kept]
    assert "NOT restored on " + blocked in outcome["description"] or (
        now.get(blocked) == before[blocked]
    ), outcome["description"]
    run.ok("ledger", "verify")
