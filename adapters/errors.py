"""Typed connector errors.

Each carries ``exit_code`` (11, connector failure) so the CLI boundary maps
them without string matching, and most also inherit the builtin that callers
would naturally catch (``ConnectionError``, ``TimeoutError`` ...). Every
message is one line: ``host NAME (where): cause``. Messages never contain key
material or passwords; commands appear only as the caller's display text.
"""

from __future__ import annotations

from pathlib import Path


def one_line(text: str, limit: int = 300) -> str:
    """Collapse ``text`` to a single line of at most ``limit`` characters."""
    flat = " | ".join(part.strip() for part in text.strip().splitlines() if part.strip())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


class ConnectorError(Exception):
    """Root of every error raised by a connector: the target host could not do it."""

    exit_code = 11

    def __init__(self, host: str, cause: str, *, where: str | None = None) -> None:
        self.host = host
        self.where = where
        self.cause = one_line(cause, limit=1000)
        label = f"{host} ({where})" if where else host
        super().__init__(f"host {label}: {self.cause}")

    def diagnostics(self) -> str:
        """One line for an operator: what failed and where."""
        return str(self)


class HostUnreachable(ConnectorError, ConnectionError):
    """No SSH session could be set up (refused, no route, silent port, DNS)."""


class AuthenticationFailed(ConnectorError, PermissionError):
    """The server rejected our key (or we had no usable key)."""


class HostKeyMismatch(ConnectorError):
    """The server offered a key other than the one pinned in known_hosts.

    Either the host was reinstalled or someone is in the middle: never continue.
    """

    def __init__(
        self,
        host: str,
        *,
        where: str | None,
        fingerprint: str,
        known_hosts: Path,
        expected: str | None = None,
    ) -> None:
        self.fingerprint = fingerprint
        self.expected = expected
        self.known_hosts = known_hosts
        pinned = f" (known_hosts has {expected})" if expected else ""
        super().__init__(
            host,
            f"host key changed: server offered {fingerprint}{pinned}, "
            f"not the key pinned in {known_hosts}; refusing to connect (possible MITM)",
            where=where,
        )


class UnknownHostKey(ConnectorError):
    """The host is not in known_hosts and the policy is to reject unknown keys."""

    def __init__(
        self,
        host: str,
        *,
        where: str | None,
        fingerprint: str,
        known_hosts: Path,
        key_type: str,
    ) -> None:
        self.fingerprint = fingerprint
        self.known_hosts = known_hosts
        self.key_type = key_type
        super().__init__(
            host,
            f"unknown host key {key_type} {fingerprint} (not in {known_hosts}); "
            f"check it and accept it with `chassis host trust-key {host}`",
            where=where,
        )


class ConnectorTimeout(ConnectorError, TimeoutError):
    """A command or transfer did not finish within its timeout."""

    def __init__(
        self, host: str, cause: str, *, where: str | None = None, timeout: float | None = None
    ) -> None:
        self.timeout = timeout
        super().__init__(host, cause, where=where)


class CommandFailed(ConnectorError):
    """``run(check=True)`` saw a non-zero exit status.

    ``returncode`` is the command's status; ``exit_code`` stays the CLI's code.
    """

    def __init__(
        self,
        host: str,
        *,
        where: str | None,
        command: str,
        returncode: int,
        stderr: str,
        tail_lines: int = 5,
    ) -> None:
        self.command = command
        self.returncode = returncode
        self.stderr_tail = "\n".join(stderr.strip().splitlines()[-tail_lines:])
        detail = f": {one_line(self.stderr_tail)}" if self.stderr_tail else ""
        super().__init__(
            host,
            f"command exited {returncode}: {one_line(command, limit=200)}{detail}",
            where=where,
        )


class RemoteFileMissing(ConnectorError, FileNotFoundError):
    """A path on the target (or its parent directory) does not exist."""

    def __init__(self, host: str, path: str, *, where: str | None = None) -> None:
        self.path = path
        super().__init__(host, f"no such file: {path}", where=where)
