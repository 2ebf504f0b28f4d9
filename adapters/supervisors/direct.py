"""The ``direct`` supervisor: a detached process group, a pidfile, a log file.

Layout under the host root: ``run/<component>.pid`` (one JSON line: pid, the
process's start time in clock ticks from ``/proc/<pid>/stat``, release id) and
``logs/<component>.log`` (stdout and stderr appended, one ``==> chassis:``
marker line per start and per exit).

How a component is launched (:func:`launch_command`): ``setsid /bin/sh -c
WRAPPER ...`` in the background with stdin from ``/dev/null`` and output
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

Crash restarts (like systemd's ``Restart=on-failure``, which the systemd
supervisor's units use): the wrapper runs the command in a loop. When it
exits non-zero or dies of a signal other than SIGHUP, SIGINT, SIGPIPE or
SIGTERM, the wrapper waits 1 s, 2 s, 4 s … (capped) and runs it again, up to
:class:`RestartPolicy` ``burst`` restarts within ``window_s``; one more
failure in that window and it gives up and exits, leaving the marker. A
clean stop signals the whole group, wrapper included, so it never restarts
anything. Each exit is logged, and the wrapper keeps one JSON line,
``run/<component>.restarts`` (:class:`RestartRecord`, replaced atomically),
naming its pid and start time, the restart count, the last exits and
whether it is ``running``, waiting (``backoff``) or ``gave-up``. Hosts never
write the ledger: ``status --live`` and ``reconcile`` read the record
(:meth:`DirectSupervisor.observe`) and the engine records what it saw.
While the wrapper waits to restart, :meth:`DirectSupervisor.state` reports
the component as not running. A component whose ``ProcessSpec.restart`` is
``never`` runs without the loop: the wrapper runs it once, logs its exit and
exits too.

Pid reuse: a pid counts as ours only while ``/proc/<pid>/stat`` shows the
recorded start time; a zombie (state ``Z``, left for PID 1 to reap) counts as
exited. :func:`stop_command` signals the whole group and, before doing so,
checks that the pid was not reused by a stranger.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import posixpath
import secrets
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from adapters.connectors.base import CommandResult, Connector
from adapters.supervisors import group_stop
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
    "DEFAULT_RESTART",
    "DirectState",
    "DirectSupervisor",
    "PidRecord",
    "ProcStat",
    "RestartPolicy",
    "RestartRecord",
    "launch_command",
    "log_tail_command",
    "parse_proc_stat",
    "pid_path",
    "start_marker",
    "stop_command",
]

SETTLE_S = 0.3
_KILL_WAIT_S = 5.0  # how long a group may take to go after SIGKILL
_COMMAND_TIMEOUT = 30.0
_TAIL_SCAN_LINES = 400
_CD_FAILED = 90
_LAYOUT_FAILED = 91
_ENV_FILE_UNREADABLE = 92
_STILL_RECORDED = 93
_RECORDED = "recorded"
"""The launch's last line once it wrote the pidfile itself."""
_NO_LAYOUT = 94
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
                component,
                True,
                record.pid,
                record.release_id,
                f"running (pid {record.pid})",
                start=record.start,
            )
        if stat is None:
            detail = f"exited (pid {record.pid} is gone)"
        elif stat.starttime != record.start:
            detail = f"exited (pid {record.pid} now belongs to another process)"
        else:
            detail = f"exited (pid {record.pid} is a zombie)"
        return ProcessState(component, False, None, record.release_id, detail)


# The process-group leader. $1: our env file (deleted once open), $2: the
# operator's env_file, $3: the command, $4: ENV_LOADER, $5: the restart
# policy ("BURST WINDOW_S FIRST_S CAP_S", empty: never restart), $6: the
# restart record file. $0 names the component in `ps`. The env files are
# data: the shell never sources them; python3 parses them (ENV_LOADER) and
# execs `/bin/sh -c "$cmd"` with the result as its environment. Each run
# reopens our (deleted) env file through /proc, so a restart reads it from
# the start again. Each decision is logged before it is recorded: whoever
# sees the record (status, reconcile) finds its line in the log already.
# SIGHUP is ignored first, for the wrapper and (inherited through exec) the
# component, as nohup would: one process fewer per start. Nothing can hang
# it up before: setsid made it a session of its own, with no terminal.
WRAPPER = """\
trap '' HUP
gen=$1; user=$2; cmd=$3; loader=$4; policy=$5; rf=$6
if [ -n "$gen" ]; then exec 3< "$gen" && rm -f -- "$gen" || exit 126; fi
if [ -n "$user" ] && [ ! -r "$user" ]; then
  echo "chassis: cannot read env_file $user" >&2; exit 126
fi
py=
if [ -n "$gen$user" ]; then
  py=/usr/bin/python3
  [ -x "$py" ] || py=$(command -v python3) || {
    echo "chassis: the direct supervisor needs python3 on the host to load env files" >&2
    exit 127
  }
fi
once() {
  if [ -z "$py" ]; then /bin/sh -c "$cmd"
  elif [ -n "$gen" ]; then "$py" -I -S -c "$loader" "$$" "$user" "$cmd" 3 3< "/proc/$$/fd/3"
  else "$py" -I -S -c "$loader" "$$" "$user" "$cmd" ""
  fi
}
note() {
  { printf '{"pid":%s,"start":%s,"restarts":%s,"state":"%s",' "$$" "$me" "$n" "$1"
    printf '"status":%s,"at":"%s","delay":%s,"last":[%s]}\\n' "$rc" "$at" "$2" "$hist"
  } 2>/dev/null > "$rf.$$" && mv -f -- "$rf.$$" "$rf" 2>/dev/null
}
set -- $policy
burst=${1:-0}; window=${2:-0}; first=${3:-1}; cap=${4:-30}
{ IFS= read -r me < "/proc/$$/stat"; } 2>/dev/null; me=${me##*) }; set -- $me; me=${20:-0}
n=0; recent=; hist=; h1=; h2=; h3=; h4=
while :; do
  once
  rc=$?
  echo "==> chassis: $0 exited with status $rc" >&2
  [ "$burst" -gt 0 ] || exit $rc
  case $rc in 0|129|130|141|143) exit $rc ;; esac
  now=$(date +%s); at=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  kept=; count=0
  for t in $recent; do
    if [ $((now - t)) -lt "$window" ]; then kept="$kept $t"; count=$((count + 1)); fi
  done
  recent=$kept
  hist="{\\"at\\":\\"$at\\",\\"status\\":$rc}"
  for h in "$h1" "$h2" "$h3" "$h4"; do [ -n "$h" ] && hist="$hist,$h"; done
  h4=$h3; h3=$h2; h2=$h1; h1="{\\"at\\":\\"$at\\",\\"status\\":$rc}"
  if [ "$count" -ge "$burst" ]; then
    echo "==> chassis: $0 gave up: $count restart(s) within ${window}s already" >&2
    note gave-up 0
    exit $rc
  fi
  delay=$first; i=0
  while [ "$i" -lt "$count" ] && [ "$delay" -lt "$cap" ]; do
    delay=$((delay * 2)); i=$((i + 1))
  done
  if [ "$delay" -gt "$cap" ]; then delay=$cap; fi
  n=$((n + 1)); recent="$recent $now"
  echo "==> chassis: $0 restarting in ${delay}s (restart $n)" >&2
  note backoff "$delay"
  sleep "$delay"
  note running "$delay"
done
"""


def restarts_path(root: str, component: str) -> str:
    """``run/<component>.restarts``: the wrapper's restart record."""
    return posixpath.join(root, "run", f"{component}.restarts")


@dataclass(frozen=True)
class RestartPolicy:
    """How the wrapper restarts a crashed component: after ``first_s``
    seconds, doubling per restart already made within ``window_s`` (so the
    pause grows while it keeps crashing and falls back once it stays up),
    capped at ``cap_s``; at most ``burst`` restarts within ``window_s``,
    then it gives up (as systemd's ``StartLimitBurst`` would)."""

    burst: int = 5
    window_s: int = 300
    first_s: int = 1
    cap_s: int = 30

    def __post_init__(self) -> None:
        if min(self.burst, self.window_s, self.first_s, self.cap_s) < 1:
            raise ValueError("restart policy values must be positive integers")

    def args(self) -> str:
        """The wrapper's ``$5``."""
        return f"{self.burst} {self.window_s} {self.first_s} {self.cap_s}"


DEFAULT_RESTART = RestartPolicy()
"""1 s, 2 s, 4 s, 8 s, 16 s: five restarts within five minutes, then give up."""


@dataclass(frozen=True)
class RestartRecord:
    """The wrapper's record (:data:`WRAPPER` writes it, one JSON line): whose
    (``pid``, ``start``: the wrapper, as in the pidfile), how many restarts,
    the last exit (``status``, ``at``) and the last few (``last``, newest
    first), and ``state``: ``running`` again, ``backoff`` (waiting
    ``delay`` seconds to restart) or ``gave-up`` (:meth:`DirectSupervisor.observe`
    says ``stopped`` for a ``backoff`` whose wrapper is gone: killed while
    it waited, nothing will restart it)."""

    pid: int
    start: int
    restarts: int
    state: str
    status: int
    at: str
    delay: int
    last: tuple[tuple[str, int], ...] = ()

    STATES: ClassVar[frozenset[str]] = frozenset({"running", "backoff", "gave-up"})

    @classmethod
    def parse(cls, line: str) -> RestartRecord | None:
        """The record, or None for no line or one that is not a record."""
        try:
            raw = json.loads(line)
            record = cls(
                pid=raw["pid"],
                start=raw["start"],
                restarts=raw["restarts"],
                state=raw["state"],
                status=raw["status"],
                at=raw["at"],
                delay=raw["delay"],
                last=tuple((str(e["at"]), int(e["status"])) for e in raw["last"]),
            )
        except (ValueError, KeyError, TypeError):
            return None
        numbers = (record.pid, record.start, record.restarts, record.status, record.delay)
        if not all(isinstance(x, int) for x in numbers) or record.state not in cls.STATES:
            return None
        return record

    def of(self, process: PidRecord | None) -> bool:
        """Written by the process ``process`` records (not an earlier instance)."""
        return process is not None and (self.pid, self.start) == (process.pid, process.start)

    def describe(self) -> str:
        """One line for a state's detail."""
        times = "time" if self.restarts == 1 else "times"
        what = {
            "running": f"restarted {self.restarts} {times}",
            "backoff": f"restarting in {self.delay}s (restart {self.restarts})",
            "gave-up": f"gave up restarting after {self.restarts} restart(s)",
            "stopped": f"its wrapper is gone, restart {self.restarts} will not come",
        }[self.state]
        return f"{what}; last exit status {self.status} at {self.at}"


_RESTARTS_SEPARATOR = "--chassis-restarts--"


def observe_command(root: str, component: str) -> str:
    """:meth:`DirectState.command`, a separator line, then the restart record
    (one round trip for both)."""
    record = shlex.quote(restarts_path(root, component))
    return (
        f"( {DirectState.command(root, component)} ); echo {_RESTARTS_SEPARATOR}; "
        f"{{ IFS= read -r r < {record} && printf '%s\\n' \"$r\"; }} 2>/dev/null; exit 0"
    )


def parse_observation(output: str) -> tuple[DirectState, RestartRecord | None]:
    """The output of :func:`observe_command`, parsed."""
    state_text, _, record_text = output.partition(_RESTARTS_SEPARATOR + "\n")
    lines = record_text.strip().splitlines()
    return DirectState.parse(state_text), RestartRecord.parse(lines[0]) if lines else None


def current_record(observed: DirectState, record: RestartRecord | None) -> RestartRecord | None:
    """``record`` if the recorded instance wrote it (None for an earlier
    instance's), ``stopped`` where it says ``backoff`` but the wrapper is gone."""
    if record is None or not record.of(observed.record):
        return None
    if record.state == "backoff" and not observed.running:
        return dataclasses.replace(record, state="stopped")  # killed while it waited
    return record


def restart_aware(
    observed: DirectState, record: RestartRecord | None, component: str
) -> ProcessState:
    """The state, told by the restart record too: a wrapper waiting to restart
    is alive but its component is not running, and one that gave up is only
    alive until its next line (``exit``) runs."""
    state = observed.to_state(component)
    record = current_record(observed, record)
    if record is None:
        return state
    if state.running and record.state in ("backoff", "gave-up"):
        return dataclasses.replace(
            state, running=False, pid=None, detail=f"not running: {record.describe()}"
        )
    return dataclasses.replace(state, detail=f"{state.detail}; {record.describe()}")


def launch_command(
    spec: ProcessSpec,
    env_path: str | None,
    restart: RestartPolicy | None = None,
    *,
    prepare: bool = False,
) -> str:
    """Start ``spec`` detached; print ``pid N``, the process's stat line, and
    ``recorded`` once its pidfile is written (only while it is not a zombie).
    With ``restart``, the wrapper restarts the command when it crashes.

    Exits 90 when the working directory is missing, 91 when the log cannot be
    written, 92 when ``spec.env_file`` is not readable. Only builtins run
    after the launch, so the shell cannot reap a process that dies at once
    before its stat line is read.

    ``prepare`` (with no ``env_path``): first what the stop before a start
    does when nothing runs, in the same round trip: make ``run/`` and
    ``logs/`` (exit 94 when that fails), sweep env files a crashed start left,
    and exit 93, starting nothing, while a pidfile is there (the caller stops
    that instance, then launches without ``prepare``). Each runs a process
    only when there is something to do.
    """
    q = shlex.quote
    log = q(log_path(spec.root, spec.component))
    marker = q(start_marker(spec.component, spec.release_id))
    pidfile = q(pid_path(spec.root, spec.component))
    pidtmp = q(pid_path(spec.root, spec.component) + ".launch")
    env_check = ""
    if spec.env_file is not None:
        env_check = f"[ -r {q(spec.env_file)} ] || exit {_ENV_FILE_UNREADABLE}; "
    ready = ""
    if prepare:
        if env_path is not None:
            raise ValueError("prepare would sweep the env file this start wrote")
        ready = (
            f"{_layout_ready(spec.root, _NO_LAYOUT)}; "
            f"{sweep_env_files(spec.root, spec.component)}; "
            f"[ ! -e {pidfile} ] || exit {_STILL_RECORDED}; "
        )
    return (
        f"{ready}cd -- {q(spec.workdir)} || exit {_CD_FAILED}; {env_check}"
        f"printf '%s at %s\\n' {marker} \"$(date -u +%Y-%m-%dT%H:%M:%SZ)\" >> {log} "
        f"|| exit {_LAYOUT_FAILED}; "
        f"setsid /bin/sh -c {q(WRAPPER)} {q('chassis-' + spec.component)} "
        f"{q(env_path or '')} {q(spec.env_file or '')} {q(spec.command)} {q(ENV_LOADER)} "
        f"{q(restart.args() if restart else '')} {q(restarts_path(spec.root, spec.component))} "
        f"< /dev/null >> {log} 2>&1 & "
        'pid=$!; st=; rec=; { IFS= read -r st < "/proc/$pid/stat"; } 2>/dev/null; '
        # The pidfile is written here, on the host, in the same command, and
        # before anything is printed: a chassis killed while this runs closes
        # the pipe, and the first line printed after that kills the shell
        # (SIGPIPE). What it started must still be findable (recover reads
        # the pidfile). Same bytes as PidRecord's.
        'if [ -n "$st" ]; then rest=${st##*) }; set -- $rest; '
        'if [ "$1" != Z ]; then '
        f'printf \'{{"pid":%s,"start":%s,"release_id":"%s","component":"%s"}}\\n\' '
        f'"$pid" "${{20}}" {q(spec.release_id)} {q(spec.component)} > {pidtmp} '
        f"&& mv -f -- {pidtmp} {pidfile} && rec=1; fi; fi; "
        'echo "pid $pid"; [ -z "$st" ] || printf \'%s\\n\' "$st"; '
        f"[ -z \"$rec\" ] || echo {_RECORDED}; "
        "exit 0"
    )


def parse_launch(output: str) -> tuple[int, ProcStat | None]:
    """The pid and (if it was still there) the stat line printed by :func:`launch_command`."""
    lines = [line for line in output.splitlines() if line != _RECORDED]
    if not lines or not lines[0].startswith("pid ") or not lines[0][4:].isdigit():
        raise ValueError(f"unexpected launch output {output[:120]!r}")
    pid = int(lines[0][4:])
    stat = None
    if len(lines) > 1:
        stat = parse_proc_stat(lines[1])
        if stat.pid != pid:
            raise ValueError(f"launch output names pid {stat.pid}, not {pid}")
    return pid, stat


STOP_OUTCOMES = frozenset({"none", "unreadable", "foreign", "gone", "stopped", "killed"})


def stop_command(pidfile: str, timeout: float) -> str:
    """Stop the process group recorded in ``pidfile``; remove the pidfile.

    Runs :mod:`adapters.supervisors.group_stop` with the host's ``python3``:
    SIGTERM to the group, up to ``timeout`` for every member to exit (woken by
    pidfds as each one exits, no sleeping between looks), then SIGKILL. Prints
    one word: ``stopped``, ``killed``, ``none`` (no pidfile), ``unreadable``
    (pidfile removed), ``gone`` (nothing left to stop), ``foreign`` (the pid
    now belongs to another process: left alone) or ``survived PID`` (still
    there after SIGKILL; pidfile kept). Zombies count as exited.
    """
    return shlex.join(
        [
            "exec",
            "python3",
            "-I",
            "-c",
            group_stop.source(),
            pidfile,
            f"{timeout:g}",
            f"{_KILL_WAIT_S:g}",
        ]
    )


def env_glob(root: str, component: str) -> str:
    """A shell glob for the start-time env files of ``component`` (and no other)."""
    hex_digit = "[0-9a-f]"
    run = shlex.quote(posixpath.join(root, "run"))
    return f"{run}/.{check_component(component)}.{hex_digit * (2 * _TOKEN_BYTES)}.env"


def _layout_ready(root: str, failed: int) -> str:
    """Shell that makes ``run/`` and ``logs/`` (exit ``failed`` if it cannot),
    running ``mkdir`` only when one is missing: after the first start both
    are there, and no process is started."""
    run, logs = (shlex.quote(posixpath.join(root, d)) for d in ("run", "logs"))
    return f"{{ [ -d {run} ] && [ -d {logs} ]; }} || mkdir -p -- {run} {logs} || exit {failed}"


def sweep_env_files(root: str, component: str) -> str:
    """Shell that removes the start-time env files of ``component``, running
    ``rm`` only for one that exists (a glob that matches nothing stays as
    written): after a clean stop there is none, and no process is started."""
    return f'for f in {env_glob(root, component)}; do [ ! -e "$f" ] || rm -f -- "$f"; done'


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
    pid_is_wrapper: ClassVar[bool] = True  # the group leader runs the command as a child

    def __init__(
        self,
        connector: Connector,
        root: str,
        *,
        settle_s: float = SETTLE_S,
        stop_timeout: float = STOP_TIMEOUT,
        sleep: Callable[[float], None] = time.sleep,
        restart: RestartPolicy | None = DEFAULT_RESTART,
    ) -> None:
        if not posixpath.isabs(root):
            raise ValueError(f"host root must be an absolute path, not {root!r}")
        self.connector = connector
        self.root = posixpath.normpath(root)
        self.settle_s = settle_s
        self.stop_timeout = stop_timeout
        self._sleep = sleep
        self.restart = restart
        """How crashed components are restarted (None: never, as before); a
        spec whose ``restart`` is ``never`` is never restarted either way."""

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

    def _look(self, component: str) -> tuple[DirectState, RestartRecord | None]:
        """:meth:`_observe` and the restart record, in one round trip."""
        result = self._run(observe_command(self.root, component), f"state of {component}")
        if not result.ok:
            raise self._error(
                component,
                f"cannot read process state (exit {result.exit_code})",
                log_tail=result.stderr,
            )
        return parse_observation(result.stdout)

    def _stop(self, component: str, timeout: float, *, prepare: bool = False) -> str:
        pidfile = pid_path(self.root, component)
        # Env files a crashed start left behind go first (the wrapper deletes
        # its own); without a pidfile there is nothing to stop, which the
        # shell answers without starting the stop program.
        command = (
            f"{sweep_env_files(self.root, component)}\n"
            f"[ -e {shlex.quote(pidfile)} ] || {{ echo none; exit 0; }}; echo present"
        )
        if prepare:  # start(): make sure run/ and logs/ exist, in the same round trip
            command = f"{_layout_ready(self.root, _LAYOUT_FAILED)}\n{command}"
        result = self._run(command, f"stop {component}")
        if result.ok and result.stdout.strip() == "present":
            result = self.connector.run_python(
                group_stop.source(),
                [pidfile, f"{timeout:g}", f"{_KILL_WAIT_S:g}"],
                timeout=timeout + _KILL_WAIT_S + _COMMAND_TIMEOUT,
                display=f"stop {component}",
            )
        outcome = result.stdout.strip()
        if result.ok and outcome in STOP_OUTCOMES:
            return outcome
        if outcome.startswith("survived "):
            cause = f"process group {outcome.split()[-1]} survived SIGKILL"
        elif result.exit_code == 127:
            cause = "python3 is not installed there; stopping a component needs it"
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
        env_path = None
        if spec.env:  # its env file goes into run/: make it, and stop, first
            self._stop(spec.component, self.stop_timeout, prepare=True)  # one instance at a time
            env_path = posixpath.join(
                self.root, "run", f".{spec.component}.{secrets.token_hex(_TOKEN_BYTES)}.env"
            )
            self.connector.put_bytes(render_env_file(spec.env), env_path, mode=ENV_FILE_MODE)
        shown = f"start {spec.component} release {spec.release_id}: {spec.command}"
        try:
            restart = None if spec.restart == "never" else self.restart
            launched = self._run(
                launch_command(spec, env_path, restart, prepare=env_path is None), shown
            )
            if launched.exit_code == _STILL_RECORDED:  # one instance at a time
                self._stop(spec.component, self.stop_timeout)
                launched = self._run(launch_command(spec, env_path, restart), shown)
        except BaseException:
            with contextlib.suppress(Exception):
                self._cleanup(env_path)
            raise
        started_at = time.monotonic()
        if launched.exit_code == _CD_FAILED:
            cause = f"working directory {spec.workdir} is missing"
        elif launched.exit_code == _NO_LAYOUT:
            cause = f"cannot create {posixpath.join(self.root, 'run')} and logs/"
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
            if _RECORDED not in launched.stdout.splitlines():  # the launch could not write it
                record = PidRecord(pid, stat.starttime, spec.release_id, spec.component)
                self.connector.put_bytes(
                    record.to_bytes(), pid_path(self.root, spec.component), mode=0o644
                )
            if spec.health_gated:
                # The launch's look stands: alive, just recorded, and it has
                # not had a second to restart (the wrapper waits that long
                # first). The health gate watches it from here, and names
                # its exit; a second look would cost a round trip per start.
                return ProcessState(
                    spec.component,
                    True,
                    pid,
                    spec.release_id,
                    f"running (pid {pid})",
                    start=stat.starttime,
                )
            remaining = self.settle_s - (time.monotonic() - started_at)
            if remaining > 0:
                self._sleep(remaining)
            observed, restarts = self._look(spec.component)
            if observed.running and not (restarts and restarts.of(observed.record)):
                return observed.to_state(spec.component)
            if observed.running:  # it crashed while settling: a failed start, not a restart
                self._stop(spec.component, self.stop_timeout)
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
        return restart_aware(*self._look(component), component)

    def observe(self, component: str) -> tuple[ProcessState, RestartRecord | None]:
        """The state and the restart record of the running instance (None when
        it never restarted), in one round trip: what ``status --live`` and
        ``reconcile`` record."""
        check_component(component)
        observed, record = self._look(component)
        return restart_aware(observed, record, component), current_record(observed, record)

    def log_tail(self, component: str, lines: int = 20) -> str:
        check_component(component)
        return self._run(
            log_tail_command(log_path(self.root, component), lines), f"log tail of {component}"
        ).stdout
