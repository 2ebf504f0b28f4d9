"""Health means the process we started (issue 12, item 2), on a local host and
an sshd host: a stray ``python -m http.server`` on the component's port is
named before anything stops, never passes a gate or a repair for it, and a
process that dies while the stranger answers fails its gate at once.

The api's command sleeps before it binds, as a slow service would: with the
old gate that let it survive the supervisor's settle time, die with
"Address already in use" and be recorded healthy on the stranger's answer.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from adapters.connectors.base import CommandResult, Connector
from adapters.connectors.local import LocalConnector
from adapters.connectors.ssh import SSHConnector
from adapters.supervisors import SystemdSupervisor
from adapters.supervisors.direct import DirectSupervisor
from chassis.engine.executor import run_gate
from chassis.engine.plan import ComponentPlan
from chassis.sample_app import build_sample_release
from ledger.installations import Installation
from tests.conftest import Runner
from tests.engine.conftest import distinct_free_ports
from tests.engine.test_reconcile import events
from tests.sshd import SSHTestHost
from tests.strays import stray_server

# Long (deploys, health windows, many processes): the parallel run starts
# these first (tests/scheduling.py).
pytestmark = pytest.mark.slow

DEPLOY = ("deploy", "own", "--env", "e", "--profile", "one")
SLOW_API = "sleep 0.5; exec python3 app/api.py --bind {address} --port {port}"


@dataclass(frozen=True)
class Target:
    """One host h1 of environment ``e``: where it listens and how to reach it."""

    address: str
    root: Path
    entry: str
    connect: Callable[[], Connector]


@pytest.fixture(params=["local", "ssh"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    if request.param == "local":
        root = tmp_path / "h1-root"
        root.mkdir()
        entry = f'{{ name = "h1", connector = "local", root = "{root}" }}'
        return Target("127.0.0.1", root, entry, lambda: LocalConnector("h1"))
    host: SSHTestHost = request.getfixturevalue("ssh_host")
    entry = (
        f'{{ name = "h1", connector = "ssh", address = "{host.address}", port = {host.port}, '
        f'user = "{host.user}", key = "{host.client_key}", root = "{host.root}" }}'
    )
    return Target(host.address, host.root, entry, lambda: SSHConnector(host.settings()))


def write_stack(workspace: Path, target: Target, command: str, port: int) -> None:
    (workspace / "chassis.toml").write_text(
        '[app]\nname = "own"\n\n'
        f"[components.api]\ncommand = {json.dumps(command)}\n"
        f"ports = {{ http = {port} }}\n"
        'health = { type = "http", port = "http", path = "/healthz", interval_ms = 200, '
        "window_ms = 8000 }\n\n"
        '[profiles.one]\ngroups.all = { components = ["api"] }\n\n'
        f"[environments.e]\nhosts = [\n  {target.entry},\n]\n"
    )


@pytest.fixture
def own(
    run: Runner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: Target
) -> Iterator[Path]:
    """A workspace ``own`` with releases v1 and v2 of the sample app; the api
    is stopped afterwards."""
    workspace = tmp_path / "own"
    run.ok("init", str(workspace), "--name", "own")
    write_stack(workspace, target, "true", 1)
    monkeypatch.chdir(workspace)
    if "ssh" in target.entry:
        run.ok("host", "trust-key", "h1", "--yes")
    for version in ("v1", "v2"):
        bundle, _ = build_sample_release(tmp_path / "dist", version)
        run.ok("release", "add", version, "--artifact", str(bundle))
    yield workspace
    with contextlib.closing(target.connect()) as connector:
        DirectSupervisor(connector, str(target.root)).stop("api")


def healthz(address: str, port: int) -> str:
    with urllib.request.urlopen(f"http://{address}:{port}/healthz", timeout=5) as response:
        text: str = response.read().decode()
        return text


def labels(run: Runner) -> set[str]:
    rows = json.loads(run.ok("status", "own", "--env", "e", "--json").stdout)
    return {r["label"] for r in rows}


def passed_or_activated(workspace: Path, label: str) -> list[Any]:
    """Events that would say ``label`` was healthy: a passed health step of its
    operation, or its activation on a host."""
    found: list[Any] = []
    ops: set[str] = set()
    for event in events(workspace, "own", "e"):
        if isinstance(event, Installation.OperationStarted) and event.label == label:
            ops.add(event.op_id)
        elif isinstance(event, Installation.StepRecorded) and event.op_id in ops:
            if event.step == "health" and event.ok:
                found.append(event)
        elif isinstance(event, Installation.HostActivated) and event.label == label:
            found.append(event)
    return found


def test_a_stranger_on_the_port_fails_the_deploy_before_anything_stops(
    run: Runner, own: Path, target: Target, tmp_path: Path
) -> None:
    """v2 moves the api to a port a stray server holds: the deploy names the
    port and the holder, v1 keeps serving, nothing says v2 was healthy."""
    old, new = distinct_free_ports()
    write_stack(own, target, SLOW_API.format(address=target.address, port=old), old)
    run.ok(*DEPLOY, "--release", "v1")
    write_stack(own, target, SLOW_API.format(address=target.address, port=new), new)
    with stray_server(target.address, new, tmp_path / "site") as server:
        result = run(*DEPLOY, "--release", "v2", "--json")
        assert server.poll() is None, "a stranger's process is never stopped"
    assert result.exit_code == 16, result.stdout
    host = json.loads(result.stdout)["hosts"]["h1"]
    assert host["ok"] is False and host["step"] == "stop-old"
    assert f"port {new} on h1 is held by pid {server.pid} (" in host["detail"]
    assert "http.server" in host["detail"] and "nothing was stopped" in host["detail"]
    assert labels(run) == {"v1"}
    assert healthz(target.address, old).startswith("ok api v1")
    assert passed_or_activated(own, "v2") == []
    run.ok("ledger", "verify")


def test_a_process_that_dies_while_a_stranger_answers_fails_its_gate(
    run: Runner, own: Path, target: Target, tmp_path: Path
) -> None:
    """The api's command starts a detached stranger on its port, then exits 3
    after the supervisor's settle time: the gate fails at once, naming the
    exit, and nothing is recorded as running."""
    port, _ = distinct_free_ports()
    pidfile = tmp_path / "stranger.pid"
    site = tmp_path / "stranger-site"
    site.mkdir()
    (site / "healthz").write_text("ok, says a stranger\n")
    script = tmp_path / "leave-a-stranger.sh"
    script.write_text(  # one stranger only, should the supervisor run this again
        '[ -e "$1" ] || setsid -f sh -c \'echo $$ > "$1"; '
        'exec /usr/bin/python3 -m http.server "$2" --bind "$3" --directory "$4"\' '
        'stranger "$@" < /dev/null > /dev/null 2>&1\n'
        "sleep 1.5\n"
        'echo "api: giving up" >&2\n'
        "exit 3\n"
    )
    command = f"sh {script} {pidfile} {port} {target.address} {site}"
    write_stack(own, target, command, port)
    try:
        result = run(*DEPLOY, "--release", "v1", "--json")
        assert pidfile.exists()
        stranger = int(pidfile.read_text())
        os.kill(stranger, 0)  # still there: it never was ours to stop
    finally:
        if pidfile.exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pidfile.read_text()), signal.SIGTERM)
    assert result.exit_code == 16, result.stdout
    host = json.loads(result.stdout)["hosts"]["h1"]
    assert host["ok"] is False and host["step"] == "health"
    assert "exited with status 3 during its health gate: api: giving up" in host["detail"]
    assert labels(run) == set()
    assert passed_or_activated(own, "v1") == []


def test_repair_against_a_stranger_is_not_repair_ok(
    run: Runner, own: Path, target: Target, tmp_path: Path
) -> None:
    """The api is gone and a stray server holds its port: reconcile sees the
    health drift, and --repair fails naming the holder instead of "repair ok"."""
    port, _ = distinct_free_ports()
    write_stack(own, target, SLOW_API.format(address=target.address, port=port), port)
    run.ok(*DEPLOY, "--release", "v1")
    with contextlib.closing(target.connect()) as connector:
        DirectSupervisor(connector, str(target.root)).stop("api")
    with stray_server(target.address, port, tmp_path / "site") as server:
        looked = run("reconcile", "own", "--env", "e", "--json")
        repaired = run("reconcile", "own", "--env", "e", "--repair", "--json")
        human = run("reconcile", "own", "--env", "e", "--repair")
        assert server.poll() is None, "a stranger's process is never stopped"
    outcome = json.loads(repaired.stdout)["repaired"]["h1"]
    assert outcome["ok"] is False, outcome
    assert f"port {port} on h1 is held by pid {server.pid} (" in outcome["detail"]
    assert repaired.exit_code == 18, repaired.stdout
    assert "h1: repair FAILED" in human.stdout and "repair ok" not in human.stdout
    # The look alone already said the answer on the port was not the api's.
    assert looked.exit_code == 18, looked.stdout
    drift = {d["what"]: d for d in json.loads(looked.stdout)["drift"]["h1"]}
    assert set(drift) == {"process", "health"}
    assert drift["health"]["found"].startswith("api is not running")


# -- systemd: MainPID, through the commands sent (systemd is not PID 1 here) --------


class SystemctlConnector(LocalConnector):
    """A real LocalConnector that answers only ``systemctl`` with canned output."""

    def __init__(self, main_pid: int) -> None:
        super().__init__("web-1")
        self.main_pid = main_pid
        self.commands: list[str] = []

    def run(self, command: str, **kwargs: Any) -> CommandResult:
        self.commands.append(command)
        unit = "chassis-api@r1.service"
        if command.startswith("systemctl list-units"):
            return CommandResult(command, 0, f"{unit} loaded active running x\n", "", 0.0)
        if command.startswith("systemctl show"):
            show = (
                f"Id={unit}\nLoadState=loaded\nActiveState=active\nSubState=running\n"
                f"MainPID={self.main_pid}\nResult=success\nExecMainStatus=0\n"
            )
            return CommandResult(command, 0, show, "", 0.0)
        return super().run(command, **kwargs)

    def run_python(
        self,
        source: str,
        args: Sequence[str] = (),
        *,
        timeout: float = 60.0,
        stdin: bytes | None = None,
        display: str,
        quick: bool = False,
    ) -> CommandResult:
        self.commands.append(shlex.join(["python3", "-I", "-c", "PROGRAM", *args]))
        return super().run_python(
            source, args, timeout=timeout, stdin=stdin, display=display, quick=quick
        )


def test_systemd_gate_watches_main_pid(tmp_path: Path) -> None:
    """The gate asks systemd for MainPID and holds that process to the port."""
    port, _ = distinct_free_ports()
    component = ComponentPlan(
        name="api",
        command="python3 app/api.py",
        env={},
        ports={"http": port},
        health={
            "type": "http",
            "port": "http",
            "path": "/healthz",
            "interval_ms": 100,
            "window_ms": 600,
        },
    )
    root = tmp_path / "root"
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        with stray_server("127.0.0.1", port, tmp_path / "site") as server:
            for main_pid, passes in ((sleeper.pid, False), (server.pid, True)):
                connector = SystemctlConnector(main_pid)
                supervisor = SystemdSupervisor(connector, str(root), unit_dir=str(tmp_path))
                gate = run_gate(
                    component,
                    "127.0.0.1",
                    connector,
                    str(root),
                    supervisor=supervisor,
                )
                assert gate is not None and gate.passed is passes, gate
                assert [c.split(" ")[1] for c in connector.commands[:2]] == [
                    "list-units",
                    "show",
                ]
                assert f'"roots":[[{main_pid},null]]' in connector.commands[2]
                if not passes:
                    assert f"served by pid {server.pid} (" in gate.results[-1].detail
    finally:
        sleeper.kill()
        sleeper.wait()
