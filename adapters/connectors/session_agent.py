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
without paying for an interpreter's start: a spare interpreter (the
*zygote*, started in the background after the previous one was used) reads
the program from its stdin and runs it as ``__main__``. It is a process of
its own, in a session of its own, so timeouts and kills work as for commands.
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

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from typing import Any

HELLO = "chassis-session 2"

ZYGOTE = """\
import sys
def _chassis_program():
    import json, os
    header = sys.stdin.buffer.readline()
    if not header:
        sys.exit(0)
    header = json.loads(header)
    source = sys.stdin.buffer.read(header["size"]).decode("utf-8")
    os.environ.update(header["env"])
    sys.argv = header["argv"]
    return compile(source, "<chassis>", "exec")
_chassis_code = _chassis_program()
del _chassis_program
exec(_chassis_code)
"""
"""A spare interpreter: reads ``{"size": N, "env": {...}, "argv": [...]}``, N
bytes of program and then the program's own stdin."""

_out_lock = threading.Lock()
_spare_lock = threading.Lock()
_spare: list[subprocess.Popen[bytes]] = []


def _send(message: dict[str, Any]) -> None:
    line = json.dumps(message, separators=(",", ":")) + "\n"
    with _out_lock:
        sys.stdout.write(line)
        sys.stdout.flush()


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except OSError:
        with contextlib.suppress(OSError):
            process.kill()


def _zygote() -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-I", "-c", ZYGOTE],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def _take_zygote() -> subprocess.Popen[bytes]:
    """The spare interpreter (a new one if it is gone), leaving a new spare
    starting in the background for the next program."""
    with _spare_lock:
        spare = _spare.pop() if _spare else None
        _spare.append(_zygote())
    if spare is None or spare.poll() is not None:
        spare = _zygote()
    return spare


def _start(request: dict[str, Any]) -> tuple[subprocess.Popen[bytes], bytes]:
    """The process for ``request`` and what to write to its stdin."""
    stdin = base64.b64decode(request.get("stdin") or "")
    env = request.get("env") or {}
    if "python" in request:
        source = request["python"].encode("utf-8")
        header = {"size": len(source), "env": env, "argv": ["-c", *request.get("argv", [])]}
        line = json.dumps(header, separators=(",", ":")).encode("ascii") + b"\n"
        return _take_zygote(), line + source + stdin
    process = subprocess.Popen(
        ["/bin/sh", "-c", request["command"]],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **env},
        start_new_session=True,
    )
    return process, stdin


def _run(request: dict[str, Any], running: dict[int, subprocess.Popen[bytes]]) -> None:
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
    running: dict[int, subprocess.Popen[bytes]] = {}
    workers: list[threading.Thread] = []
    _send({"hello": HELLO, "pid": os.getpid()})
    with _spare_lock:
        _spare.append(_zygote())
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
    with _spare_lock:
        for spare in _spare:  # an idle spare reads the end of its input and exits
            with contextlib.suppress(Exception):
                spare.communicate(timeout=5)


def source() -> str:
    """This file's text: what :mod:`adapters.connectors.host_session` starts on a host."""
    with open(__file__, encoding="utf-8") as f:  # noqa: PTH123
        return f.read()


if __name__ == "__main__":
    main()
