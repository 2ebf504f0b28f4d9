"""One command runner per SSH connection: commands without a new SSH session each.

An ``exec`` costs the host a new SSH session and a login shell (≈40 ms on
loopback, measured in ``bench/deploy.py``); a deploy runs a dozen commands
per host. :class:`HostSession` starts :mod:`adapters.connectors.session_agent`
once on the host's ``python3`` and sends it each command over the same
channel. The semantics are the ones of an ``exec``: ``/bin/sh -c`` as a
session leader, stdin given, stdout/stderr/exit status back, the process
group killed at the timeout; a connection lost mid-command leaves the command
to finish, as sshd does.

The connector falls back to one ``exec`` per command where the host has no
``python3`` (:meth:`HostSession.start` returns None) and while another thread
holds the session (commands run one at a time).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import json
import shlex
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import paramiko

from adapters.connectors import session_agent

_GRACE_S = 10.0
"""How long after a command's own timeout its reply may take (the runner
kills the group at the timeout and then reports)."""
_POLL_S = 0.5
"""Each wait on the channel: how often a silent wait checks the keepalive."""
_CHUNK = 65536


@functools.lru_cache(maxsize=32)
def _digest(source: str) -> str:
    return hashlib.sha256(source.encode("utf-8")).hexdigest()


class SessionBroken(Exception):
    """The runner's channel closed or stopped answering: drop the session."""


@dataclass(frozen=True)
class Reply:
    exit_code: int
    stdout: str
    stderr: str
    timed_out: bool


class HostSession:
    """The runner on one host, over one channel of a live transport."""

    def __init__(self, channel: paramiko.Channel, pid: int) -> None:
        self.channel = channel
        self.pid = pid
        """The runner's pid on the host."""
        self.lock = threading.Lock()
        """Held while a command runs: commands go one at a time."""
        self._pending: list[bytes] = []
        """Received bytes of a reply line not complete yet (a list: a 20 MB
        output arrives in hundreds of pieces, joined once)."""
        self._next_id = 0

    @classmethod
    def start(cls, transport: paramiko.Transport, timeout: float) -> HostSession | None:
        """Start the runner; None when the host cannot run it (no usable ``python3``).
        Transport errors propagate (the connector reports them as it does for an exec)."""
        channel = transport.open_session(timeout=timeout)
        # -I: no PYTHON* variables, user site or current directory on the path;
        # -S: no site module (the runner and every host program are stdlib
        # only; it saves each connection ~3 ms of the host's CPU);
        # -u: every reply leaves at once.
        # /usr/bin/python3 first, as for every host program (base.run_python).
        channel.exec_command(
            'py=/usr/bin/python3; [ -x "$py" ] || py=python3; exec "$py" -I -S -u -c '
            + shlex.quote(session_agent.source())
        )
        session = cls(channel, 0)
        try:
            hello = session._read(time.monotonic() + timeout, lambda: False)
        except SessionBroken:
            channel.close()
            return None
        if hello.get("hello") != session_agent.HELLO or not isinstance(hello.get("pid"), int):
            channel.close()
            return None
        session.pid = hello["pid"]
        return session

    def run(
        self,
        command: str,
        *,
        stdin: bytes,
        env: Mapping[str, str],
        timeout: float,
        dead: Callable[[], bool],
        python: tuple[str, list[str]] | None = None,
    ) -> Reply:
        """Run ``command`` (or, with ``python = (source, argv)``, that program
        as ``python3 -I -c`` would); SessionBroken when no reply comes
        (``dead()``: the keepalive gave up on the host). KeyboardInterrupt
        kills the command."""
        self._next_id += 1
        request_id = self._next_id
        request: dict[str, Any] = {
            "id": request_id,
            "stdin": base64.b64encode(stdin).decode("ascii"),
            "env": dict(env),
            "timeout": timeout,
        }
        if python is None:
            request["command"] = command
        else:
            request["python"], request["argv"] = python
            # The key of the host's cache of compiled programs (session_agent).
            request["python_sha256"] = _digest(python[0])
        self._send(request)
        try:
            reply = self._read(time.monotonic() + timeout + _GRACE_S, dead)
        except BaseException:
            self.kill(request_id)
            raise
        if reply.get("id") != request_id:
            raise SessionBroken(f"reply to request {reply.get('id')!r}, not {request_id}")
        return Reply(
            exit_code=int(reply["exit"]),
            stdout=base64.b64decode(reply["stdout"]).decode("utf-8", "replace"),
            stderr=base64.b64decode(reply["stderr"]).decode("utf-8", "replace"),
            timed_out=bool(reply.get("timed_out")),
        )

    def kill(self, request_id: int) -> None:
        """Kill a request's process group (best effort: the channel may be gone)."""
        with contextlib.suppress(SessionBroken):
            self._send({"kill": request_id})

    def close(self) -> None:
        """End of input: the runner lets a running command finish, then exits."""
        self.channel.close()

    def _send(self, message: dict[str, Any]) -> None:
        line = json.dumps(message, separators=(",", ":")).encode("ascii") + b"\n"
        try:
            self.channel.sendall(line)
        except (OSError, EOFError, paramiko.SSHException) as e:
            raise SessionBroken(f"cannot send to the command runner: {e}") from e

    def _read(self, deadline: float, dead: Callable[[], bool]) -> dict[str, Any]:
        """The next JSON line from the runner."""
        while not self._pending or b"\n" not in self._pending[-1]:
            if dead():
                raise SessionBroken("the host stopped answering")
            wait = min(_POLL_S, deadline - time.monotonic())
            if wait <= 0:
                raise SessionBroken("no reply from the command runner in time")
            self.channel.settimeout(wait)
            try:
                data = self.channel.recv(_CHUNK)
            except TimeoutError:
                continue
            except (OSError, EOFError, paramiko.SSHException) as e:
                raise SessionBroken(f"the command runner's channel broke: {e}") from e
            if not data:
                raise SessionBroken("the command runner exited")
            self._pending.append(data)
        line, _, rest = b"".join(self._pending).partition(b"\n")
        self._pending = [rest] if rest else []
        try:
            message = json.loads(line)
        except ValueError as e:
            raise SessionBroken(f"unreadable reply from the command runner: {e}") from e
        if not isinstance(message, dict):
            raise SessionBroken("unreadable reply from the command runner")
        return message
