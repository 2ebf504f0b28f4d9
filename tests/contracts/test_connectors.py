"""One contract, every connector: what host operations may rely on.

Runs against the local connector and against a real sshd (``tests/sshd.py``;
run pytest with ``-p tests.sshd`` until conftest loads it). Both targets live
on this machine, so a test may also look at the process table with psutil.
"""

from __future__ import annotations

import hashlib
import secrets
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from adapters.connectors import Connector
from adapters.errors import CommandFailed, ConnectorError, ConnectorTimeout, RemoteFileMissing


@dataclass(frozen=True)
class Target:
    connector: Connector
    root: str  # an empty directory on the target

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def sh(self, command: str) -> str:
        """stdout of a command that must succeed."""
        return self.connector.run(command, check=True, timeout=30).stdout


@pytest.fixture
def target(connected: tuple[Connector, Path]) -> Target:
    connector, root = connected
    return Target(connector, str(root))


# -- commands -------------------------------------------------------------


def test_run_returns_stdout_stderr_and_exit_code(target: Target) -> None:
    result = target.connector.run("echo out; echo err >&2; exit 3")
    assert (result.exit_code, result.stdout, result.stderr) == (3, "out\n", "err\n")
    assert not result.ok
    assert result.command == "echo out; echo err >&2; exit 3"
    assert result.duration_s >= 0
    assert target.connector.run("true").ok


def test_run_uses_the_posix_shell(target: Target) -> None:
    # $0 of `sh -c` is the shell itself; POSIX parameter expansion must work.
    result = target.connector.run('x=abc.tar.gz; echo "${x%%.*}" "$0"', check=True)
    out, shell = result.stdout.split()
    assert out == "abc"
    assert shell.endswith("sh")


def test_check_raises_command_failed_with_exit_code_and_stderr_tail(target: Target) -> None:
    with pytest.raises(CommandFailed) as info:
        target.connector.run("for i in 1 2 3 4 5 6 7; do echo line$i >&2; done; exit 4", check=True)
    e = info.value
    assert e.returncode == 4
    assert e.exit_code == 11
    assert e.stderr_tail.splitlines()[-1] == "line7"
    assert "line1" not in e.stderr_tail
    message = str(e)
    assert "\n" not in message
    assert f"host {target.connector.name}" in message
    assert "exited 4" in message
    assert "line7" in message


def test_display_text_replaces_the_command_everywhere(target: Target) -> None:
    result = target.connector.run("echo s3cret >/dev/null", display="echo *** >/dev/null")
    assert result.command == "echo *** >/dev/null"
    with pytest.raises(CommandFailed) as info:
        target.connector.run("echo s3cret; exit 1", check=True, display="echo ***; exit 1")
    assert "s3cret" not in str(info.value)


def _alive(marker: str) -> list[psutil.Process]:
    """Processes whose command line mentions ``marker`` (zombies count as exited)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = proc.info["cmdline"] or []
        if any(marker in arg for arg in cmdline) and proc.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(proc)
    return found


def test_timeout_raises_and_kills_the_command(target: Target) -> None:
    duration = f"30.{secrets.randbelow(10**6):06d}"  # a unique `sleep` argument to look for
    started = time.monotonic()
    with pytest.raises(ConnectorTimeout) as info:
        target.connector.run(f"sleep {duration} & sleep {duration}; wait", timeout=1)
    assert time.monotonic() - started < 20, "run() waited for the command instead of 1 s"
    assert isinstance(info.value, TimeoutError)
    assert info.value.timeout == 1
    assert "timed out after 1s" in str(info.value)
    deadline = time.monotonic() + 10
    while _alive(duration) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(duration), "the timed-out command (and its children) still run"
    # The connector stays usable after a timeout.
    assert target.connector.run("echo again").stdout == "again\n"


def test_stdin_feeds_a_script_to_python(target: Target) -> None:
    script = b"import sys\nprint('hello from', sys.argv[0] or 'stdin', 6 * 7)\n"
    result = target.connector.run("python3 -", stdin=script, check=True)
    assert result.stdout.split()[-1] == "42"


def test_stdin_is_binary_safe_and_sent_in_bulk(target: Target) -> None:
    data = bytes(range(256)) * 4096  # 1 MiB, every byte value
    digest = "import hashlib,sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())"
    result = target.connector.run(
        f"python3 -c {shlex.quote(digest)}",
        stdin=data,
        check=True,
        timeout=30,
    )
    assert result.stdout.strip() == hashlib.sha256(data).hexdigest()


def test_without_stdin_the_command_sees_end_of_file(target: Target) -> None:
    assert target.connector.run("cat; echo done", timeout=10).stdout == "done\n"


def test_utf8_output_survives_chunk_boundaries(target: Target) -> None:
    result = target.connector.run("python3 -c 'print(\"é\" * 5000)'", check=True)
    assert result.stdout == "é" * 5000 + "\n"


def test_large_output_is_captured_in_full(target: Target) -> None:
    size = 20_000_000
    result = target.connector.run(f"head -c {size} /dev/zero | tr '\\0' a", timeout=15)
    assert len(result.stdout) == size
    assert result.stdout.count("a") == size


def test_env_is_passed_and_quoted(target: Target) -> None:
    tricky = 'it\'s $(echo no) `echo no` "quoted"; exit 9'
    result = target.connector.run(
        'printf "%s|%s" "$GREETING" "$N"', env={"GREETING": tricky, "N": "1"}, check=True
    )
    assert result.stdout == f"{tricky}|1"
    with pytest.raises(ValueError, match="invalid environment variable"):
        target.connector.run("true", env={"NOT-VALID": "x"})


# -- files ----------------------------------------------------------------


def test_put_bytes_read_bytes_exists_sha256(target: Target) -> None:
    c = target.connector
    path = target.path("dir with space", "it's.bin")
    target.sh(f"mkdir {shlex.quote(target.path('dir with space'))}")
    data = secrets.token_bytes(100_000)
    assert not c.exists(path)
    assert c.sha256(path) is None
    c.put_bytes(data, path)
    assert c.exists(path)
    assert c.read_bytes(path) == data
    assert c.sha256(path) == hashlib.sha256(data).hexdigest()
    c.put_bytes(b"", path)
    assert c.read_bytes(path) == b""
    assert c.sha256(path) == hashlib.sha256(b"").hexdigest()


def test_put_and_get_files(target: Target, tmp_path: Path) -> None:
    c = target.connector
    source = tmp_path / "artifact.tar"
    source.write_bytes(secrets.token_bytes(300_000))
    remote = target.path("artifact.tar")
    c.put(source, remote)
    assert c.sha256(remote) == hashlib.sha256(source.read_bytes()).hexdigest()
    back = tmp_path / "back.tar"
    back.write_bytes(b"old")
    c.get(remote, back)
    assert back.read_bytes() == source.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".back")) == []


def _mode(target: Target, path: str) -> str:
    return target.sh(f"stat -c %a {shlex.quote(path)}").strip()


def test_modes_are_set_and_kept_on_replace(target: Target, tmp_path: Path) -> None:
    c = target.connector
    secret = target.path("secret.env")
    c.put_bytes(b"TOKEN=x\n", secret, mode=0o600)
    assert _mode(target, secret) == "600"
    c.put_bytes(b"TOKEN=y\n", secret)  # no mode: keep the existing file's
    assert _mode(target, secret) == "600"
    fresh = target.path("fresh.txt")
    c.put_bytes(b"x", fresh)
    assert _mode(target, fresh) == "644"
    script = tmp_path / "run.sh"
    script.write_text("#!/bin/sh\necho ran\n")
    remote_script = target.path("run.sh")
    c.put(script, remote_script, mode=0o755)
    assert _mode(target, remote_script) == "755"
    assert c.run(shlex.quote(remote_script), check=True).stdout == "ran\n"


def test_writes_are_atomic_renames_and_leave_no_temp_files(target: Target) -> None:
    c = target.connector
    path = target.path("config.json")
    c.put_bytes(b"one", path)
    inode = target.sh(f"stat -c %i {shlex.quote(path)}")
    c.put_bytes(b"two", path)
    assert target.sh(f"stat -c %i {shlex.quote(path)}") != inode  # replaced, not rewritten
    assert c.read_bytes(path) == b"two"
    assert target.sh(f"ls -A {shlex.quote(target.root)}").split() == ["config.json"]


def test_symlink_swap_is_atomic_and_repeatable(target: Target) -> None:
    c = target.connector
    releases = target.path("releases")
    target.sh(f"mkdir -p {releases}/r1 {releases}/r2")
    target.sh(f"echo 1 > {releases}/r1/v && echo 2 > {releases}/r2/v")
    current = target.path("current")
    c.symlink_swap(f"{releases}/r1", current)
    assert target.sh(f"readlink {current}").strip() == f"{releases}/r1"
    assert c.read_bytes(f"{current}/v") == b"1\n"
    c.symlink_swap(f"{releases}/r2", current)
    assert target.sh(f"readlink {current}").strip() == f"{releases}/r2"
    c.symlink_swap("releases/r1", current)  # relative targets are kept as given
    assert target.sh(f"readlink {current}").strip() == "releases/r1"
    assert c.read_bytes(f"{current}/v") == b"1\n"
    assert target.sh(f"ls -A {target.root}").split() == ["current", "releases"]


def test_symlink_swap_refuses_to_replace_a_directory(target: Target) -> None:
    current = target.path("current")
    target.sh(f"mkdir -p {current}/keep")
    with pytest.raises(ConnectorError) as info:
        target.connector.symlink_swap("/nowhere", current)
    assert str(info.value).endswith(f"symlink {current}: Is a directory")
    assert target.sh(f"ls -A {target.root}").split() == ["current"]
    assert target.sh(f"ls -A {current}").split() == ["keep"]


def test_missing_files_raise_typed_errors(target: Target, tmp_path: Path) -> None:
    c = target.connector
    missing = target.path("nope", "file.txt")
    with pytest.raises(RemoteFileMissing) as info:
        c.read_bytes(missing)
    assert isinstance(info.value, FileNotFoundError)
    assert missing in str(info.value)
    assert f"host {c.name}" in str(info.value)
    with pytest.raises(RemoteFileMissing):
        c.get(missing, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.glob(".out*")) == []
    with pytest.raises(RemoteFileMissing):
        c.put_bytes(b"x", missing)  # the directory does not exist either
    assert not c.exists(missing)
    assert c.sha256(missing) is None
