"""The supervisors' pure parts: env files, /proc parsing, pidfiles, errors.

The env file is written in systemd ``EnvironmentFile=`` syntax, which a POSIX
``sh`` also reads back exactly: both must give the original values (the
direct supervisor loads it with its own parser, never a shell).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.supervisors import ProcessSpec, SupervisorError
from adapters.supervisors.direct import (
    DirectState,
    PidRecord,
    env_glob,
    exit_status,
    parse_launch,
    parse_proc_stat,
    since_marker,
    start_marker,
    stop_command,
)
from adapters.supervisors.envfile import parse_env_file, quote_env_value, render_env_file

# -- env files ---------------------------------------------------------------------

def _representable(character: str) -> bool:
    """Not a Unicode non-character: systemd drops those, so the writer refuses them."""
    code = ord(character)
    return not (0xFDD0 <= code <= 0xFDEF or code & 0xFFFE == 0xFFFE)


values = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00").filter(
        _representable
    ),
    max_size=40,
)
NASTY = [
    "",
    "plain",
    "two words",
    "$HOME ${HOME} $(id) `id`",
    "back\\slash\\",
    "\\\n",
    "'single' \"double\"",
    "new\nline\r\n\ttab",
    " leading and trailing ",
    "#not a comment",
    "ünïcödé ✓",
]


def sourced_by_sh(tmp_path: Path, env: dict[str, str]) -> dict[str, str]:
    """What ``set -a; . FILE`` gives a POSIX shell (a second, independent reader)."""
    path = tmp_path / "app.env"
    path.write_bytes(render_env_file(env))
    script = 'set -a; . "$1"; set +a; for n in $2; do eval "printf \'%s\\0\' \\"\\$$n\\""; done'
    out = subprocess.run(
        ["/bin/sh", "-c", script, "sh", str(path), " ".join(env)],
        capture_output=True,
        check=True,
        env={},
    ).stdout
    return dict(zip(env, out.decode("utf-8").split("\0")[:-1], strict=True))


def test_env_file_format() -> None:
    assert render_env_file({"B": 'say "hi" $USER `id` \\', "A": "x"}) == (
        b'A="x"\nB="say \\"hi\\" \\$USER \\`id\\` \\\\"\n'
    )
    assert quote_env_value("it's") == '"it\'s"'


def test_nasty_values_survive_sh(tmp_path: Path) -> None:
    env = {f"V{i}": value for i, value in enumerate(NASTY)}
    assert sourced_by_sh(tmp_path, env) == env
    assert parse_env_file(render_env_file(env)) == env


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.dictionaries(st.from_regex(r"[A-Z_][A-Z0-9_]{0,8}", fullmatch=True), values, max_size=4))
def test_any_values_survive_sh(tmp_path: Path, env: dict[str, str]) -> None:
    assert sourced_by_sh(tmp_path, env) == env


@settings(max_examples=40)
@given(st.dictionaries(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True), values))
def test_parse_env_file_inverts_render(env: dict[str, str]) -> None:
    assert parse_env_file(render_env_file(env)) == env


def test_env_file_rejects_bad_names_without_echoing_values() -> None:
    with pytest.raises(ValueError, match="invalid environment variable name") as info:
        render_env_file({"BAD-NAME": "topsecret", "1X": "topsecret"})
    assert "topsecret" not in str(info.value)
    with pytest.raises(ValueError, match="TOKEN: value contains a NUL byte") as info:
        render_env_file({"TOKEN": "top\0secret"})
    assert "secret" not in str(info.value).replace("TOKEN", "")


# -- /proc and the pidfile ---------------------------------------------------------


STAT = "4242 ({comm}) {state} 1 4242 4242 0 -1 4194560 90 0 0 0 0 0 0 0 20 0 1 0 987654 0 0"


def test_parse_proc_stat_with_a_hostile_comm() -> None:
    stat = parse_proc_stat(STAT.format(comm="a) (b c) ", state="S"))
    assert (stat.pid, stat.state, stat.ppid, stat.pgrp, stat.session, stat.starttime) == (
        4242,
        "S",
        1,
        4242,
        4242,
        987654,
    )
    assert not stat.zombie
    assert parse_proc_stat(STAT.format(comm="python3", state="Z")).zombie
    with pytest.raises(ValueError):
        parse_proc_stat("garbage")


def test_pid_record_round_trip() -> None:
    record = PidRecord(4242, 987654, "3f9a", "api")
    line = record.to_bytes().decode()
    assert line == '{"pid":4242,"start":987654,"release_id":"3f9a","component":"api"}\n'
    assert PidRecord.parse(line) == record
    for bad in ("", "{}", '{"pid":"1","start":2,"release_id":"r","component":"c"}', "[1]"):
        with pytest.raises(ValueError):
            PidRecord.parse(bad)


def state_of(*lines: str) -> DirectState:
    return DirectState.parse("".join(f"{line}\n" for line in lines))


def test_direct_state_parse() -> None:
    record = PidRecord(4242, 987654, "3f9a", "api").to_bytes().decode().strip()
    running = STAT.format(comm="python3", state="S")

    assert state_of().to_state("api").detail == "not started"
    up = state_of(record, running).to_state("api")
    assert (up.running, up.pid, up.release_id, up.detail) == (
        True,
        4242,
        "3f9a",
        "running (pid 4242)",
    )

    gone = state_of(record).to_state("api")
    assert (gone.running, gone.pid, gone.release_id) == (False, None, "3f9a")
    assert gone.detail == "exited (pid 4242 is gone)"

    zombie = state_of(record, STAT.format(comm="python3", state="Z"))
    assert zombie.ours and not zombie.running
    assert zombie.to_state("api").detail == "exited (pid 4242 is a zombie)"

    reused = state_of(record, running.replace("987654", "987655"))
    assert not reused.ours
    assert reused.to_state("api").detail == "exited (pid 4242 now belongs to another process)"

    other_pid = state_of(record, running.replace("4242 (", "4243 (", 1))
    assert other_pid.stat is None and not other_pid.running

    broken = state_of("not json").to_state("api")
    assert not broken.running and broken.detail.startswith("not running (unreadable pidfile")


def test_state_command_reads_the_pidfile_and_proc(tmp_path: Path) -> None:
    # The shell half of the fact, against this very process.
    run = tmp_path / "run"
    run.mkdir()
    start = parse_proc_stat(Path(f"/proc/{os.getpid()}/stat").read_text()).starttime
    (run / "api.pid").write_bytes(PidRecord(os.getpid(), start, "r1", "api").to_bytes())
    out = subprocess.run(
        ["/bin/sh", "-c", DirectState.command(str(tmp_path), "api")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert DirectState.parse(out).running
    (run / "api.pid").unlink()
    empty = subprocess.run(
        ["/bin/sh", "-c", DirectState.command(str(tmp_path), "api")], capture_output=True
    )
    assert (empty.returncode, empty.stdout) == (0, b"")


def test_launch_output_parse() -> None:
    pid, stat = parse_launch("pid 4242\n" + STAT.format(comm="sh", state="S") + "\n")
    assert pid == 4242 and stat is not None and stat.starttime == 987654
    assert parse_launch("pid 17\n") == (17, None)
    with pytest.raises(ValueError):
        parse_launch("oops")


def test_stop_command_carries_its_timings() -> None:
    words = shlex.split(stop_command("/srv/x/run/api.pid", 2.0))
    assert words[:4] == ["exec", "python3", "-I", "-c"]
    assert words[5:] == ["/srv/x/run/api.pid", "2", "5"]
    assert "os.killpg(group, signal.SIGTERM)" in words[4]


def test_stop_wakes_when_the_group_exits_not_at_a_poll_tick(tmp_path: Path) -> None:
    """The stop waits on the members' pidfds: a process that exits on TERM
    after 0.2 s is reported stopped right then, and one that ignores TERM is
    killed at the timeout; both are gone when it returns."""
    quick = subprocess.Popen(
        ["/bin/sh", "-c", "trap 'sleep 0.2; exit 0' TERM; while :; do sleep 0.05; done"],
        start_new_session=True,
    )
    stubborn = subprocess.Popen(
        ["/bin/sh", "-c", "trap '' TERM; while :; do sleep 0.05; done"], start_new_session=True
    )
    try:
        for process, expected in ((quick, "stopped"), (stubborn, "killed")):
            stat = parse_proc_stat(Path(f"/proc/{process.pid}/stat").read_text())
            pidfile = tmp_path / f"{process.pid}.pid"
            pidfile.write_bytes(PidRecord(process.pid, stat.starttime, "a" * 64, "api").to_bytes())
            out = subprocess.run(
                ["/bin/sh", "-c", stop_command(str(pidfile), 1.0)],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert out.stdout.strip() == expected, out.stderr
            assert not pidfile.exists()
            process.wait(timeout=5)  # reaped here: the group really is gone
    finally:
        for process in (quick, stubborn):
            process.kill()
            process.wait()


def test_log_helpers() -> None:
    marker = start_marker("api", "r2")
    log = "\n".join(
        [
            start_marker("api", "r1") + " at 2024-01-01T00:00:00Z",
            "old output",
            marker + " at 2024-01-02T00:00:00Z",
            "boom",
            "==> chassis: chassis-api exited with status 3",
        ]
    )
    tail = since_marker(log, marker, 20)
    assert tail == "boom\n==> chassis: chassis-api exited with status 3"
    assert exit_status(tail) == 3
    assert exit_status("no status here") is None
    assert since_marker("a\nb\nc", marker, 2) == "b\nc"


# -- specs and errors ----------------------------------------------------------------


def spec(**overrides: object) -> ProcessSpec:
    values: dict[str, object] = {
        "component": "api",
        "release_id": "r1",
        "command": "python3 app.py",
        "workdir": "/srv/app/releases/r1",
        "env": {"TOKEN": "topsecret"},
        "env_file": None,
        "root": "/srv/app",
    }
    values.update(overrides)
    return ProcessSpec(**values)  # type: ignore[arg-type]


def test_process_spec_validates_and_hides_env() -> None:
    assert "topsecret" not in repr(spec())
    for bad in (
        {"component": "../etc"},
        {"component": ""},
        {"release_id": "r1/../x"},
        {"command": "  "},
        {"workdir": "releases/r1"},
        {"root": "srv"},
        {"env_file": "shared/app.env"},
    ):
        with pytest.raises(ValueError):
            spec(**bad)


def test_supervisor_error_is_one_line_with_diagnostics() -> None:
    e = SupervisorError(
        "web-1", "api", "exited at once", where="10.0.0.5:22", log_tail="line one\nboom\n"
    )
    assert str(e) == "host web-1 (10.0.0.5:22): component api: exited at once: line one | boom"
    assert e.exit_code == 15
    assert e.diagnostics() == f"{e}\n  log tail:\n    line one\n    boom"
    bare = SupervisorError("web-1", "api", "did not stop")
    assert str(bare) == bare.diagnostics() == "host web-1: component api: did not stop"


def test_env_glob_sweeps_only_its_component(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    names = [
        ".api.0123456789abcdef.env",  # api's: swept
        ".api.jobs.0123456789abcdef.env",  # component "api.jobs": kept
        ".api.0123.env",
        "api.pid",
    ]
    for name in names:
        (run / name).write_text("x")
    subprocess.run(["/bin/sh", "-c", f"rm -f -- {env_glob(str(tmp_path), 'api')}"], check=True)
    assert sorted(p.name for p in run.iterdir()) == sorted(names[1:])


def test_a_late_stop_never_removes_the_pidfile_of_a_newer_process(tmp_path: Path) -> None:
    """A stop that is still waiting (or was orphaned by a killed chassis) when
    the component is started again must leave the new pidfile in place."""
    termed = tmp_path / "termed"
    stubborn = subprocess.Popen(
        ["/bin/sh", "-c", f"trap 'touch {termed}' TERM; while :; do sleep 0.05; done"],
        start_new_session=True,
    )
    try:
        stat = parse_proc_stat(Path(f"/proc/{stubborn.pid}/stat").read_text())
        pidfile = tmp_path / "api.pid"
        pidfile.write_bytes(PidRecord(stubborn.pid, stat.starttime, "a" * 64, "api").to_bytes())
        stopping = subprocess.Popen(
            ["/bin/sh", "-c", stop_command(str(pidfile), 1.5)], stdout=subprocess.PIPE, text=True
        )
        newer = PidRecord(os.getpid(), 1, "b" * 64, "api").to_bytes()
        deadline = time.monotonic() + 20
        while not termed.exists():  # the stop read the old record and sent TERM
            assert time.monotonic() < deadline, "the stop never sent TERM"
            time.sleep(0.01)
        pidfile.write_bytes(newer)
        out, _ = stopping.communicate(timeout=20)
        assert out.strip() == "killed"
        assert pidfile.read_bytes() == newer
    finally:
        stubborn.kill()
        stubborn.wait()
    # Without a newer record the pidfile goes, as before.
    gone = subprocess.run(
        ["/bin/sh", "-c", stop_command(str(pidfile), 0.1)], capture_output=True, text=True
    )
    assert gone.stdout.strip() in ("foreign", "gone") and not pidfile.exists()


def test_a_stopping_group_is_scanned_twice_not_once_per_exit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each scan reads every process's stat on the host. The stop waits for
    every member it found, then scans once more for any forked meanwhile
    (here the trap's sleep): two scans, however many exits there are."""
    from adapters.supervisors import group_stop

    scans: list[int] = []
    real = group_stop._members

    def counted(group: int) -> list[int]:
        scans.append(group)
        return real(group)

    monkeypatch.setattr(group_stop, "_members", counted)
    group = subprocess.Popen(
        [
            "/bin/sh",
            "-c",
            "sleep 30 & (trap 'sleep 0.3; exit 0' TERM; while :; do sleep 0.05; done) & wait",
        ],
        start_new_session=True,
    )
    try:
        stat = parse_proc_stat(Path(f"/proc/{group.pid}/stat").read_text())
        pidfile = tmp_path / "api.pid"
        pidfile.write_bytes(PidRecord(group.pid, stat.starttime, "a" * 64, "api").to_bytes())
        time.sleep(0.2)  # the subshell's trap is set
        assert group_stop.stop(str(pidfile), 5.0, 5.0) == "stopped"
        assert len(scans) == 2, scans
        assert real(group.pid) == []
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group.pid, signal.SIGKILL)
        group.wait()


def test_stop_without_pidfds_looks_instead_and_says_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host whose Python or kernel has no pidfds (Python < 3.9, Linux < 5.3)
    gets the same outcomes from the looking fallback."""
    from adapters.supervisors import group_stop

    monkeypatch.delattr(os, "pidfd_open", raising=False)
    quick = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        stat = parse_proc_stat(Path(f"/proc/{quick.pid}/stat").read_text())
        pidfile = tmp_path / "api.pid"
        pidfile.write_bytes(PidRecord(quick.pid, stat.starttime, "a" * 64, "api").to_bytes())
        assert group_stop.stop(str(pidfile), 5.0, 5.0) == "stopped"
        assert not pidfile.exists()
        assert quick.wait(timeout=5) == -signal.SIGTERM
        assert group_stop.stop(str(pidfile), 5.0, 5.0) == "none"
    finally:
        quick.kill()
        quick.wait()
