"""Recovery: kill -9 a deploy at every step boundary, then ``chassis recover``.

The deploy runs in a real subprocess under ``tests.crashing`` (the process
``os._exit(137)``s right after the named step's outcome is recorded). After
``chassis recover`` the lease is gone, the ledger verifies and the hosts
agree with ``chassis status``: every component status names runs that
release (pidfile and ``/proc``), ``current`` points at it, and the HTTP
services answer with its label.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from adapters.connectors.local import LocalConnector
from adapters.supervisors.direct import DirectSupervisor
from chassis.engine.plan import STEPS
from chassis.workspace import Workspace
from ledger.installations import Installation
from ledger.releases import release_dir_name
from ledger.storage import open_ledger
from tests import crashing
from tests.conftest import Runner
from tests.engine.test_deploy_local import DEPLOY, get, port_of

# Long (deploys, health windows, many processes): the parallel run starts
# these first (tests/scheduling.py).
pytestmark = pytest.mark.slow

BEFORE_SWAP = STEPS[: STEPS.index("swap")]


@pytest.fixture
def fast(shop: Path) -> Path:
    """``shop`` with health probes every 100 ms (same passes and windows):
    recovery gates what it finds, so gate latency is most of each case."""
    stack = shop / "chassis.toml"
    text = stack.read_text().replace("window_ms = 4000", "window_ms = 4000, interval_ms = 100")
    stack.write_text(text.replace("interval_ms = 250", "interval_ms = 100"))
    return shop


def crash_deploy(shop: Path, crash_at: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """``chassis deploy … --release v2`` in a subprocess that dies at ``crash_at``."""
    result = crashing.run(crash_at, *DEPLOY, "--release", "v2", *extra, cwd=shop)
    assert result.returncode == crashing.CRASHED, (result.returncode, result.stdout, result.stderr)
    return result


def lease(run: Runner) -> dict[str, Any] | None:
    history = json.loads(run.ok("history", "shop", "--env", "dev", "--json").stdout)
    found: dict[str, Any] | None = history["lease"]
    return found


def events(shop: Path) -> list[Any]:
    """The installation's events, decoded."""
    ledger = open_ledger(Workspace.find(shop).storage(), None)
    try:
        key = Installation.id_for(Installation.key("shop", "dev"))
        return [e for _, e in ledger.verified_events(key)]
    finally:
        ledger.close()


def assert_hosts_agree_with_status(run: Runner, shop: Path, label: str) -> None:
    assert lease(run) is None
    run.ok("ledger", "verify")
    rows = json.loads(run.ok("status", "shop", "--env", "dev", "--json").stdout)
    assert sorted(r["component"] for r in rows) == ["api", "gateway", "worker"]
    assert {r["label"] for r in rows} == {label}
    for row in rows:
        root = shop / ".chassis" / "hosts" / row["host"]
        state = DirectSupervisor(LocalConnector(row["host"]), str(root)).state(row["component"])
        assert state.running, (row, state)
        assert state.release_id == row["release_id"], (row, state)
        assert (root / "current").resolve().name == release_dir_name(row["release_id"])
    for component in ("api", "gateway"):
        code, body = get(port_of(shop, component), "/healthz")
        assert code == 200 and body.startswith(f"ok {component} {label}"), (component, body)


CASES = [
    pytest.param("intent", (), "v1", id="intent"),
    *(pytest.param(step, (), "v1" if step in BEFORE_SWAP else None, id=step) for step in STEPS),
    # One host at a time: dev-1 and dev-2 are deployed and recorded active
    # when dev-3 dies, so the outcome is known for every step.
    *(
        pytest.param(
            f"dev-3:{step}",
            ("--max-parallel", "1"),
            "v1" if step in BEFORE_SWAP else "v2",
            id=f"dev-3:{step}-serial",
        )
        for step in STEPS
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize(("crash_at", "extra", "expected"), CASES)
def test_recover_after_kill_at_every_step(
    run: Runner, fast: Path, crash_at: str, extra: tuple[str, ...], expected: str | None
) -> None:
    shop = fast
    run.ok(*DEPLOY, "--release", "v1")
    crash_deploy(shop, crash_at, *extra)
    held = lease(run)
    assert held is not None and held["revision"] == 2

    outcome = json.loads(run.ok("recover", "shop", "--env", "dev", "--json").stdout)
    assert outcome["revision"] == 2 and outcome["label"] == "v2"
    assert outcome["outcome"] in ("completed", "restored"), outcome
    label = "v2" if outcome["outcome"] == "completed" else "v1"
    if expected is not None:
        assert label == expected, outcome
    assert_hosts_agree_with_status(run, shop, label)

    history = json.loads(run.ok("history", "shop", "--env", "dev", "--json").stdout)
    last = history["revisions"][-1]
    assert last["revision"] == 2
    assert last["status"] == ("deployed" if label == "v2" else "failed")
    assert "recover" in last["description"]
    assert history["last_successful"] == (2 if label == "v2" else 1)
    recorded = events(shop)
    assert sum(isinstance(e, Installation.OperationResumed) for e in recorded) == 1
    probes = [
        e
        for e in recorded
        if isinstance(e, Installation.StepRecorded) and e.step == "recover-probe"
    ]
    assert sorted(e.host for e in probes) == ["dev-1", "dev-2", "dev-3"]
    if crash_at == "intent":
        assert {h["action"] for h in outcome["hosts"].values()} == {"left-running"}


def test_recover_with_nothing_to_recover(run: Runner, shop: Path) -> None:
    missing = run("recover", "shop", "--env", "dev")
    assert missing.exit_code == 10 and "no installation of shop in dev" in missing.stderr
    run.ok(*DEPLOY, "--release", "v1")
    before = json.loads(run.ok("ledger", "log", "--json").stdout)
    result = run.ok("recover", "shop", "--env", "dev")
    assert result.stdout.startswith("nothing to recover")
    assert "revision 1 is deployed" in result.stdout
    data = json.loads(run.ok("recover", "shop", "--env", "dev", "--json").stdout)
    assert data["outcome"] == "nothing-to-recover" and data["revision"] is None
    assert json.loads(run.ok("ledger", "log", "--json").stdout) == before
    assert_hosts_agree_with_status(run, shop, "v1")


@pytest.mark.slow
def test_a_crashed_recover_is_recovered(run: Runner, fast: Path) -> None:
    shop = fast
    run.ok(*DEPLOY, "--release", "v1")
    crash_deploy(shop, "dev-2:start", "--max-parallel", "1")
    died = crashing.run("dev-1:recover-probe", "recover", "shop", "--env", "dev", cwd=shop)
    assert died.returncode == crashing.CRASHED, died.stderr
    held = lease(run)
    assert held is not None and held["revision"] == 2

    outcome = json.loads(run.ok("recover", "shop", "--env", "dev", "--json").stdout)
    assert outcome["outcome"] == "restored"
    assert_hosts_agree_with_status(run, shop, "v1")
    recorded = events(shop)
    assert sum(isinstance(e, Installation.OperationResumed) for e in recorded) == 2

    # The installation is usable again.
    run.ok(*DEPLOY, "--release", "v2")
    assert_hosts_agree_with_status(run, shop, "v2")


def test_another_keys_live_lease_needs_force(run: Runner, fast: Path) -> None:
    shop = fast
    run.ok(*DEPLOY, "--release", "v1")
    run.ok("key", "new", "ops", "--roles", "operator")
    crash_deploy(shop, "intent")
    refused = run("--key", "ops", "recover", "shop", "--env", "dev")
    assert refused.exit_code == 7, refused.stderr
    assert "held by another key" in refused.stderr and "--force" in refused.stderr
    assert not any(isinstance(e, Installation.OperationResumed) for e in events(shop))

    outcome = json.loads(
        run.ok("--key", "ops", "recover", "shop", "--env", "dev", "--force", "--json").stdout
    )
    assert outcome["outcome"] == "restored"
    assert {h["action"] for h in outcome["hosts"].values()} == {"left-running"}
    assert_hosts_agree_with_status(run, shop, "v1")
    resumed = [e for e in events(shop) if isinstance(e, Installation.OperationResumed)]
    ops = json.loads(run.ok("key", "show", "ops", "--json").stdout)
    assert [e.keyid for e in resumed] == [ops["keyid"]]


def test_a_host_that_cannot_be_restored_keeps_the_lease(run: Runner, fast: Path) -> None:
    shop = fast
    run.ok(*DEPLOY, "--release", "v1")
    crash_deploy(shop, "dev-1:start", "--max-parallel", "1")
    releases = shop / ".chassis" / "hosts" / "dev-1" / "releases"
    v1_dir = (shop / ".chassis" / "hosts" / "dev-1" / "current").resolve()
    hidden = releases / "hidden"
    v1_dir.rename(hidden)
    # ... and its bundle, from which a restore would otherwise put it back.
    store = shop / ".chassis" / "bundles"
    store.rename(shop / ".chassis" / "bundles-hidden")

    failed = run("recover", "shop", "--env", "dev", "--json")
    assert failed.exit_code == 17, failed.stderr
    outcome = json.loads(failed.stdout)
    assert outcome["outcome"] == "incomplete" and outcome["status"] is None
    assert not outcome["hosts"]["dev-1"]["ok"]
    assert "gone from the host" in outcome["hosts"]["dev-1"]["detail"]
    assert "chassis recover shop --env dev" in failed.stderr
    held = lease(run)
    assert held is not None and held["revision"] == 2
    run.ok("ledger", "verify")

    hidden.rename(v1_dir)
    (shop / ".chassis" / "bundles-hidden").rename(store)
    outcome = json.loads(run.ok("recover", "shop", "--env", "dev", "--json").stdout)
    assert outcome["outcome"] == "restored"
    assert_hosts_agree_with_status(run, shop, "v1")


def test_a_restore_puts_a_deleted_release_directory_back(run: Runner, fast: Path) -> None:
    """Found by the crash fuzzer (a repair killed after its intent): the
    release a host must go back to is gone from it; the restore puts it back
    from the bundle store (each step recorded) instead of giving up."""
    shop = fast
    run.ok(*DEPLOY, "--release", "v1")
    crash_deploy(shop, "dev-1:start", "--max-parallel", "1")
    v1_dir = (shop / ".chassis" / "hosts" / "dev-1" / "current").resolve()
    shutil.rmtree(v1_dir)
    outcome = json.loads(run.ok("recover", "shop", "--env", "dev", "--json").stdout)
    assert outcome["outcome"] == "restored", outcome
    assert (v1_dir / ".chassis-release").is_file()
    assert_hosts_agree_with_status(run, shop, "v1")


@pytest.mark.parametrize(("crash_at", "label"), [("dev-2:start", "v2"), ("dev-3:swap", "v1")])
def test_a_crashed_rollback_is_recovered(
    run: Runner, fast: Path, crash_at: str, label: str
) -> None:
    """A rollback killed mid-way: recover completes it (every host already on
    the target, swapped) or puts the pre-rollback release back, and the
    history says which."""
    shop = fast
    run.ok(*DEPLOY, "--release", "v1")
    run.ok(*DEPLOY, "--release", "v2")
    rollback = ("rollback", "shop", "--env", "dev", "--max-parallel", "1")
    crashed = crashing.run(crash_at, *rollback, cwd=shop)
    assert crashed.returncode == crashing.CRASHED, crashed.stderr
    held = lease(run)
    assert held is not None and held["operation"] == "rollback" and held["revision"] == 3
    outcome = json.loads(run.ok("recover", "shop", "--env", "dev", "--json").stdout)
    expected = "restored" if label == "v2" else "completed"
    assert outcome["outcome"] == expected, outcome
    assert_hosts_agree_with_status(run, shop, label)
    revisions = json.loads(run.ok("history", "shop", "--env", "dev", "--json").stdout)["revisions"]
    last = revisions[-1]
    assert last["operation"] == "rollback" and last["revision"] == 3
    if label == "v1":
        assert last["status"] == "deployed" and revisions[1]["status"] == "rolled-back"
    else:
        assert last["status"] == "failed" and revisions[1]["status"] == "deployed"


def test_an_interrupted_placement_change_is_undone_on_retired_hosts_too(
    run: Runner, fast: Path
) -> None:
    """A deploy to another profile retires the hosts it leaves before it
    starts the others; killed after that, recover undoes it everywhere."""
    shop = fast
    run.ok(*DEPLOY, "--release", "v1")
    mono = ("deploy", "shop", "--env", "dev", "--profile", "monolith", "--release", "v2")
    crashed = crashing.run("start", *mono, cwd=shop)
    assert crashed.returncode == crashing.CRASHED, crashed.stderr
    outcome = json.loads(run.ok("recover", "shop", "--env", "dev", "--json").stdout)
    assert outcome["outcome"] == "restored", outcome
    assert len(outcome["hosts"]) == 3, "the two retired hosts are restored as well"
    assert_hosts_agree_with_status(run, shop, "v1")
    assert len({r["host"] for r in json.loads(run.ok("status", "--json").stdout)}) == 3
