"""The demo's sample app, run as real processes from a written release tree."""

from __future__ import annotations

import ast
import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chassis.bundles import check_bundle
from chassis.sample_app import SERVICES, build_sample_release, write_sample_app
from chassis.sample_app import service as app_service
from tests import ports

VERSION = "2.5.0-demo"
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sample_app(tmp_path_factory.mktemp("release"), VERSION)


def free_port() -> int:
    return ports.free_port()


def clean_env(**extra: str) -> dict[str, str]:
    names = ("CHASSIS_RELEASE_ID", "CHASSIS_HOST_ROOT", "FAIL_HEALTH", "CRASH_ON_START")
    env = {k: v for k, v in os.environ.items() if k not in names}
    return {**env, **extra}


@contextlib.contextmanager
def started(
    tree: Path, service: str, *args: str, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, f"app/{service}.py", *args],
        cwd=tree,
        env=env or clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=STOP_TIMEOUT_S)
        assert proc.stderr is not None
        proc.stderr.close()


def get(port: int, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def wait_listening(proc: subprocess.Popen[str], port: int) -> tuple[int, str]:
    """/healthz's (status, body) once the service answers at all."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            assert proc.stderr is not None
            pytest.fail(f"exited {proc.returncode} before listening: {proc.stderr.read()}")
        try:
            return get(port, "/healthz")
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def stop(proc: subprocess.Popen[str]) -> str:
    """SIGTERM, expect exit 0 in time; return stderr."""
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=STOP_TIMEOUT_S) == 0
    assert proc.stderr is not None
    return proc.stderr.read()


def assert_port_free(port: int) -> None:
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, f"something still listens on {port}"
    with socket.socket() as s:
        # What a restarted service does (HTTPServer sets SO_REUSEADDR too).
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))


def test_tree_layout_and_standalone_scripts(tree: Path) -> None:
    assert (tree / "VERSION").read_text() == f"{VERSION}\n"
    for service in SERVICES:
        script = tree / "app" / f"{service}.py"
        assert os.access(script, os.X_OK)
        source = script.read_text()
        compile(source, str(script), "exec")
        imported = {
            alias.name.split(".")[0]
            for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Import)
            for alias in node.names
        } | {
            node.module.split(".")[0]
            for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.ImportFrom) and node.module
        }
        assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported


def test_api_serves_health_and_identity_and_stops_on_sigterm(tree: Path) -> None:
    port = free_port()
    env = clean_env(CHASSIS_RELEASE_ID="rel-0123abcd")
    with started(tree, "api", "--port", str(port), env=env) as proc:
        status, body = wait_listening(proc, port)
        assert status == 200
        assert body.strip() == f"ok api {VERSION}"
        status, body = get(port, "/")
        assert status == 200
        assert json.loads(body) == {"service": "api", "version": VERSION, "release": "rel-0123abcd"}
        status, body = get(port, "/api/orders?limit=1")
        assert status == 200 and json.loads(body)["path"] == "/api/orders"
        assert get(port, "/nope")[0] == 404
        log = stop(proc)
    assert_port_free(port)
    assert "GET /healthz" in log and "GET /nope" in log
    assert "received SIGTERM" in log


def wakeups(pid: int) -> int:
    """Voluntary context switches of all of ``pid``'s threads (from /proc)."""
    total = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        with contextlib.suppress(OSError):
            for line in status.read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    total += int(line.split()[1])
    return total


def test_an_idle_server_sleeps_until_a_request_or_a_signal(tree: Path) -> None:
    """No polling: an idle api wakes for nothing (``serve_forever`` looked
    for a stop 20 times a second), and SIGTERM still stops it with 0."""
    port = free_port()
    with started(tree, "api", "--port", str(port)) as proc:
        wait_listening(proc, port)
        time.sleep(0.2)  # the request's thread has ended
        before = wakeups(proc.pid)
        time.sleep(1.0)
        assert wakeups(proc.pid) - before <= 2
        assert get(port, "/healthz")[0] == 200  # and it still answers
        assert "stopped" in stop(proc)
    assert_port_free(port)


def test_gateway_proxies_upstream_and_its_health_stands_alone(tree: Path) -> None:
    api_port, gw_port = free_port(), free_port()
    upstream = f"127.0.0.1:{api_port}"
    with started(tree, "gateway", "--port", str(gw_port), "--upstream", upstream) as gateway:
        assert wait_listening(gateway, gw_port) == (200, f"ok gateway {VERSION}\n")
        status, body = get(gw_port, "/upstream")
        assert status == 502 and "unreachable" in body  # no api yet; /healthz still fine
        assert get(gw_port, "/healthz")[0] == 200

        with started(tree, "api", "--port", str(api_port)) as api:
            wait_listening(api, api_port)
            status, body = get(gw_port, "/upstream")
            assert status == 200
            assert json.loads(body) == {"service": "api", "version": VERSION, "release": None}
            status, body = get(gw_port, "/api/items")
            assert status == 200 and json.loads(body)["path"] == "/api/items"
            status, body = get(gw_port, "/")
            assert json.loads(body)["service"] == "gateway"
            stop(api)
        stop(gateway)
    assert_port_free(gw_port)


def test_a_bad_request_is_answered_and_the_server_keeps_serving(tree: Path) -> None:
    port = free_port()
    with started(tree, "api", "--port", str(port)) as proc:
        wait_listening(proc, port)
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # connected and closed without a request line
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("POST", "/api/orders", body=b"{}")
            response = conn.getresponse()
            assert response.status == 405 and b"only GET" in response.read()
        finally:
            conn.close()
        assert get(port, "/healthz") == (200, f"ok api {VERSION}\n")
        log = stop(proc)
    assert '"POST /api/orders HTTP/1.1" 405' in log


def test_a_server_starts_without_the_http_client_stack(tree: Path) -> None:
    """Every component start pays for what the program imports: the server
    roles leave http.client, email, ssl and urllib to the roles that use them."""
    probe = (
        "import runpy, sys; sys.argv = ['api.py', '--help']\n"
        "try:\n    runpy.run_path('app/api.py', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "print(sorted(m for m in ('http.client', 'email', 'ssl', 'urllib.request')"
        " if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-c", probe], cwd=tree, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_the_program_imports_only_what_every_start_needs(tree: Path) -> None:
    """json (with the regular expressions it compiles), contextlib, pathlib
    and typing cost each start milliseconds: JSON answers import json when
    they are written. So do socket, signal, selectors and socketserver, which
    build enum classes from the platform's constants when imported: the
    server uses _socket, _signal and select."""
    probe = (
        "import os, runpy, sys\n"
        "runpy.run_path(os.devnull)  # what running a file imports by itself\n"
        "before = set(sys.modules)\n"
        "runpy.run_path('app/api.py', run_name='sample')\n"
        "print(sorted(m for m in ('json', 're', 'contextlib', 'pathlib', 'typing', 'enum',"
        " 'socket', 'signal', 'selectors', 'socketserver') if m in set(sys.modules) - before))"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", probe],
        cwd=tree,
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("service", ["gateway", "api"])
def test_fail_health_answers_503(tree: Path, service: str) -> None:
    port = free_port()
    with started(tree, service, "--port", str(port), env=clean_env(FAIL_HEALTH="1")) as proc:
        status, body = wait_listening(proc, port)
        assert status == 503
        assert "ok" not in body.split()
        assert get(port, "/")[0] == 200  # only health is broken
        stop(proc)


@pytest.mark.parametrize("service", SERVICES)
def test_crash_on_start_exits_3_with_a_message(tree: Path, service: str) -> None:
    done = subprocess.run(
        [sys.executable, f"app/{service}.py", "--port", str(free_port())],
        cwd=tree,
        env=clean_env(CRASH_ON_START="1"),
        capture_output=True,
        text=True,
        timeout=STOP_TIMEOUT_S,
    )
    assert done.returncode == 3
    assert "CRASH_ON_START" in done.stderr and service in done.stderr


def wait_for(condition: Path, present: bool, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while condition.exists() != present:
        if proc.poll() is not None and present:
            assert proc.stderr is not None
            pytest.fail(f"worker exited {proc.returncode}: {proc.stderr.read()}")
        assert time.monotonic() < deadline, f"{condition} never {'appeared' if present else 'went'}"
        time.sleep(0.02)


def test_worker_writes_then_removes_its_ready_file(tree: Path, tmp_path: Path) -> None:
    ready = tmp_path / "state" / "run" / "w.ready"
    with started(tree, "worker", "--ready-file", str(ready)) as proc:
        wait_for(ready, True, proc)
        assert f" worker {VERSION} " in ready.read_text()
        log = stop(proc)
    assert not ready.exists()
    assert "stopped" in log


def test_worker_ready_file_defaults_under_the_host_root(tree: Path, tmp_path: Path) -> None:
    host_root = tmp_path / "host"
    ready = host_root / "run" / "worker.ready"
    with started(tree, "worker", env=clean_env(CHASSIS_HOST_ROOT=str(host_root))) as proc:
        wait_for(ready, True, proc)
        stop(proc)
    assert not ready.exists()
    assert not (tree / "run").exists()


def test_sample_release_bundle_is_safe_and_reproducible(tmp_path: Path) -> None:
    bundle, digest = build_sample_release(tmp_path / "a", VERSION)
    again, digest_again = build_sample_release(tmp_path / "b", VERSION)
    assert bundle.read_bytes() == again.read_bytes()
    assert digest == digest_again
    info = check_bundle(bundle)
    assert info.files == 5 and info.top_level == ["VERSION", "app"]  # 3 services, score, VERSION
    _, other_digest = build_sample_release(tmp_path / "a", "2.6.0")
    assert other_digest != digest


def test_bad_versions_are_refused(tmp_path: Path) -> None:
    for version in ("", "../up", "1 2", "v1\n"):
        with pytest.raises(ValueError, match="version"):
            build_sample_release(tmp_path, version)
    # "home" is made by the isolation fixture
    assert [p for p in tmp_path.iterdir() if p.name != "home"] == []


# -- the command line without argparse --------------------------------------------------

_VALUES = {
    "--role": st.sampled_from(["api", "gateway", "worker", "score", "nope", "API"]),
    "--bind": st.sampled_from(["127.0.0.1", "0.0.0.0", "::1", "localhost"]),
    "--port": st.sampled_from(["0", "8080", "65535", "x", "1e3", "٣"]),
    "--upstream": st.sampled_from(["127.0.0.1:9", "h:65535", "h:0", "nohost", ":5", "a:b:7"]),
    "--requests": st.sampled_from(["5", "30", "x", "٣"]),
    "--ready-file": st.sampled_from(["run/r", "/tmp/ready", "a b"]),
}


@st.composite
def command_lines(draw: st.DrawFn) -> list[str]:
    options = draw(st.lists(st.sampled_from(sorted(_VALUES)), unique=True))
    argv = [part for option in options for part in (option, draw(_VALUES[option]))]
    if draw(st.booleans()) and argv:  # an option given twice, or its value left off
        argv += draw(st.sampled_from([[argv[0], argv[1]], [argv[-2]]]))
    return argv


@given(command_lines())
def test_the_usual_command_lines_parse_as_argparse_parses_them(argv: list[str]) -> None:
    """The app reads the command lines a stack runs without importing
    argparse (a third of its start on every host); whatever it accepts so
    must be exactly what argparse makes of it, and anything else goes to
    argparse."""
    usual = app_service._usual_args(argv)
    if usual is None:
        return
    assert vars(usual) == vars(app_service._argparse_args(argv)), argv


def test_a_stack_command_line_does_not_import_argparse(tree: Path) -> None:
    probe = (
        "import sys; sys.path.insert(0, 'app'); import api\n"
        "args = api.parse_args(['--port', '8081', '--bind', '127.0.0.1'])\n"
        "print(args.role, args.port, 'argparse' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-c", probe], cwd=tree, capture_output=True, text=True, timeout=30
    )
    assert done.stdout.split() == ["api", "8081", "False"], done.stderr
