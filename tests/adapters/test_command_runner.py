"""The SSH command runner's protocol, driven over pipes by each interpreter a
host may have: this one's ``/usr/bin/python3`` and, where one is found, an
older one (``$CHASSIS_TEST_OLD_PYTHON``, else python3.8), since the runner
must run on whatever ``python3`` a host has. The same program runs over sshd
in ``test_host_session.py``."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from adapters.connectors import session_agent


def _interpreters() -> list[str]:
    found = [p for p in ("/usr/bin/python3",) if os.access(p, os.X_OK)]
    for candidate in (os.environ.get("CHASSIS_TEST_OLD_PYTHON"), shutil.which("python3.8")):
        if candidate and os.access(candidate, os.X_OK):
            probe = subprocess.run([candidate, "-c", "pass"], capture_output=True, check=False)
            if probe.returncode == 0:
                found.append(candidate)
                break
    return found


class Runner:
    def __init__(self, python: str, cache: Path | None = None) -> None:
        env = dict(os.environ)
        if cache is not None:
            env["XDG_CACHE_HOME"] = str(cache)
        self.process = subprocess.Popen(
            [python, "-I", "-S", "-u", "-c", session_agent.source()],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self.stdin, self.stdout = self.process.stdin, self.process.stdout
        self.hello = json.loads(self.stdout.readline())
        self.next = 0

    def send(self, **request: Any) -> int:
        self.next += 1
        message = {"id": self.next, "stdin": "", "env": {}, "timeout": 30, **request}
        if isinstance(message["stdin"], bytes):
            message["stdin"] = base64.b64encode(message["stdin"]).decode()
        self.stdin.write((json.dumps(message) + "\n").encode())
        self.stdin.flush()
        return self.next

    def reply(self) -> dict[str, Any]:
        message: dict[str, Any] = json.loads(self.stdout.readline())
        message["stdout"] = base64.b64decode(message["stdout"])
        message["stderr"] = base64.b64decode(message["stderr"])
        return message

    def close(self) -> None:
        self.stdin.close()
        self.process.wait(timeout=30)

    def ask(self, **request: Any) -> dict[str, Any]:
        ident = self.send(**request)
        got = self.reply()
        assert got["id"] == ident
        return got


@pytest.fixture(params=_interpreters())
def python(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def runner(python: str, tmp_path: Path) -> Iterator[Runner]:
    started = Runner(python, tmp_path / "cache")
    yield started
    started.close()


def test_a_command_gets_its_stdin_env_and_a_session_and_its_exit_status(runner: Runner) -> None:
    assert runner.hello["hello"] == session_agent.HELLO
    got = runner.ask(
        command="cat; echo $CHASSIS_X; ps -o sid= -p $$ | tr -d ' '; echo $$; exit 3",
        stdin=b"in\n",
        env={"CHASSIS_X": "x1"},
    )
    out = got["stdout"].decode().split()
    assert got["exit"] == 3 and not got["timed_out"]
    assert out[:2] == ["in", "x1"] and out[2] == out[3]  # its own session leader


def test_a_program_runs_as_main_in_a_fork_with_argv_stdin_and_env(runner: Runner) -> None:
    program = (
        "import os, sys\n"
        "print(__name__, sys.argv, sys.stdin.read().upper(), os.environ['CHASSIS_X'],"
        " os.getsid(0) == os.getpid(), os.getppid())\n"
        "sys.exit(int(sys.argv[1]))"
    )
    got = runner.ask(python=program, argv=["4", "two words"], stdin=b"abc", env={"CHASSIS_X": "y"})
    assert got["exit"] == 4
    text = got["stdout"].decode()
    assert text.startswith("__main__ ['-c', '4', 'two words'] ABC y True ")
    assert int(text.split()[-1]) == runner.hello["pid"]  # forked by the runner itself
    failed = runner.ask(python="raise ValueError('boom')")
    assert failed["exit"] == 1 and failed["stderr"].endswith(b"ValueError: boom\n")
    broken = runner.ask(python="def broken(:\n    pass")
    assert broken["exit"] == 1 and b"SyntaxError" in broken["stderr"]


def test_a_module_programs_import_is_loaded_once_in_the_runner(runner: Runner) -> None:
    """The port-owner look, run up to three times a deploy, imports socket:
    the runner imports it before forking the first program that names it,
    so every program after it finds it loaded. A program that names none of
    those modules loads none of them."""
    looks = "import sys\nprint(sorted(m for m in ('socket', 'struct') if m in sys.modules))\n"
    assert runner.ask(python=looks)["stdout"] == b"[]\n"
    naming = looks + "import socket, struct\n"
    assert runner.ask(python=naming)["stdout"] == b"['socket', 'struct']\n"
    assert runner.ask(python=looks)["stdout"] == b"['socket', 'struct']\n"


def test_large_input_and_output_flow_both_ways(runner: Runner) -> None:
    data = os.urandom(3_000_000)
    got = runner.ask(command="cat; head -c 2000000 /dev/zero >&2", stdin=data)
    assert got["exit"] == 0 and got["stdout"] == data and len(got["stderr"]) == 2_000_000


def test_a_timeout_and_a_kill_end_the_whole_group(runner: Runner, tmp_path: Path) -> None:
    marker = tmp_path / "child"
    started = time.monotonic()
    got = runner.ask(command=f"sleep 30 & echo $! > {marker}; wait", timeout=0.5)
    assert got["timed_out"] and got["exit"] == -9
    assert time.monotonic() - started < 20
    child = int(marker.read_text())
    for _ in range(200):  # killed with its group: gone, or a zombie for init to reap
        stat = Path(f"/proc/{child}/stat")
        if not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z":
            break
        time.sleep(0.01)
    else:
        pytest.fail(f"sleep {child} outlived its command's timeout")
    ident = runner.send(command="sleep 30")
    time.sleep(0.2)
    runner.stdin.write((json.dumps({"kill": ident}) + "\n").encode())
    runner.stdin.flush()
    killed = runner.reply()
    assert killed["id"] == ident and killed["exit"] == -9 and not killed["timed_out"]


def test_a_timeout_ends_a_group_whose_leader_exited_but_whose_member_holds_the_output(
    runner: Runner,
) -> None:
    started = time.monotonic()
    got = runner.ask(command="sleep 30 & exit 0", timeout=0.5)
    assert got["timed_out"] and got["exit"] == 0
    assert time.monotonic() - started < 20


def test_at_the_end_of_its_input_the_runner_lets_what_runs_finish(runner: Runner) -> None:
    ident = runner.send(command="sleep 0.3; echo done")
    runner.stdin.close()
    got = runner.reply()
    assert got["id"] == ident and got["stdout"] == b"done\n"
    assert runner.process.wait(timeout=30) == 0


def test_a_line_it_cannot_read_starts_nothing_and_the_runner_goes_on(
    runner: Runner, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    for line in (
        b"not json",
        b"[1, 2]",
        json.dumps({"command": f"touch {marker}"}).encode(),  # no id
        json.dumps({"id": 99, "command": f"touch {marker}", "stdin": 5}).encode(),
        json.dumps({"id": 98, "command": f"touch {marker}", "timeout": "soon"}).encode(),
    ):
        runner.stdin.write(line + b"\n")
    runner.stdin.flush()
    got = runner.ask(command="echo still here")
    assert got["stdout"] == b"still here\n"
    assert not marker.exists()


SOURCE = "print('compiled from the source')"
DIGEST = hashlib.sha256(SOURCE.encode()).hexdigest()


def _planted(cache: Path, python: str, mode: int) -> Path:
    """A cache entry under SOURCE's digest holding another program."""
    tag = subprocess.run(
        [python, "-c", "import sys; print(sys.implementation.cache_tag)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    directory = cache / "chassis" / "programs"
    directory.mkdir(parents=True, mode=0o700, exist_ok=True)
    directory.chmod(0o700)
    entry = directory / f"{DIGEST}.{tag}.code"
    dump = "import marshal, sys; sys.stdout.buffer.write(marshal.dumps(compile(" + (
        "\"print('loaded from the cache')\", '<chassis>', 'exec')))"
    )
    entry.write_bytes(subprocess.run([python, "-c", dump], capture_output=True, check=True).stdout)
    entry.chmod(mode)
    return entry


def test_a_compiled_program_is_kept_for_the_next_connection(python: str, tmp_path: Path) -> None:
    """Compiling the archive reader costs a host ~5 ms a connection; the
    runner keeps what it compiled in the user's cache, keyed by the sha256
    the client sends, and the next runner loads it instead."""
    cache = tmp_path / "cache"
    first = Runner(python, cache)
    got = first.ask(python=SOURCE, python_sha256=DIGEST)
    first.close()
    assert got["stdout"] == b"compiled from the source\n"
    directory = cache / "chassis" / "programs"
    entries = list(directory.iterdir())
    assert len(entries) == 1 and entries[0].name.startswith(DIGEST)
    assert directory.stat().st_mode & 0o777 == 0o700
    assert entries[0].stat().st_mode & 0o777 == 0o600
    # What a later runner runs is what is stored under the digest.
    _planted(cache, python, 0o600)
    second = Runner(python, cache)
    assert second.ask(python=SOURCE, python_sha256=DIGEST)["stdout"] == b"loaded from the cache\n"
    second.close()


@pytest.mark.parametrize(
    "hazard", ["entry-others-can-write", "directory-open-to-others", "garbage"]
)
def test_a_cache_entry_anyone_else_could_have_written_is_not_run(
    python: str, tmp_path: Path, hazard: str
) -> None:
    cache = tmp_path / "cache"
    entry = _planted(cache, python, 0o600)
    if hazard == "entry-others-can-write":
        entry.chmod(0o666)
    elif hazard == "directory-open-to-others":
        entry.parent.chmod(0o777)
    else:
        entry.write_bytes(b"not a code object")
    runner = Runner(python, cache)
    got = runner.ask(python=SOURCE, python_sha256=DIGEST)
    runner.close()
    assert got["exit"] == 0 and got["stdout"] == b"compiled from the source\n"
