"""Health is the process we started: real processes, real sockets, real /proc.

A stray ``python -m http.server`` answers whatever it is asked; these tests
check that the gate tells it from the supervised process (pid and start time,
its process group and descendants), on a local host and through sshd, and
that a supervised process that dies ends the gate at once.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from shlex import quote
from typing import Any

import pytest

from adapters.connectors import LocalConnector
from adapters.connectors.base import CommandResult, Connector
from adapters.connectors.ssh import SSHConnector
from adapters.health import HealthGate, ProcessGone, ProcessWatch, http_probe, port_conflicts
from adapters.health.gate import GateResult
from adapters.health.owner import OWNER_SCRIPT, Ownership, OwnerUnknown, observe
from adapters.health.probes import ProbeResult
from adapters.supervisors import DirectSupervisor, ProcessSpec
from tests.recording import RecordingLocal
from tests.sshd import SSHTestHost
from tests.strays import stray_server, wait_listening


def free_port(address: str) -> int:
    with socket.socket() as probe:
        probe.bind((address, 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(params=["local", "ssh"])
def host(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Connector, str, Path]]:
    """(connector, the address a controller probes, host root) for a local and an sshd host."""
    if request.param == "local":
        root = tmp_path / "root"
        root.mkdir()
        yield LocalConnector("h1"), "127.0.0.1", root
        return
    ssh: SSHTestHost = request.getfixturevalue("ssh_host")
    with SSHConnector(ssh.settings()) as connector:
        yield connector, ssh.address, ssh.root


@pytest.fixture
def supervised(
    host: tuple[Connector, str, Path],
) -> Iterator[Callable[[str], ProcessSpec]]:
    """Start a command under the direct supervisor as component ``api``; stop it after."""
    connector, _, root = host
    supervisor = DirectSupervisor(connector, str(root))

    def spec(command: str) -> ProcessSpec:
        return ProcessSpec(
            component="api",
            release_id="r1",
            command=command,
            workdir=str(root),
            env={},
            env_file=None,
            root=str(root),
        )

    yield spec
    supervisor.stop("api")


def gate(window_ms: int = 6000) -> HealthGate:
    return HealthGate(interval_ms=100, timeout_ms=1000, passes=2, window_ms=window_ms)


def test_a_stray_server_is_named_with_its_command_line(
    host: tuple[Connector, str, Path], tmp_path: Path
) -> None:
    connector, address, _ = host
    port = free_port(address)
    assert port_conflicts(connector, [port], address) == ([], 0)
    with stray_server(address, port, tmp_path / "site") as server:
        strangers, hidden = port_conflicts(connector, [port], address)
        assert [s.port for s in strangers] == [port]
        held = strangers[0].held_by(hidden)
        assert held.startswith(f"pid {server.pid} (") and "http.server" in held
        # Another local address is another socket: a stranger there does not count.
        if address == "127.0.0.1":
            assert port_conflicts(connector, [port], "127.0.0.2") == ([], 0)


def test_our_process_group_owns_the_socket_and_passes(
    host: tuple[Connector, str, Path],
    supervised: Callable[[str], ProcessSpec],
    tmp_path: Path,
) -> None:
    """The wrapper is the pid we record; the server is its grandchild: still ours."""
    connector, address, root = host
    port = free_port(address)
    (root / "healthz").write_text("ok\n")
    state = DirectSupervisor(connector, str(root)).start(
        supervised(f"python3 -m http.server {port} --bind {address}")
    )
    assert state.pid is not None and state.start is not None
    wait_listening(address, port)
    assert port_conflicts(connector, [port], address, [(state.pid, state.start)]) == ([], 0)
    watch = ProcessWatch(connector, "api", state.pid, state.start, port=port, address=address)
    result = gate().run(lambda: http_probe(address, port, "/healthz"), watch=watch)
    assert result.passed, result.reason


def test_a_server_left_in_our_group_by_its_exiting_parent_is_still_ours(
    host: tuple[Connector, str, Path],
    supervised: Callable[[str], ProcessSpec],
) -> None:
    """Not a descendant any more (reparented), but in the wrapper's process
    group: the quick look down the children lists cannot see it, so the
    whole scan must, as before it existed."""
    connector, address, root = host
    port = free_port(address)
    (root / "healthz").write_text("ok\n")
    state = DirectSupervisor(connector, str(root)).start(
        supervised(f"(python3 -m http.server {port} --bind {address} &) ; sleep 30")
    )
    assert state.pid is not None
    wait_listening(address, port)
    seen = observe(connector, [(state.pid, state.start)], [port], address)
    assert [listener.ours for listener in seen.listeners] == [True]
    assert not seen.strangers()


def test_the_kernels_listening_table_matches_proc_net_tcp() -> None:
    """The owner script asks sock_diag for listeners; /proc/net/tcp is its
    fallback. Both must read the same sockets the same way."""
    source = OWNER_SCRIPT.rsplit("LIMIT = int(sys.argv[2])", 1)[0]
    namespace: dict[str, Any] = {"__name__": "owner"}
    exec(compile(source, "<owner>", "exec"), namespace)
    opened = [socket.socket(socket.AF_INET)]
    opened[0].bind(("127.0.0.1", 0))
    if socket.has_ipv6:
        with contextlib.suppress(OSError):
            v6 = socket.socket(socket.AF_INET6)
            opened.append(v6)
            v6.bind(("::1", 0))
    with contextlib.ExitStack() as stack:
        for sock in opened:
            stack.enter_context(sock)
            if sock.getsockname()[1]:
                sock.listen()
        ports = {sock.getsockname()[1] for sock in opened if sock.getsockname()[1]}
        inodes = {os.fstat(sock.fileno()).st_ino for sock in opened if sock.getsockname()[1]}
        from_diag = [row for row in namespace["listening_diag"]() if row[1] in ports]
        from_proc = [row for row in namespace["listening_proc"]() if row[1] in ports]
    assert sorted(from_diag) == sorted(from_proc)
    assert {row[2] for row in from_diag} == inodes
    assert all(row[3] == os.getuid() for row in from_diag)


def test_a_stranger_answering_for_a_live_process_is_no_pass(
    host: tuple[Connector, str, Path],
    supervised: Callable[[str], ProcessSpec],
    tmp_path: Path,
) -> None:
    connector, address, root = host
    port = free_port(address)
    state = DirectSupervisor(connector, str(root)).start(supervised("sleep 30"))
    assert state.pid is not None
    with stray_server(address, port, tmp_path / "site") as server:
        watch = ProcessWatch(connector, "api", state.pid, state.start, port=port, address=address)
        result = gate(window_ms=800).run(lambda: http_probe(address, port, "/healthz"), watch=watch)
    assert not result.passed and not result.exited
    last = result.results[-1].detail
    assert "status 200, but port" in last
    assert f"is served by pid {server.pid} (" in last and f"not by api (pid {state.pid})" in last


def test_the_process_dying_ends_the_gate_at_once(
    host: tuple[Connector, str, Path],
    supervised: Callable[[str], ProcessSpec],
    tmp_path: Path,
) -> None:
    """Exit during the gate while a stranger keeps answering: a named failure,
    long before the window ends (and before the wrapper's restart could hide it)."""
    connector, address, root = host
    port = free_port(address)
    # Long enough that the first look sees the command running, even on a
    # loaded machine over SSH (it then names the exit, not "not running").
    state = DirectSupervisor(connector, str(root)).start(supervised("sleep 2; exit 3"))
    assert state.pid is not None
    with stray_server(address, port, tmp_path / "site"):
        watch = ProcessWatch(
            connector, "api", state.pid, state.start, port=port, address=address, child=True
        )
        result = gate(window_ms=60000).run(
            lambda: http_probe(address, port, "/healthz"), watch=watch
        )
    assert not result.passed and result.exited
    # The wrapper (the recorded pid) would restart the command: its child is what died.
    assert f"under pid {state.pid}) exited" in result.reason
    assert "during the health gate" in result.reason
    assert result.elapsed_ms < 60000


def test_command_probes_check_liveness_only(
    host: tuple[Connector, str, Path], supervised: Callable[[str], ProcessSpec]
) -> None:
    connector, address, root = host
    state = DirectSupervisor(connector, str(root)).start(supervised("sleep 30"))
    assert state.pid is not None
    watch = ProcessWatch(connector, "api", state.pid, state.start, port=None, address=address)
    passing = ProbeResult(True, "command 'true': exit 0", 1)
    assert watch(passing) == passing
    DirectSupervisor(connector, str(root)).stop("api")
    with pytest.raises(ProcessGone, match=rf"api \(pid {state.pid}\) exited"):
        watch(passing)


def test_a_reused_pid_is_not_our_process() -> None:
    """Same pid, another start time: a different process (pid reuse), so gone."""
    connector = LocalConnector("h1")
    own = observe(connector, [(1, None)], [], "127.0.0.1").roots[0]
    assert own.alive and own.start is not None
    watch = ProcessWatch(connector, "api", 1, own.start + 1, port=None, address="127.0.0.1")
    with pytest.raises(ProcessGone, match="now belongs to another process"):
        watch(ProbeResult(True, "ok", 0))


def test_systemd_main_pid_is_pinned_on_the_first_look() -> None:
    """systemd gives MainPID without a start time: the first look pins it."""
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        connector = LocalConnector("h1")
        watch = ProcessWatch(connector, "api", sleeper.pid, None, port=None, address="127.0.0.1")
        watch(ProbeResult(True, "ok", 0))
        assert watch.start is not None
        watch.start += 1  # as if systemd had restarted it under the same pid
        with pytest.raises(ProcessGone):
            watch(ProbeResult(True, "ok", 0))
    finally:
        sleeper.kill()
        sleeper.wait()


def test_an_unreadable_answer_fails_closed() -> None:
    with pytest.raises(OwnerUnknown):
        Ownership.parse("Traceback (most recent call last):")
    with pytest.raises(OwnerUnknown):
        Ownership.parse('{"roots": [{"pid": "1"}], "listeners": [], "hidden": 0}')

    def broken(result: ProbeResult) -> ProbeResult:
        raise OwnerUnknown("no /proc here")

    result: GateResult = gate(window_ms=300).run(lambda: ProbeResult(True, "ok", 0), watch=broken)
    assert not result.passed and "cannot tell who answered: OwnerUnknown: no /proc here" in (
        result.results[-1].detail
    )


class AsNobody(LocalConnector):
    """Runs every command as ``nobody``: a connector user that cannot read the
    descriptors of processes of ours running as root (systemd with ``sudo -n
    systemctl``)."""

    def run(self, command: str, **kwargs: Any) -> CommandResult:
        wrapped = f"setpriv --reuid=65534 --regid=65534 --clear-groups /bin/sh -c {quote(command)}"
        return super().run(wrapped, **kwargs)

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
        # Through run(), as nobody: not this process's (root's) fork server.
        return Connector.run_python(
            self, source, args, timeout=timeout, stdin=stdin, display=display
        )


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root, setpriv")
def test_unreadable_processes_of_ours_own_sockets_of_their_uid(tmp_path: Path) -> None:
    """Root's server is ours but unreadable to the connector user: its socket
    counts by uid. A stranger that user can see is still named."""
    connector = AsNobody("h1")
    ours_port, theirs_port = free_port("127.0.0.1"), free_port("127.0.0.1")
    with stray_server("127.0.0.1", ours_port, tmp_path / "ours") as ours:
        seen = observe(connector, [(ours.pid, None)], [ours_port], "127.0.0.1")
        assert seen.roots[0].alive
        assert [(s.ours, s.by_uid) for s in seen.listeners] == [(True, True)]
        site = tmp_path / "theirs"
        site.mkdir(mode=0o755)
        as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        stranger = subprocess.Popen(
            [*as_nobody, sys.executable, "-m", "http.server", str(theirs_port)],
            cwd=site,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_listening("127.0.0.1", theirs_port)
            strangers, hidden = port_conflicts(
                connector, [theirs_port], "127.0.0.1", [(ours.pid, None)]
            )
            assert [s.by_uid for s in strangers] == [False]
            assert strangers[0].held_by(hidden).startswith(f"pid {stranger.pid} (")
        finally:
            stranger.terminate()
            stranger.wait(10)


def test_a_watch_can_veto_a_pass_or_end_the_gate() -> None:
    """The gate's side of the contract, without hosts: a vetoed pass resets the
    count; ProcessGone stops the gate at that attempt, marked ``exited``."""
    seen: list[bool] = []

    def veto_first(result: ProbeResult) -> ProbeResult:
        seen.append(result.ok)
        if len(seen) == 1:
            return ProbeResult(False, f"{result.detail}, but a stranger answered", 0)
        if len(seen) == 4:
            raise ProcessGone("api (pid 7) exited")
        return result

    fast = HealthGate(interval_ms=0, timeout_ms=1, passes=3, window_ms=60000)
    result = fast.run(lambda: ProbeResult(True, "status 200", 0), watch=veto_first)
    assert (result.passed, result.exited, result.attempts) == (False, True, 4)
    assert [r.ok for r in result.results] == [False, True, True, False]
    assert result.reason.startswith("api (pid 7) exited during the health gate, at attempt 4")


def test_failing_attempts_look_only_every_half_second_passes_always() -> None:
    """Each look costs the host an interpreter: a component that is still
    starting (refused connections) is looked at every ``look_every_s``, a
    passing attempt every time."""
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        connector, now = RecordingLocal(), [100.0]
        watch = ProcessWatch(
            connector, "api", sleeper.pid, None, port=None, address="127.0.0.1",
            look_every_s=0.5, clock=lambda: now[0],
        )  # fmt: skip
        refused = ProbeResult(False, "connection refused", 0)
        for _ in range(4):  # 0.0 .. 0.3 s: nothing to look at yet
            assert watch(refused) == refused
            now[0] += 0.1
        assert len(connector.programs) == 0
        now[0] += 0.2  # 0.6 s since the watch began
        watch(refused)
        assert len(connector.programs) == 1
        passing = ProbeResult(True, "ok", 0)
        watch(passing)
        watch(passing)
        assert len(connector.programs) == 3
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_dead_process_is_named_soon_while_probes_keep_failing(
    host: tuple[Connector, str, Path],
    supervised: Callable[[str], ProcessSpec],
) -> None:
    """Probes that never pass (nothing listens) still find the exit, within
    a look's interval, not at the end of the window."""
    connector, address, root = host
    port = free_port(address)
    state = DirectSupervisor(connector, str(root)).start(supervised("sleep 1; exit 3"))
    assert state.pid is not None
    watch = ProcessWatch(
        connector, "api", state.pid, state.start, port=port, address=address, child=True
    )
    result = gate(window_ms=60000).run(lambda: http_probe(address, port, "/healthz"), watch=watch)
    assert not result.passed and result.exited
    assert f"under pid {state.pid}) exited" in result.reason
    assert result.elapsed_ms < 10000
