"""SSH connector on paramiko: one connection per host, host keys always checked.

Host keys come only from the workspace's known_hosts file (never
``~/.ssh/known_hosts``, never an agent or ``~/.ssh/config``). Commands run
through the host's command runner (:mod:`adapters.connectors.host_session`);
where a host has no ``python3`` for it, each command is an exec of its own,
run by a small subclass of fabric's ``Remote`` runner (fabric and invoke are
imported only then) that fixes what the stock runner gets wrong for us:

- stdin is sent in one write (invoke forwards it one byte per 10 ms and
  decodes it as text, so binary input is mangled);
- output is decoded incrementally (invoke decodes each 1000-byte chunk on its
  own, breaking UTF-8 at chunk edges) and without invoke's watcher scan,
  which re-joins the whole buffer per chunk (quadratic on large output);
- a timeout is reported reliably (invoke's check races with its timer thread)
  and kills the remote process group, not just the channel.

A host that freezes (a stopped sshd session, a dead link that still holds its
TCP state) answers nothing and, without help, blocks paramiko forever: SFTP
reads, channel requests and exec all wait on the transport without a
deadline. So every wait is bounded: connecting by ``connect_timeout``, every
SFTP read or write by ``io_timeout`` without progress (the channel's socket
timeout; transfers move in chunks, each of which must get through within it),
commands by their own timeout, and all of them by a keepalive: the server
must answer a ``keepalive@openssh.com`` request every ``keepalive_interval``
seconds, and when ``keepalive_count_max`` intervals pass without an answer
the transport is closed, which wakes every waiter (OpenSSH's
``ServerAliveInterval``/``ServerAliveCountMax``; paramiko's own
``set_keepalive`` sends requests but never notices a missing answer). The
operation that was waiting then fails with :class:`ConnectorTimeout` naming
the host, what it was doing and how long the host was silent.
"""

from __future__ import annotations

import base64
import codecs
import contextlib
import errno
import fcntl
import functools
import hashlib
import io
import os
import re
import shlex
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

from adapters.connectors.base import (
    DEFAULT_TIMEOUT,
    NEW_FILE_MODE,
    CommandResult,
    Connector,
    checked_env,
    temp_sibling,
)
from adapters.connectors.host_session import HostSession, SessionBroken
from adapters.connectors.paramiko_only import paramiko
from adapters.errors import (
    AuthenticationFailed,
    CommandFailed,
    ConnectorError,
    ConnectorTimeout,
    HostKeyMismatch,
    HostUnreachable,
    RemoteFileMissing,
    UnknownHostKey,
)

HostKeyPolicy = Literal["reject", "accept-new"]
_HEX64 = re.compile(r"[0-9a-f]{64}")
_CHUNK = 32768
_KILL_TIMEOUT = 5.0
_HASH_TIMEOUT = 600.0  # hashing a multi-GB artifact on a slow disk takes a while
DEFAULT_IO_TIMEOUT = 30.0
DEFAULT_KEEPALIVE_INTERVAL = 10.0
DEFAULT_KEEPALIVE_COUNT_MAX = 3


@dataclass(frozen=True, kw_only=True)
class SSHSettings:
    """How to reach one host; every default lives here."""

    name: str
    address: str
    user: str
    known_hosts: Path
    port: int = 22
    key_file: Path | None = None
    connect_timeout: float = 10.0
    host_key_policy: HostKeyPolicy = "reject"
    io_timeout: float = DEFAULT_IO_TIMEOUT
    """The longest an SFTP transfer (any read or write on its channel) may go
    without progress."""
    keepalive_interval: float = DEFAULT_KEEPALIVE_INTERVAL
    keepalive_count_max: int = DEFAULT_KEEPALIVE_COUNT_MAX
    """The host is declared frozen after this many intervals without an answer."""

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"host {self.name}: port {self.port} is not in 1..65535")
        for name in ("connect_timeout", "io_timeout", "keepalive_interval"):
            if getattr(self, name) <= 0:
                raise ValueError(f"host {self.name}: {name} must be positive")
        if self.keepalive_count_max < 1:
            raise ValueError(f"host {self.name}: keepalive_count_max must be at least 1")
        if self.host_key_policy not in ("reject", "accept-new"):
            raise ValueError(
                f"host {self.name}: host_key_policy must be 'reject' or 'accept-new', "
                f"not {self.host_key_policy!r}"
            )

    @property
    def where(self) -> str:
        """``address:port`` for messages (IPv6 in brackets)."""
        return f"{_bracket(self.address)}:{self.port}"

    @property
    def known_hosts_name(self) -> str:
        """The host's name in known_hosts: ``[addr]:port``, or ``addr`` on port 22."""
        return known_hosts_name(self.address, self.port)

    @property
    def silence_limit(self) -> float:
        """How long an established connection may go without an answer."""
        return self.keepalive_interval * self.keepalive_count_max


class _ServerAlive:
    """Asks the server for an answer every ``interval`` seconds and closes the
    transport when none comes for ``interval * count_max``: closing is what
    wakes a thread blocked on a frozen host (in exec, an SFTP read, a channel
    open or a full send window), where paramiko has no deadline of its own.
    One request is outstanding at a time (paramiko's ``global_request`` keeps
    one reply slot), sent from a short-lived thread since it has no timeout."""

    def __init__(self, transport: paramiko.Transport, interval: float, count_max: int) -> None:
        self.transport = transport
        self.interval = interval
        self.limit = interval * count_max
        self.dead = False
        self._stop = threading.Event()
        threading.Thread(target=self._watch, name="ssh-keepalive", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            if not self.transport.is_active():
                return
            answered = threading.Event()
            threading.Thread(target=self._ask, args=(answered,), daemon=True).start()
            if answered.wait(self.limit) or self._stop.is_set():
                continue
            self.dead = True
            self.transport.close()
            return

    def _ask(self, answered: threading.Event) -> None:
        # OpenSSH answers an unknown global request with a failure: any answer
        # proves the host alive. Returns early if the transport closes.
        with contextlib.suppress(Exception):
            self.transport.global_request("keepalive@openssh.com", wait=True)
        answered.set()


def _bracket(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def known_hosts_name(address: str, port: int) -> str:
    """OpenSSH's known_hosts spelling of a host (plain address on port 22)."""
    return address if port == 22 else f"[{address}]:{port}"


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's ``SHA256:base64`` fingerprint (no padding) of a public key."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux only


class _QuickAckSocket(socket.socket):
    """A socket that acknowledges at once whatever it receives.

    sshd leaves Nagle's algorithm on for sessions without a terminal, so its
    second small packet in a row (the exec's reply, then the command's output)
    waits for our acknowledgement of the first, which Linux delays by up to
    40 ms when it has nothing to send back. ``TCP_QUICKACK`` does not stay set,
    so it is set again after each read (one system call).
    """

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        data = super().recv(bufsize, flags)
        if _QUICKACK is not None:
            with contextlib.suppress(OSError):
                self.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
        return data


def open_socket(address: str, port: int, timeout: float) -> socket.socket:
    """A TCP connection to ``address:port`` for an SSH transport, without the
    delays Nagle's algorithm and delayed acknowledgements add to a
    request-and-reply protocol.

    paramiko often writes two small packets in a row (a window adjust, then
    the next request; NEWKEYS, then the service request). With Nagle on
    (``TCP_NODELAY`` off), the second waits until the first is acknowledged,
    which the host delays (40 ms on Linux); the host's own packets are
    acknowledged at once for the same reason (:class:`_QuickAckSocket`).
    Measured on loopback: a new connection's first ``exec true`` took 47 ms
    with both delays, 3 ms without; the handshake 63 ms, 20 ms. ``OSError``
    as ``socket.create_connection`` raises it.
    """
    plain = socket.create_connection((address, port), timeout=timeout)
    sock = plain
    if _QUICKACK is not None:
        sock = _QuickAckSocket(plain.family, plain.type, plain.proto, fileno=plain.detach())
        sock.settimeout(timeout)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        sock.close()
        raise
    return sock


def fetch_host_key(address: str, port: int = 22, timeout: float = 10.0) -> tuple[str, str, str]:
    """The key a server offers, as ``(keytype, base64, fingerprint)``.

    Only the key exchange is done (no authentication), so a CLI can show a
    fingerprint for the operator to compare before pinning it.
    """
    where = f"{_bracket(address)}:{port}"
    try:
        sock = open_socket(address, port, timeout)
    except OSError as e:
        raise HostUnreachable(address, f"unreachable: {_os_cause(e, timeout)}", where=where) from e
    transport = paramiko.Transport(sock)
    transport.banner_timeout = timeout
    try:
        transport.start_client(timeout=timeout)
        key = transport.get_remote_server_key()
    except (paramiko.SSHException, EOFError, OSError) as e:
        cause = _handshake_cause(e, timeout)
        raise HostUnreachable(address, f"unreachable: {cause}", where=where) from e
    finally:
        transport.close()
    return key.get_name(), key.get_base64(), fingerprint(key)


def add_known_host(
    known_hosts: Path, address: str, port: int, keytype: str, base64key: str
) -> None:
    """Pin a host key in an OpenSSH known_hosts file.

    An existing plain entry for the same host and key type is replaced (the
    operator re-trusting a reinstalled host); other lines are kept verbatim.
    Read-modify-write happens under an flock and ends in an atomic rename, so
    parallel trust-on-first-use connects cannot lose each other's lines.
    """
    host = known_hosts_name(address, port)
    rewrite_known_hosts(
        known_hosts,
        lambda entry: None if _same_entry(entry, host, keytype) else entry,
        f"{host} {keytype} {base64key}\n",
        new_mode=0o644,
    )


def rewrite_known_hosts(
    known_hosts: Path,
    keep: Callable[[str], str | None],
    line: str,
    *,
    new_mode: int,
) -> None:
    """The one writer of known_hosts: each existing line through ``keep``
    (None drops it), then ``line`` appended. Read-modify-write under an
    flock, ending in an atomic rename, so parallel writers (trust on first
    use, ``host trust-key``) cannot lose each other's lines; an existing
    file keeps its mode, a new one gets ``new_mode``."""
    known_hosts.parent.mkdir(parents=True, exist_ok=True)
    lock_path = known_hosts.with_name(f".{known_hosts.name}.lock")
    with lock_path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            old = known_hosts.read_text(encoding="utf-8").splitlines(keepends=True)
            mode = stat.S_IMODE(known_hosts.stat().st_mode)
        except FileNotFoundError:
            old, mode = [], new_mode
        kept = [entry for entry in (keep(line) for line in old) if entry is not None]
        if kept and not kept[-1].endswith("\n"):
            kept[-1] += "\n"
        tmp = known_hosts.with_name(f".{known_hosts.name}.tmp-{os.getpid()}")
        tmp.write_text("".join([*kept, line]), encoding="utf-8")
        tmp.chmod(mode)
        tmp.replace(known_hosts)


def _same_entry(line: str, host: str, keytype: str) -> bool:
    fields = line.split()
    if len(fields) < 3 or line.lstrip().startswith(("#", "@")):
        return False
    return fields[1] == keytype and host in fields[0].split(",")


def _os_cause(e: OSError, timeout: float) -> str:
    if isinstance(e, TimeoutError):
        return f"connect timed out after {timeout:g}s"
    if isinstance(e, socket.gaierror):
        return f"cannot resolve address: {e.strerror or e}"
    if isinstance(e, paramiko.ssh_exception.NoValidConnectionsError):
        causes = {sub.strerror or str(sub) for sub in e.errors.values()}
        return "; ".join(sorted(causes))
    return e.strerror or str(e) or type(e).__name__


def _handshake_cause(e: BaseException, timeout: float) -> str:
    text = str(e) or type(e).__name__
    # paramiko's start_client() returns quietly at its timeout; the next call
    # then fails with "No existing session".
    if "banner" in text.lower() or text == "No existing session":
        return f"no SSH handshake within {timeout:g}s ({text})"
    if isinstance(e, OSError):
        return _os_cause(e, timeout)
    return f"ssh handshake failed: {text}"


class _CheckHostKey(paramiko.MissingHostKeyPolicy):  # type: ignore[misc]
    """Called only when known_hosts has no key at all for the host.

    (A host that is known under any key type but offers another key makes
    paramiko raise ``BadHostKeyException`` instead, which we map to a mismatch,
    so "accept-new" never overrides a changed key.)
    """

    def __init__(self, settings: SSHSettings) -> None:
        self.settings = settings

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        s = self.settings
        if s.host_key_policy == "accept-new":
            add_known_host(s.known_hosts, s.address, s.port, key.get_name(), key.get_base64())
            client.get_host_keys().add(hostname, key.get_name(), key)
            return
        raise UnknownHostKey(
            s.name,
            where=s.where,
            fingerprint=fingerprint(key),
            known_hosts=s.known_hosts,
            key_type=key.get_name(),
        )


@functools.cache
def _exec_runner() -> type[Any]:
    """fabric's ``Remote`` with bulk binary stdin, chunk-safe UTF-8 and a
    reliable timeout: made on first use, so that fabric and invoke are
    imported only for a host that cannot run the command runner."""
    import fabric.runners  # the exec fallback only

    class Runner(fabric.runners.Remote):  # type: ignore[misc]
        """fabric's Remote with bulk binary stdin, chunk-safe UTF-8 and a reliable timeout."""

        stdin_data: bytes = b""
        killed_by_timer = False
        read_chunk_size = _CHUNK  # invoke reads 1000 bytes at a time

        def respond(self, buffer_: list[str]) -> None:
            # We use no watchers; invoke's respond() joins the whole buffer on
            # every chunk, which makes large outputs quadratic.
            return

        def kill(self) -> None:
            # Only invoke's timeout timer calls kill(). Record it here: invoke's own
            # `timed_out` asks whether the timer thread is still alive, which races
            # with the channel closing and then reports a timeout as exit -1.
            self.killed_by_timer = True
            super().kill()

        @property
        def timed_out(self) -> bool:
            return self.killed_by_timer

        def handle_stdin(self, input_: IO[bytes], output: IO[str], echo: bool = False) -> None:
            # One sendall then EOF; the command may exit without reading it all.
            with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
                if self.stdin_data:
                    self.channel.sendall(self.stdin_data)
                self.channel.shutdown_write()

        def read_proc_output(self, reader: Any) -> Iterator[str]:
            decoder = codecs.getincrementaldecoder("utf-8")("replace")
            while True:
                data = reader(self.read_chunk_size)
                if not data:
                    break
                text = decoder.decode(data)
                if text:
                    yield text
            tail = decoder.decode(b"", final=True)
            if tail:
                yield tail

    return Runner


class SSHConnector(Connector):
    """A host over SSH: one paramiko ``SSHClient`` and one SFTP client, reused."""

    def __init__(self, settings: SSHSettings) -> None:
        self.settings = settings
        self.name = settings.name
        self._conn: paramiko.SSHClient | None = None
        self._sftp_client: paramiko.SFTPClient | None = None
        self._fabric: Any = None
        """A fabric ``Connection`` around ``_conn``, for the exec fallback only."""
        self._alive: _ServerAlive | None = None
        self._session: HostSession | None = None
        self._session_refused = False
        """The host could not start the command runner: one exec per command."""

    def where(self) -> str:
        return self.settings.where

    @property
    def transport(self) -> paramiko.Transport | None:
        """The live SSH transport (None before connect); shows connection reuse."""
        return None if self._conn is None else self._conn.get_transport()

    # -- connection -------------------------------------------------------

    def connect(self) -> None:
        self._connection()

    def _connected(self) -> bool:
        transport = None if self._conn is None else self._conn.get_transport()
        return transport is not None and transport.is_active()

    def _connection(self) -> paramiko.SSHClient:
        if self._conn is not None:
            if self._connected():
                return self._conn
            self.close()  # the transport died: start over
        s = self.settings
        if s.key_file is not None and not os.access(s.key_file, os.R_OK):
            raise AuthenticationFailed(
                s.name, f"client key file {s.key_file} is missing or unreadable", where=s.where
            )
        client = paramiko.SSHClient()
        if s.known_hosts.exists():
            client.load_host_keys(str(s.known_hosts))
        client.set_missing_host_key_policy(_CheckHostKey(s))
        try:
            client.connect(
                s.address,
                port=s.port,
                sock=open_socket(s.address, s.port, s.connect_timeout),
                username=s.user,
                key_filename=None if s.key_file is None else [str(s.key_file)],
                allow_agent=False,
                look_for_keys=False,
                timeout=s.connect_timeout,
                banner_timeout=s.connect_timeout,
                auth_timeout=s.connect_timeout,
                channel_timeout=s.connect_timeout,
            )
            transport = client.get_transport()
            if transport is None:  # (connect returned, so it has one)
                raise EOFError("the connection closed during the handshake")
        except BaseException as e:
            handshake_done = _handshake_done(client)
            client.close()
            raise self._connect_error(e, handshake_done) from e
        self._conn = client
        self._alive = _ServerAlive(transport, s.keepalive_interval, s.keepalive_count_max)
        return client

    def _connect_error(self, e: BaseException, handshake_done: bool) -> BaseException:
        s = self.settings
        if isinstance(e, UnknownHostKey | HostKeyMismatch):
            return e
        if isinstance(e, paramiko.BadHostKeyException):
            return HostKeyMismatch(
                s.name,
                where=s.where,
                fingerprint=fingerprint(e.key),
                known_hosts=s.known_hosts,
                expected=fingerprint(e.expected_key),
            )
        if isinstance(e, paramiko.AuthenticationException) or (
            handshake_done and isinstance(e, paramiko.SSHException)  # e.g. a malformed key file
        ):
            key = s.key_file if s.key_file is not None else "no key"
            return AuthenticationFailed(
                s.name, f"authentication as {s.user} with {key} failed: {e}", where=s.where
            )
        if isinstance(e, OSError):
            return HostUnreachable(
                s.name, f"unreachable: {_os_cause(e, s.connect_timeout)}", where=s.where
            )
        if isinstance(e, paramiko.SSHException | EOFError):
            cause = _handshake_cause(e, s.connect_timeout)
            return HostUnreachable(s.name, f"unreachable: {cause}", where=s.where)
        return e

    def close(self) -> None:
        conn, self._conn = self._conn, None
        sftp, self._sftp_client = self._sftp_client, None
        self._fabric = None
        alive, self._alive = self._alive, None
        session, self._session = self._session, None
        self._session_refused = False
        if session is not None:
            with contextlib.suppress(Exception):
                session.close()
        if sftp is not None:
            with contextlib.suppress(Exception):
                sftp.close()
        if conn is not None:
            # A graceful close sends to the host; if it is frozen the keepalive,
            # still watching, closes the transport under it.
            conn.close()
        if alive is not None:
            alive.stop()

    def _frozen(self, doing: str) -> ConnectorTimeout | None:
        """The keepalive found the host silent: the error for ``doing``, or None."""
        alive = self._alive
        if alive is None or not alive.dead:
            return None
        self.close()
        return ConnectorTimeout(
            self.name,
            f"stopped answering during {doing}: no reply to SSH keepalives for "
            f"{alive.limit:g}s (host frozen or network down)",
            where=self.where(),
            timeout=alive.limit,
        )

    def _stalled(self, doing: str) -> ConnectorTimeout:
        """An SFTP read or write made no progress for ``io_timeout``. The
        session's request/response stream is out of step now: start over."""
        frozen = self._frozen(doing)
        if frozen is not None:
            return frozen
        self.close()
        timeout = self.settings.io_timeout
        return ConnectorTimeout(
            self.name,
            f"no progress for {timeout:g}s during {doing} (transfer stalled)",
            where=self.where(),
            timeout=timeout,
        )

    def _lost(self, e: BaseException, doing: str) -> ConnectorError:
        """The session broke mid-operation: forget it so the next call reconnects."""
        frozen = self._frozen(doing)
        if frozen is not None:
            return frozen
        self.close()
        if "Timeout opening channel" in str(e):
            # paramiko gave up waiting for the host to open a channel before the
            # keepalive declared it dead: the same frozen host, said the same way.
            return ConnectorTimeout(
                self.name,
                f"stopped answering during {doing}: no channel opened (host frozen or "
                "network down)",
                where=self.where(),
                timeout=self.settings.io_timeout,
            )
        return HostUnreachable(
            self.name,
            f"connection lost during {doing}: {e or type(e).__name__}",
            where=self.where(),
        )

    # -- commands ---------------------------------------------------------

    def run(
        self,
        command: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        stdin: bytes | None = None,
        env: Mapping[str, str] | None = None,
        check: bool = False,
        display: str | None = None,
    ) -> CommandResult:
        shown = command if display is None else display
        self._connection()  # connected first, so the first command has a runner too
        result = self._run_in_session(command, shown, timeout, stdin, env)
        if result is None:
            result = self._run_exec(command, shown, timeout, stdin, env)
        return self.checked(result, check)

    def _run_exec(
        self,
        command: str,
        shown: str,
        timeout: float,
        stdin: bytes | None,
        env: Mapping[str, str] | None,
    ) -> CommandResult:
        """``command`` over an exec of its own: a new SSH session on the host."""
        from invoke.exceptions import CommandTimedOut, ThreadException

        context = self._fabric_context()
        wrapped, marker = _wrapped(command, env)
        runner = _exec_runner()(context=context, inline_env=False)
        runner.stdin_data = stdin or b""
        started = time.monotonic()
        try:
            res = runner.run(
                wrapped,
                timeout=timeout,
                warn=True,
                hide=True,
                in_stream=io.BytesIO(),
                env=dict(env or {}),
                encoding="utf-8",
                pty=False,
            )
        except CommandTimedOut as e:
            self._kill_remote(runner, marker)
            frozen = self._frozen(f"command {shown!r}")
            raise frozen or ConnectorTimeout(
                self.name,
                f"command timed out after {timeout:g}s: {shown}",
                where=self.where(),
                timeout=timeout,
            ) from e
        except KeyboardInterrupt:
            self._kill_remote(runner, marker)
            raise
        except (OSError, EOFError, paramiko.SSHException, ThreadException) as e:
            raise self._lost(e, f"command {shown!r}") from e
        frozen = self._frozen(f"command {shown!r}")
        if frozen is not None:  # the keepalive closed the channel under the command
            raise frozen
        stderr, _pid = _strip_marker(res.stderr, marker)
        return CommandResult(
            command=shown,
            exit_code=int(res.exited),
            stdout=res.stdout,
            stderr=stderr,
            duration_s=time.monotonic() - started,
        )

    def command_status(self, timeout: float = DEFAULT_TIMEOUT) -> int:
        """0 once the command runner answered: the host's ``python3`` ran under
        the login shell and starts every command after it; else the status of
        ``true`` run over an exec of its own."""
        self._connection()
        if self._host_session() is not None:
            return 0
        return super().command_status(timeout)

    def _host_session(self) -> HostSession | None:
        """The connection's command runner, started on first use (None: the
        host cannot run it, or the connection is not open)."""
        conn = self._conn
        if self._session is not None or self._session_refused or conn is None:
            return self._session
        try:
            transport = conn.get_transport()
            if transport is None:
                raise EOFError("the connection is closed")
            self._session = HostSession.start(transport, self.settings.connect_timeout)
        except (OSError, EOFError, paramiko.SSHException) as e:
            raise self._lost(e, "starting the command runner") from e
        self._session_refused = self._session is None
        return self._session

    def run_python(
        self,
        source: str,
        args: Sequence[str] = (),
        *,
        timeout: float = DEFAULT_TIMEOUT,
        stdin: bytes | None = None,
        display: str,
        quick: bool = False,
    ) -> CommandResult:
        # ``quick`` changes nothing here: the command runner forks each program.
        self._connection()
        python = (source, list(args))
        result = self._run_in_session("", display, timeout, stdin, None, python=python)
        if result is not None:
            return result
        return super().run_python(source, args, timeout=timeout, stdin=stdin, display=display)

    def _run_in_session(
        self,
        command: str,
        shown: str,
        timeout: float,
        stdin: bytes | None,
        env: Mapping[str, str] | None,
        *,
        python: tuple[str, list[str]] | None = None,
    ) -> CommandResult | None:
        """The command run by the connection's command runner; None where there
        is none (no ``python3`` there) or another thread is using it."""
        session = self._host_session()
        if session is None or not session.lock.acquire(blocking=False):
            return None
        try:
            return self._session_command(session, command, shown, timeout, stdin, env, python)
        finally:
            session.lock.release()

    def _session_command(
        self,
        session: HostSession,
        command: str,
        shown: str,
        timeout: float,
        stdin: bytes | None,
        env: Mapping[str, str] | None,
        python: tuple[str, list[str]] | None,
    ) -> CommandResult:
        doing = f"command {shown!r}"
        started = time.monotonic()
        try:
            reply = session.run(
                command,
                stdin=stdin or b"",
                env=checked_env(env),
                timeout=timeout,
                dead=lambda: self._alive is not None and self._alive.dead,
                python=python,
            )
        except SessionBroken as e:
            raise self._lost(e, doing) from e
        except KeyboardInterrupt:
            self._session = None  # it was told to kill the command; start afresh
            with contextlib.suppress(Exception):
                session.close()
            raise
        if reply.timed_out:
            raise self._frozen(doing) or ConnectorTimeout(
                self.name,
                f"command timed out after {timeout:g}s: {shown}",
                where=self.where(),
                timeout=timeout,
            )
        return CommandResult(
            command=shown,
            exit_code=reply.exit_code,
            stdout=reply.stdout,
            stderr=reply.stderr,
            duration_s=time.monotonic() - started,
        )

    def run_streaming(
        self,
        command: str,
        chunks: Iterable[bytes],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        env: Mapping[str, str] | None = None,
        display: str | None = None,
    ) -> CommandResult:
        shown = command if display is None else display
        doing = f"command {shown!r}"
        transport = self._connection().get_transport()
        if transport is None:
            raise self._lost(EOFError("the connection is closed"), f"command {shown!r}")
        wrapped, marker = _wrapped(command, env)
        started = time.monotonic()
        try:
            channel = transport.open_session(timeout=self.settings.io_timeout)
            # Each send waits for window space at most this long: the progress
            # deadline of the stream, as for SFTP transfers.
            channel.settimeout(min(timeout, self.settings.io_timeout))
            channel.exec_command(wrapped)
        except TimeoutError as e:
            raise self._stalled(f"starting {doing}") from e
        except (OSError, EOFError, paramiko.SSHException) as e:
            raise self._lost(e, f"starting {doing}") from e
        out: list[bytes] = []
        err: list[bytes] = []
        drains = [
            threading.Thread(target=_drain, args=(channel.recv, out, channel), daemon=True),
            threading.Thread(target=_drain, args=(channel.recv_stderr, err, channel), daemon=True),
        ]
        for drain in drains:
            drain.start()

        killed: list[bool] = []

        def kill() -> None:
            """Close the channel and kill the command's process group (once)."""
            if killed:
                return
            killed.append(True)
            pid = _strip_marker(b"".join(err).decode("utf-8", "replace"), marker)[1]
            channel.close()
            self._kill_group(pid)

        def send(data: bytes | None) -> None:
            """One chunk (None: the end of input); transport errors become ours."""
            try:
                if data is None:
                    channel.shutdown_write()
                else:
                    channel.sendall(data)
            except TimeoutError as e:
                kill()
                raise self._stalled(f"streaming into {doing}") from e
            except (OSError, EOFError, paramiko.SSHException) as e:
                if exited():
                    return  # it exited without reading everything
                kill()
                raise self._lost(e, doing) from e

        def exited() -> bool:
            """The command's exit status came (a closed channel has none)."""
            return bool(channel.exit_status_ready()) and channel.recv_exit_status() != -1

        try:
            for chunk in chunks:  # an error of `chunks` itself propagates as it is
                if exited():
                    break
                send(chunk)
            if not exited():
                send(None)
        except BaseException:
            kill()
            raise
        if not channel.status_event.wait(timeout):
            kill()
            raise self._frozen(doing) or ConnectorTimeout(
                self.name,
                f"command did not exit within {timeout:g}s of the end of its input: {shown}",
                where=self.where(),
                timeout=timeout,
            )
        for drain in drains:
            drain.join(timeout=self.settings.io_timeout)
        frozen = self._frozen(doing)
        if frozen is not None:  # the keepalive closed the channel under the command
            raise frozen
        exit_code = channel.recv_exit_status()
        channel.close()
        if exit_code == -1:  # closed without an exit status: the session broke
            raise self._lost(EOFError("channel closed without an exit status"), doing)
        stderr = _strip_marker(b"".join(err).decode("utf-8", "replace"), marker)[0]
        return CommandResult(
            command=shown,
            exit_code=exit_code,
            stdout=b"".join(out).decode("utf-8", "replace"),
            stderr=stderr,
            duration_s=time.monotonic() - started,
        )

    def _fabric_context(self) -> Any:
        """A fabric ``Connection`` wrapping this connector's open client: the
        context the exec fallback's runner needs (fabric imported only here)."""
        import fabric  # the exec fallback only

        client = self._connection()
        if self._fabric is None or self._fabric.client is not client:
            s = self.settings
            context = fabric.Connection(
                host=s.address,
                user=s.user,
                port=s.port,
                config=fabric.Config(ssh_config=paramiko.SSHConfig(), lazy=True),
                inline_ssh_env=False,
            )
            context.client = client  # already connected: fabric's open() is a no-op
            context.transport = client.get_transport()
            self._fabric = context
        return self._fabric

    def _kill_remote(self, runner: Any, marker: str) -> None:
        """Kill an abandoned exec's process group (its pid from the marker line)."""
        self._kill_group(_strip_marker("".join(getattr(runner, "stderr", None) or []), marker)[1])

    def _kill_group(self, pid: int | None) -> None:
        """Kill process group ``pid`` on the host, best effort, while the
        connection still answers (on a frozen host it would only wait)."""
        alive = self._alive is not None and not self._alive.dead
        if pid is None or not alive or not self._connected():
            return
        with contextlib.suppress(Exception):
            self.run(
                f"kill -s KILL -- -{pid} 2>/dev/null || kill -s KILL {pid} 2>/dev/null; true",
                timeout=_KILL_TIMEOUT,
            )

    # -- files ------------------------------------------------------------

    def _sftp(self) -> paramiko.SFTPClient:
        try:
            client = self._connection()  # first: a dead connection drops its SFTP client
            sftp = self._sftp_client
            if sftp is None:
                sftp = self._sftp_client = client.open_sftp()
        except TimeoutError as e:
            raise self._stalled("opening SFTP") from e
        except (OSError, EOFError, paramiko.SSHException) as e:
            raise self._lost(e, "opening SFTP") from e
        # Every read and write on the channel: the progress deadline of transfers.
        sftp.get_channel().settimeout(self.settings.io_timeout)
        return sftp

    def _file_error(self, e: OSError, path: str, doing: str) -> ConnectorError:
        if isinstance(e, FileNotFoundError) or e.errno == errno.ENOENT:
            return RemoteFileMissing(self.name, path, where=self.where())
        return ConnectorError(self.name, f"{doing} {path}: {e.strerror or e}", where=self.where())

    def put(self, local: Path, remote: str, *, mode: int | None = None) -> None:
        with local.open("rb") as fh:
            self._upload(fh, remote, mode)

    def put_bytes(self, data: bytes, remote: str, *, mode: int | None = None) -> None:
        self._upload(io.BytesIO(data), remote, mode)

    def _upload(self, source: IO[bytes], remote: str, mode: int | None) -> None:
        sftp = self._sftp()
        if mode is None:
            try:
                mode = stat.S_IMODE(sftp.stat(remote).st_mode or NEW_FILE_MODE)
            except FileNotFoundError:
                mode = NEW_FILE_MODE
            except TimeoutError as e:
                raise self._stalled(f"stat {remote}") from e
            except OSError as e:
                raise self._file_error(e, remote, "stat") from e
            except (EOFError, paramiko.SSHException) as e:
                raise self._lost(e, f"stat {remote}") from e
        tmp = temp_sibling(remote)
        try:
            with sftp.open(tmp, "wb") as fh:
                fh.chmod(mode)  # before any byte lands, for secrets
                fh.set_pipelined(True)
                # Chunk by chunk: each must get through within io_timeout.
                while chunk := source.read(_CHUNK):
                    fh.write(chunk)
            sftp.posix_rename(tmp, remote)
        except TimeoutError as e:
            raise self._stalled(f"put {remote}") from e
        except OSError as e:
            with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
                sftp.remove(tmp)
            raise self._file_error(e, remote, "put") from e
        except (EOFError, paramiko.SSHException) as e:
            raise self._lost(e, f"put {remote}") from e

    def get(self, remote: str, local: Path) -> None:
        sftp = self._sftp()
        tmp = local.with_name(f".{local.name}.tmp-{os.urandom(6).hex()}")
        try:
            with tmp.open("wb") as fh:
                sftp.getfo(remote, fh)
            tmp.replace(local)
        except TimeoutError as e:
            tmp.unlink(missing_ok=True)
            raise self._stalled(f"get {remote}") from e
        except OSError as e:
            tmp.unlink(missing_ok=True)
            if e.filename is not None and Path(e.filename) in (tmp, local):
                raise  # a local problem, not the host's
            raise self._file_error(e, remote, "get") from e
        except (EOFError, paramiko.SSHException) as e:
            tmp.unlink(missing_ok=True)
            raise self._lost(e, f"get {remote}") from e

    def read_bytes(self, remote: str) -> bytes:
        sftp = self._sftp()
        try:
            with sftp.open(remote, "rb") as fh:
                fh.prefetch()
                data: bytes = fh.read()
                return data
        except TimeoutError as e:
            raise self._stalled(f"read {remote}") from e
        except OSError as e:
            raise self._file_error(e, remote, "read") from e
        except (EOFError, paramiko.SSHException) as e:
            raise self._lost(e, f"read {remote}") from e

    def exists(self, remote: str) -> bool:
        sftp = self._sftp()
        try:
            sftp.stat(remote)
        except FileNotFoundError:
            return False
        except TimeoutError as e:
            raise self._stalled(f"stat {remote}") from e
        except OSError as e:
            raise self._file_error(e, remote, "stat") from e
        except (EOFError, paramiko.SSHException) as e:
            raise self._lost(e, f"stat {remote}") from e
        return True

    def sha256(self, remote: str) -> str | None:
        path = shlex.quote(remote)
        script = (
            f"[ -e {path} ] || exit 3; "
            f"if command -v sha256sum >/dev/null 2>&1; then exec sha256sum < {path}; fi; "
            f"if command -v shasum >/dev/null 2>&1; then exec shasum -a 256 < {path}; fi; "
            "exec python3 -c 'import hashlib,sys;"
            "print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())' < " + path
        )
        result = self.run(script, timeout=_HASH_TIMEOUT, display=f"sha256 {remote}")
        if result.exit_code == 3:
            return None
        match = _HEX64.match(result.stdout.strip())
        if not result.ok or match is None:
            raise CommandFailed(
                self.name,
                where=self.where(),
                command=result.command,
                returncode=result.exit_code,
                stderr=result.stderr or f"unexpected output {result.stdout[:80]!r}",
            )
        return match.group(0)

    def symlink_swap(self, target: str, link: str) -> None:
        # Over SFTP (symlink, then posix-rename over the old link: rename(2),
        # atomic as `mv -T`): no shell, `ln` or `mv` process on the host.
        sftp = self._sftp()
        tmp = temp_sibling(link)
        try:
            sftp.symlink(target, tmp)
            try:
                sftp.posix_rename(tmp, link)
            except BaseException:
                with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
                    sftp.remove(tmp)
                raise
        except TimeoutError as e:
            raise self._stalled(f"symlink {link}") from e
        except OSError as e:
            if isinstance(e, FileNotFoundError) or e.errno == errno.ENOENT:
                raise self._file_error(e, link, "symlink") from e
            why = e.strerror or str(e)
            with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
                if stat.S_ISDIR(sftp.lstat(link).st_mode or 0):  # SFTP says only "Failure"
                    why = "Is a directory"
            raise ConnectorError(self.name, f"symlink {link}: {why}", where=self.where()) from e
        except (EOFError, paramiko.SSHException) as e:
            raise self._lost(e, f"symlink {link}") from e


def _handshake_done(client: paramiko.SSHClient) -> bool:
    """Whether the key exchange (and host key check) finished: failures after it are auth."""
    transport = client.get_transport()
    return transport is not None and transport.host_key is not None


def _wrapped(command: str, env: Mapping[str, str] | None) -> tuple[str, str]:
    """``(command for the login shell, marker)``: ``command`` under ``sh -c``
    with ``env`` exported, after a stderr line ``marker PID``."""
    exports = "".join(f"export {k}={shlex.quote(v)}; " for k, v in checked_env(env).items())
    marker = f"chassis-pid-{os.urandom(6).hex()}"
    # sshd makes the login shell a session leader, so $$ is the process
    # group to kill on timeout; `exec` keeps that pid for the POSIX sh.
    wrapped = f"printf '%s %s\\n' {marker} $$ >&2; exec /bin/sh -c {shlex.quote(exports + command)}"
    return wrapped, marker


def _drain(recv: Callable[[int], bytes], into: list[bytes], channel: paramiko.Channel) -> None:
    """Read one of a channel's streams to its end (its socket timeout only
    bounds each wait, so a silent command is waited for until it closes)."""
    while True:
        try:
            data = recv(_CHUNK)
        except TimeoutError:
            if channel.closed:
                return
            continue
        except (OSError, EOFError, paramiko.SSHException):
            return
        if not data:
            return
        into.append(data)


def _strip_marker(stderr: str, marker: str) -> tuple[str, int | None]:
    """Remove our ``marker PID`` line from stderr and return the pid."""
    found = re.search(rf"^{marker} (\d+)\n", stderr, flags=re.MULTILINE)
    if found is None:
        return stderr, None
    return stderr[: found.start()] + stderr[found.end() :], int(found.group(1))
