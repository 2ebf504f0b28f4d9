"""The supervisor interface: how a component's process lives on a host.

Supervisors are orthogonal to connectors (DESIGN.md §7): each one only builds
commands and runs them through a :class:`~adapters.connectors.base.Connector`,
so a local host and an SSH host behave the same. The pure parts (command
builders, parsers, unit rendering) are module functions; the classes do the
I/O around them.

Secrets: ``ProcessSpec.env`` values never appear in a command line, a file
name, a log line or an error message. They travel to the host only inside a
0600 environment file written with :meth:`Connector.put_bytes` (the mode is
set before any byte lands), see :mod:`adapters.supervisors.envfile`.
"""

from __future__ import annotations

import posixpath
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

from adapters.errors import one_line

__all__ = [
    "RESTART_MODES",
    "STOP_TIMEOUT",
    "ProcessSpec",
    "ProcessState",
    "Supervisor",
    "SupervisorError",
    "check_component",
    "check_release",
    "log_path",
]

STOP_TIMEOUT = 10.0
RESTART_MODES = ("on-failure", "never")
"""A component's ``restart`` setting: ``on-failure`` (the default) restarts
it when it crashes (systemd ``Restart=on-failure``; the direct supervisor's
wrapper with its :class:`~adapters.supervisors.direct.RestartPolicy`);
``never`` leaves a process that exited down (systemd ``Restart=no``)."""
_COMPONENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
_RELEASE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}\Z")


def check_component(component: str) -> str:
    """``component`` if it is safe as a file and unit name part, else ValueError."""
    if not _COMPONENT.match(component):
        raise ValueError(
            f"component name {component!r} must be 1-64 characters of "
            "letters, digits, '_', '.', '-' (starting with a letter or digit)"
        )
    return component


def check_release(release_id: str) -> str:
    """``release_id`` if it is safe as a directory and unit instance name, else ValueError."""
    if not _RELEASE.match(release_id):
        raise ValueError(
            f"release id {release_id!r} must be 1-128 characters of "
            "letters, digits, '_', '.', ':', '-' (starting with a letter or digit)"
        )
    return release_id


def log_path(root: str, component: str) -> str:
    """``<root>/logs/<component>.log``: where both supervisors append output."""
    return posixpath.join(root, "logs", f"{component}.log")


@dataclass(frozen=True)
class ProcessSpec:
    """One component of one release, as a supervisor should run it.

    ``env`` values may be secret: ``repr`` hides them, and no supervisor puts
    them in a command line, a file name, a log or an error.
    """

    component: str
    release_id: str
    command: str
    workdir: str
    env: Mapping[str, str] = field(repr=False)
    env_file: str | None
    root: str
    restart: str = "on-failure"
    """One of :data:`RESTART_MODES`."""
    health_gated: bool = False
    """A health gate watches the process from its start (the engine's
    ``ProcessWatch``: a process that dies ends the gate at once), so ``start``
    returns as soon as the process runs instead of watching it for the
    supervisor's ``settle_s`` first. Without a health check that window is
    the only evidence that the release stays up."""

    def __post_init__(self) -> None:
        check_component(self.component)
        check_release(self.release_id)
        if self.restart not in RESTART_MODES:
            raise ValueError(
                f"component {self.component}: restart {self.restart!r}: expected one of "
                + ", ".join(RESTART_MODES)
            )
        if not self.command.strip():
            raise ValueError(f"component {self.component}: empty command")
        if "\0" in self.command:
            raise ValueError(f"component {self.component}: NUL byte in command")
        for label, path in (("workdir", self.workdir), ("root", self.root)):
            if not posixpath.isabs(path) or "\n" in path or "\0" in path:
                raise ValueError(f"component {self.component}: {label} must be an absolute path")
        if self.env_file is not None and (
            not posixpath.isabs(self.env_file) or "\n" in self.env_file or "\0" in self.env_file
        ):
            raise ValueError(f"component {self.component}: env_file must be an absolute path")


@dataclass(frozen=True)
class ProcessState:
    """What a supervisor observed about one component.

    ``start`` is the process's start time in clock ticks (``/proc/<pid>/stat``)
    where the supervisor knows it: with ``pid`` it names one process, so a
    health gate can tell the process it started from a later one that reused
    the pid (None: the gate pins it on its first look).
    """

    component: str
    running: bool
    pid: int | None
    release_id: str | None
    detail: str
    start: int | None = None


class SupervisorError(Exception):
    """A component could not be started or stopped (exit code 15).

    The message is one line, ``host NAME (where): component C: cause`` plus a
    one-line digest of the log tail; :meth:`diagnostics` adds the tail itself.
    Connector failures (host unreachable, timeouts) are not wrapped: they stay
    :class:`~adapters.errors.ConnectorError` (exit code 11).
    """

    exit_code = 15

    def __init__(
        self,
        host: str,
        component: str,
        cause: str,
        *,
        where: str | None = None,
        log_tail: str = "",
        release_id: str | None = None,
    ) -> None:
        self.host = host
        self.where = where
        self.component = component
        self.release_id = release_id
        self.cause = one_line(cause, limit=500)
        self.log_tail = log_tail.rstrip("\n")
        label = f"{host} ({where})" if where else host
        tail = f": {one_line(self.log_tail)}" if self.log_tail.strip() else ""
        super().__init__(f"host {label}: component {component}: {self.cause}{tail}")

    def diagnostics(self) -> str:
        """The message, then the log tail indented (for an operator or a ledger event)."""
        if not self.log_tail.strip():
            return str(self)
        tail = "\n".join(f"    {line}" for line in self.log_tail.splitlines())
        return f"{self}\n  log tail:\n{tail}"


class Supervisor(ABC):
    """Start, stop and observe component processes on one host.

    One instance of a component runs at a time: :meth:`start` replaces a
    running instance (of any release) of the same component, stopping it first.
    """

    kind: ClassVar[str]
    pid_is_wrapper: ClassVar[bool] = False
    """The pid in :class:`ProcessState` is a wrapper that runs (and may
    restart) the command as its child, so a health gate watches that child."""

    @abstractmethod
    def start(self, spec: ProcessSpec) -> ProcessState:
        """Start ``spec`` detached and return its state.

        Raises :class:`SupervisorError`, with the log tail, when the process is
        gone again within the settle time (~0.3 s).
        """

    @abstractmethod
    def stop(self, component: str, *, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM the component's process group, wait ``timeout``, then SIGKILL.

        Idempotent: stopping a stopped (or never started) component is a no-op.
        """

    @abstractmethod
    def state(self, component: str) -> ProcessState:
        """Whether the component runs, its pid and release (if known)."""

    @abstractmethod
    def log_tail(self, component: str, lines: int = 20) -> str:
        """The last ``lines`` lines of ``logs/<component>.log`` ('' if none)."""

    def forget(self, component: str, release_id: str) -> None:  # noqa: B027 - optional hook
        """Drop what is kept per release (when the release is pruned from the host).

        Refuses (SupervisorError) while that release runs. The direct
        supervisor keeps nothing per release; systemd removes the unit and its
        env file.
        """
