"""The command runner a host keeps for one SSH connection (run by the host's ``python3``).

Every ``exec`` over SSH costs a new session on the host: sshd forks, runs the
login shell, which runs ``/bin/sh -c``; about 40 ms on a loopback host, far
more than the command itself for most of what Chassis runs. This program is
started once per connection (:mod:`adapters.connectors.host_session`) and
then runs each command the connector sends it with ``/bin/sh -c``, as its own
session leader (what sshd made the login shell), so one command costs one
message each way on a channel that is already open.

The protocol is one JSON object per line each way. A request::

    {"id": N, "command": "...", "stdin": BASE64, "env": {NAME: VALUE}, "timeout": SECONDS}

and its reply ``{"id": N, "exit": CODE, "stdout": BASE64, "stderr": BASE64,
"timed_out": BOOL}``. ``{"kill": N}`` kills request N's process group.

A request with ``"python": SOURCE`` and ``"argv": [...]`` instead of a
command runs one of Chassis' own host programs (the archive reader, the
port-owner check, the group stop) as ``python3 -I -c SOURCE ARGV...`` would,
without paying for an interpreter's start: a *fork server* (a child the
runner forks from itself at its start, before it has a thread, so it costs
no interpreter either; a new interpreter where that failed or the server
died; single-threaded, so forking it is safe) forks a child
per program, which runs it as ``__main__`` on pipes the runner passed along
(``SCM_RIGHTS`` over a socket pair), while the server reports the child's pid
and, once it has reaped it, its exit status. A fork costs the host a few
milliseconds of CPU where an interpreter's start costs tens: at several
programs per host per deploy, the difference is most of a deploy's CPU on a
small host. The child is a process of its own, in a session of its own, so
timeouts and kills work as for commands; if the server cannot be started or
has died, the program gets an interpreter of its own, as before.
:class:`ForkServer` also serves local hosts (``LocalConnector``).
Commands run one at a time. At the end of its input (the connection closed)
the runner lets the running command finish, as sshd does with an ``exec``
whose client went away, then exits: a command half done (a launch that has not
written its pidfile yet) is never cut short by a lost connection.

Stdlib only and Python 3.8, like :mod:`adapters.archive`: it runs on
whatever ``python3`` a host has. The
commands are the ones the connector would have run over ``exec``; nothing
here turns data into code.
"""

from __future__ import annotations

import array
import base64
import contextlib
import gc
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time

TYPE_CHECKING = False  # not typing's: importing typing costs the host ~2 ms
if TYPE_CHECKING:  # annotations are strings (PEP 563)
    from typing import Any

HELLO = "chassis-session 2"

FORK_SERVER = r"""
import array, gc, json, os, select, signal, socket, sys, traceback
# What the host programs import (adapters.archive, the group stop, the port
# owner, the model transfer), imported once here: every forked child has
# them already instead of importing them again (~10 ms a program).
import collections.abc, contextlib, errno, fcntl, gzip, hashlib, re, stat, threading
import struct, time, typing, zlib
# Every object so far is shared with each child the server forks: frozen, no
# collection (here or in a child) touches them, so neither copies the pages
# they sit on (copy-on-write), which would cost each program milliseconds.
gc.freeze()
sock = socket.socket(fileno=int(sys.argv[1]))
programs = {}  # source -> code: a program run again on this connection is not compiled again
wake_r, wake_w = os.pipe()
os.set_blocking(wake_w, False)
os.set_blocking(wake_r, False)
signal.signal(signal.SIGCHLD, lambda *_: None)
signal.set_wakeup_fd(wake_w)
children = {}

def send(message):
    sock.send(json.dumps(message).encode("ascii"))

def status_of(status):
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else 1

def compiled(source):
    program = programs.get(source)
    if program is None:
        try:
            program = compile(source, "<chassis>", "exec")
        except BaseException:
            return None  # the child compiles it again and reports why
        if len(programs) < 32:
            programs[source] = program
    return program

def child(header, fds, program):
    code = 1
    try:
        os.setsid()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        for fd in set(fds) | {wake_r, wake_w}:
            if fd > 2:
                os.close(fd)
        sock.close()
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.environ.update(header["env"])
        sys.argv = header["argv"]
        try:
            if program is None:
                program = compile(header["source"], "<chassis>", "exec")
            exec(program, {"__name__": "__main__", "__builtins__": __builtins__})
            code = 0
        except SystemExit as e:
            if e.code is None or isinstance(e.code, int):
                code = e.code or 0
            else:
                print(e.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:
                pass
        os._exit(code)

while True:
    ready = select.select([sock, wake_r], [], [])[0]
    if wake_r in ready:
        try:
            while os.read(wake_r, 512):
                pass
        except BlockingIOError:
            pass
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            send({"id": children.pop(pid), "exit": status_of(status)})
    if sock in ready:
        fds = array.array("i")
        message, ancillary, _, _ = sock.recvmsg(1 << 21, socket.CMSG_LEN(3 * fds.itemsize))
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
        if not message:
            break
        header = json.loads(message)
        program = compiled(header["source"])
        pid = os.fork()
        if pid == 0:
            child(header, list(fds), program)
        for fd in fds:
            os.close(fd)
        children[pid] = header["id"]
        send({"id": header["id"], "pid": pid})
"""
"""The fork server: reads ``{"id", "source", "argv", "env"}`` with three fds
(the child's stdin, stdout, stderr), forks, answers ``{"id", "pid"}``, and
``{"id", "exit"}`` once it has reaped the child. Stdlib only, Python 3.8."""

_out_lock = threading.Lock()


def _send(message: dict[str, Any]) -> None:
    line = json.dumps(message, separators=(",", ":")) + "\n"
    with _out_lock:
        sys.stdout.write(line)
        sys.stdout.flush()


_PIPE_CHUNK = 65536


class Forked:
    """A host program forked by the :class:`ForkServer`: what the runner and
    ``LocalConnector`` use of a ``subprocess.Popen`` (``pid``, a session
    leader; ``returncode``; ``communicate``; ``poll``; ``kill``)."""

    def __init__(self, stdin: int, stdout: int, stderr: int) -> None:
        self.pid = 0
        self.returncode: int | None = None
        self.started = threading.Event()
        self.exited = threading.Event()
        self._stdin: int | None = stdin
        self._order = (stdout, stderr)
        self._reading = [stdout, stderr]
        self._output = {stdout: bytearray(), stderr: bytearray()}

    def poll(self) -> int | None:
        return self.returncode

    def kill(self) -> None:
        if self.pid:
            with contextlib.suppress(OSError):
                os.kill(self.pid, signal.SIGKILL)

    def close(self) -> None:
        """Close this side's pipes (a program that never started)."""
        for fd in [*self._reading, *([self._stdin] if self._stdin is not None else [])]:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._reading, self._stdin = [], None

    def _feed(self, data: bytes, fd: int) -> None:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view[:_PIPE_CHUNK]) :]
        except OSError:
            pass  # it exited without reading everything, as a process may
        finally:
            os.close(fd)

    def communicate(
        self, input: bytes | None = None, timeout: float | None = None
    ) -> tuple[bytes, bytes]:
        """Feed ``input`` (on the first call), read both outputs to their end
        and wait for the exit status; ``subprocess.TimeoutExpired`` after
        ``timeout``, after which a second call goes on where it stopped."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._stdin is not None:
            fd, self._stdin = self._stdin, None
            threading.Thread(target=self._feed, args=(input or b"", fd), daemon=True).start()

        def left() -> float | None:
            return None if deadline is None else max(0.0, deadline - time.monotonic())

        with selectors.DefaultSelector() as selector:
            for fd in self._reading:
                selector.register(fd, selectors.EVENT_READ)
            while self._reading:
                wait = left()
                if wait == 0.0:
                    raise subprocess.TimeoutExpired("host program", timeout or 0.0)
                for key, _ in selector.select(wait):
                    chunk = os.read(key.fd, _PIPE_CHUNK)
                    if chunk:
                        self._output[key.fd] += chunk
                        continue
                    selector.unregister(key.fd)
                    os.close(key.fd)
                    self._reading.remove(key.fd)
        if not self.exited.wait(left()):
            raise subprocess.TimeoutExpired("host program", timeout or 0.0)
        return bytes(self._output[self._order[0]]), bytes(self._output[self._order[1]])


class _ForkedServer:
    """The fork server as a forked child of this process: what ``Popen``
    gives for an exec'd one, as far as :class:`ForkServer` uses it."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            os.kill(self.pid, signal.SIGKILL)

    def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:  # (os.waitstatus_to_exitcode is 3.9+; hosts may have 3.8)
                self.returncode = (
                    os.WEXITSTATUS(status) if os.WIFEXITED(status) else -os.WTERMSIG(status)
                )
            elif time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired("fork server", timeout)
            else:
                time.sleep(0.01)
        return self.returncode


def _serve_forks(theirs: socket.socket) -> None:
    """In a child forked from a single-threaded runner: be the fork server.
    Never returns."""
    try:
        os.setsid()
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):  # never the runner's channel
            os.dup2(null, fd)
        sys.argv = ["-c", str(theirs.fileno())]
        program = compile(FORK_SERVER, "<chassis fork server>", "exec")
        # Our own constant source, as ``python3 -c FORK_SERVER`` would run it.
        exec(program, {"__name__": "__main__", "__builtins__": __builtins__})  # noqa: S102
    finally:
        os._exit(0)


class ForkServer:
    """The client of one fork server (:data:`FORK_SERVER`) run by ``python``.

    With ``fork=True`` the server is a forked child of this process instead
    of a new interpreter: the runner does that at its start, while it has no
    thread yet (forking is only safe then), and saves the host an
    interpreter's start per connection."""

    def __init__(self, python: str = sys.executable, *, fork: bool = False) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.process: subprocess.Popen[bytes] | _ForkedServer
        try:
            if fork:
                pid = os.fork()
                if pid == 0:
                    ours.close()
                    _serve_forks(theirs)
                self.process = _ForkedServer(pid)
            else:
                self.process = subprocess.Popen(
                    [python, "-I", "-c", FORK_SERVER, str(theirs.fileno())],
                    pass_fds=(theirs.fileno(),),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.sock = ours
        self.alive = True
        self._lock = threading.Lock()
        self._next = 0
        self._pending: dict[int, Forked] = {}
        threading.Thread(target=self._read, daemon=True).start()

    def spawn(
        self, source: str, argv: list[str], env: dict[str, str], *, timeout: float = 30.0
    ) -> Forked:
        """A child running ``source`` as ``__main__`` with ``sys.argv`` =
        ``argv``; ``OSError`` if the server cannot fork it (then run it in an
        interpreter of its own)."""
        if not self.alive:
            raise OSError("the fork server is gone")
        stdin, stdout, stderr = os.pipe(), os.pipe(), os.pipe()
        theirs = [stdin[0], stdout[1], stderr[1]]
        process = Forked(stdin[1], stdout[0], stderr[0])
        with self._lock:
            self._next += 1
            ident = self._next
            self._pending[ident] = process
        header = {"id": ident, "source": source, "argv": argv, "env": env}
        try:
            rights = array.array("i", theirs)
            self.sock.sendmsg(
                [json.dumps(header).encode("utf-8")],
                [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights.tobytes())],
            )
            if not process.started.wait(timeout) or not process.pid:
                raise OSError("the fork server did not fork the program")
        except OSError:
            with self._lock:
                self._pending.pop(ident, None)
            process.close()
            raise
        finally:
            for fd in theirs:
                os.close(fd)
        return process

    def _read(self) -> None:
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    break
                message = json.loads(data)
                with self._lock:
                    process = self._pending.get(message["id"])
                    if process is not None and "exit" in message:
                        del self._pending[message["id"]]
                if process is None:
                    continue
                if "pid" in message:
                    process.pid = int(message["pid"])
                    process.started.set()
                else:
                    process.returncode = int(message["exit"])
                    process.exited.set()
        except (OSError, ValueError):
            pass
        finally:  # the server is gone: nobody will report these
            self.alive = False
            with self._lock:
                orphans = list(self._pending.values())
                self._pending.clear()
            for process in orphans:
                if process.returncode is None:
                    process.returncode = -signal.SIGKILL
                process.started.set()
                process.exited.set()

    def close(self) -> None:
        """Stop the server (the programs it forked run on)."""
        with contextlib.suppress(OSError):
            # shutdown, not only close: it wakes our reader blocked in recv,
            # and only then does the server see the end of its input.
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.sock.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)


_servers_lock = threading.Lock()
_servers: dict[str, ForkServer] = {}


def fork_server(python: str = sys.executable) -> ForkServer | None:
    """This process's fork server run by ``python``, started on first use and
    again if it died; None if none starts. The runner uses its own
    interpreter's; ``LocalConnector`` the one ``run_python`` would start."""
    with _servers_lock:
        server = _servers.get(python)
        if server is not None and server.alive:
            return server
        try:
            server = ForkServer(python)
        except OSError:
            return None
        _servers[python] = server
        return server


if TYPE_CHECKING:
    Process = subprocess.Popen[bytes] | Forked


def _kill_group(process: Process) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except OSError:
        with contextlib.suppress(OSError):
            process.kill()


def _start(request: dict[str, Any]) -> tuple[Process, bytes]:
    """The process for ``request`` and what to write to its stdin."""
    stdin = base64.b64decode(request.get("stdin") or "")
    env = request.get("env") or {}
    if "python" in request:
        argv = ["-c", *request.get("argv", [])]
        server = fork_server()
        if server is not None:
            with contextlib.suppress(OSError):
                return server.spawn(request["python"], argv, env), stdin
        command = [sys.executable, "-I", "-c", request["python"], *argv[1:]]
    else:
        command = ["/bin/sh", "-c", request["command"]]
    process = subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **env},
        start_new_session=True,
    )
    return process, stdin


def _run(request: dict[str, Any], running: dict[int, Process]) -> None:
    try:
        process, stdin = _start(request)
    except OSError as e:
        message = base64.b64encode(str(e).encode()).decode("ascii")
        _send({"id": request["id"], "exit": 127, "stdout": "", "stderr": message})
        return
    running[request["id"]] = process
    timed_out = False
    try:
        out, err = process.communicate(stdin, timeout=request.get("timeout"))
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(process)
        out, err = process.communicate()
    running.pop(request["id"], None)
    _send(
        {
            "id": request["id"],
            "exit": process.returncode,
            "stdout": base64.b64encode(out).decode("ascii"),
            "stderr": base64.b64encode(err).decode("ascii"),
            "timed_out": timed_out,
        }
    )


def main() -> None:
    running: dict[int, Process] = {}
    workers: list[threading.Thread] = []
    _send({"hello": HELLO, "pid": os.getpid()})
    # Started before the first program needs it, and forked while this
    # process has no other thread: no second interpreter to start.
    gc.freeze()
    with _servers_lock, contextlib.suppress(OSError):  # else fork_server() execs one
        _servers[sys.executable] = ForkServer(sys.executable, fork=True)
    for line in sys.stdin:
        try:
            request = json.loads(line)
        except ValueError:
            continue
        if "kill" in request:
            process = running.get(request["kill"])
            if process is not None:
                _kill_group(process)
            continue
        worker = threading.Thread(target=_run, args=(request, running))
        worker.start()
        workers = [w for w in workers if w.is_alive()] + [worker]
    for worker in workers:  # the connection went away: let what runs finish
        worker.join()
    with _servers_lock:
        for server in _servers.values():  # it sees its socket close and exits
            server.close()


def source() -> str:
    """This file's text: what :mod:`adapters.connectors.host_session` starts on a host."""
    with open(__file__, encoding="utf-8") as f:  # noqa: PTH123
        return f.read()


if __name__ == "__main__":
    main()
