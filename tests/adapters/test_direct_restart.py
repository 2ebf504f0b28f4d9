"""The direct supervisor restarts a crashed component like systemd's
``Restart=on-failure``: real processes on a local host and over a real sshd,
killed behind the supervisor's back; each restart leaves a record the engine
can read, a clean stop restarts nothing, and a crash loop gives up."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from adapters.connectors.base import Connector
from adapters.supervisors import ProcessSpec, SupervisorError
from adapters.supervisors.direct import (
    DirectState,
    DirectSupervisor,
    PidRecord,
    RestartPolicy,
    RestartRecord,
    current_record,
    launch_command,
    parse_observation,
    restart_aware,
    restarts_path,
)
from tests.contracts.conftest import connected  # noqa: F401 - local and ssh hosts
from tests.contracts.test_supervisors import APP, free_port, port_is_free, wait_healthy

# Long (deploys, health windows, many processes): the parallel run starts
# these first (tests/scheduling.py).
pytestmark = pytest.mark.slow

QUICK = RestartPolicy(burst=2, window_s=60, first_s=1, cap_s=1)


class Host:
    def __init__(self, connector: Connector, root: Path, supervisor: DirectSupervisor) -> None:
        self.connector, self.root, self.supervisor = connector, root, supervisor
        self.workdir = root / "releases" / "r1"

    def spec(
        self,
        component: str,
        command: str,
        env: dict[str, str] | None = None,
        restart: str = "on-failure",
    ) -> ProcessSpec:
        return ProcessSpec(
            component, "r1", command, str(self.workdir), env or {}, None, str(self.root), restart
        )

    def sh(self, command: str) -> str:
        return self.connector.run(command, check=True, timeout=30).stdout

    def members(self, group: int) -> list[int]:
        """Live (not zombie) processes of the process group, through the connector."""
        out = self.sh(f"ps -e -o pid=,pgid=,stat= | awk '$2 == {group} && $3 !~ /^Z/ {{print $1}}'")
        return [int(p) for p in out.split()]

    def log(self, component: str) -> str:
        return self.sh(f"cat {self.root}/logs/{component}.log")


@pytest.fixture
def host(connected: tuple[Connector, Path]) -> Iterator[Host]:  # noqa: F811 - the fixture
    connector, root = connected
    for sub in ("releases/r1", "run", "logs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "releases" / "r1" / "app.py").write_text(APP)
    h = Host(connector, root, DirectSupervisor(connector, str(root)))
    try:
        yield h
    finally:
        for component in ("web", "flaky", "calm"):
            h.supervisor.stop(component, timeout=2)


def wait_for(what: str, condition: object, seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_a_killed_component_comes_back_with_its_env_and_the_restart_is_recorded(
    host: Host,
) -> None:
    port = free_port()
    started = host.supervisor.start(
        host.spec("web", f"python3 app.py {port}", env={"RELEASE_TAG": "tag-from-spec"})
    )
    assert started.running and started.pid is not None
    wait_healthy(port, body="ok release=tag-from-spec")
    state, record = host.supervisor.observe("web")
    assert state.running and record is None, "no restart yet"

    service = [p for p in host.members(started.pid) if p != started.pid]
    assert service, "the service runs under the wrapper"
    host.sh("kill -KILL " + " ".join(map(str, service)))

    def restarted() -> bool:
        state, record = host.supervisor.observe("web")
        return state.running and record is not None and record.state == "running"

    wait_for("the restart", restarted)
    state, record = host.supervisor.observe("web")
    assert record is not None
    assert (record.restarts, record.status, record.pid) == (1, 137, started.pid)
    assert state.pid == started.pid, "the same wrapper: the pidfile still names it"
    assert "restarted 1 time" in state.detail and "status 137" in state.detail
    # The env file was deleted at the first start; the restart read it again.
    wait_healthy(port, body="ok release=tag-from-spec")
    log = host.log("web")
    assert "chassis-web exited with status 137" in log
    assert "chassis-web restarting in 1s (restart 1)" in log
    assert not [n for n in host.sh(f"ls -A {host.root}/run").split() if n.endswith(".env")]


def test_a_clean_stop_restarts_nothing(host: Host) -> None:
    port = free_port()
    started = host.supervisor.start(host.spec("web", f"python3 app.py {port}"))
    wait_healthy(port)
    assert started.pid is not None
    host.supervisor.stop("web")
    time.sleep(2.5)  # past the first two backoff pauses
    assert host.members(started.pid) == []
    assert port_is_free(port)
    state, record = host.supervisor.observe("web")
    assert not state.running and record is None
    assert "restarting" not in host.log("web")


def test_sigterm_from_someone_else_is_a_clean_exit_as_for_systemd(host: Host) -> None:
    started = host.supervisor.start(host.spec("calm", "sleep 60"))
    assert started.pid is not None
    service = [p for p in host.members(started.pid) if p != started.pid]
    host.sh("kill -TERM " + " ".join(map(str, service)))
    wait_for("the wrapper to exit", lambda: not host.supervisor.state("calm").running)
    time.sleep(1.5)
    assert host.members(started.pid) == []
    assert "restarting" not in host.log("calm")


def test_a_hangup_reaches_neither_the_wrapper_nor_the_component(host: Host) -> None:
    """As under nohup: SIGHUP is ignored by the group, and the component
    inherits that (an SSH session that hangs up never stops what it started)."""
    started = host.supervisor.start(host.spec("calm", "sleep 60"))
    assert started.pid is not None
    members = host.members(started.pid)
    assert len(members) >= 2, members  # the wrapper and sleep
    for pid in members:
        ignored = host.sh(f"awk '/^SigIgn:/ {{print $2}}' /proc/{pid}/status").strip()
        assert int(ignored, 16) & 1, f"pid {pid} does not ignore SIGHUP ({ignored})"
    os.killpg(started.pid, signal.SIGHUP)  # the sshd hosts are on this machine too
    time.sleep(0.5)
    assert host.members(started.pid) == members
    assert host.supervisor.state("calm").running


def test_a_crash_loop_gives_up_and_leaves_a_marker(host: Host) -> None:
    supervisor = DirectSupervisor(host.connector, str(host.root), restart=QUICK)
    started = supervisor.start(host.spec("flaky", "sleep 1; echo crashing >&2; exit 3"))
    assert started.pid is not None

    def gave_up() -> bool:
        _, record = supervisor.observe("flaky")
        return record is not None and record.state == "gave-up"

    saw_backoff = False
    deadline = time.monotonic() + 20
    while not gave_up():
        assert time.monotonic() < deadline, "the wrapper never gave up"
        state, record = supervisor.observe("flaky")
        if record is not None and record.state == "backoff":
            saw_backoff = True
            assert not state.running, "waiting to restart is not running"
            assert state.detail.startswith("not running: restarting in 1s")
        time.sleep(0.05)
    assert saw_backoff
    state, record = supervisor.observe("flaky")
    assert record is not None and (record.restarts, record.status) == (2, 3)
    assert len(record.last) == 3 and all(status == 3 for _, status in record.last)
    assert not state.running and "gave up restarting after 2 restart(s)" in state.detail
    log = host.log("flaky")
    assert log.count("exited with status 3") == 3 and "chassis-flaky gave up" in log
    assert host.members(started.pid) == []


@pytest.mark.parametrize("restart", ["on-failure", "never"])
def test_a_process_that_exits_is_restarted_unless_its_spec_says_never(
    host: Host, restart: str
) -> None:
    """The component's ``restart`` setting: the default restarts a process
    that exits with a failure; ``never`` leaves it down (the wrapper runs it
    once, logs its exit and exits)."""
    supervisor = DirectSupervisor(host.connector, str(host.root), restart=QUICK)
    started = supervisor.start(host.spec("flaky", "sleep 1; exit 3", restart=restart))
    assert started.running and started.pid is not None

    def exited_once() -> bool:
        return "chassis-flaky exited with status 3" in host.log("flaky")

    wait_for("the first exit", exited_once)
    if restart == "on-failure":

        def restarted() -> bool:
            _, record = supervisor.observe("flaky")
            return record is not None and record.restarts >= 1

        wait_for("the restart", restarted)
        assert "chassis-flaky restarting in 1s (restart 1)" in host.log("flaky")
        return
    wait_for("the wrapper to exit", lambda: host.members(started.pid) == [])
    time.sleep(1.5)  # the first restart (after 1 s) would have come by now
    state, record = supervisor.observe("flaky")
    assert not state.running and record is None
    log = host.log("flaky")
    assert log.count("exited with status 3") == 1 and "restarting" not in log


def test_a_crash_while_settling_is_a_failed_start_not_a_restart_loop(host: Host) -> None:
    with pytest.raises(SupervisorError, match="status 4"):
        host.supervisor.start(host.spec("flaky", "echo nope >&2; exit 4"))
    time.sleep(1.5)  # the first restart would have come by now
    assert host.log("flaky").count("exited with status 4") == 1
    assert not host.supervisor.state("flaky").running


# -- pure parts ----------------------------------------------------------------


def test_restart_policy_and_launch_command() -> None:
    assert RestartPolicy().args() == "5 300 1 30"
    with pytest.raises(ValueError, match="positive"):
        RestartPolicy(burst=0)
    spec = ProcessSpec("api", "r1", "run", "/srv/releases/r1", {}, None, "/srv")
    assert "'5 300 1 30' /srv/run/api.restarts" in launch_command(spec, None, RestartPolicy())
    assert "'' /srv/run/api.restarts" in launch_command(spec, None, None)
    assert replace(spec, restart="never").restart == "never"
    with pytest.raises(ValueError, match="restart 'always': expected one of on-failure, never"):
        replace(spec, restart="always")
    assert restarts_path("/srv", "api") == "/srv/run/api.restarts"


def test_restart_record_parse_and_ownership() -> None:
    line = (
        '{"pid":42,"start":7,"restarts":2,"state":"backoff","status":137,'
        '"at":"2026-01-01T00:00:00Z","delay":2,"last":[{"at":"2026-01-01T00:00:00Z","status":137}]}'
    )
    record = RestartRecord.parse(line)
    assert record is not None and record.last == (("2026-01-01T00:00:00Z", 137),)
    assert record.of(PidRecord(42, 7, "r1", "api")) and not record.of(PidRecord(42, 8, "r1", "api"))
    assert not record.of(None)
    for bad in ("", "nope", line.replace('"backoff"', '"dancing"'), line.replace("42", '"42"')):
        assert RestartRecord.parse(bad) is None

    stat = "42 (sh) S 1 42 42 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 7 0 0"
    output = '{"pid":42,"start":7,"release_id":"r1","component":"api"}\n' + stat + "\n"
    observed, parsed = parse_observation(output + "--chassis-restarts--\n" + line + "\n")
    assert observed.running and parsed == record
    waiting = restart_aware(observed, parsed, "api")
    assert not waiting.running and waiting.pid is None and "restarting in 2s" in waiting.detail
    # A record left by an earlier instance (another start time) says nothing of this one.
    assert restart_aware(observed, RestartRecord.parse(line.replace(":7,", ":6,")), "api").running
    assert parse_observation(output + "--chassis-restarts--\n") == (DirectState.parse(output), None)
    # The wrapper killed while it waited: nothing will restart the component.
    gone = DirectState.parse(output.splitlines()[0])
    assert current_record(gone, record) == replace(record, state="stopped")
    dead = restart_aware(gone, record, "api")
    assert not dead.running and "its wrapper is gone, restart 2 will not come" in dead.detail


def test_a_wrapper_that_gave_up_is_not_running_before_it_has_exited() -> None:
    # The wrapper records gave-up, then exits: a look between the two finds
    # it alive, but its component is not running and nothing restarts it.
    stat = "42 (sh) S 1 42 42 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 7 0 0"
    output = '{"pid":42,"start":7,"release_id":"r1","component":"api"}\n' + stat + "\n"
    line = (
        '{"pid":42,"start":7,"restarts":2,"state":"gave-up","status":3,'
        '"at":"2026-01-01T00:00:00Z","delay":0,"last":[{"at":"2026-01-01T00:00:00Z","status":3}]}'
    )
    observed, record = parse_observation(output + "--chassis-restarts--\n" + line + "\n")
    assert observed.running and record is not None
    exiting = restart_aware(observed, record, "api")
    assert not exiting.running and exiting.pid is None
    assert exiting.detail.startswith("not running: gave up restarting after 2 restart(s)")
    gone = restart_aware(DirectState.parse(output.splitlines()[0]), record, "api")
    assert not gone.running and "gave up restarting after 2 restart(s)" in gone.detail
