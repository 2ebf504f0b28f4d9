"""Stop a detached process group and wait for it with pidfds (run by the host's ``python3``).

``python3 -I -c SOURCE PIDFILE TIMEOUT KILL_WAIT`` reads the pid record the
direct supervisor wrote (``{"pid": N, "start": T, …}``), sends SIGTERM to the
process group and waits until no member is left, SIGKILL after ``TIMEOUT``
seconds, then up to ``KILL_WAIT`` more. It prints one word:

* ``stopped`` / ``killed``: the group is gone (after TERM / after KILL);
* ``none``: there is no pidfile; ``unreadable``: the record is not one of ours;
* ``foreign``: the pid now belongs to another process (left alone);
* ``gone``: nothing was left to stop;
* ``survived PGID``: still there after SIGKILL (the pidfile is kept).

It waits on the members themselves (``pidfd_open`` + ``poll``: woken as each
exits), not by sleeping between looks, and scans the host's processes again
only once every member it knew of is gone; where the kernel or Python has no
pidfds (Linux < 5.3, Python < 3.9) it looks every 10 ms instead.
Zombies count as exited. The pidfile is removed only if it still holds the
record read at the start: a stop that waited (or outlived a killed chassis)
never removes the record of a process started since.

Stdlib only and Python 3.8, like :mod:`adapters.archive`.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import sys
import time

_FALLBACK_POLL_S = 0.01
_MAX_WAIT_S = 0.5  # rescan at least this often: a member may fork new ones


def _stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name: [state, ppid, pgrp, …]."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:  # noqa: PTH123
            line = f.read()
    except OSError:
        return None
    return line.rpartition(") ")[2].split()


def _members(group: int) -> list[int]:
    """Live (not zombie) processes of process group ``group``."""
    found = []
    for name in os.listdir("/proc"):  # noqa: PTH208 (names only, the cheapest listing)
        if not name.isdigit():
            continue
        fields = _stat(int(name))
        if fields and len(fields) > 2 and fields[2] == str(group) and fields[0] not in "ZXx":
            found.append(int(name))
    return found


def _wait_gone(group: int, seconds: float, members: list[int] | None = None) -> bool:
    """True once no member of ``group`` is left, False at the deadline.

    ``members``: the group as just scanned (else it is scanned first). Each
    scan reads every process's stat, so it waits for every member it knows
    of, then scans once more for any a member forked meanwhile (and at least
    every ``_MAX_WAIT_S``): a stopping group costs two scans, not one per exit.
    """
    deadline = time.monotonic() + seconds
    while True:
        if members is None:
            members = _members(group)
        if not members:
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        fds = []
        try:
            for pid in members:
                with contextlib.suppress(ProcessLookupError):  # exited since the scan
                    fds.append(os.pidfd_open(pid))  # type: ignore[attr-defined,unused-ignore]
        except (AttributeError, OSError):  # no pidfds here (Python < 3.9, Linux < 5.3)
            for fd in fds:
                os.close(fd)
            time.sleep(min(remaining, _FALLBACK_POLL_S))
            members = None
            continue
        try:
            _wait_all(fds, min(remaining, _MAX_WAIT_S))
        finally:
            for fd in fds:
                os.close(fd)
        members = None


def _wait_all(fds: list[int], seconds: float) -> None:
    """Until every pidfd of ``fds`` says its process exited, or ``seconds``."""
    deadline = time.monotonic() + seconds
    waiting = select.poll()
    for fd in fds:
        waiting.register(fd, select.POLLIN)
    left = len(fds)
    while left:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        for fd, _ in waiting.poll(remaining * 1000):
            waiting.unregister(fd)
            left -= 1


def _forget(pidfile: str, record: str) -> None:
    try:
        with open(pidfile, encoding="utf-8") as f:  # noqa: PTH123
            now = f.readline()
        if now.rstrip("\n") == record:
            os.unlink(pidfile)  # noqa: PTH108
    except OSError:
        pass


def stop(pidfile: str, timeout: float, kill_wait: float) -> str:
    try:
        with open(pidfile, encoding="utf-8") as f:  # noqa: PTH123
            record = f.readline().rstrip("\n")
    except FileNotFoundError:
        return "none"
    try:
        fields = json.loads(record)
        group, start = int(fields["pid"]), int(fields["start"])
    except (ValueError, TypeError, KeyError):
        _forget(pidfile, record)
        return "unreadable"
    if group <= 1:
        _forget(pidfile, record)
        return "unreadable"
    leader = _stat(group)
    if leader is not None and len(leader) > 19 and leader[19] != str(start):
        _forget(pidfile, record)
        return "foreign"
    members = _members(group)
    if not members:
        _forget(pidfile, record)
        return "gone"
    # A group's id cannot be reused while any member lives, so signalling it
    # is safe once the leader's start time matched (or the leader is gone).
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGTERM)
    if _wait_gone(group, timeout, members):
        _forget(pidfile, record)
        return "stopped"
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGKILL)
    if _wait_gone(group, kill_wait):
        _forget(pidfile, record)
        return "killed"
    return f"survived {group}"


def source() -> str:
    """This file's text: what :func:`adapters.supervisors.direct.stop_command` runs."""
    with open(__file__, encoding="utf-8") as f:  # noqa: PTH123
        return f.read()


if __name__ == "__main__":
    print(stop(sys.argv[1], float(sys.argv[2]), float(sys.argv[3])))
