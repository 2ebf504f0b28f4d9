"""The fork server: Chassis' host programs run without an interpreter start each.

A *fork server* is a single-threaded Python process that forks a child per
program, which runs it as ``__main__`` (what ``python3 -I -c SOURCE ARGV...``
would do) on pipes passed along over a socket pair (``SCM_RIGHTS``), while the
server reports the child's pid and, once it has reaped it, its exit status. A
fork costs a few milliseconds of CPU where an interpreter's start costs tens.
The child is a process of its own, in a session of its own, so timeouts and
kills work as for commands.

:class:`ForkServer` serves local hosts (``LocalConnector``): one server per
interpreter per process, started on first use (:func:`fork_server`) and again
if it died; a program whose server cannot be started gets an interpreter of
its own. Over SSH the command runner (:mod:`adapters.connectors.session_agent`)
forks host programs itself.
"""

from __future__ import annotations

import array
import contextlib
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

FORK_SERVER = r"""
import array, gc, json, os, select, signal, socket, sys, traceback
# What the host programs import (adapters.archive, the group stop, the port
# owner, the model transfer), imported once here: every forked child has
# them already instead of importing them again (~10 ms a program).
import collections.abc, contextlib, errno, fcntl, gzip, hashlib, re, stat, threading
import struct, time, typing, zlib
# And what the client asked for (ForkServer's preload): a module that does
# not import is left to the programs that need it, which say why.
for name in sys.argv[2:]:
    try:
        __import__(name)
    except Exception:
        pass
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

def execute(header, program):
    # Run the request's program as __main__ on this process's 0, 1, 2, as
    # python3 -I -c would; its exit status.
    code = 1
    try:
        sys.argv = header["argv"]
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
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass
    return code

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
        code = execute(header, program)
    finally:
        os._exit(code)

def inline(header, fds, program):
    # A quick, read-only program (ForkServer.spawn's inline): run here on the
    # request's pipes, without a fork, which costs more than such a program.
    saved = [os.dup(fd) for fd in (0, 1, 2)]
    argv = sys.argv
    try:
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        return execute(header, program)
    finally:
        sys.argv = argv
        for target, fd in enumerate(saved):
            os.dup2(fd, target)
            os.close(fd)

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
        if header.get("inline") and not header["env"]:
            send({"id": header["id"], "pid": os.getpid()})
            code = inline(header, list(fds), program)
            for fd in fds:
                os.close(fd)
            send({"id": header["id"], "exit": code})
            continue
        pid = os.fork()
        if pid == 0:
            child(header, list(fds), program)
        for fd in fds:
            os.close(fd)
        children[pid] = header["id"]
        send({"id": header["id"], "pid": pid})
"""
"""The fork server: reads ``{"id", "source", "argv", "env", "inline"}`` with
three fds (the child's stdin, stdout, stderr), forks (or, ``inline``, runs the
program itself), answers ``{"id", "pid"}``, and ``{"id", "exit"}`` once it has
reaped the child. Stdlib only, Python 3.8."""

_PIPE_CHUNK = 65536


class Forked:
    """A host program forked by the :class:`ForkServer`: what ``LocalConnector``
    uses of a ``subprocess.Popen`` (``pid``, a session leader; ``returncode``;
    ``communicate``; ``poll``; ``kill``)."""

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
            if input:
                threading.Thread(target=self._feed, args=(input, fd), daemon=True).start()
            else:
                os.close(fd)  # nothing to feed: the program reads its end at once

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


_RUN_MODULE = """
import json, os, runpy, sys
request = json.loads(sys.argv[1])
os.chdir(request["cwd"])
os.environ.clear()
os.environ.update(request["env"])
# As ``python -m`` builds it: the working directory, PYTHONPATH, then the
# client's own path (its site directories, a user site the server's -I skips).
paths = [os.getcwd(), *os.environ.get("PYTHONPATH", "").split(os.pathsep), *request["path"]]
sys.path[:] = list(dict.fromkeys(path for path in paths if path))
sys.argv = ["-m", *request["args"]]
runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
"""
"""A child's program for :meth:`ForkServer.run_module`: ``python -m MODULE``
in its own working directory and environment."""


class ForkServer:
    """The client of one fork server (:data:`FORK_SERVER`) run by ``python``."""

    def __init__(self, python: str = sys.executable, preload: Sequence[str] = ()) -> None:
        """Start the server; it imports the modules named in ``preload`` (as
        well as its own) before its first fork, so no child imports them."""
        self.python = python
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.process = subprocess.Popen(
                [python, "-I", "-c", FORK_SERVER, str(theirs.fileno()), *preload],
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
        self,
        source: str,
        argv: list[str],
        env: dict[str, str],
        *,
        timeout: float = 30.0,
        inline: bool = False,
    ) -> Forked:
        """A child running ``source`` as ``__main__`` with ``sys.argv`` =
        ``argv``; ``OSError`` if the server cannot fork it (then run it in an
        interpreter of its own).

        ``inline`` (with no ``env``): the server runs the program itself, on
        the same pipes, instead of forking: for a quick, read-only program
        that reads no input, where the fork (about 1.5 ms of CPU here) costs
        more than the program. The process is then the server: killing it
        (as a timeout does) ends the server, and the next program gets a new
        one. Nothing else is served while it runs."""
        if not self.alive:
            raise OSError("the fork server is gone")
        stdin, stdout, stderr = os.pipe(), os.pipe(), os.pipe()
        theirs = [stdin[0], stdout[1], stderr[1]]
        process = Forked(stdin[1], stdout[0], stderr[0])
        with self._lock:
            self._next += 1
            ident = self._next
            self._pending[ident] = process
        header = {"id": ident, "source": source, "argv": argv, "env": env, "inline": inline}
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

    def run_module(
        self,
        module: str,
        args: Sequence[str],
        *,
        cwd: str,
        env: dict[str, str],
        timeout: float,
    ) -> subprocess.CompletedProcess[str]:
        """What ``subprocess.run([python, "-m", module, *args], cwd=cwd,
        env=env, capture_output=True, text=True, timeout=timeout)`` returns,
        from a child of this server: its environment is ``env`` alone, not
        the server's plus changes. ``OSError`` if the server cannot fork it
        (then start an interpreter instead)."""
        argv = [self.python, "-m", module, *args]
        request = {
            "module": module,
            "args": list(args),
            "cwd": cwd,
            "env": env,
            "path": sys.path[1:],  # [0] is the client's own script or cwd
        }
        forked = self.spawn(_RUN_MODULE, ["-c", json.dumps(request)], {})
        try:
            out, err = forked.communicate(b"", timeout=timeout)
        except subprocess.TimeoutExpired:
            forked.kill()
            raise subprocess.TimeoutExpired(argv, timeout) from None
        code = forked.returncode if forked.returncode is not None else -signal.SIGKILL
        return subprocess.CompletedProcess(
            argv, code, out.decode(errors="replace"), err.decode(errors="replace")
        )

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
_servers: dict[tuple[str, tuple[str, ...]], ForkServer] = {}


def fork_server(python: str = sys.executable, preload: Sequence[str] = ()) -> ForkServer | None:
    """This process's fork server run by ``python`` (``LocalConnector``'s: the
    interpreter ``run_python`` would start) with ``preload`` imported, started
    on first use and again if it died; None if none starts."""
    key = (python, tuple(preload))
    with _servers_lock:
        server = _servers.get(key)
        if server is not None and server.alive:
            return server
        try:
            server = ForkServer(python, preload)
        except OSError:
            return None
        _servers[key] = server
        return server


def run_python_module(
    module: str,
    args: Sequence[str],
    *,
    cwd: str,
    env: dict[str, str],
    timeout: float,
    preload: Sequence[str] = (),
    python: str = sys.executable,
) -> subprocess.CompletedProcess[str]:
    """``python -m MODULE ARGS`` in ``cwd`` with exactly ``env``, its output
    captured as text: forked by this process's fork server that preloads
    ``preload`` (:meth:`ForkServer.run_module`), else a new interpreter."""
    server = fork_server(python, preload)
    if server is not None:
        with contextlib.suppress(OSError):
            return server.run_module(module, args, cwd=cwd, env=env, timeout=timeout)
    return subprocess.run(
        [python, "-m", module, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
