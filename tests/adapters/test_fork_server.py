"""The fork server that runs Chassis' host programs on local hosts without
an interpreter start each (over SSH the command runner forks them): the same
outcomes as ``python3 -I -c SOURCE ARGS`` (exit status, output, stdin,
argv, env), each program a session leader that a timeout kills with its
group, and a fallback to a fresh interpreter once the server is gone."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.connectors.fork_server import ForkServer
from adapters.connectors.local import LocalConnector
from adapters.errors import ConnectorTimeout


@pytest.fixture
def server() -> Iterator[ForkServer]:
    started = ForkServer(sys.executable)
    yield started
    started.close()


def run(server: ForkServer, source: str, *args: str, stdin: bytes = b"") -> tuple[int, str, str]:
    process = server.spawn(source, ["-c", *args], {"CHASSIS_X": "x1"})
    out, err = process.communicate(stdin, timeout=30)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


# (source, exit status, stdout, a part of stderr) as python3 -I -c gives them.
OUTCOMES = [
    ("print('hi')", 0, "hi\n", ""),
    ("import sys; print('a'); sys.exit(3)", 3, "a\n", ""),
    ("import sys; sys.exit('went wrong')", 1, "", "went wrong\n"),
    ("raise ValueError('boom')", 1, "", "ValueError: boom"),
    ("import sys; sys.stdout.write('no newline')", 0, "no newline", ""),
    ("def broken(:\n    pass", 1, "", "SyntaxError"),
]


@pytest.mark.parametrize(
    ("source", "code", "out", "err"),
    [
        *OUTCOMES,
        ("import os, signal; os.kill(os.getpid(), signal.SIGTERM)", -signal.SIGTERM, "", ""),
    ],
)
def test_outcomes_are_those_of_an_interpreter(
    server: ForkServer, source: str, code: int, out: str, err: str
) -> None:
    got = run(server, source)
    assert got[0] == code and got[1] == out and err in got[2]
    fresh = subprocess.run([sys.executable, "-I", "-c", source], capture_output=True, check=False)
    assert (fresh.returncode, fresh.stdout.decode()) == (code, out)


def test_argv_env_stdin_and_a_session_of_its_own(server: ForkServer) -> None:
    program = (
        "import os, sys\n"
        "data = sys.stdin.buffer.read()\n"
        "print(__name__, sys.argv, os.environ['CHASSIS_X'], len(data), "
        "os.getsid(0) == os.getpid(), os.getppid())\n"
    )
    code, out, _ = run(server, program, "a b", "--c", stdin=b"z" * 1000)
    name, rest = out.split(" ", 1)
    assert code == 0 and name == "__main__"
    assert rest.startswith("['-c', 'a b', '--c'] x1 1000 True ")
    assert int(rest.split()[-1]) == server.process.pid


def test_large_input_and_output_flow_both_ways(server: ForkServer) -> None:
    """Several MiB in while as much comes out: neither side blocks the other."""
    data = os.urandom(3 << 20)
    program = "import sys; d = sys.stdin.buffer.read(); sys.stdout.buffer.write(d[::-1])"
    process = server.spawn(program, ["-c"], {})
    out, _ = process.communicate(data, timeout=60)
    assert process.returncode == 0
    assert hashlib.sha256(out).digest() == hashlib.sha256(data[::-1]).digest()


def test_a_timeout_kills_the_group_and_leaves_nothing(server: ForkServer, tmp_path: Path) -> None:
    marker = tmp_path / "grandchild"
    program = (
        "import subprocess, sys, time\n"
        f"subprocess.Popen(['sh', '-c', 'sleep 30; touch {marker}'])\n"
        "time.sleep(30)\n"
    )
    process = server.spawn(program, ["-c"], {})
    with pytest.raises(subprocess.TimeoutExpired):
        process.communicate(b"", timeout=0.5)
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate(timeout=10)
    assert process.returncode == -signal.SIGKILL
    # The grandchild too (zombies aside). SIGKILL is delivered at once but a
    # member exits when it is next scheduled: on a loaded machine that can be
    # after the program itself was reaped, so it gets a few seconds.
    deadline = time.monotonic() + 10
    while _alive_in_group(process.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive_in_group(process.pid)


def _alive_in_group(pgid: int) -> list[int]:
    alive = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            alive.append(int(entry.name))
    return alive


def test_programs_run_side_by_side(server: ForkServer) -> None:
    results: dict[int, tuple[int, str, str]] = {}

    def one(n: int) -> None:
        results[n] = run(server, f"import time; time.sleep(0.2); print({n})")

    threads = [threading.Thread(target=one, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == {n: (0, f"{n}\n", "") for n in range(8)}


def test_a_dead_server_refuses_and_ends_what_waits_on_it(server: ForkServer) -> None:
    waiting = server.spawn("import time; time.sleep(30)", ["-c"], {})
    server.process.kill()
    server.process.wait(10)
    waiting.exited.wait(10)
    assert waiting.returncode == -signal.SIGKILL  # nobody can report it now
    os.killpg(waiting.pid, signal.SIGKILL)
    with pytest.raises(OSError):
        server.spawn("print(1)", ["-c"], {})


def test_local_hosts_use_a_fork_server_and_keep_the_connector_contract(tmp_path: Path) -> None:
    local = LocalConnector("h1")
    program = "import os, sys; print(sys.argv[1:], os.getppid()); sys.exit(2)"
    first = local.run_python(program, ["x"], display="program")
    second = local.run_python(program, ["y"], display="program")
    assert (first.exit_code, second.exit_code) == (2, 2)
    assert first.stdout.split()[0] == "['x']" and second.stdout.split()[0] == "['y']"
    assert first.stdout.split()[-1] == second.stdout.split()[-1] != str(os.getpid())
    with pytest.raises(ConnectorTimeout, match=r"timed out after 0\.3s: sleeper"):
        local.run_python("import time; time.sleep(30)", timeout=0.3, display="sleeper")


def run_inline(server: ForkServer, source: str, *args: str) -> tuple[int, int, str, str]:
    process = server.spawn(source, ["-c", *args], {}, inline=True)
    out, err = process.communicate(None, timeout=30)
    assert process.returncode is not None
    return process.pid, process.returncode, out.decode(), err.decode()


@pytest.mark.parametrize(
    ("source", "code", "out", "err"),
    [
        *OUTCOMES,
        ("import sys; print('hi', sys.argv[1:])", 0, "hi ['a', 'b']\n", ""),
        ("import sys; print(repr(sys.stdin.read()))", 0, "''\n", ""),
    ],
)
def test_an_inline_program_runs_in_the_server_with_an_interpreters_outcomes(
    server: ForkServer, source: str, code: int, out: str, err: str
) -> None:
    pid, got, stdout, stderr = run_inline(server, source, "a", "b")
    assert pid == server.process.pid  # no fork: the server ran it
    assert (got, stdout) == (code, out) and err in stderr
    # The server's own streams and argv are back: a forked program and
    # another inline one see theirs only.
    assert run(server, "import sys; print(sys.argv[1:])", "c") == (0, "['c']\n", "")
    assert run_inline(server, "import sys; print(sys.argv[1:])", "d")[1:] == (0, "['d']\n", "")


def test_a_program_with_an_environment_is_forked_even_when_asked_inline(
    server: ForkServer,
) -> None:
    process = server.spawn(
        "import os; print(os.environ['CHASSIS_X'])", ["-c"], {"CHASSIS_X": "y"}, inline=True
    )
    out, _ = process.communicate(None, timeout=30)
    assert (process.returncode, out) == (0, b"y\n") and process.pid != server.process.pid
    assert "CHASSIS_X" not in run_inline(server, "import os; print(sorted(os.environ))")[2]


def test_a_quick_local_program_runs_unforked_and_a_hung_one_ends_its_server() -> None:
    local = LocalConnector("h1")
    where = "import os; print(os.getpid())"
    quick = local.run_python(where, display="where", quick=True)
    forked = local.run_python(where, display="where")
    assert quick.ok and forked.ok and quick.stdout != forked.stdout
    # A quick program fed input is forked: the server never reads a request's stdin.
    fed = local.run_python(where, display="where", quick=True, stdin=b"x")
    assert fed.ok and fed.stdout not in (quick.stdout, forked.stdout)
    with pytest.raises(ConnectorTimeout, match=r"timed out after 0\.3s: stuck"):
        local.run_python("import time; time.sleep(30)", timeout=0.3, display="stuck", quick=True)
    # The timeout killed the server that ran it; the next program gets a new one.
    deadline = time.monotonic() + 10
    while True:
        again = local.run_python(where, display="where", quick=True)
        assert again.ok
        if again.stdout != quick.stdout:
            break
        assert time.monotonic() < deadline, "the hung server was not replaced"
        time.sleep(0.05)


def test_a_program_run_again_is_the_same_program_with_its_own_arguments(
    server: ForkServer,
) -> None:
    """The server compiles each source once per connection: a second run
    of it still gets its own argv and its own module globals."""
    source = "import sys\ncount = globals().get('count', 0) + 1\nprint(sys.argv[1:], count)"
    assert run(server, source, "one") == (0, "['one'] 1\n", "")
    assert run(server, source, "two", "three") == (0, "['two', 'three'] 1\n", "")


def test_a_module_runs_as_python_m_would_in_its_own_cwd_and_whole_environment(
    tmp_path: Path,
) -> None:
    """``run_module``: ``python -m`` with a preloaded server, as the crash
    runner and the evolution fixtures use it. The child's environment is the
    one given, not the server's with changes; its cwd is importable."""
    (tmp_path / "probe_mod.py").write_text(
        "import json, os, sys\n"
        "print(json.dumps({'cwd': os.getcwd(), 'env': dict(os.environ), 'argv': sys.argv[1:],"
        " 'preloaded': 'tarfile' in sys.modules}))\n"
        "sys.exit(int(sys.argv[1]))\n"
    )
    os.environ["CHASSIS_SERVER_ONLY"] = "leaks"
    try:
        server = ForkServer(sys.executable, preload=("tarfile", "no_such_module_at_all"))
    finally:
        del os.environ["CHASSIS_SERVER_ONLY"]
    try:
        done = server.run_module(
            "probe_mod", ["3", "b"], cwd=str(tmp_path), env={"ONLY": "1"}, timeout=30
        )
        assert done.returncode == 3
        seen = json.loads(done.stdout)
        assert seen == {
            "cwd": str(tmp_path),
            "env": {"ONLY": "1"},
            "argv": ["3", "b"],
            "preloaded": True,
        }
        assert done.args[1:] == ["-m", "probe_mod", "3", "b"]

        (tmp_path / "killed_mod.py").write_text(
            "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n"
        )
        killed = server.run_module("killed_mod", [], cwd=str(tmp_path), env={}, timeout=30)
        assert killed.returncode == -signal.SIGKILL

        (tmp_path / "slow_mod.py").write_text(
            "import os, time\nopen('slow.pid', 'w').write(str(os.getpid()))\ntime.sleep(60)\n"
        )
        with pytest.raises(subprocess.TimeoutExpired):
            server.run_module("slow_mod", [], cwd=str(tmp_path), env={}, timeout=1)
        slow = int((tmp_path / "slow.pid").read_text())
        deadline = time.monotonic() + 10
        while Path(f"/proc/{slow}").exists():  # killed at the timeout, then reaped
            assert time.monotonic() < deadline, "the timed-out child still runs"
            time.sleep(0.02)
    finally:
        server.close()


def test_a_module_found_only_on_the_clients_path_runs_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server runs isolated (``-I``: no user site, no PYTHONPATH); the
    child searches the client's path as ``python -m`` in the client would."""
    lib, ws = tmp_path / "lib", tmp_path / "ws"
    lib.mkdir()
    ws.mkdir()
    (lib / "elsewhere_mod.py").write_text("print('found')\n")
    monkeypatch.setattr(sys, "path", [sys.path[0], str(lib), *sys.path[1:]])
    server = ForkServer(sys.executable)
    try:
        done = server.run_module("elsewhere_mod", [], cwd=str(ws), env={}, timeout=30)
        assert (done.returncode, done.stdout) == (0, "found\n"), done.stderr
    finally:
        server.close()
