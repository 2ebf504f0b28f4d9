"""The ``systemd`` supervisor: one unit per component and release.

Unit names are ``<prefix>-<component>@<release-id>.service`` (prefix
``chassis`` by default; pass ``unit_prefix="chassis-<app>"`` to keep two apps
on one host apart). Each is a concrete instance file (no template), so every
release keeps its own rendered unit and rolling back restarts exactly the unit
that ran before. All units of a component match the pattern
``<prefix>-<component>@*.service``; component and release ids are validated
to characters that are legal in unit names, so no escaping is needed.

Files written through the connector:

- ``<unit_dir>/<unit>`` (0644): the unit, from :func:`render_unit`;
- ``<root>/run/<unit>.env`` (0600): ``spec.env`` as an ``EnvironmentFile=``
  (values stay out of the unit file, which is world-readable, and out of
  ``systemctl show``); it stays on disk because ``Restart=on-failure`` and a
  later rollback re-read it. Written by the one env-file writer
  (:func:`~adapters.supervisors.envfile.render_env_file`), whose quoting is
  exactly what systemd's ``EnvironmentFile=`` parser unescapes and which
  refuses values systemd would drop (NUL, invalid UTF-8 to systemd).

Everything that decides what to run is pure: :func:`render_unit`,
:func:`start_commands`, :func:`stop_commands`, :func:`failed_start_commands`,
:class:`UnitList` and :class:`UnitState` (command + parser, like pyinfra's
facts). :class:`SystemdSupervisor` only runs them through the connector.
"""

from __future__ import annotations

import posixpath
import re
import shlex
import time
from collections.abc import Callable, Sequence
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
from adapters.supervisors.direct import log_tail_command
from adapters.supervisors.envfile import ENV_FILE_MODE, render_env_file

__all__ = [
    "SYSTEMCTL",
    "UNIT_DIR",
    "SystemdSupervisor",
    "UnitList",
    "UnitListing",
    "UnitState",
    "env_path",
    "failed_start_commands",
    "quote_exec_arg",
    "release_of",
    "render_unit",
    "start_commands",
    "stop_commands",
    "unit_name",
    "unit_pattern",
]

SYSTEMCTL = "systemctl"
UNIT_DIR = "/etc/systemd/system"
SETTLE_S = 0.3
_COMMAND_TIMEOUT = 60.0
# "chassis-" + an app name (adapters.connectors.base.NAME, up to 63 characters).
_PREFIX = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,71}\Z")
_UNSAFE_PATH = re.compile(r"[\s\x00-\x1f\x7f\\\"']")
_RUNNING = frozenset({"active", "reloading"})
_BUSY = frozenset({"active", "reloading", "activating", "deactivating"})


# -- names ---------------------------------------------------------------------


def unit_name(prefix: str, component: str, release_id: str) -> str:
    """``<prefix>-<component>@<release-id>.service``."""
    if not _PREFIX.match(prefix):
        raise ValueError(f"unit prefix {prefix!r} is not a valid unit name part")
    check_component(component)
    name = f"{prefix}-{component}@{release_id}.service"
    if len(name) > 255:
        raise ValueError(f"unit name {name[:40]}… is longer than 255 characters")
    return name


def unit_pattern(prefix: str, component: str) -> str:
    """The glob matching every release's unit of ``component``."""
    return f"{prefix}-{check_component(component)}@*.service"


def release_of(unit: str) -> str | None:
    """The release id of a unit named by :func:`unit_name` (its instance part)."""
    if "@" not in unit or not unit.endswith(".service"):
        return None
    return unit[unit.index("@") + 1 : -len(".service")] or None


def env_path(root: str, unit: str) -> str:
    """Where a unit's ``EnvironmentFile=`` lives: ``<root>/run/<unit>.env``."""
    return posixpath.join(root, "run", f"{unit}.env")


# -- rendering -----------------------------------------------------------------


def quote_exec_arg(arg: str) -> str:
    """One ``ExecStart=`` word that systemd reads back as exactly ``arg``.

    Double-quoted with C escapes (``\\\\``, ``\\"``, ``\\n``, ``\\xNN``), ``%``
    doubled (specifiers) and ``$`` doubled (environment substitution).
    """
    out = []
    for ch in arg:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\0":
            raise ValueError("a command cannot contain NUL bytes")
        elif ord(ch) < 0x20 or ch == "\x7f":
            out.append(f"\\x{ord(ch):02x}")
        elif ch == "%":
            out.append("%%")
        elif ch == "$":
            out.append("$$")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _unit_path_value(label: str, path: str) -> str:
    """A path for a unit setting: absolute, no whitespace or quotes; ``%`` doubled."""
    if not posixpath.isabs(path) or _UNSAFE_PATH.search(path):
        raise ValueError(
            f"{label} {path!r} must be an absolute path without whitespace, quotes or "
            "backslashes to be used in a systemd unit"
        )
    return path.replace("%", "%%")


def render_unit(
    spec: ProcessSpec,
    *,
    unit_prefix: str = "chassis",
    stop_timeout: float = STOP_TIMEOUT,
    restart_sec: float = 1.0,
) -> str:
    """The unit file for ``spec`` (pure; the same spec gives the same bytes).

    ``ExecStart=/bin/sh -c "<command>"``, so the command keeps its shell
    meaning. ``spec.env`` (secret) is referenced through
    :func:`env_path`, never inlined; ``spec.env_file`` comes first so the
    spec's own values win. ``Restart=on-failure``, or ``Restart=no`` for a
    spec whose ``restart`` is ``never``.
    """
    unit = unit_name(unit_prefix, spec.component, spec.release_id)
    env_files = []
    if spec.env_file is not None:
        env_files.append(f"EnvironmentFile={_unit_path_value('env_file', spec.env_file)}")
    if spec.env:
        env_files.append(f"EnvironmentFile={_unit_path_value('root', env_path(spec.root, unit))}")
    log = _unit_path_value("root", log_path(spec.root, spec.component))
    lines = [
        f"# Generated by chassis for component {spec.component}, release {spec.release_id}.",
        "# Do not edit: the next deployment rewrites it.",
        "[Unit]",
        f"Description=chassis {spec.component} (release {spec.release_id})",
        "After=network.target",
        "",
        "[Service]",
        "Type=simple",
        f"WorkingDirectory={_unit_path_value('workdir', spec.workdir)}",
        *env_files,
        f"ExecStart=/bin/sh -c {quote_exec_arg(spec.command)}",
        "Restart=no" if spec.restart == "never" else "Restart=on-failure",
        f"RestartSec={_seconds(restart_sec)}",
        "KillMode=control-group",
        "KillSignal=SIGTERM",
        f"TimeoutStopSec={_seconds(stop_timeout)}",
        "StandardInput=null",
        f"StandardOutput=append:{log}",
        f"StandardError=append:{log}",
        f"SyslogIdentifier={unit_prefix}-{spec.component}",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ]
    return "\n".join(lines)


def _seconds(value: float) -> str:
    if value < 0:
        raise ValueError("durations must not be negative")
    ms = round(value * 1000)
    return f"{ms // 1000}" if ms % 1000 == 0 else f"{ms}ms"


# -- facts: command + pure parser ----------------------------------------------


@dataclass(frozen=True)
class UnitListing:
    """One row of ``systemctl list-units``."""

    unit: str
    load: str
    active: str
    sub: str


class UnitList:
    """The loaded units of one component (every release), from ``list-units``."""

    @staticmethod
    def command(prefix: str, component: str, systemctl: str = SYSTEMCTL) -> str:
        return (
            f"{systemctl} list-units --all --plain --no-legend --full --type=service "
            f"{shlex.quote(unit_pattern(prefix, component))}"
        )

    @staticmethod
    def parse(output: str) -> list[UnitListing]:
        rows = []
        for line in output.splitlines():
            fields = line.split()
            if fields and fields[0] in ("●", "*", "×"):  # failed/not-found marker
                fields = fields[1:]
            if len(fields) >= 4 and fields[0].endswith(".service"):
                rows.append(UnitListing(*fields[:4]))
        return rows


@dataclass(frozen=True)
class UnitState:
    """``systemctl show`` of one unit, parsed."""

    unit: str
    load_state: str
    active_state: str
    sub_state: str
    main_pid: int | None
    result: str
    exec_main_status: int | None

    PROPERTIES: ClassVar[tuple[str, ...]] = (
        "Id",
        "LoadState",
        "ActiveState",
        "SubState",
        "MainPID",
        "Result",
        "ExecMainStatus",
    )

    @classmethod
    def command(cls, unit: str, systemctl: str = SYSTEMCTL) -> str:
        return f"{systemctl} show -p {','.join(cls.PROPERTIES)} {shlex.quote(unit)}"

    @classmethod
    def parse(cls, output: str, unit: str = "") -> UnitState:
        values: dict[str, str] = {}
        for line in output.splitlines():
            key, sep, value = line.partition("=")
            if sep:
                values[key.strip()] = value.strip()

        def number(key: str) -> int | None:
            text = values.get(key, "")
            return int(text) if text.isdigit() and int(text) > 0 else None

        status = values.get("ExecMainStatus", "")
        return cls(
            unit=values.get("Id") or unit,
            load_state=values.get("LoadState", "unknown"),
            active_state=values.get("ActiveState", "unknown"),
            sub_state=values.get("SubState", "unknown"),
            main_pid=number("MainPID"),
            result=values.get("Result", ""),
            exec_main_status=int(status) if status.isdigit() else None,
        )

    @property
    def running(self) -> bool:
        return self.active_state in _RUNNING and self.main_pid is not None

    def describe(self) -> str:
        if self.running:
            return f"running (pid {self.main_pid}, unit {self.unit})"
        text = f"unit {self.unit} {self.active_state}/{self.sub_state}"
        if self.active_state == "failed" or self.sub_state == "auto-restart":
            status = (
                f", status {self.exec_main_status}" if self.exec_main_status is not None else ""
            )
            text = f"unit failed: {self.unit} {self.active_state}/{self.sub_state} " + (
                f"(result {self.result or 'unknown'}{status})"
            )
        return text

    def to_state(self, component: str) -> ProcessState:
        return ProcessState(
            component,
            self.running,
            self.main_pid if self.running else None,
            release_of(self.unit),
            self.describe(),
        )


# -- command sequences (pure) --------------------------------------------------


def start_commands(
    unit: str, listed: Sequence[UnitListing], systemctl: str = SYSTEMCTL
) -> list[str]:
    """After ``daemon-reload`` and ``list-units``: retire other releases, start ``unit``.

    Every other release's unit of the component is ``disable --now``-ed (one
    release per component runs, and only it starts at boot); ``unit`` is
    ``enable --now``-ed, or ``restart``-ed when it is already running so a
    rewritten unit or env file takes effect.
    """
    q = shlex.quote
    others = [row.unit for row in listed if row.unit != unit]
    commands = []
    if others:
        commands.append(f"{systemctl} disable --now {' '.join(q(u) for u in others)}")
    mine = next((row for row in listed if row.unit == unit), None)
    if mine is not None and mine.active in _BUSY:
        commands.append(f"{systemctl} restart {q(unit)}")
    else:
        commands.append(f"{systemctl} enable --now {q(unit)}")
    return commands


def verify_command(unit: str, systemctl: str = SYSTEMCTL) -> str:
    """``is-active``: prints ``active`` and exits 0 only for a running unit."""
    return f"{systemctl} is-active {shlex.quote(unit)}"


def failed_start_commands(unit: str, systemctl: str = SYSTEMCTL) -> list[str]:
    """A unit that died at once: stop its restart loop and keep it from booting."""
    return [f"{systemctl} disable --now {shlex.quote(unit)}"]


def stop_commands(listed: Sequence[UnitListing], systemctl: str = SYSTEMCTL) -> list[str]:
    """``stop`` every unit of the component that is not inactive, then ``disable`` all.

    Nothing when no unit of the component is loaded (stop is idempotent).
    """
    q = shlex.quote
    if not listed:
        return []
    live = [row.unit for row in listed if row.active != "inactive"]
    commands = []
    if live:
        commands.append(f"{systemctl} stop {' '.join(q(u) for u in live)}")
    commands.append(f"{systemctl} disable {' '.join(q(row.unit) for row in listed)}")
    return commands


def pick_unit(listed: Sequence[UnitListing]) -> UnitListing | None:
    """The unit that speaks for the component: a busy one, else a failed one, else any."""
    for wanted in (_BUSY, frozenset({"failed"})):
        for row in listed:
            if row.active in wanted:
                return row
    return listed[0] if listed else None


# -- the supervisor ------------------------------------------------------------


class SystemdSupervisor(Supervisor):
    """Components as systemd units, driven with ``systemctl`` through the connector.

    ``systemctl`` may be ``"sudo -n systemctl"`` for a non-root connector user
    (then ``unit_dir`` must be writable by it) or ``"systemctl --user"`` with
    ``unit_dir="~/.config/systemd/user"`` spelled out absolutely.
    """

    kind: ClassVar[str] = "systemd"

    def __init__(
        self,
        connector: Connector,
        root: str,
        unit_prefix: str = "chassis",
        *,
        unit_dir: str = UNIT_DIR,
        systemctl: str = SYSTEMCTL,
        stop_timeout: float = STOP_TIMEOUT,
        settle_s: float = SETTLE_S,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not posixpath.isabs(root):
            raise ValueError(f"host root must be an absolute path, not {root!r}")
        if not _PREFIX.match(unit_prefix):
            raise ValueError(f"unit prefix {unit_prefix!r} is not a valid unit name part")
        self.connector = connector
        self.root = posixpath.normpath(root)
        self.unit_prefix = unit_prefix
        self.unit_dir = unit_dir
        self.systemctl = systemctl
        self.stop_timeout = stop_timeout
        self.settle_s = settle_s
        self._sleep = sleep

    def unit_name(self, component: str, release_id: str) -> str:
        return unit_name(self.unit_prefix, component, release_id)

    def unit_path(self, component: str, release_id: str) -> str:
        """Where the unit file of one release lives (for retiring old releases)."""
        return posixpath.join(self.unit_dir, self.unit_name(component, release_id))

    def _run(
        self,
        command: str,
        component: str,
        *,
        check: bool = True,
        timeout: float = _COMMAND_TIMEOUT,
    ) -> CommandResult:
        result = self.connector.run(command, timeout=timeout)
        if check and not result.ok:
            raise self._error(
                component,
                f"`{command}` exited {result.exit_code}",
                log_tail=result.stderr or result.stdout,
            )
        return result

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

    def _list(self, component: str) -> list[UnitListing]:
        result = self._run(UnitList.command(self.unit_prefix, component, self.systemctl), component)
        return UnitList.parse(result.stdout)

    def _show(self, unit: str, component: str) -> UnitState:
        result = self._run(UnitState.command(unit, self.systemctl), component)
        return UnitState.parse(result.stdout, unit)

    def start(self, spec: ProcessSpec) -> ProcessState:
        if posixpath.normpath(spec.root) != self.root:
            raise ValueError(
                f"component {spec.component}: spec root {spec.root} is not "
                f"this supervisor's root {self.root}"
            )
        c = spec.component
        unit = self.unit_name(c, spec.release_id)
        text = render_unit(spec, unit_prefix=self.unit_prefix, stop_timeout=self.stop_timeout)
        dirs = " ".join(
            shlex.quote(d)
            for d in (posixpath.join(self.root, "run"), posixpath.join(self.root, "logs"))
        )
        self._run(f"mkdir -p -- {dirs}", c)
        if spec.env:
            self.connector.put_bytes(
                render_env_file(spec.env), env_path(self.root, unit), mode=ENV_FILE_MODE
            )
        self.connector.put_bytes(
            text.encode("utf-8"), self.unit_path(c, spec.release_id), mode=0o644
        )
        self._run(f"{self.systemctl} daemon-reload", c)
        listed = self._list(c)
        timeout = self.stop_timeout + _COMMAND_TIMEOUT
        for command in start_commands(unit, listed, self.systemctl):
            self._run(command, c, timeout=timeout)
        if not spec.health_gated:
            self._sleep(self.settle_s)
        if self._run(verify_command(unit, self.systemctl), c, check=False).ok:
            state = self._show(unit, c)
            if state.running:
                return state.to_state(c)
        else:
            state = self._show(unit, c)
        for command in failed_start_commands(unit, self.systemctl):
            self._run(command, c, check=False, timeout=timeout)
        tail = self._run(log_tail_command(log_path(self.root, c), 20), c, check=False).stdout
        raise self._error(
            c,
            f"release {spec.release_id} did not stay up: {state.describe()}",
            log_tail=tail,
            release_id=spec.release_id,
        )

    def stop(self, component: str, *, timeout: float = STOP_TIMEOUT) -> None:
        """Stop and disable every release's unit of ``component``.

        systemd itself sends SIGTERM to the control group and SIGKILL after the
        unit's ``TimeoutStopSec=`` (the supervisor's ``stop_timeout``);
        ``timeout`` bounds how long we wait for ``systemctl``.
        """
        listed = self._list(component)
        for command in stop_commands(listed, self.systemctl):
            self._run(command, component, timeout=max(timeout, self.stop_timeout) + 30.0)

    def state(self, component: str) -> ProcessState:
        row = pick_unit(self._list(component))
        if row is None:
            return ProcessState(component, False, None, None, "no unit loaded")
        return self._show(row.unit, component).to_state(component)

    def forget(self, component: str, release_id: str) -> None:
        """Disable one release's unit, delete it and its env file, reload systemd."""
        unit = self.unit_name(component, release_id)
        listed = self._list(component)
        if any(row.unit == unit and row.active in _BUSY for row in listed):
            raise self._error(
                component,
                f"release {release_id} still runs ({unit}); stop it first",
                release_id=release_id,
            )
        if any(row.unit == unit for row in listed):
            self._run(f"{self.systemctl} disable {shlex.quote(unit)}", component)
        files = (self.unit_path(component, release_id), env_path(self.root, unit))
        self._run("rm -f -- " + " ".join(shlex.quote(f) for f in files), component)
        self._run(f"{self.systemctl} daemon-reload", component)

    def log_tail(self, component: str, lines: int = 20) -> str:
        check_component(component)
        return self._run(
            log_tail_command(log_path(self.root, component), lines), component, check=False
        ).stdout
