"""``chassis reconcile``: real hosts changed by hand behind the ledger's back
(a process killed, ``current`` repointed, a release directory deleted), the
drift reported and recorded, then repaired through the engine."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from adapters.connectors.base import Connector
from adapters.connectors.local import LocalConnector
from adapters.connectors.ssh import SSHConnector
from adapters.supervisors.direct import DirectSupervisor
from chassis.workspace import Workspace
from ledger.installations import Installation
from ledger.storage import open_ledger
from tests.conftest import Runner
from tests.engine.test_deploy_local import DEPLOY, get, port_of
from tests.engine.test_deploy_ssh import DEPLOY as LAB_DEPLOY
from tests.engine.test_deploy_ssh import lab  # noqa: F401 - the lab fixture
from tests.engine.test_recover import crash_deploy
from tests.sshd import SSHTestHost

# Long (deploys, health windows, many processes): the parallel run starts
# these first (tests/scheduling.py).
pytestmark = pytest.mark.slow

RECONCILE = ("reconcile", "shop", "--env", "dev")


@pytest.fixture
def quick(shop: Path) -> Path:
    """``shop`` with health probes every 100 ms: repair gates what it restarts."""
    stack = shop / "chassis.toml"
    text = stack.read_text().replace("window_ms = 4000", "window_ms = 4000, interval_ms = 100")
    stack.write_text(text.replace("interval_ms = 250", "interval_ms = 100"))
    return shop


def events(workspace: Path, app: str = "shop", env: str = "dev") -> list[Any]:
    ledger = open_ledger(Workspace.find(workspace).storage(), None)
    try:
        installation = Installation.id_for(Installation.key(app, env))
        return [e for _, e in ledger.verified_events(installation)]
    finally:
        ledger.close()


def drift_events(workspace: Path, app: str = "shop", env: str = "dev") -> list[Any]:
    return [e for e in events(workspace, app, env) if isinstance(e, Installation.DriftObserved)]


def host_of(run: Runner, component: str) -> dict[str, Any]:
    rows = json.loads(run.ok("status", "shop", "--env", "dev", "--json").stdout)
    row: dict[str, Any] = next(r for r in rows if r["component"] == component)
    return row


def kill_group(connector: Connector, root: Path, component: str) -> None:
    """SIGKILL the component's whole process group (the supervisor's wrapper
    and the service), then wait until the supervisor sees it gone."""
    supervisor = DirectSupervisor(connector, str(root))
    pid = supervisor.state(component).pid
    assert pid is not None
    os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while supervisor.state(component).running:
        assert time.monotonic() < deadline, "killed process still seen running"
        time.sleep(0.1)


def whats(differences: list[dict[str, Any]]) -> set[tuple[str, str | None]]:
    return {(d["what"], d["component"]) for d in differences}


def test_a_killed_process_is_drift_and_repair_restarts_it(run: Runner, quick: Path) -> None:
    shop = quick
    run.ok(*DEPLOY, "--release", "v1")
    clean = run.ok(*RECONCILE, "--json")
    data = json.loads(clean.stdout)
    assert data["drift"] == {} and data["hosts_checked"] == 3 and data["repaired"] == {}
    before = len(events(shop))
    assert "3 host(s) match the ledger" in run.ok(*RECONCILE).stdout
    assert len(events(shop)) == before, "a clean reconcile records nothing"

    api = host_of(run, "api")
    kill_group(LocalConnector(api["host"]), shop / ".chassis" / "hosts" / api["host"], "api")
    found = run(*RECONCILE, "--json")
    assert found.exit_code == 18, found.stderr
    assert "drift on " + api["host"] in found.stderr and "--repair" in found.stderr
    data = json.loads(found.stdout)
    assert list(data["drift"]) == [api["host"]]
    assert whats(data["drift"][api["host"]]) == {("process", "api"), ("health", "api")}
    process = next(d for d in data["drift"][api["host"]] if d["what"] == "process")
    assert process["found"] == "not running"
    assert process["expected"] == f"running release {api['release_id'][:16]}"
    assert data["recorded"] == [api["host"]]
    [observed] = drift_events(shop)
    assert observed.host == api["host"] and observed.differences == data["drift"][api["host"]]
    human = run(*RECONCILE)
    assert human.exit_code == 18
    assert f"{api['host']}: process api: expected running release" in human.stdout
    assert len(drift_events(shop)) == 2, "every reconcile that sees drift records it"
    row = host_of(run, "api")
    assert row["state"] == "drifted" and row["health"] == "failed (drift: health, process)"

    repaired = json.loads(run.ok(*RECONCILE, "--repair", "--json").stdout)
    assert repaired["drift"] == {} and repaired["recorded"] == []
    outcome = repaired["repaired"][api["host"]]
    assert outcome["ok"] and "stop-old" in outcome["steps"] and "prune" not in outcome["steps"]
    code, body = get(port_of(shop, "api"), "/healthz")
    assert code == 200 and body.startswith("ok api v1")
    history = json.loads(run.ok("history", "shop", "--env", "dev", "--json").stdout)
    last = history["revisions"][-1]
    assert (last["operation"], last["status"], last["label"]) == ("repair", "deployed", "v1")
    assert history["lease"] is None
    row = host_of(run, "api")
    assert (row["state"], row["health"], row["revision"]) == ("running", "passed", 2)
    settled = len(events(shop))
    run.ok(*RECONCILE)
    assert len(events(shop)) == settled
    run.ok("ledger", "verify")


def test_current_repointed_and_release_dir_deleted_are_repaired(run: Runner, quick: Path) -> None:
    shop = quick
    run.ok(*DEPLOY, "--release", "v1")
    hosts = shop / ".chassis" / "hosts"
    api, worker = host_of(run, "api"), host_of(run, "worker")
    release_dir = api["release_id"][:16]
    # api's host: current points at another directory.
    (hosts / api["host"] / "releases" / "elsewhere").mkdir()
    link = hosts / api["host"] / "current"
    tmp = link.with_name("current.tmp")
    tmp.symlink_to("releases/elsewhere")
    tmp.replace(link)
    # worker's host: release directory and uploaded bundle deleted, process left running.
    releases = hosts / worker["host"] / "releases"
    shutil.rmtree(releases / release_dir)
    (releases / f"{release_dir}.tar.gz").unlink()

    found = run(*RECONCILE, "--json")
    assert found.exit_code == 18, found.stderr
    drift = json.loads(found.stdout)["drift"]
    assert sorted(drift) == sorted([api["host"], worker["host"]])
    assert whats(drift[api["host"]]) == {("current", None)}
    assert drift[api["host"]][0]["found"] == "releases/elsewhere"
    assert drift[api["host"]][0]["expected"] == f"releases/{release_dir}"
    assert ("release-dir", None) in whats(drift[worker["host"]])
    assert ("health", "worker") in whats(drift[worker["host"]])  # its check runs in that dir
    rows = {r["host"]: r for r in json.loads(run.ok("status", "--json").stdout)}
    assert rows[api["host"]]["health"] == "passed (drift: current)"

    repaired = json.loads(run.ok(*RECONCILE, "--repair", "--json").stdout)
    assert repaired["drift"] == {}
    assert repaired["repaired"][api["host"]]["steps"] == [
        "upload",
        "verify",
        "unpack",
        "configure",
        "health",
        "swap",
    ], "a repointed current needs no restart"
    assert "start" in repaired["repaired"][worker["host"]]["steps"]
    assert (link.resolve().name) == release_dir
    assert (releases / release_dir / ".chassis-release").read_text().strip() == worker["release_id"]
    assert (releases / f"{release_dir}.tar.gz").is_file(), "re-uploaded from the bundle store"
    history = json.loads(run.ok("history", "shop", "--env", "dev", "--json").stdout)
    repairs = [r for r in history["revisions"] if r["operation"] == "repair"]
    assert len(repairs) == 1, "both hosts are on one revision: one repair operation"
    steps = [
        e
        for e in events(shop)
        if isinstance(e, Installation.StepRecorded) and e.op_id == repairs[0]["op_id"]
    ]
    assert {e.host for e in steps} == {api["host"], worker["host"]}
    assert any(e.step == "upload" and e.detail == "bundle uploaded" for e in steps)
    run.ok(*RECONCILE)


def test_unknown_installation_and_held_lease(run: Runner, quick: Path) -> None:
    missing = run("reconcile", "nope", "--env", "dev")
    assert missing.exit_code == 10 and "no installation of nope in dev" in missing.stderr
    assert run("reconcile", "shop", "--env", "prod").exit_code == 10
    run.ok(*DEPLOY, "--release", "v1")
    crash_deploy(quick, "intent")
    for extra in ((), ("--repair",)):
        held = run(*RECONCILE, *extra)
        assert held.exit_code == 7, held.stderr
        assert "locked by deploy of revision 2" in held.stderr
    assert drift_events(quick) == []


def test_a_missing_current_link(run: Runner, quick: Path) -> None:
    run.ok(*DEPLOY, "--release", "v1")
    gateway = host_of(run, "gateway")
    (quick / ".chassis" / "hosts" / gateway["host"] / "current").unlink()
    result = run(*RECONCILE, "--json")
    assert result.exit_code == 18, result.stderr
    assert json.loads(result.stdout)["drift"] == {
        gateway["host"]: [
            {
                "what": "current",
                "component": None,
                "expected": f"releases/{gateway['release_id'][:16]}",
                "found": "missing",
            }
        ]
    }
    # Fixed by hand: the next reconcile records the host clean again.
    link = quick / ".chassis" / "hosts" / gateway["host"] / "current"
    link.symlink_to(f"releases/{gateway['release_id'][:16]}")
    clean = json.loads(run.ok(*RECONCILE, "--json").stdout)
    assert clean["stale"] == [gateway["host"]] and clean["drift"] == {}
    rows = json.loads(run.ok("status", "--json").stdout)
    assert {r["state"] for r in rows} == {"running"}
    assert json.loads(run.ok(*RECONCILE, "--json").stdout)["stale"] == []


def test_reconcile_and_repair_over_ssh(
    run: Runner,
    lab: tuple[Path, list[SSHTestHost], dict[str, Path]],  # noqa: F811 - the fixture
    closed_port: tuple[str, int],
) -> None:
    root, hosts, roots = lab
    run.ok(*LAB_DEPLOY, "--release", "v1")
    command = ("reconcile", "lab", "--env", "lab")
    assert json.loads(run.ok(*command, "--json").stdout)["drift"] == {}
    rows = json.loads(run.ok("status", "lab", "--env", "lab", "--json").stdout)
    where = {r["component"]: r for r in rows}
    by_name = {h.name: h for h in hosts}
    api_host = by_name[where["api"]["host"]]
    with SSHConnector(api_host.settings()) as connector:
        kill_group(connector, roots[api_host.name], "api")
    worker_root = roots[where["worker"]["host"]]
    shutil.rmtree(worker_root / "releases" / where["worker"]["release_id"][:16])

    found = run(*command, "--json")
    assert found.exit_code == 18, found.stderr
    drift = json.loads(found.stdout)["drift"]
    assert ("process", "api") in whats(drift[api_host.name])
    assert ("release-dir", None) in whats(drift[where["worker"]["host"]])

    repaired = json.loads(run.ok(*command, "--repair", "--json").stdout)
    assert repaired["drift"] == {} and all(o["ok"] for o in repaired["repaired"].values())
    assert (worker_root / "current" / ".chassis-release").is_file()
    api_port = int(
        (root / "chassis.toml").read_text().split("[components.api]")[1].split("http = ")[1][:5]
    )
    code, body = get_at(api_host.address, api_port)
    assert code == 200 and body.startswith("ok api v1")
    run.ok(*command)

    # h3 goes away: not drift (nothing was seen), but the check is incomplete.
    stack = root / "chassis.toml"
    h3 = by_name["h3"]
    stack.write_text(
        stack.read_text().replace(
            f'address = "{h3.address}", port = {h3.port}',
            f'address = "{closed_port[0]}", port = {closed_port[1]}',
        )
    )
    run.ok("host", "list")
    before = len(events(root, "lab", "lab"))
    gone = run(*command, "--json")
    assert gone.exit_code == 11, gone.stderr
    data = json.loads(gone.stdout)
    assert list(data["unreachable"]) == ["h3"] and "refused" in data["unreachable"]["h3"].lower()
    assert data["drift"] == {} and data["hosts_checked"] == 2
    assert "could not check h3" in gone.stderr
    assert len(events(root, "lab", "lab")) == before


def get_at(address: str, port: int) -> tuple[int, str]:
    import urllib.request

    with urllib.request.urlopen(f"http://{address}:{port}/healthz", timeout=5) as response:
        return response.status, response.read().decode()
