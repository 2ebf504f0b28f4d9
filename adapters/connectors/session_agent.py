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
without paying for an interpreter's start: the runner forks a child, which
runs it as ``__main__`` (a fork costs the host a few milliseconds of CPU where
an interpreter's start costs tens; at several programs per host per deploy,
the difference is most of a deploy's CPU on a small host). The child is a
process of its own, in a session of its own, so timeouts and kills work as
for commands; where the fork fails, the program gets an interpreter of its
own.

Forking is safe because the runner has one thread: a single loop
(``selectors``) reads requests, feeds each process its input, reads its
output and reaps it (``SIGCHLD`` wakes the loop). A command starts through
``subprocess`` (``/bin/sh -c``, a new session), as it did under ``exec``.
The runner imports only what the loop needs; a program imports what it needs
in its own child.

At the end of its input (the connection closed) the runner lets what runs
finish, as sshd does with an ``exec`` whose client went away, then exits: a
command half done (a launch that has not written its pidfile yet) is never
cut short by a lost connection.

Stdlib only and Python 3.8, like :mod:`adapters.archive`: it runs on
whatever ``python3`` a host has. The commands are the ones the connector
would have run over ``exec``; nothing here turns data into code.
"""

from __future__ import annotations

import binascii
import contextlib
import gc
import json
import marshal
import os
import selectors
import signal
import subprocess
import sys
import time

TYPE_CHECKING = False  # not typing's: importing typing costs the host ~2 ms
if TYPE_CHECKING:  # annotations are strings (PEP 563)
    from typing import Any

HELLO = "chassis-session 3"

_CHUNK = 65536
_KEEP_COMPILED = 32
"""Programs kept compiled per connection (a program run again is not compiled again)."""


def _send(message: dict[str, Any]) -> None:
    """One reply line on stdout; a closed connection only loses the reply."""
    view = memoryview((json.dumps(message, separators=(",", ":")) + "\n").encode("ascii"))
    try:
        while view:
            view = view[os.write(1, view) :]
    except OSError:
        pass


def _b64(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).decode("ascii")


def _status(status: int) -> int:
    """What ``subprocess`` calls the return code (os.waitstatus_to_exitcode is 3.9+)."""
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else 1


class _Job:
    """One request's process: its pipes, what is left to feed it, what it printed."""

    def __init__(self, ident: int, timeout: float | None) -> None:
        self.ident = ident
        self.pid = 0
        self.status: int | None = None
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.timed_out = False
        self.feed = memoryview(b"")
        self.output: dict[int, bytearray] = {}
        self.order: tuple[int, int] = (-1, -1)
        self.stdin = -1

    def done(self) -> bool:
        return self.status is not None and not self.output_open()

    def output_open(self) -> bool:
        return any(fd in _open for fd in self.order)

    def kill(self) -> None:
        """SIGKILL the process group, also once its leader has exited: a member
        that still holds the output open would otherwise keep the reply waiting."""
        if not self.pid:
            return
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except OSError:
            with contextlib.suppress(OSError):
                os.kill(self.pid, signal.SIGKILL)


_open: set[int] = set()
"""Pipe ends the loop still reads or writes."""
_compiled: dict[str, Any] = {}
_processes: dict[int, subprocess.Popen[bytes]] = {}
"""Commands by pid: ``Popen`` reaps them (a program's child is reaped with ``waitpid``)."""


def _program(source: str, digest: object = None) -> Any:
    """``source`` compiled (None where it does not compile: the child compiles
    it again and reports why, as an interpreter would).

    ``digest``: the source's sha256 as the client computed it, the key of the
    host's cache of compiled programs (:func:`_cached`): compiling the archive
    reader costs the host about 5 ms, loading it 0.1 ms."""
    code = _compiled.get(source)
    if code is not None:
        return code
    key = digest if isinstance(digest, str) and _is_digest(digest) else None
    code = _cached(key) if key is not None else None
    if code is None:
        try:
            code = compile(source, "<chassis>", "exec")
        except BaseException:
            return None
        if key is not None:
            _keep(key, code)
    if len(_compiled) < _KEEP_COMPILED:
        _compiled[source] = code
    return code


def _is_digest(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


_cache: list[str | None] = []
"""The cache directory once looked for: ``[path]``, or ``[None]`` when unusable."""


def _cache_dir() -> str | None:
    """``$XDG_CACHE_HOME/chassis/programs`` (else ``~/.cache/...``): a
    directory of this user's, mode 0700, made if missing; None when it is not
    that (a symlink, someone else's, open to others): then nothing is cached."""
    if not _cache:
        found = None
        base = os.environ.get("XDG_CACHE_HOME", "")
        if not base.startswith("/"):
            home = os.environ.get("HOME", "")
            base = home + "/.cache" if home.startswith("/") else ""
        if base:
            path = base + "/chassis/programs"
            try:
                os.makedirs(path, mode=0o700, exist_ok=True)
                info = os.lstat(path)
                if (
                    info.st_mode & 0o170000 == 0o040000  # a directory, not a symlink
                    and info.st_uid == os.geteuid()
                    and not info.st_mode & 0o077
                ):
                    found = path
            except OSError:
                pass
        _cache.append(found)
    return _cache[0]


def _cache_path(key: str) -> str | None:
    directory = _cache_dir()
    if directory is None:
        return None
    return f"{directory}/{key}.{sys.implementation.cache_tag}.code"


def _cached(key: str) -> Any:
    """The code stored under ``key``, if this user wrote it and nobody else can have."""
    path = _cache_path(key)
    if path is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if info.st_uid != os.geteuid() or info.st_mode & 0o022:
            return None
        data = b""
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            data += chunk
        # Only this user can have written it (0700 directory, checked above).
        code = marshal.loads(data)  # noqa: S302
    except (OSError, EOFError, ValueError, TypeError):
        return None
    finally:
        os.close(fd)
    return code if type(code).__name__ == "code" else None


def _keep(key: str, code: Any) -> None:
    """Store ``code`` under ``key`` (written whole, then renamed into place);
    a cache that cannot be written only costs the next connection a compile."""
    path = _cache_path(key)
    if path is None:
        return
    temporary = f"{path}.{os.getpid()}.tmp"
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            view = memoryview(marshal.dumps(code))
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except (OSError, ValueError):
        with contextlib.suppress(OSError):
            os.unlink(temporary)


def _child(request: dict[str, Any], fds: list[int], code: Any) -> None:
    """In a forked child: run the program as ``__main__``; never returns."""
    status = 1
    try:
        os.setsid()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        try:  # every other descriptor is the runner's (its channel, pipes, selector)
            inherited = [int(name) for name in os.listdir("/proc/self/fd")]
        except OSError:
            inherited = list(range(3, 256))
        for fd in inherited:
            if fd > 2:
                with contextlib.suppress(OSError):
                    os.close(fd)
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.environ.update(request.get("env") or {})
        sys.argv = ["-c", *request.get("argv", [])]
        try:
            if code is None:
                code = compile(request["python"], "<chassis>", "exec")
            # Our own host program, as ``python3 -c SOURCE`` would run it.
            exec(code, {"__name__": "__main__", "__builtins__": __builtins__})  # noqa: S102
            status = 0
        except SystemExit as e:
            if e.code is None or isinstance(e.code, int):
                status = e.code or 0
            else:
                print(e.code, file=sys.stderr)
        except BaseException:
            import traceback

            traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(BaseException):
                stream.flush()
        os._exit(status)


PRELOAD = ("socket", "struct", "select", "zlib", "gzip", "typing")
"""Standard modules our host programs import that the runner itself does not:
each is imported here, once, before the first program that names it is
forked, so later programs of the connection find it loaded (the port-owner
look runs up to three times a deploy; ``import socket, struct`` was 2.2 ms
of its 3.7). Inert ones only: none starts a thread or sets a signal handler."""


def _preload(code: Any) -> None:
    if code is None:
        return
    for name in PRELOAD:
        if name in code.co_names and name not in sys.modules:
            with contextlib.suppress(Exception):  # the program's own import says why
                __import__(name)


def _spawn(request: dict[str, Any], theirs: list[int]) -> int:
    """The pid of the process for ``request``, on ``theirs`` (stdin, stdout, stderr)."""
    if "python" in request:
        code = _program(request["python"], request.get("python_sha256"))
        _preload(code)
        try:
            pid = os.fork()
        except OSError:  # no fork: an interpreter of its own, as before
            argv = [sys.executable, "-I", "-c", request["python"], *request.get("argv", [])]
        else:
            if pid == 0:
                _child(request, theirs, code)
            return pid
    else:
        argv = ["/bin/sh", "-c", request["command"]]
    # subprocess, not os.fork: it starts the command with vfork where the
    # host's Python can (3.10+), about a millisecond less than copying the
    # runner, and not posix_spawn, which leaves glibc's internal signals (32,
    # 33) ignored in the child and in everything a command starts.
    process = subprocess.Popen(
        argv,
        stdin=theirs[0],
        stdout=theirs[1],
        stderr=theirs[2],
        env={**os.environ, **(request.get("env") or {})},
        start_new_session=True,
    )
    _processes[process.pid] = process
    return process.pid


def _start(request: dict[str, Any], selector: selectors.BaseSelector) -> _Job | None:
    """Start ``request``'s process and register its pipes (None: answered already)."""
    job = _Job(request["id"], request.get("timeout"))
    feed = binascii.a2b_base64(request.get("stdin") or "")  # a bad request starts nothing
    pipes = [os.pipe(), os.pipe(), os.pipe()]
    theirs = [pipes[0][0], pipes[1][1], pipes[2][1]]
    ours = [pipes[0][1], pipes[1][0], pipes[2][0]]
    try:
        job.pid = _spawn(request, theirs)
    except OSError as e:
        for fd in theirs + ours:
            os.close(fd)
        _send({"id": job.ident, "exit": 127, "stdout": "", "stderr": _b64(str(e).encode())})
        return None
    for fd in theirs:
        os.close(fd)
    job.stdin, out, err = ours
    job.order = (out, err)
    for fd in ours:
        os.set_blocking(fd, False)
        _open.add(fd)
    for fd in (out, err):
        job.output[fd] = bytearray()
        selector.register(fd, selectors.EVENT_READ, job)
    job.feed = memoryview(feed)
    if job.feed:
        selector.register(job.stdin, selectors.EVENT_WRITE, job)
    else:
        _close(job.stdin, selector)
    return job


def _close(fd: int, selector: selectors.BaseSelector) -> None:
    if fd in _open:
        _open.discard(fd)
        with contextlib.suppress(KeyError, ValueError):
            selector.unregister(fd)
        os.close(fd)


def _pump(fd: int, job: _Job, selector: selectors.BaseSelector) -> None:
    """Move what is ready on ``fd``: feed the process's stdin, or read its output."""
    if fd == job.stdin:
        try:
            job.feed = job.feed[os.write(fd, job.feed[:_CHUNK]) :]
        except BlockingIOError:
            return
        except OSError:  # it exited without reading everything, as a process may
            job.feed = memoryview(b"")
        if not job.feed:
            _close(fd, selector)
        return
    try:
        chunk = os.read(fd, _CHUNK)
    except BlockingIOError:
        return
    if chunk:
        job.output[fd] += chunk
    else:
        _close(fd, selector)


def _reap(jobs: dict[int, _Job]) -> None:
    for job in jobs.values():
        if job.status is not None:
            continue
        process = _processes.get(job.pid)
        if process is not None:
            if process.poll() is not None:
                job.status = process.returncode
                del _processes[job.pid]
            continue
        try:
            pid, status = os.waitpid(job.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = job.pid, 255 << 8
        if pid:
            job.status = _status(status)


def _finish(job: _Job, selector: selectors.BaseSelector) -> None:
    _close(job.stdin, selector)
    out, err = job.order
    _send(
        {
            "id": job.ident,
            "exit": job.status,
            "stdout": _b64(bytes(job.output[out])),
            "stderr": _b64(bytes(job.output[err])),
            "timed_out": job.timed_out,
        }
    )


def _wait(jobs: dict[int, _Job]) -> float | None:
    """Seconds until the next deadline (None: none)."""
    deadlines = [j.deadline for j in jobs.values() if j.deadline is not None and not j.timed_out]
    if not deadlines:
        return None
    return max(0.0, min(deadlines) - time.monotonic())


def main() -> None:
    _send({"hello": HELLO, "pid": os.getpid()})
    # Every object so far is shared with each child forked for a program:
    # frozen, no collection (here or in a child) touches them, so neither
    # copies the pages they sit on (copy-on-write).
    gc.freeze()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_w)
    selector = selectors.DefaultSelector()
    selector.register(0, selectors.EVENT_READ, None)
    selector.register(wake_r, selectors.EVENT_READ, None)
    jobs: dict[int, _Job] = {}
    pending = b""
    reading = True
    while reading or jobs:
        for key, _ in selector.select(_wait(jobs)):
            if key.data is not None:
                _pump(key.fd, key.data, selector)
            elif key.fd == wake_r:
                try:
                    while os.read(wake_r, 512):
                        pass
                except BlockingIOError:
                    pass
            else:
                chunk = os.read(0, _CHUNK)
                if not chunk:  # the connection went away: let what runs finish
                    reading = False
                    selector.unregister(0)
                    continue
                pending += chunk
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    _handle(line, jobs, selector)
        _reap(jobs)
        now = time.monotonic()
        for job in list(jobs.values()):
            if job.deadline is not None and not job.timed_out and now >= job.deadline:
                job.timed_out = True
                job.kill()
            if job.done():
                del jobs[job.ident]
                _finish(job, selector)


def _handle(line: bytes, jobs: dict[int, _Job], selector: selectors.BaseSelector) -> None:
    try:
        request = json.loads(line)
    except ValueError:
        return
    if not isinstance(request, dict):
        return
    if "kill" in request:
        job = jobs.get(request["kill"])
        if job is not None:
            job.kill()
        return
    try:
        started = _start(request, selector)
    except (KeyError, TypeError, ValueError):
        return  # not a request this runner can read: the client never sends one
    if started is not None:
        jobs[started.ident] = started


def source() -> str:
    """This file's text: what :mod:`adapters.connectors.host_session` starts on a host."""
    with open(__file__, encoding="utf-8") as f:
        return f.read()


if __name__ == "__main__":
    main()
