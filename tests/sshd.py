"""Real SSH test hosts: one ``sshd`` per fake host on 127.0.0.11, .12, .13 ….

A pytest plugin (``pytest_plugins = ["tests.sshd"]`` or ``-p tests.sshd``).
Each sshd has its own host key, config directory and empty root directory,
and accepts one ed25519 client key for root. Without openssh-server the tests
that use these fixtures are skipped with the reason; under ``CI=true`` that
is a failure instead (DESIGN.md §9). The deploy engine's tests reuse this.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from adapters.connectors.ssh import SSHSettings, known_hosts_name
from tests import ports

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
HOST_COUNT = 3
START_TIMEOUT = 10.0
NOT_INSTALLED = "openssh-server is not installed (apt-get install openssh-server)"
PRIVSEP_DIR = Path("/run/sshd")


@dataclass(frozen=True)
class SSHTestHost:
    """One running sshd and everything a test needs to reach it."""

    name: str
    address: str
    port: int
    user: str
    client_key: Path
    host_key_fingerprint: str
    host_key_line: str  # "ssh-ed25519 AAAA…", the public host key
    host_public_key: Path
    known_hosts: Path
    root: Path
    config_dir: Path

    @property
    def where(self) -> str:
        return f"{self.address}:{self.port}"

    def settings(self, **overrides: Any) -> SSHSettings:
        """``SSHSettings`` for this host (key, known_hosts), with overrides."""
        values: dict[str, Any] = {
            "name": self.name,
            "address": self.address,
            "port": self.port,
            "user": self.user,
            "key_file": self.client_key,
            "known_hosts": self.known_hosts,
            "connect_timeout": 5.0,
        }
        values.update(overrides)
        return SSHSettings(**values)


def sshd_binary() -> str | None:
    """The absolute sshd path (sshd refuses to start from a relative one)."""
    found = shutil.which("sshd") or shutil.which("sshd", path="/usr/sbin:/usr/local/sbin:/sbin")
    return str(Path(found).resolve()) if found else None


def require_sshd() -> str:
    """The sshd binary, or skip (fail in CI) with the reason."""
    binary = sshd_binary()
    if binary is None:
        if IN_CI:
            pytest.fail(f"CI=true but {NOT_INSTALLED}")
        pytest.skip(NOT_INSTALLED)
    return binary


def write_ed25519_key(path: Path, comment: str) -> str:
    """Write an OpenSSH private key (0600) and ``.pub``; return the public line."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private)
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    line = public.decode("ascii")
    path.with_name(path.name + ".pub").write_text(f"{line} {comment}\n")
    return line


def openssh_fingerprint(public_line: str) -> str:
    """``SHA256:…`` of an ``ssh-ed25519 AAAA…`` line, as ``ssh-keygen -l`` prints it."""
    blob = base64.b64decode(public_line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def free_port(address: str) -> int:
    return ports.free_port(address)



SSHD_CONFIG = """\
ListenAddress {address}:{port}
HostKey {host_key}
PidFile {pid_file}
AuthorizedKeysFile {authorized_keys}
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
SetEnv SHLVL=1
LogLevel ERROR
MaxStartups 100
MaxSessions 50
Subsystem sftp internal-sftp
"""


class SSHDaemon:
    """One sshd subprocess with its own directory; started and stopped by the fixture."""

    def __init__(self, binary: str, directory: Path, address: str, client_public: str) -> None:
        self.binary = binary
        self.directory = directory
        self.address = address
        self.host_key = directory / "ssh_host_ed25519_key"
        self.host_key_line = write_ed25519_key(self.host_key, f"host@{address}")
        (directory / "authorized_keys").write_text(client_public + "\n")
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start on a free port; retry on the rare port race."""
        errors = []
        for _attempt in range(3):
            self.port = free_port(self.address)
            config = self.directory / "sshd_config"
            config.write_text(
                SSHD_CONFIG.format(
                    address=self.address,
                    port=self.port,
                    host_key=self.host_key,
                    pid_file=self.directory / "sshd.pid",
                    authorized_keys=self.directory / "authorized_keys",
                )
            )
            log = self.directory / "sshd.log"
            with log.open("wb") as err:
                self.proc = subprocess.Popen(
                    [self.binary, "-D", "-e", "-f", str(config)],
                    stdin=subprocess.DEVNULL,
                    stdout=err,
                    stderr=err,
                )
            if self._wait_listening():
                return
            errors.append(log.read_text(errors="replace").strip() or "no output")
        raise RuntimeError(f"sshd on {self.address} did not start: {' / '.join(errors)}")

    def _wait_listening(self) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                socket.create_connection((self.address, self.port), timeout=0.5).close()
            except OSError:
                time.sleep(0.02)
                continue
            return True
        self.stop()
        return False

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


class SSHDUnavailable(RuntimeError):
    """sshd is not installed or cannot run here."""


@contextlib.contextmanager
def sshd_hosts(
    base: Path, count: int, *, first: int = 11, prefix: str = "h"
) -> Iterator[list[SSHTestHost]]:
    """Start ``count`` sshd hosts ``h1..hN`` on ``127.0.0.<first>…`` under ``base``.

    Yields them once all listen; stops every sshd started, also on failure.
    Their pinned host keys are in ``base/known_hosts`` (OpenSSH format).
    """
    if not 1 <= count <= 255 - first:
        raise ValueError(f"host count must be 1..{255 - first}, not {count}")
    binary = sshd_binary()
    if binary is None:
        raise SSHDUnavailable(NOT_INSTALLED)
    try:
        PRIVSEP_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    except OSError as e:
        raise SSHDUnavailable(
            f"sshd needs its privilege separation directory {PRIVSEP_DIR}: {e.strerror}"
        ) from e
    base.mkdir(parents=True, exist_ok=True)
    client_key = base / "client_ed25519"
    client_public = write_ed25519_key(client_key, "chassis-tests")
    daemons: list[SSHDaemon] = []
    try:
        for i in range(1, count + 1):
            directory = base / f"{prefix}{i}"
            directory.mkdir()
            daemon = SSHDaemon(binary, directory, f"127.0.0.{first + i - 1}", client_public)
            daemons.append(daemon)
            daemon.start()
        known_hosts = base / "known_hosts"
        known_hosts.write_text(
            "".join(f"{known_hosts_name(d.address, d.port)} {d.host_key_line}\n" for d in daemons)
        )
        user = pwd.getpwuid(os.getuid()).pw_name
        hosts = []
        for i, d in enumerate(daemons, start=1):
            root = base / f"{prefix}{i}-root"
            root.mkdir()
            hosts.append(
                SSHTestHost(
                    name=f"{prefix}{i}",
                    address=d.address,
                    port=d.port,
                    user=user,
                    client_key=client_key,
                    host_key_fingerprint=openssh_fingerprint(d.host_key_line),
                    host_key_line=d.host_key_line,
                    host_public_key=d.host_key.with_name(d.host_key.name + ".pub"),
                    known_hosts=known_hosts,
                    root=root,
                    config_dir=d.directory,
                )
            )
        yield hosts
    finally:
        for d in daemons:
            d.stop()


@pytest.fixture(scope="session")
def ssh_hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[SSHTestHost]]:
    """Three running sshd hosts h1..h3 on 127.0.0.11..13 (session-wide)."""
    try:
        with sshd_hosts(tmp_path_factory.mktemp("sshd"), HOST_COUNT) as hosts:
            yield hosts
    except SSHDUnavailable as e:
        if IN_CI:
            pytest.fail(f"CI=true but {e}")
        pytest.skip(str(e))


@pytest.fixture
def ssh_host(ssh_hosts: list[SSHTestHost], tmp_path: Path) -> SSHTestHost:
    """Host h1 with a fresh, empty root directory for this test."""
    root = tmp_path / "h1-root"
    root.mkdir()
    return dataclasses.replace(ssh_hosts[0], root=root)


@pytest.fixture(scope="session")
def silent_listener() -> Iterator[tuple[str, int]]:
    """``(address, port)`` that completes TCP handshakes but never says a word."""
    with socket.socket() as s:
        s.bind(("127.0.0.20", 0))
        s.listen(64)  # never accept(): the kernel still completes the handshake
        yield s.getsockname()[0], s.getsockname()[1]


@pytest.fixture(scope="session")
def closed_port() -> Iterator[tuple[str, int]]:
    """``(address, port)`` that refuses connections (bound, not listening, so not reused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.21", 0))
        yield s.getsockname()[0], s.getsockname()[1]
