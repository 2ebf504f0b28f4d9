"""The direct supervisor's launch writes the pidfile on the host, in the same
command that starts the process: a chassis killed while that command runs
(found by the crash fuzzer: the process kept its port, nobody could find it)
leaves a pidfile naming what it started, so recover and stop can find it."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
from pathlib import Path

from adapters.connectors.local import LocalConnector
from adapters.supervisors.base import ProcessSpec
from adapters.supervisors.direct import (
    DirectSupervisor,
    PidRecord,
    launch_command,
    parse_launch,
    pid_path,
)
from tests.recording import RecordingLocal


def host_and_spec(tmp_path: Path, release_id: str) -> tuple[Path, ProcessSpec]:
    """A host root laid out as the supervisor lays it, and ``sleep 30`` as api."""
    root = tmp_path / "host"
    for part in ("run", "logs", "releases/r1"):
        (root / part).mkdir(parents=True)
    spec = ProcessSpec(
        component="api",
        release_id=release_id,
        command="sleep 30",
        workdir=str(root / "releases/r1"),
        env={},
        env_file=None,
        root=str(root),
    )
    return root, spec


def test_the_launch_command_itself_writes_the_pidfile(tmp_path: Path) -> None:
    root, spec = host_and_spec(tmp_path, "ab" * 32)
    connector = LocalConnector("h")
    result = connector.run(launch_command(spec, None))  # no Python writes anything after
    pid, stat = parse_launch(result.stdout)
    try:
        assert stat is not None
        written = Path(pid_path(str(root), "api")).read_bytes()
        assert written == PidRecord(pid, stat.starttime, spec.release_id, "api").to_bytes()
        assert not Path(pid_path(str(root), "api") + ".launch").exists()
        state = DirectSupervisor(connector, str(root)).state("api")
        assert state.running and state.pid == pid and state.release_id == spec.release_id
    finally:
        with contextlib.suppress(ProcessLookupError):  # gone already: nothing to clean
            os.killpg(pid, signal.SIGKILL)


def test_the_pidfile_is_written_before_anything_is_printed(tmp_path: Path) -> None:
    """A chassis killed mid-launch closes the read end of the command's
    stdout: the first line the shell prints then kills it (SIGPIPE). Found
    by the crash fuzzer: the pid line came before the pidfile, so the
    started process kept its port and recover restored beside it."""
    root, spec = host_and_spec(tmp_path, "cd" * 32)
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody will read what the launch prints
    try:
        # restore_signals (the default) gives the shell SIGPIPE's default
        # action, as LocalConnector's and the host runner's commands have.
        launched = subprocess.run(
            ["/bin/sh", "-c", launch_command(spec, None)],
            stdout=write_end,
            stderr=subprocess.DEVNULL,
            check=False,
        )
    finally:
        os.close(write_end)
    state = DirectSupervisor(LocalConnector("h"), str(root)).state("api")
    try:
        assert state.running, f"launch exited {launched.returncode} and left no pidfile"
        assert state.release_id == spec.release_id
    finally:
        if state.pid:
            # Gone already is fine: what this test claims was checked above.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(state.pid, signal.SIGKILL)
        else:  # the old order: find what it started and stop it anyway
            subprocess.run(["pkill", "-f", "chassis-api"], check=False)


def test_a_start_makes_its_layout_sweeps_stale_env_files_and_stops_what_runs(
    tmp_path: Path,
) -> None:
    """The checks a start makes before launching ride on the launch command
    (one round trip): run/ and logs/ are made, env files a crashed start
    left are swept, and an instance still running is stopped first: one
    instance at a time, as when they were a command of their own."""
    root = tmp_path / "fresh"
    (root / "releases/r1").mkdir(parents=True)  # no run/, no logs/ yet
    spec = ProcessSpec(
        component="api",
        release_id="ef" * 32,
        command="sleep 30",
        workdir=str(root / "releases/r1"),
        env={},
        env_file=None,
        root=str(root),
    )
    supervisor = DirectSupervisor(LocalConnector("h"), str(root))
    first = supervisor.start(spec)
    stale = root / "run" / ".api.0123456789abcdef.env"
    other = root / "run" / ".worker.0123456789abcdef.env"
    stale.write_text("TOKEN=left-by-a-crash\n")
    other.write_text("TOKEN=not-ours\n")
    second = supervisor.start(spec)
    try:
        assert first.pid != second.pid
        assert not stale.exists() and other.exists()
        gone = Path(f"/proc/{first.pid}/stat")
        assert not gone.exists() or gone.read_text().rsplit(")", 1)[1].split()[0] == "Z"
        assert supervisor.state("api").pid == second.pid
    finally:
        supervisor.stop("api")


def test_a_health_gated_start_is_one_command_on_the_host(tmp_path: Path) -> None:
    """The launch writes the pidfile and looks at the process itself: a
    start whose health gate watches it next neither writes the pidfile again
    nor looks a second time (each was a round trip per host and start)."""
    root, spec = host_and_spec(tmp_path, "cd" * 32)
    gated = dataclasses.replace(spec, health_gated=True)
    connector = RecordingLocal("h")
    supervisor = DirectSupervisor(connector, str(root))
    state = supervisor.start(gated)
    try:
        assert len(connector.commands) == 1 and connector.writes == []
        looked = DirectSupervisor(LocalConnector("h"), str(root)).state("api")
        assert state.running and (state.pid, state.start) == (looked.pid, looked.start)
        assert (state.release_id, looked.release_id) == (spec.release_id, spec.release_id)
        assert state.detail == looked.detail == f"running (pid {state.pid})"
    finally:
        supervisor.stop("api")


def test_a_start_without_a_gate_still_looks_after_settling(tmp_path: Path) -> None:
    """Without a health gate, the supervisor's own look after its settle time
    is all that tells a start from a crash."""
    root, spec = host_and_spec(tmp_path, "ce" * 32)
    crashing = dataclasses.replace(spec, command="exit 3")
    supervisor = DirectSupervisor(LocalConnector("h"), str(root), settle_s=0.3)
    try:
        supervisor.start(crashing)
    except Exception as e:  # the supervisor's error, naming the exit
        assert "exited with status 3" in str(e), str(e)
    else:
        raise AssertionError("a command that exits at once started")
