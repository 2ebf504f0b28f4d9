"""The ``direct`` supervisor: a detached process group, a pidfile, a log file.

Layout under the host root: ``run/<component>.pid`` (one JSON line: pid, the
process's start time in clock ticks from ``/proc/<pid>/stat``, release id) and
``logs/<component>.log`` (stdout and stderr appended, one ``==> chassis:``
marker line per start and per exit).

How a component is launched (:func:`launch_command`): ``setsid nohup /bin/sh
-c WRAPPER ...`` in the background with stdin from ``/dev/null`` and output
appended to the log; the connector's shell prints ``$!`` and the new process's
``/proc`` stat line and returns at once. The wrapper is the session and
process-group leader (its pid is the pidfile's pid, ``ProcessState.pid``). It
loads the environment, runs the command with ``/bin/sh -c`` and appends the
exit status to the log.

Secrets: ``spec.env`` goes into a fresh 0600 file ``run/.<component>.<random>.env``
(:mod:`adapters.supervisors.envfile`). The wrapper opens it and deletes it, so
no secret stays on disk. Values are never on a command line:
``Connector.run(env=...)`` is not used because the SSH connector sends it as
``export NAME=value`` inside the remote ``sh -c`` argument, which ``ps`` shows.

Env files are data, never code: no shell sources them (a config key such as
``X;id>/tmp/owned;Y`` once ran as a command that way). The wrapper hands both
files (``spec.env_file`` first, so spec values win) to
:data:`~adapters.supervisors.envfile.ENV_LOADER`, run with the host's
``python3``, which parses them with the reader :func:`parse_env_file` uses
and ``execve``-s ``/bin/sh -c COMMAND`` with the wrapper's environment plus
those values. A malformed file stops the start (exit 126, reason in the log);
without ``python3`` the start fails with exit 127 and says so.

Pid reuse: a pid counts as ours only while ``/proc/<pid>/stat`` shows the
recorded start time; a zombie (state ``Z``, left for PID 1 to reap) counts as
exited. :func:`stop_command` signals the whole group and, before doing so,
checks that the pid was not reused by a stranger.
"""

from __future__ import annotations

import contextlib
import json
import posixpath
import secrets
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from adapters.connectors.base import CommandResult, Connector
from adapters.supervisors.base import (
    STOP_TIMEOUT,
    ProcessSpec,
    ProcessState,
    Supervisor,
    SupervisorError,
    check_component,
    log_path,
)
from adapters.supervisors.envfile import ENV_FILE_MODE, ENV_LOADER, render_env_file

__all__ = [
    "DirectState",
    "DirectSupervisor",
    "PidRecord",
    "ProcStat",
    "launch_command",
    "log_tail_command",
    "parse_proc_stat",
    "pid_path",
    "start_marker",
    "stop_command",
]

SETTLE_S = 0.3
_POLL_S = 0.05
_KILL_WAIT_TICKS = 100  # 5 s after SIGKILL
_COMMAND_TIMEOUT = 30.0
_TAIL_SCAN_LINES = 400
_CD_FAILED = 90
_LAYOUT_FAILED = 91
_ENV_FILE_UNREADABLE = 92
_TOKEN_BYTES = 8


def pid_path(root: str, component: str) -> str:
    return posixpath.join(root, "run", f"{component}.pid")


def start_marker(component: str, release_id: str) -> str:
    """The log line that opens one start's output (a prefix: a timestamp follows)."""
    return f"==> chassis: start {component} release {release_id}"


# -- pure parts ----------------------------------------------------------------


@dataclass(frozen=True)
class ProcStat:
    """The fields of ``/proc/<pid>/stat`` we use (``proc(5)``)."""

    pid: int
    state: str
    ppid: int
    pgrp: int
    session: int
    starttime: int  # clock ticks after boot: with pid, identifies the process

    @property
    def zombie(self) -> bool:
        return self.state in ("Z", "X", "x")


def parse_proc_stat(line: str) -> ProcStat:
    """Parse one ``/proc/<pid>/stat`` line; ``comm`` may hold spaces and parens."""
    head, sep, rest = line.strip().rpartition(") ")
    pid_text = head.split(" (", 1)[0]
    fields = rest.split()
    if not sep or len(fields) < 20 or not pid_text.isdigit():
        raise ValueError(f"not a /proc stat line: {line[:80]!r}")
    return ProcStat(
        pid=int(pid_text),
        state=fields[0],
        ppid=int(fields[1]),
        pgrp=int(fields[2]),
        session=int(fields[3]),
        starttime=int(fields[19]),
    )


@dataclass(frozen=True)
class PidRecord:
    """The pidfile: who we started, and when (to tell it from a reused pid)."""

    pid: int
    start: int
    release_id: str
    component: str

    def to_bytes(self) -> bytes:
        # "pid" first: the shell side of DirectState reads it without a JSON parser.
        record = {
            "pid": self.pid,
            "start": self.start,
            "release_id": self.release_id,
            "component": self.component,
        }
        return (json.dumps(record, separators=(",", ":")) + "\n").encode("utf-8")

    @classmethod
    def parse(cls, line: str) -> PidRecord:
        try:
            raw = json.loads(line)
            record = cls(
                pid=raw["pid"],
                start=raw["start"],
                release_id=raw["release_id"],
                component=raw["component"],
            )
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"unreadable pidfile line {line[:80]!r}") from e
        if not (isinstance(record.pid, int) and isinstance(record.start, int)) or record.pid <= 1:
            raise ValueError(f"unreadable pidfile line {line[:80]!r}")
        return record


@dataclass(frozen=True)
class DirectState:
    """The fact "is the component running": one command, one pure parser.

    The command prints the pidfile's line, then the ``/proc`` stat line of the
    recorded pid if that pid exists; nothing if there is no pidfile.
    """

    record: PidRecord | None
    stat: ProcStat | None
    problem: str = ""

    @staticmethod
    def command(root: str, component: str) -> str:
        f = shlex.quote(pid_path(root, component))
        return (
            f"[ -f {f} ] || exit 0; "
            f"IFS= read -r rec < {f}; "
            "printf '%s\\n' \"$rec\"; "
            "pid=${rec#'{\"pid\":'}; pid=${pid%%[!0-9]*}; "
            '[ -n "$pid" ] && { IFS= read -r st < "/proc/$pid/stat"; } 2>/dev/null '
            "&& printf '%s\\n' \"$st\"; "
            "exit 0"
        )

    @classmethod
    def parse(cls, output: str) -> DirectState:
        lines = [line for line in output.splitlines() if line.strip()]
        if not lines:
            return cls(None, None)
        try:
            record = PidRecord.parse(lines[0])
        except ValueError as e:
            return cls(None, None, problem=str(e))
        stat = None
        if len(lines) > 1:
            try:
                stat = parse_proc_stat(lines[1])
            except ValueError as e:
                return cls(record, None, problem=str(e))
            if stat.pid != record.pid:
                stat = None  # the pidfile changed under us: trust neither
        return cls(record, stat)

    @property
    def ours(self) -> bool:
        """The recorded process (not a reused pid) still exists, maybe as a zombie."""
        return (
            self.record is not None
            and self.stat is not None
            and self.stat.starttime == self.record.start
        )

    @property
    def running(self) -> bool:
        return self.ours and self.stat is not None and not self.stat.zombie

    def to_state(self, component: str) -> ProcessState:
        record, stat = self.record, self.stat
        if record is None:
            detail = f"not running ({self.problem})" if self.problem else "not started"
            return ProcessState(component, False, None, None, detail)
        if self.running:
            return ProcessState(
                component, True, record.pid, record.release_id, f"running (pid {record.pid})"
            )
        if stat is None:
            detail = f"exited (pid {record.pid} is gone)"
        elif stat.starttime != record.start:
            detail = f"exited (pid {record.pid} now belongs to another process)"
        else:
            detail = f"exited (pid {record.pid} is a zombie)"
        return ProcessState(component, False, None, record.release_id, detail)


# The process-group leader. $1: our env file (deleted once open), $2: the
# operator's env_file, $3: the command, $4: ENV_LOADER. $0 names the
# component in `ps`. The env files are data: the shell never sources them;
# python3 parses them (ENV_LOADER) and execs `/bin/sh -c "$cmd"` with the
# result as its environment.
WRAPPER = """\
gen=$1; user=$2; cmd=$3; loader=$4
if [ -n "$gen" ]; then exec 3< "$gen" && rm -f -- "$gen" || exit 126; fi
if [ -n "$user" ] && [ ! -r "$user" ]; then
  echo "chassis: cannot read env_file $user" >&2; exit 126
fi
if [ -n "$gen$user" ]; then
  py=/usr/bin/python3
  [ -x "$py" ] || py=$(command -v python3) || {
    echo "chassis: the direct supervisor needs python3 on the host to load env files" >&2
    exit 127
  }
  "$py" -I -S -c "$loader" "$$" "$user" "$cmd" "${gen:+3}"
else
  /bin/sh -c "$cmd"
fi
rc=$?
echo "==> chassis: $0 exited with status $rc" >&2
exit $rc
"""


def launch_command(spec: ProcessSpec, env_path: str | None) -> str:
    """Start ``spec`` detached; print ``pid N`` and the process's stat line.

    Exits 90 when the working directory is missing, 91 when the log cannot be
    written, 92 when ``spec.env_file`` is not readable. Only builtins run
    after the launch, so the shell cannot reap a process that dies at once
    before its stat line is read.
    """
    q = shlex.quote
    log = q(log_path(spec.root, spec.component))
    marker = q(start_marker(spec.component, spec.release_id))
    env_check = ""
    if spec.env_file is not None:
        env_check = f"[ -r {q(spec.env_file)} ] || exit {_ENV_FILE_UNREADABLE}; "
    return (
        f"cd -- {q(spec.workdir)} || exit {_CD_FAILED}; {env_check}"
        f"printf '%s at %s\\n' {marker} \"$(date -u +%Y-%m-%dT%H:%M:%SZ)\" >> {log} "
        f"|| exit {_LAYOUT_FAILED}; "
        f"setsid nohup /bin/sh -c {q(WRAPPER)} {q('chassis-' + spec.component)} "
        f"{q(env_path or '')} {q(spec.env_file or '')} {q(spec.command)} {q(ENV_LOADER)} "
        f"< /dev/null >> {log} 2>&1 & "
        'pid=$!; echo "pid $pid"; '
        '{ IFS= read -r st < "/proc/$pid/stat"; } 2>/dev/null && printf \'%s\\n\' "$st"; '
        "exit 0"
    )


def parse_launch(output: str) -> tuple[int, ProcStat | None]:
    """The pid and (if it was still there) the stat line printed by :func:`launch_command`."""
    lines = output.splitlines()
    if not lines or not lines[0].startswith("pid ") or not lines[0][4:].isdigit():
        raise ValueError(f"unexpected launch output {output[:120]!r}")
    pid = int(lines[0][4:])
    stat = None
    if len(lines) > 1:
        stat = parse_proc_stat(lines[1])
        if stat.pid != pid:
            raise ValueError(f"launch output names pid {stat.pid}, not {pid}")
    return pid, stat


STOP_SCRIPT = """\
[ -f "$f" ] || { echo none; exit 0; }
IFS= read -r rec < "$f"
# Remove the pidfile only if it still holds the record read above: a stop that
# waited (or was orphaned by a killed chassis) must not remove the pidfile of
# a process started since.
forget() {
  now=
  { IFS= read -r now || :; } 2>/dev/null < "$f"
  [ "$now" = "$rec" ] && rm -f -- "$f"
  return 0
}
pg=${rec#'{"pid":'}; pg=${pg%%[!0-9]*}
start=${rec#*'"start":'}; start=${start%%[!0-9]*}
if [ -z "$pg" ] || [ -z "$start" ] || [ "$pg" -le 1 ]; then
  forget; echo unreadable; exit 0
fi
member() {
  kill -s 0 -- "-$pg" 2>/dev/null || return 1
  for s in /proc/[0-9]*/stat; do
    { IFS= read -r l < "$s"; } 2>/dev/null || continue
    l=${l##*) }; set -- $l
    [ "$3" = "$pg" ] && [ "$1" != Z ] && [ "$1" != X ] && return 0
  done
  return 1
}
if { IFS= read -r l < "/proc/$pg/stat"; } 2>/dev/null; then
  l=${l##*) }; set -- $l
  if [ "${20}" != "$start" ]; then forget; echo foreign; exit 0; fi
fi
member || { forget; echo gone; exit 0; }
kill -s TERM -- "-$pg" 2>/dev/null
i=0
while member; do
  if [ "$i" -ge "$ticks" ]; then
    kill -s KILL -- "-$pg" 2>/dev/null
    i=0
    while member; do
      [ "$i" -ge "$kill_ticks" ] && { echo "survived $pg"; exit 0; }
      sleep "$poll"; i=$((i + 1))
    done
    forget; echo killed; exit 0
  fi
  sleep "$poll"; i=$((i + 1))
done
forget; echo stopped
"""

STOP_OUTCOMES = frozenset({"none", "unreadable", "foreign", "gone", "stopped", "killed"})


def stop_command(pidfile: str, timeout: float) -> str:
    """Stop the process group recorded in ``pidfile``; remove the pidfile.

    SIGTERM to the group, up to ``timeout`` for every member to exit, then
    SIGKILL. Prints one word: ``stopped``, ``killed``, ``none`` (no pidfile),
    ``unreadable`` (pidfile removed), ``gone`` (nothing left to stop),
    ``foreign`` (the pid now belongs to another process: left alone) or
    ``survived PID`` (still there 5 s after SIGKILL; pidfile kept). Zombies
    count as exited. A group's id cannot be reused while any member lives, so
    signalling it is safe once the leader's start time matched the record (or
    the leader is gone).
    """
    ticks = max(0, round(timeout / _POLL_S))
    return (
        f"f={shlex.quote(pidfile)}; ticks={ticks}; kill_ticks={_KILL_WAIT_TICKS}; "
        f"poll={_POLL_S}\n" + STOP_SCRIPT
    )


def env_glob(root: str, component: str) -> str:
    """A shell glob for the start-time env files of ``component`` (and no other)."""
    hex_digit = "[0-9a-f]"
    run = shlex.quote(posixpath.join(root, "run"))
    return f"{run}/.{check_component(component)}.{hex_digit * (2 * _TOKEN_BYTES)}.env"


def log_tail_command(path: str, lines: int) -> str:
    if lines < 1:
        raise ValueError("lines must be at least 1")
    return f"tail -n {int(lines)} -- {shlex.quote(path)} 2>/dev/null; exit 0"


def since_marker(text: str, marker: str, lines: int) -> str:
    """The last ``lines`` lines after the last ``marker`` line (all of ``text`` if none)."""
    all_lines = text.splitlines()
    for i in range(len(all_lines) - 1, -1, -1):
        if all_lines[i].startswith(marker):
            all_lines = all_lines[i + 1 :]
            break
    return "\n".join(all_lines[-lines:])


def exit_status(text: str) -> int | None:
    """The status in the wrapper's last ``exited with status N`` line, if any."""
    for line in reversed(text.splitlines()):
        if line.startswith("==> chassis: ") and " exited with status " in line:
            tail = line.rsplit(" ", 1)[-1]
            return int(tail) if tail.isdigit() else None
    return None


# -- the supervisor -------------------------------------------------------------


class DirectSupervisor(Supervisor):
    """Detached process groups with pidfiles under ``<root>/run``."""

    kind: ClassVar[str] = "direct"

    def __init__(
        self,
        connector: Connector,
        root: str,
        *,
        settle_s: float = SETTLE_S,
        stop_timeout: float = STOP_TIMEOUT,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not posixpath.isabs(root):
            raise ValueError(f"host root must be an absolute path, not {root!r}")
        self.connector = connector
        self.root = posixpath.normpath(root)
        self.settle_s = settle_s
        self.stop_timeout = stop_timeout
        self._sleep = sleep

    # -- helpers

    def _run(self, command: str, display: str, timeout: float = _COMMAND_TIMEOUT) -> CommandResult:
        return self.connector.run(command, timeout=timeout, display=display)

    def _error(
        self, component: str, cause: str, *, log_tail: str = "", release_id: str | None = None
    ) -> SupervisorError:
        return SupervisorError(
            self.connector.name,
            component,
            cause,
            where=self.connector.where(),
            log_tail=log_tail,
            release_id=release_id,
        )

    def _observe(self, component: str) -> DirectState:
        result = self._run(DirectState.command(self.root, component), f"state of {component}")
        if not result.ok:
            raise self._error(
                component,
                f"cannot read process state (exit {result.exit_code})",
                log_tail=result.stderr,
            )
        return DirectState.parse(result.stdout)

    def _stop(self, component: str, timeout: float, *, prepare: bool = False) -> str:
        # Env files a crashed start left behind go first (the wrapper deletes its own).
        command = f"rm -f -- {env_glob(self.root, component)}\n" + stop_command(
            pid_path(self.root, component), timeout
        )
        if prepare:  # start(): make sure run/ and logs/ exist, in the same round trip
            dirs = " ".join(shlex.quote(posixpath.join(self.root, d)) for d in ("run", "logs"))
            command = f"mkdir -p -- {dirs} || exit {_LAYOUT_FAILED}\n{command}"
        result = self._run(
            command,
            f"stop {component}",
            timeout=timeout + _KILL_WAIT_TICKS * _POLL_S + _COMMAND_TIMEOUT,
        )
        outcome = result.stdout.strip()
        if result.ok and outcome in STOP_OUTCOMES:
            return outcome
        if outcome.startswith("survived "):
            cause = f"process group {outcome.split()[-1]} survived SIGKILL"
        else:
            cause = f"stop failed (exit {result.exit_code}): {outcome or result.stderr}"
        raise self._error(component, cause, log_tail=result.stderr)

    # -- the interface

    def start(self, spec: ProcessSpec) -> ProcessState:
        if posixpath.normpath(spec.root) != self.root:
            raise ValueError(
                f"component {spec.component}: spec root {spec.root} is not "
                f"this supervisor's root {self.root}"
            )
        self._stop(spec.component, self.stop_timeout, prepare=True)  # one instance at a time
        env_path = None
        if spec.env:
            env_path = posixpath.join(
                self.root, "run", f".{spec.component}.{secrets.token_hex(_TOKEN_BYTES)}.env"
            )
            self.connector.put_bytes(render_env_file(spec.env), env_path, mode=ENV_FILE_MODE)
        try:
            launched = self._run(
                launch_command(spec, env_path),
                f"start {spec.component} release {spec.release_id}: {spec.command}",
            )
        except BaseException:
            with contextlib.suppress(Exception):
                self._cleanup(env_path)
            raise
        started_at = time.monotonic()
        if launched.exit_code == _CD_FAILED:
            cause = f"working directory {spec.workdir} is missing"
        elif launched.exit_code == _ENV_FILE_UNREADABLE:
            cause = f"cannot read env_file {spec.env_file}"
        elif not launched.ok:
            cause = f"cannot append to {log_path(self.root, spec.component)}"
        else:
            cause = ""
        if cause:
            self._cleanup(env_path)
            raise self._error(
                spec.component, cause, log_tail=launched.stderr, release_id=spec.release_id
            )
        pid, stat = parse_launch(launched.stdout)
        if stat is not None and not stat.zombie:
            record = PidRecord(pid, stat.starttime, spec.release_id, spec.component)
            self.connector.put_bytes(
                record.to_bytes(), pid_path(self.root, spec.component), mode=0o644
            )
            remaining = self.settle_s - (time.monotonic() - started_at)
            if remaining > 0:
                self._sleep(remaining)
            observed = self._observe(spec.component)
            if observed.running:
                return observed.to_state(spec.component)
        raise self._died(spec, env_path)

    def _cleanup(self, env_path: str | None) -> None:
        if env_path is not None:
            self._run(f"rm -f -- {shlex.quote(env_path)}", "remove the env file")

    def _died(self, spec: ProcessSpec, env_path: str | None) -> SupervisorError:
        marker = start_marker(spec.component, spec.release_id)
        command = log_tail_command(log_path(self.root, spec.component), _TAIL_SCAN_LINES)
        if env_path is not None:  # the wrapper deletes it, unless it died first
            command = f"rm -f -- {shlex.quote(env_path)}; {command}"
        text = self._run(command, f"log tail of {spec.component}").stdout
        tail = since_marker(text, marker, 20)
        status = exit_status(tail)
        how = f" with status {status}" if status is not None else ""
        return self._error(
            spec.component,
            f"release {spec.release_id} exited{how} within {self.settle_s:g}s of starting",
            log_tail=tail,
            release_id=spec.release_id,
        )

    def stop(self, component: str, *, timeout: float = STOP_TIMEOUT) -> None:
        check_component(component)
        self._stop(component, timeout)

    def state(self, component: str) -> ProcessState:
        check_component(component)
        return self._observe(component).to_state(component)

    def log_tail(self, component: str, lines: int = 20) -> str:
        check_component(component)
        return self._run(
            log_tail_command(log_path(self.root, component), lines), f"log tail of {component}"
        ).stdout
