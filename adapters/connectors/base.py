"""The connector interface: where commands run and files land.

Host operations are written once against :class:`Connector`; ``local`` and
``ssh`` implement it with the same semantics (pyinfra's connector ABC, minus
its global context). Target paths are POSIX strings.
"""

from __future__ import annotations

import posixpath
import re
import secrets
import shlex
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from adapters.errors import CommandFailed

DEFAULT_TIMEOUT = 60.0
NEW_FILE_MODE = 0o644

# -- name rules ------------------------------------------------------------------
#
# Names are data (DESIGN.md §1 principle 10). They end up in shell commands,
# file names, systemd unit names and env files, so each kind has one rule,
# here, and the stack file, the CLI and the adapters all check that rule. An
# accepted name needs no quoting anywhere (``shlex.quote(name) == name``),
# cannot start an option (no leading ``-``) and cannot climb a path (no
# ``/``, never ``.`` or ``..``); quoting still happens everywhere, as a second
# line.

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}\Z")
"""An environment variable name: what POSIX ``sh`` and systemd both accept."""
ENV_NAME_RULE = "1-128 letters, digits or '_', not starting with a digit"

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")
"""The name of an app, component, host, environment, profile, node group,
runtime, release label or label key."""
NAME_RULE = "1-63 letters, digits, '.', '_' or '-', starting with a letter or digit"


ADDRESS = re.compile(r"(?![-.])[A-Za-z0-9.:%_-]{1,253}\Z")
"""An SSH address: a DNS name, an IPv4 address or an IPv6 literal (no brackets).
It is written into known_hosts lines, so no space, comma, ``#`` or newline."""
ADDRESS_RULE = "a host name or IP address (letters, digits, '.', ':', '%', '_', '-')"


def name_problem(kind: str, name: object) -> str | None:
    """Why ``name`` is not a valid ``kind`` name (one line, name quoted), or None.

    ``kind`` is ``"env"`` for an environment variable (``ENV_NAME``) and any
    other word (``component``, ``host`` …) for :data:`NAME`.
    """
    pattern, rule = (ENV_NAME, ENV_NAME_RULE) if kind == "env" else (NAME, NAME_RULE)
    if isinstance(name, str) and pattern.match(name):
        return None
    what = "environment variable name" if kind == "env" else f"{kind} name"
    return f"{what} {name!r}: expected {rule}"


def checked_env(env: Mapping[str, str] | None) -> dict[str, str]:
    """``env`` as a dict; ``ValueError`` naming every invalid variable name."""
    found = dict(env or {})
    bad = sorted(name for name in found if not ENV_NAME.match(name))
    if bad:
        raise ValueError(
            f"invalid environment variable name(s) {', '.join(map(repr, bad))}: "
            f"expected {ENV_NAME_RULE}"
        )
    return found


@dataclass(frozen=True)
class CommandResult:
    """What one command did; ``command`` is the display text, never secrets."""

    command: str
    exit_code: int
    stdout: str
    stderr: str
    duration_s: float

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


def temp_sibling(path: str) -> str:
    """A fresh hidden name in ``path``'s directory, so a rename onto it is atomic."""
    directory, base = posixpath.split(path)
    return posixpath.join(directory, f".{base}.tmp-{secrets.token_hex(6)}")


class Connector(ABC):
    """Run commands and move files on one target host."""

    name: str

    def where(self) -> str:
        """Where the host is, for messages (``local`` or ``address:port``)."""
        return "local"

    host_python: str | None = None
    """The interpreter :meth:`run_python` runs on the target; None:
    ``/usr/bin/python3`` where it exists, else ``python3`` on PATH."""

    def checked(self, result: CommandResult, check: bool) -> CommandResult:
        """``result``; with ``check``, :class:`CommandFailed` for a non-zero status."""
        if check and not result.ok:
            raise CommandFailed(
                self.name,
                where=self.where(),
                command=result.command,
                returncode=result.exit_code,
                stderr=result.stderr,
            )
        return result

    @abstractmethod
    def connect(self) -> None:
        """Open the connection if not yet open (idempotent); raise typed errors."""

    def command_status(self, timeout: float = DEFAULT_TIMEOUT) -> int:
        """The exit status of a command that does nothing (0: commands run
        here), what a pre-flight asks of a host. A connector that has seen a
        command run on the host already may answer without running another."""
        return self.run("true", timeout=timeout).exit_code

    @abstractmethod
    def run(
        self,
        command: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        stdin: bytes | None = None,
        env: Mapping[str, str] | None = None,
        check: bool = False,
        display: str | None = None,
    ) -> CommandResult:
        """Run ``command`` with ``sh -c`` on the target.

        ``display`` replaces the command text in the result and errors (masking
        secrets). Past ``timeout`` the command is killed and
        :class:`~adapters.errors.ConnectorTimeout` raised; with ``check`` a
        non-zero exit raises :class:`~adapters.errors.CommandFailed`.
        """

    def run_streaming(
        self,
        command: str,
        chunks: Iterable[bytes],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        env: Mapping[str, str] | None = None,
        display: str | None = None,
    ) -> CommandResult:
        """Run ``command`` like :meth:`run`, its stdin fed from ``chunks`` as
        they come, then closed: a stream of any length, never held whole.

        Each chunk must be taken, and the command must exit after the last,
        within ``timeout`` (SSH also bounds each send by the connector's I/O
        timeout, as for file transfers); past it the command is killed and
        :class:`~adapters.errors.ConnectorTimeout` raised. A command that exits
        before reading everything ends the stream early; its result is
        returned. An error raised by ``chunks`` kills the command and
        propagates. This default joins the chunks and calls :meth:`run`.
        """
        return self.run(command, timeout=timeout, stdin=b"".join(chunks), env=env, display=display)

    def run_python(
        self,
        source: str,
        args: Sequence[str] = (),
        *,
        timeout: float = DEFAULT_TIMEOUT,
        stdin: bytes | None = None,
        display: str,
        quick: bool = False,
    ) -> CommandResult:
        """Run one of Chassis' own host programs (standard library only) as
        ``python3 -I -c SOURCE ARGS...`` on the target, like :meth:`run`
        otherwise; a host without ``python3`` gives exit status 127.

        ``quick``: the program only reads (``/proc``, files), takes no input
        and ends in milliseconds, so a connector may run it without a process
        of its own (the local one runs it inside its fork server). This
        default ignores it.

        ``/usr/bin/python3`` is preferred over a ``python3`` found on PATH: a
        shim there (pyenv) costs more than most of these programs. The SSH
        connector runs the program in a spare interpreter of its command
        runner instead (:mod:`adapters.connectors.session_agent`).
        """
        if self.host_python is not None:
            command = shlex.join([self.host_python, "-I", "-c", source, *args])
        else:
            command = 'py=/usr/bin/python3; [ -x "$py" ] || py=python3; exec "$py" ' + shlex.join(
                ["-I", "-c", source, *args]
            )
        return self.run(command, timeout=timeout, stdin=stdin, display=display)

    @abstractmethod
    def put(self, local: Path, remote: str, *, mode: int | None = None) -> None:
        """Copy a local file to ``remote`` atomically (temp name + rename).

        ``mode`` None keeps an existing file's mode, else 0644.
        """

    @abstractmethod
    def put_bytes(self, data: bytes, remote: str, *, mode: int | None = None) -> None:
        """Write ``data`` to ``remote`` atomically, like :meth:`put`."""

    @abstractmethod
    def get(self, remote: str, local: Path) -> None:
        """Copy ``remote`` to the local file ``local`` (replaced atomically)."""

    @abstractmethod
    def read_bytes(self, remote: str) -> bytes:
        """Contents of ``remote``; :class:`~adapters.errors.RemoteFileMissing` if absent."""

    @abstractmethod
    def exists(self, remote: str) -> bool:
        """Whether ``remote`` exists (symlinks followed)."""

    @abstractmethod
    def sha256(self, remote: str) -> str | None:
        """Hex SHA-256 of ``remote``, computed on the target; None if absent."""

    @abstractmethod
    def symlink_swap(self, target: str, link: str) -> None:
        """Point ``link`` at ``target`` atomically (new link + rename over the old)."""

    @abstractmethod
    def close(self) -> None:
        """Release the connection; the connector may connect again later."""

    def __enter__(self) -> Self:
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
