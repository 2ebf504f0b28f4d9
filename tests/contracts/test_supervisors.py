"""One contract, both connectors: the direct supervisor runs real processes.

Every test runs against the local connector and against a real sshd
(``tests/sshd.py``). The processes are real (a tiny HTTP server, shells that
exit at once), and so are the probes: HTTP from this process to 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from adapters.connectors import Connector
from adapters.health import HealthGate, http_probe
from adapters.supervisors import DirectSupervisor, ProcessSpec, SupervisorError
from adapters.supervisors.direct import PidRecord, parse_proc_stat, pid_path
from tests import ports

APP = """\
import hashlib, http.server, os, sys

port = int(sys.argv[1])
secret = os.environ.get("APP_SECRET", "")
digest = hashlib.sha256(secret.encode()).hexdigest()


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = (
            f"ok release={os.environ.get('RELEASE_TAG', '?')} "
            f"from_file={os.environ.get('FROM_FILE', '?')} secret_sha256={digest}\\n"
        ).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


print(f"listening on {port}", flush=True)
http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""


def free_port() -> int:
    return ports.free_port()



def port_is_free(port: int) -> bool:
    """Nobody listens: connecting is refused and a server could bind it again."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        pass
    else:
        return False
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as http.server does
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass
class Host:
    connector: Connector
    root: str
    supervisor: DirectSupervisor
    started: set[str] = field(default_factory=set)

    def release(self, release_id: str) -> str:
        """A release directory holding the app."""
        workdir = Path(self.root) / "releases" / release_id
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "app.py").write_text(APP)
        return str(workdir)

    def spec(
        self,
        component: str,
        command: str,
        *,
        release_id: str = "r1",
        env: dict[str, str] | None = None,
        env_file: str | None = None,
    ) -> ProcessSpec:
        self.started.add(component)
        return ProcessSpec(
            component=component,
            release_id=release_id,
            command=command,
            workdir=self.release(release_id),
            env=env or {},
            env_file=env_file,
            root=self.root,
        )

    def sh(self, command: str) -> str:
        return self.connector.run(command, check=True, timeout=30).stdout


@pytest.fixture
def host(connected: tuple[Connector, Path]) -> Iterator[Host]:
    connector, root = connected
    for sub in ("releases", "shared", "run", "logs"):
        (root / sub).mkdir()
    h = Host(connector, str(root), DirectSupervisor(connector, str(root)))
    try:
        yield h
    finally:
        for component in sorted(h.started):
            h.supervisor.stop(component, timeout=2)


def wait_healthy(port: int, body: str | None = None) -> str:
    gate = HealthGate(interval_ms=50, timeout_ms=1000, passes=2, window_ms=5000)
    result = gate.run(lambda: http_probe("127.0.0.1", port, "/", body_contains=body))
    assert result.passed, result.reason
    return result.reason


# -- the lifecycle -------------------------------------------------------------


def test_start_probe_stop_a_real_http_server(host: Host) -> None:
    port = free_port()
    secret = "s3cret-" + secrets.token_hex(8)
    spec = host.spec(
        "api",
        f"python3 app.py {port}",
        env={"APP_SECRET": secret, "RELEASE_TAG": "r1"},
    )

    started = host.supervisor.start(spec)
    assert started.running and started.pid is not None and started.release_id == "r1"
    assert started.detail == f"running (pid {started.pid})"
    assert host.supervisor.state("api") == started

    # It outlives the session that started it (the CLI exits after a deploy).
    host.connector.close()
    assert host.supervisor.state("api") == started  # on a fresh connection

    # The process sees the secret; the HTTP probe passes against it.
    digest = hashlib.sha256(secret.encode()).hexdigest()
    wait_healthy(port, body=f"ok release=r1 from_file=? secret_sha256={digest}")

    # The secret is nowhere on a command line, and not left on disk.
    table = host.sh("ps -e -o args")
    assert f"app.py {port}" in table
    assert secret not in table
    assert host.sh(f"ls -A {host.root}/run") == "api.pid\n"

    # A detached process group led by the recorded pid, with its start time.
    stat = parse_proc_stat(host.sh(f"cat /proc/{started.pid}/stat"))
    assert stat.pgrp == stat.session == started.pid
    record = PidRecord.parse(host.sh(f"cat {pid_path(host.root, 'api')}"))
    assert (record.pid, record.start, record.release_id) == (started.pid, stat.starttime, "r1")

    tail = host.supervisor.log_tail("api")
    assert "==> chassis: start api release r1" in tail
    assert f"listening on {port}" in tail
    assert '"GET / HTTP/1.1" 200' in tail
    assert len(host.supervisor.log_tail("api", lines=2).splitlines()) == 2

    host.supervisor.stop("api")
    after = host.supervisor.state("api")
    assert not after.running and after.pid is None
    assert port_is_free(port)
    assert not http_probe("127.0.0.1", port, timeout_ms=500).ok

    host.supervisor.stop("api")  # idempotent
    assert host.supervisor.state("api").detail == "not started"


def test_start_replaces_the_running_release(host: Host) -> None:
    port = free_port()
    first = host.supervisor.start(host.spec("web", f"python3 app.py {port}", release_id="r1"))
    second = host.supervisor.start(
        host.spec("web", f"python3 app.py {port}", release_id="r2", env={"RELEASE_TAG": "r2"})
    )
    assert second.release_id == "r2" and second.pid != first.pid
    wait_healthy(port, body="ok release=r2")
    assert host.connector.run(f"kill -0 {first.pid}").exit_code != 0 or (
        "Z" in host.sh(f"cut -d' ' -f3 /proc/{first.pid}/stat || true")
    )


# -- failures ------------------------------------------------------------------


def test_a_command_that_exits_at_once_raises_with_the_log_tail(host: Host) -> None:
    secret = "s3cret-" + secrets.token_hex(8)
    spec = host.spec("worker", "sh -c 'echo boom >&2; exit 3'", env={"TOKEN": secret})
    with pytest.raises(SupervisorError) as info:
        host.supervisor.start(spec)
    e = info.value
    message = str(e)
    assert "\n" not in message
    assert message.startswith(f"host {host.connector.name} (")
    assert "component worker" in message and "boom" in message and "status 3" in message
    assert "boom" in e.log_tail
    assert e.exit_code == 15
    assert secret not in message and secret not in e.diagnostics() and secret not in repr(spec)
    assert not host.supervisor.state("worker").running
    assert not [n for n in host.sh(f"ls -A {host.root}/run").split() if n.endswith(".env")]


def test_a_missing_command_raises(host: Host) -> None:
    with pytest.raises(SupervisorError) as info:
        host.supervisor.start(host.spec("ghost", "./nope"))
    assert "./nope" in str(info.value) and "not found" in str(info.value)
    assert "status 127" in str(info.value)


def test_a_missing_working_directory_raises(host: Host) -> None:
    spec = host.spec("api", "python3 app.py 1")
    spec = ProcessSpec(**{**spec.__dict__, "workdir": f"{host.root}/releases/absent"})
    with pytest.raises(SupervisorError, match=r"working directory .*absent is missing"):
        host.supervisor.start(spec)


def test_env_file_is_loaded_and_spec_env_wins(host: Host) -> None:
    env_file = f"{host.root}/shared/app.env"
    host.connector.put_bytes(
        b'FROM_FILE="file value"\nRELEASE_TAG="from-file"\n', env_file, mode=0o600
    )
    port = free_port()
    spec = host.spec(
        "api", f"python3 app.py {port}", env={"RELEASE_TAG": "from-spec"}, env_file=env_file
    )
    host.supervisor.start(spec)
    wait_healthy(port, body="ok release=from-spec from_file=file value")


def test_an_unreadable_env_file_raises(host: Host) -> None:
    spec = host.spec("api", "sleep 30", env_file=f"{host.root}/shared/missing.env")
    with pytest.raises(SupervisorError, match="cannot read env_file"):
        host.supervisor.start(spec)


# -- stopping ------------------------------------------------------------------


def test_stop_kills_a_group_that_ignores_sigterm(host: Host) -> None:
    spec = host.spec("stubborn", "trap '' TERM; while :; do sleep 0.05; done")
    started = host.supervisor.start(spec)
    began = time.monotonic()
    host.supervisor.stop("stubborn", timeout=0.2)
    assert 0.2 <= time.monotonic() - began < 5
    assert not host.supervisor.state("stubborn").running
    members = host.sh(f"ps -e -o pgid=,stat= | awk '$1 == {started.pid} && $2 !~ /^Z/'")
    assert members == ""


def test_a_reused_pid_is_neither_reported_nor_killed(host: Host) -> None:
    # A stranger (ours to clean up) takes the place of a recorded process.
    stranger = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        stat = parse_proc_stat(Path(f"/proc/{stranger.pid}/stat").read_text())
        record = PidRecord(stranger.pid, stat.starttime + 1, "r0", "old")
        host.connector.put_bytes(record.to_bytes(), pid_path(host.root, "old"))
        state = host.supervisor.state("old")
        assert not state.running and state.pid is None
        assert "belongs to another process" in state.detail
        host.supervisor.stop("old", timeout=0.2)
        assert stranger.poll() is None  # still alive
        assert host.supervisor.state("old").detail == "not started"
    finally:
        stranger.kill()
        stranger.wait()
