"""The SSH connector's command runner: one ``exec`` per connection, and
commands with the semantics of an ``exec`` each (real sshd on 127.0.0.11)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.connectors.base import Connector
from adapters.connectors.ssh import SSHConnector
from adapters.errors import ConnectorTimeout
from tests.sshd import SSHTestHost

pytestmark = pytest.mark.usefixtures("ssh_hosts")


@pytest.fixture
def connector(ssh_host: SSHTestHost) -> Iterator[SSHConnector]:
    c = SSHConnector(ssh_host.settings())
    try:
        yield c
    finally:
        c.close()


def _runner_pid(connector: SSHConnector) -> int:
    session = connector._session  # which process ran it is the point
    assert session is not None, "the connection started no command runner"
    return session.pid


def test_commands_run_under_one_runner_not_one_session_each(connector: SSHConnector) -> None:
    parents = {int(connector.run("echo $PPID", check=True).stdout) for _ in range(5)}
    assert parents == {_runner_pid(connector)}
    # Each command is its own session leader, as under sshd's exec.
    leader = connector.run("ps -o sid= -p $$ | tr -d ' '; echo $$", check=True).stdout.split()
    assert leader[0] == leader[1]


def test_host_programs_run_in_a_fork_of_the_runner_not_a_new_interpreter(
    connector: SSHConnector,
) -> None:
    """The runner forks each program itself, which is safe because it has one
    thread: the program's parent is the runner, and its command line is the
    runner's own (an interpreter started for it would read ``python3 -I -c ...``)."""
    connector.run("true", check=True)
    runner = _runner_pid(connector)
    program = (
        "import os\n"
        "mine = open('/proc/self/cmdline', 'rb').read()\n"
        "parents = open('/proc/%d/cmdline' % os.getppid(), 'rb').read()\n"
        "print(os.getppid(), mine == parents)"
    )
    parent, same = connector.run_python(program, [], display="program").stdout.split()
    assert int(parent) == runner
    assert same == "True", "the program runs in a new interpreter"
    threads = connector.run(f"grep '^Threads:' /proc/{runner}/status", check=True).stdout
    assert threads.split() == ["Threads:", "1"]


def test_the_runner_answering_is_the_pre_flight_s_proof_that_commands_run(
    connector: SSHConnector,
) -> None:
    """The runner's hello means the login shell started the host's python3,
    which starts every command after it: no ``true`` runs to prove it."""
    assert connector.command_status(timeout=10) == 0
    session = connector._session
    assert session is not None and session._next_id == 0, "a command ran to answer"
    assert connector.run("echo still", check=True).stdout == "still\n"


def test_stdin_exit_status_and_stderr_come_back(connector: SSHConnector) -> None:
    result = connector.run("tr a-z A-Z; echo oops >&2; exit 3", stdin=b"hello")
    assert (result.exit_code, result.stdout, result.stderr) == (3, "HELLO", "oops\n")


def test_env_values_travel_in_the_request_never_on_a_command_line(
    connector: SSHConnector,
) -> None:
    planted = "planted-value-7f3a"
    seen = connector.run(
        # A process may exit between the glob and the read: skip it, not fail.
        'printf %s "$TOKEN"; for f in /proc/[0-9]*/cmdline; do'
        ' { tr "\\0" " " < "$f"; } 2>/dev/null || true; done',
        env={"TOKEN": planted},
        check=True,
    ).stdout
    assert seen.startswith(planted)
    assert planted not in seen[len(planted) :]


def test_a_timeout_kills_the_command_group(connector: SSHConnector, tmp_path: Path) -> None:
    marker = tmp_path / "late"
    with pytest.raises(ConnectorTimeout, match=r"timed out after 0\.5s"):
        connector.run(f"(sleep 2; touch {marker}) & sleep 5", timeout=0.5)
    time.sleep(2.5)
    assert not marker.exists()
    assert connector.run("echo still here", check=True).stdout == "still here\n"


def test_a_lost_connection_lets_the_running_command_finish(
    connector: SSHConnector, tmp_path: Path
) -> None:
    """As sshd does with an exec whose client went away: a launch half done
    must not leave a process nobody can find."""
    marker, started = tmp_path / "finished", tmp_path / "started"
    connector.run("true", check=True)
    failed: list[Exception] = []

    def run() -> None:
        try:
            connector.run(f"touch {started}; sleep 1; touch {marker}")
        except Exception as e:  # the connection was lost under it
            failed.append(e)

    worker = threading.Thread(target=run)
    worker.start()
    # Dropped only once the command runs on the host (a loaded machine may
    # take longer than any fixed pause to send it).
    deadline = time.monotonic() + 30
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert started.exists(), "the command never started"
    transport = connector.transport
    assert transport is not None
    transport.close()  # the connection drops under the running command
    worker.join(timeout=30)
    assert failed, "the command reported success over a closed connection"
    deadline = time.monotonic() + 10
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists()
    # The next command reconnects and starts a new runner.
    assert connector.run("echo again", check=True).stdout == "again\n"


def test_concurrent_commands_each_get_an_answer(connector: SSHConnector) -> None:
    results: dict[int, str] = {}

    def run(n: int) -> None:
        results[n] = connector.run(f"sleep 0.2; echo {n}", check=True).stdout.strip()

    threads = [threading.Thread(target=run, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == {n: str(n) for n in range(4)}


def test_while_the_runner_is_busy_a_command_gets_an_exec_with_the_same_semantics(
    connector: SSHConnector, tmp_path: Path
) -> None:
    """The exec fallback (fabric's runner, imported only for it): stdin, env,
    exit status, and a timeout that kills the command's group."""
    connector.run("true", check=True)
    runner = _runner_pid(connector)
    started, release, marker = tmp_path / "busy", tmp_path / "release", tmp_path / "late"
    busy = threading.Thread(
        target=connector.run,
        args=(f"touch {started}; while [ ! -e {release} ]; do sleep 0.05; done",),
        kwargs={"timeout": 60},
    )
    busy.start()
    try:
        deadline = time.monotonic() + 30
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert started.exists(), "the busy command never started"
        result = connector.run(
            'read line; echo "$line $CHASSIS_X" >&2; echo $PPID; exit 3',
            stdin=b"hi\n",
            env={"CHASSIS_X": "x"},
        )
        assert (result.exit_code, result.stderr) == (3, "hi x\n")
        assert int(result.stdout) != runner, "it ran under the runner, not over an exec"
        with pytest.raises(ConnectorTimeout, match=r"timed out after 0\.5s"):
            connector.run(f"(sleep 1.5; touch {marker}) & sleep 5", timeout=0.5)
    finally:
        release.touch()
        busy.join(timeout=30)
    time.sleep(2)
    assert not marker.exists(), "the timed-out command's group was not killed"


PROGRAM = """\
import os, sys
data = sys.stdin.read()
print(__name__, sys.argv[1:], data.upper(), os.environ.get("CHASSIS_X"), os.getppid(),
      os.getsid(0) == os.getpid())
sys.exit(int(sys.argv[1]))
"""


def test_host_programs_are_forked_by_the_runner(
    connector: SSHConnector,
) -> None:
    result = connector.run_python(PROGRAM, ["4", "two words"], stdin=b"in", display="program")
    name, rest = result.stdout.split(" ", 1)
    assert result.exit_code == 4 and name == "__main__"
    assert rest.startswith("['4', 'two words'] IN None ")
    parent = int(rest.split()[-2])
    assert rest.split()[-1] == "True"  # a session leader: a timeout kills its group
    assert parent == _runner_pid(connector)
    again = connector.run_python(PROGRAM, ["0", "x"], stdin=b"", display="program")
    assert again.exit_code == 0 and int(again.stdout.split()[-2]) == parent
    # The same program through a new interpreter (what a host without the
    # runner gets) says the same, but for its parent.
    fallback = Connector.run_python(
        connector, PROGRAM, ["4", "two words"], stdin=b"in", display="program"
    )
    assert fallback.exit_code == 4
    assert fallback.stdout.split()[:-2] == result.stdout.split()[:-2]
