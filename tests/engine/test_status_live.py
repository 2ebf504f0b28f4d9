"""``chassis status`` tells what was seen and when; ``status --live`` looks now.

Real hosts (three local ones, then three real sshd hosts) with components
killed behind the ledger's back: the whole process group (nothing restarts
it: the component is down) or only the service under the direct
supervisor's wrapper (a crash: the wrapper restarts it, and the restart is
recorded by whoever looks next). What was seen is recorded once per change,
never once per look.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from adapters.connectors.base import Connector
from adapters.connectors.local import LocalConnector
from adapters.connectors.ssh import SSHConnector
from adapters.supervisors.direct import DirectSupervisor
from ledger.installations import Installation
from tests.conftest import Runner
from tests.engine.test_deploy_local import DEPLOY, get, port_of
from tests.engine.test_deploy_ssh import DEPLOY as LAB_DEPLOY
from tests.engine.test_deploy_ssh import lab  # noqa: F401 - the lab fixture
from tests.engine.test_reconcile import events, kill_group, quick  # noqa: F401 - fixture
from tests.sshd import SSHTestHost

# Long (deploys, health windows, many processes): the parallel run starts
# these first (tests/scheduling.py).
pytestmark = pytest.mark.slow

STATUS = ("status", "shop", "--env", "dev")
LIVE = (*STATUS, "--live")


def rows_of(run: Runner, *command: str) -> dict[str, dict[str, Any]]:
    rows = json.loads(run.ok(*(command or STATUS), "--json").stdout)
    return {r["component"]: r for r in rows}


def seen_events(workspace: Path, app: str = "shop", env: str = "dev") -> list[Any]:
    return [e for e in events(workspace, app, env) if isinstance(e, Installation.StateObserved)]


def doctor_check(run: Runner, name: str = "components") -> dict[str, Any]:
    result = run("doctor", "--json")
    check: dict[str, Any] = next(c for c in json.loads(result.stdout) if c["name"] == name)
    return check


def crash_service(connector: Connector, root: Path, component: str, restarts: int) -> None:
    """SIGKILL the component's processes but not the supervisor's wrapper
    (a crash, not a stop), then wait until the wrapper has run it again."""
    supervisor = DirectSupervisor(connector, str(root))
    wrapper = supervisor.state(component).pid
    assert wrapper is not None
    listing = connector.run(
        f"ps -e -o pid=,pgid=,stat= | awk '$2 == {wrapper} && $3 !~ /^Z/ {{print $1}}'",
        check=True,
    ).stdout
    service = [p for p in listing.split() if int(p) != wrapper]
    assert service, f"{component} runs under its wrapper"
    connector.run("kill -KILL " + " ".join(service), check=True)
    deadline = time.monotonic() + 15
    while True:
        state, record = supervisor.observe(component)
        if state.running and record is not None and record.restarts == restarts:
            assert record.state == "running" and record.status == 137 and state.pid == wrapper
            return
        assert time.monotonic() < deadline, f"{component} was not restarted: {state.detail}"
        time.sleep(0.1)


def wait_serving(port: int) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            if get(port, "/healthz")[0] == 200:
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, f"nothing serves port {port} again"
        time.sleep(0.1)


def test_a_killed_component_is_down_once_seen_and_until_then_only_as_old_as_its_record(
    run: Runner,
    quick: Path,  # noqa: F811 - the fixture
) -> None:
    shop = quick
    run.ok(*DEPLOY, "--release", "v1")
    rows = rows_of(run)
    for row in rows.values():
        assert (row["state"], row["health"], row["healthy"], row["restarts"]) == (
            "running",
            "passed",
            True,
            0,
        ), row
        assert row["observed_by"] == "deploy r1" and row["observed_age_s"] >= 0
    api = rows["api"]
    before = len(events(shop))
    looked = json.loads(run.ok(*LIVE, "--json").stdout)
    assert {(r["observed_by"], r["observed_age_s"], r["healthy"]) for r in looked} == {
        ("status --live", 0, True)
    }
    assert len(events(shop)) == before, "nothing changed: a look records nothing"

    kill_group(LocalConnector(api["host"]), shop / ".chassis" / "hosts" / api["host"], "api")
    # Without --live: what was recorded, and when it was seen, never "running now".
    unlooked = rows_of(run)["api"]
    assert (unlooked["observed"], unlooked["observed_by"]) == (api["observed"], "deploy r1")
    assert unlooked["observed_age_s"] >= 0
    assert "by deploy r1" in run.ok(*STATUS).stdout

    found = run(*LIVE, "--json")
    assert found.exit_code == 18, found.stderr
    assert f"live state differs from the ledger on shop/dev {api['host']}" in found.stderr
    live = {r["component"]: r for r in json.loads(found.stdout)}
    assert live["api"]["healthy"] is False and live["api"]["state"] == "drifted"
    assert live["api"]["health"] == "failed (drift: health, process)"
    assert live["api"]["detail"].startswith("exited")
    assert {r["healthy"] for c, r in live.items() if c != "api"} == {True}
    [seen] = seen_events(shop)
    assert (seen.host, seen.by, seen.release_id) == (
        api["host"],
        "status --live",
        api["release_id"],
    )
    assert seen.components["api"]["state"] == "down"
    assert seen.components["api"]["health"] == "failed"
    assert {(d["what"], d["component"]) for d in seen.differences} == {
        ("process", "api"),
        ("health", "api"),
    }
    assert len(events(shop)) == before + 1, "one event, for the one host that changed"

    again = run(*LIVE)
    assert again.exit_code == 18
    assert f"dev/{api['host']}/api: exited" in again.stdout
    assert len(events(shop)) == before + 1, "seen the same again: nothing new recorded"

    recorded = rows_of(run)["api"]
    assert recorded["healthy"] is False and recorded["observed_by"] == "status --live"
    check = doctor_check(run)
    assert check["status"] == "fail" and f"{api['host']}/api" in check["detail"]
    assert run("doctor").exit_code == 14

    run.ok("reconcile", "shop", "--env", "dev", "--repair")
    repaired = rows_of(run)["api"]
    assert (repaired["state"], repaired["healthy"], repaired["observed_by"]) == (
        "running",
        True,
        "repair r2",
    )
    assert doctor_check(run)["status"] == "pass"
    settled = len(events(shop))
    run.ok(*LIVE)
    assert len(events(shop)) == settled
    run.ok("ledger", "verify")


def test_a_crashed_component_comes_back_and_its_restarts_are_recorded(
    run: Runner,
    quick: Path,  # noqa: F811 - the fixture
) -> None:
    shop = quick
    run.ok(*DEPLOY, "--release", "v1")
    api = rows_of(run)["api"]
    root = shop / ".chassis" / "hosts" / api["host"]
    connector = LocalConnector(api["host"])
    wrapper = DirectSupervisor(connector, str(root)).state("api").pid
    before = len(events(shop))

    crash_service(connector, root, "api", restarts=1)
    wait_serving(port_of(shop, "api"))
    live = rows_of(run, *LIVE)["api"]  # exit 0: it runs, as recorded
    assert (live["state"], live["healthy"], live["restarts"]) == ("running", True, 1)
    [seen] = seen_events(shop)
    assert seen.host == api["host"] and seen.by == "status --live"
    assert seen.components["api"]["restarts"] == 1
    assert seen.components["api"]["last_exit"]["status"] == 137
    assert len(events(shop)) == before + 1
    assert rows_of(run)["api"]["restarts"] == 1
    run.ok(*LIVE)
    assert len(events(shop)) == before + 1, "the same count again: nothing recorded"

    # reconcile reads the record too: a second crash, recorded by it.
    crash_service(connector, root, "api", restarts=2)
    result = json.loads(run.ok("reconcile", "shop", "--env", "dev", "--json").stdout)
    assert result["drift"] == {} and result["observed"] == [api["host"]]
    assert seen_events(shop)[-1].by == "reconcile"
    assert seen_events(shop)[-1].components["api"]["restarts"] == 2
    row = rows_of(run)["api"]
    assert (row["restarts"], row["observed_by"]) == (2, "reconcile")

    # A deploy stops v1 cleanly: the old wrapper goes with it, nothing restarts it.
    run.ok(*DEPLOY, "--release", "v2")
    time.sleep(1.5)
    assert wrapper is not None
    group = connector.run(f"ps -e -o pgid=,stat= | awk '$1 == {wrapper} && $2 !~ /^Z/'").stdout
    assert group.strip() == "", "the stopped release was restarted"
    row = rows_of(run)["api"]
    assert (row["label"], row["restarts"], row["observed_by"]) == ("v2", 0, "deploy r2")
    run.ok(*LIVE)
    run.ok("ledger", "verify")


def test_a_component_with_restart_never_stays_down_after_a_crash(
    run: Runner,
    quick: Path,  # noqa: F811 - the fixture
) -> None:
    """``restart = "never"`` in the stack file reaches the plan (recorded)
    and the supervisor: the crashed api stays down, its neighbours still
    come back."""
    shop = quick
    stack = shop / "chassis.toml"
    text = stack.read_text()
    stack.write_text(text.replace("[components.api]\n", '[components.api]\nrestart = "never"\n', 1))
    plan = json.loads(run.ok("plan", *DEPLOY[1:], "--release", "v1", "--json").stdout)
    restarts = {c["name"]: c.get("restart") for h in plan["hosts"] for c in h["components"]}
    assert restarts == {"gateway": None, "api": "never", "worker": None}
    run.ok(*DEPLOY, "--release", "v1")
    rows = rows_of(run)
    api, gateway = rows["api"], rows["gateway"]
    root = shop / ".chassis" / "hosts" / api["host"]
    connector = LocalConnector(api["host"])
    supervisor = DirectSupervisor(connector, str(root))
    wrapper = supervisor.state("api").pid
    assert wrapper is not None
    listing = connector.run(
        f"ps -e -o pid=,pgid=,stat= | awk '$2 == {wrapper} && $3 !~ /^Z/ {{print $1}}'",
        check=True,
    ).stdout
    service = [p for p in listing.split() if int(p) != wrapper]
    assert service, "api runs under its wrapper"
    connector.run("kill -KILL " + " ".join(service), check=True)
    deadline = time.monotonic() + 15
    while supervisor.state("api").running:
        assert time.monotonic() < deadline, "the wrapper did not exit"
        time.sleep(0.1)
    time.sleep(1.5)  # the first restart (after 1 s) would have come by now
    state, record = supervisor.observe("api")
    assert not state.running and record is None, state.detail
    log = (root / "logs" / "api.log").read_text()
    assert "exited with status 137" in log and "restarting" not in log
    gateway_root = shop / ".chassis" / "hosts" / gateway["host"]
    crash_service(LocalConnector(gateway["host"]), gateway_root, "gateway", restarts=1)


def test_a_restored_host_is_unknown_until_something_looks(
    run: Runner,
    quick: Path,  # noqa: F811 - the fixture
) -> None:
    shop = quick
    run.ok(*DEPLOY, "--release", "v1")
    failed = run(*DEPLOY, "--release", "v3")  # its api fails the health gate
    assert failed.exit_code == 16, failed.stderr
    restored = {e.host for e in events(shop) if isinstance(e, Installation.HostRestored) and e.ok}
    assert restored, "the failed deploy restored the hosts it touched"
    rows = json.loads(run.ok(*STATUS, "--json").stdout)
    unknown = {r["host"] for r in rows if r["state"] == "unknown"}
    assert unknown == restored
    for row in rows:
        if row["host"] in restored:
            assert row["healthy"] is None and row["observed"] is None
            assert row["detail"].startswith("never observed since restore in deploy r2 at ")
    assert "never observed since restore" in run.ok(*STATUS).stdout
    assert doctor_check(run)["status"] == "warn"

    run.ok(*LIVE)
    looked = json.loads(run.ok(*STATUS, "--json").stdout)
    assert {(r["label"], r["state"], r["healthy"]) for r in looked} == {("v1", "running", True)}
    assert {e.host for e in seen_events(shop)} == restored
    assert doctor_check(run)["status"] == "pass"


def test_live_status_needs_an_installation_and_prints_json_or_a_table(
    run: Runner,
    quick: Path,  # noqa: F811 - the fixture
) -> None:
    missing = run("status", "nope", "--live")
    assert missing.exit_code == 10 and "no installation of nope" in missing.stderr
    assert run.ok("status", "--live").stdout.strip() == "nothing deployed yet"
    assert json.loads(run.ok("status", "--live", "--json").stdout) == []
    run.ok(*DEPLOY, "--release", "v1")
    table = run.ok("status", "--live").stdout
    assert table.splitlines()[0].split() == [
        *("ENV", "HOST", "COMPONENT", "RELEASE", "ID", "REV"),
        *("STATE", "HEALTH", "RESTARTS", "OBSERVED"),
    ]
    assert "just now by status --live" in table
    helped = run.ok("status", "--help").stdout
    assert "--live" in helped and "chassis status shop --env prod --live" in helped


def test_over_ssh_a_killed_component_is_down_and_a_crashed_one_comes_back(
    run: Runner,
    lab: tuple[Path, list[SSHTestHost], dict[str, Path]],  # noqa: F811 - the fixture
    closed_port: tuple[str, int],
) -> None:
    root, hosts, roots = lab
    run.ok(*LAB_DEPLOY, "--release", "v1")
    command = ("status", "lab", "--env", "lab")
    rows = rows_of(run, *command)
    by_name = {h.name: h for h in hosts}
    api_host, worker_host = by_name[rows["api"]["host"]], by_name[rows["worker"]["host"]]
    with SSHConnector(worker_host.settings()) as connector:
        crash_service(connector, roots[worker_host.name], "worker", restarts=1)
    with SSHConnector(api_host.settings()) as connector:
        kill_group(connector, roots[api_host.name], "api")

    found = run(*command, "--live", "--json")
    assert found.exit_code == 18, found.stderr
    live = {r["component"]: r for r in json.loads(found.stdout)}
    assert live["api"]["healthy"] is False
    assert (live["worker"]["state"], live["worker"]["healthy"], live["worker"]["restarts"]) == (
        "running",
        True,
        1,
    )
    assert live["gateway"]["healthy"] is True
    seen = seen_events(root, "lab", "lab")
    assert sorted(e.host for e in seen) == sorted([api_host.name, worker_host.name])
    recorded = rows_of(run, *command)
    assert recorded["api"]["healthy"] is False and recorded["worker"]["restarts"] == 1
    assert doctor_check(run)["status"] == "fail"
    assert run(*command, "--live").exit_code == 18
    assert len(seen_events(root, "lab", "lab")) == 2, "nothing changed since: nothing recorded"

    # The gateway's host goes away: nothing seen there, nothing recorded, exit 11.
    gateway = by_name[rows["gateway"]["host"]]
    stack = root / "chassis.toml"
    stack.write_text(
        stack.read_text().replace(
            f'address = "{gateway.address}", port = {gateway.port}',
            f'address = "{closed_port[0]}", port = {closed_port[1]}',
        )
    )
    run.ok("host", "list")
    gone = run(*command, "--live", "--json")
    assert gone.exit_code == 11, gone.stderr
    assert f"could not check lab/lab {gateway.name}" in gone.stderr
    away = {r["component"]: r for r in json.loads(gone.stdout)}["gateway"]
    assert (away["state"], away["healthy"], away["observed"]) == ("unreachable", None, None)
    assert "refused" in away["detail"].lower()
    assert len(seen_events(root, "lab", "lab")) == 2
    gateway_row = rows_of(run, *command)["gateway"]
    assert (gateway_row["healthy"], gateway_row["observed_by"]) == (True, "deploy r1")
    run.ok("ledger", "verify")
