"""Local connector: the controller itself is the host (subprocess + filesystem).

Semantics match the SSH connector so host operations are written once:
``sh -c`` commands, the whole process group killed on timeout, atomic writes
by temp name + rename in the same directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO

from adapters.connectors.base import (
    DEFAULT_TIMEOUT,
    NEW_FILE_MODE,
    CommandResult,
    Connector,
    checked_env,
    temp_sibling,
)
from adapters.connectors.fork_server import Forked, fork_server
from adapters.errors import ConnectorError, ConnectorTimeout, RemoteFileMissing

_REAP_TIMEOUT = 5.0
_CHUNK = 1 << 20

def _python() -> str | None:
    """The interpreter :meth:`Connector.run_python` would start here."""
    if os.access("/usr/bin/python3", os.X_OK):
        return "/usr/bin/python3"
    return shutil.which("python3")


class LocalConnector(Connector):
    """Runs on this machine; ``name`` is the host's name in messages."""

    def __init__(self, name: str) -> None:
        self.name = name

    def connect(self) -> None:
        """Nothing to open locally."""

    def close(self) -> None:
        """Nothing to release locally."""

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
        shown = command if display is None else display
        extra = checked_env(env)
        full_env = {**os.environ, **extra} if extra else None
        started = time.monotonic()
        # A new session makes the shell a process-group leader, so a timeout
        # can kill everything it started, not just the shell.
        proc = subprocess.Popen(
            ["/bin/sh", "-c", command],
            stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=full_env,
            start_new_session=True,
        )
        result = self._outcome(proc, stdin, timeout, shown, started)
        return self.checked(result, check)

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
        """Forked by this process's fork server for the interpreter
        (:class:`adapters.connectors.fork_server.ForkServer`): no interpreter
        start per program, as over SSH; else as ``python3 -I -c``. A
        ``quick`` program with no input runs inside the server, unforked."""
        python = self.host_python or _python()
        server = fork_server(python) if python is not None else None
        started = time.monotonic()
        try:
            if server is None:
                raise OSError("no fork server")
            inline = quick and stdin is None
            process = server.spawn(source, ["-c", *args], {}, inline=inline)
        except OSError:
            return super().run_python(source, args, timeout=timeout, stdin=stdin, display=display)
        return self._outcome(process, stdin, timeout, display, started)

    def _outcome(
        self,
        process: subprocess.Popen[bytes] | Forked,
        stdin: bytes | None,
        timeout: float,
        shown: str,
        started: float,
    ) -> CommandResult:
        """Feed, read and reap ``process``; at the timeout, kill its group."""
        try:
            out, err = process.communicate(stdin, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            _kill_group(process)
            raise ConnectorTimeout(
                self.name,
                f"command timed out after {timeout:g}s: {shown}",
                where=self.where(),
                timeout=timeout,
            ) from e
        except BaseException:
            _kill_group(process)
            raise
        return CommandResult(
            command=shown,
            exit_code=process.returncode if process.returncode is not None else -1,
            stdout=out.decode("utf-8", "replace"),
            stderr=err.decode("utf-8", "replace"),
            duration_s=time.monotonic() - started,
        )

    def run_streaming(
        self,
        command: str,
        chunks: Iterable[bytes],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        env: Mapping[str, str] | None = None,
        display: str | None = None,
    ) -> CommandResult:
        shown = command if display is None else display
        extra = checked_env(env)
        full_env = {**os.environ, **extra} if extra else None
        started = time.monotonic()
        proc = subprocess.Popen(
            ["/bin/sh", "-c", command],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=full_env,
            start_new_session=True,
        )
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        out: list[bytes] = []
        err: list[bytes] = []
        readers = [
            threading.Thread(target=_drain, args=(proc.stdout, out), daemon=True),
            threading.Thread(target=_drain, args=(proc.stderr, err), daemon=True),
        ]
        for reader in readers:
            reader.start()
        # A write blocks while the command does not read: a watchdog kills the
        # group when one chunk (or the exit after the last) waits past `timeout`.
        # Time spent producing the chunks does not count.
        waiting: list[float | None] = [None]
        stalled = threading.Event()
        finished = threading.Event()

        def watch() -> None:
            while not finished.wait(min(timeout, 0.5)):
                since = waiting[0]
                if since is not None and time.monotonic() - since > timeout:
                    stalled.set()
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    return

        threading.Thread(target=watch, daemon=True).start()
        try:
            for chunk in chunks:
                if proc.poll() is not None:
                    break  # it exited without reading everything
                waiting[0] = time.monotonic()
                try:
                    proc.stdin.write(chunk)
                except BrokenPipeError:
                    break
                finally:
                    waiting[0] = None
            waiting[0] = time.monotonic()
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.close()
            proc.wait()
        except BaseException:
            finished.set()
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(OSError):
                proc.stdin.close()
            proc.wait(timeout=_REAP_TIMEOUT)
            raise
        finally:
            finished.set()
        for reader in readers:
            # A grandchild that left the group may hold the pipes: stop waiting.
            reader.join(timeout=_REAP_TIMEOUT)
        if stalled.is_set():
            raise ConnectorTimeout(
                self.name,
                f"command made no progress for {timeout:g}s: {shown}",
                where=self.where(),
                timeout=timeout,
            )
        return CommandResult(
            command=shown,
            exit_code=proc.returncode,
            stdout=b"".join(out).decode("utf-8", "replace"),
            stderr=b"".join(err).decode("utf-8", "replace"),
            duration_s=time.monotonic() - started,
        )

    # -- files ------------------------------------------------------------

    def _file_error(self, e: OSError, path: str, doing: str) -> ConnectorError:
        if isinstance(e, FileNotFoundError):
            return RemoteFileMissing(self.name, path, where=self.where())
        return ConnectorError(self.name, f"{doing} {path}: {e.strerror or e}", where=self.where())

    def put(self, local: Path, remote: str, *, mode: int | None = None) -> None:
        with local.open("rb") as fh:
            self._write(fh, remote, mode)

    def put_bytes(self, data: bytes, remote: str, *, mode: int | None = None) -> None:
        self._write(None, remote, mode, data=data)

    def _write(
        self, source: IO[bytes] | None, remote: str, mode: int | None, *, data: bytes = b""
    ) -> None:
        if mode is None:
            try:
                mode = stat.S_IMODE(Path(remote).stat().st_mode)
            except FileNotFoundError:
                mode = NEW_FILE_MODE
            except OSError as e:
                raise self._file_error(e, remote, "stat") from e
        tmp = Path(temp_sibling(remote))
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                os.fchmod(fd, mode)  # explicit: the umask must not change it
                if source is None:
                    fh.write(data)
                else:
                    shutil.copyfileobj(source, fh, _CHUNK)
            tmp.replace(remote)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise self._file_error(e, remote, "put") from e

    def get(self, remote: str, local: Path) -> None:
        tmp = local.with_name(f".{local.name}.tmp-{os.urandom(6).hex()}")
        try:
            src = Path(remote).open("rb")  # noqa: SIM115 - closed by the with below
        except OSError as e:
            raise self._file_error(e, remote, "get") from e
        try:
            with src, tmp.open("wb") as dst:
                shutil.copyfileobj(src, dst, _CHUNK)
            tmp.replace(local)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def read_bytes(self, remote: str) -> bytes:
        try:
            return Path(remote).read_bytes()
        except OSError as e:
            raise self._file_error(e, remote, "read") from e

    def exists(self, remote: str) -> bool:
        try:
            Path(remote).stat()
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError as e:
            raise self._file_error(e, remote, "stat") from e
        return True

    def sha256(self, remote: str) -> str | None:
        digest = hashlib.sha256()
        try:
            with Path(remote).open("rb") as fh:
                while chunk := fh.read(_CHUNK):
                    digest.update(chunk)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise self._file_error(e, remote, "sha256") from e
        return digest.hexdigest()

    def symlink_swap(self, target: str, link: str) -> None:
        tmp = Path(temp_sibling(link))
        try:
            tmp.symlink_to(target)
            tmp.replace(link)  # rename(2) replaces the old link itself, atomically
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise self._file_error(e, link, "symlink") from e


def _drain(stream: IO[bytes], into: list[bytes]) -> None:
    """Read ``stream`` to its end into ``into`` (a thread per output pipe)."""
    with stream:
        while chunk := stream.read1(_CHUNK):  # type: ignore[attr-defined]
            into.append(chunk)


def _kill_group(proc: subprocess.Popen[bytes] | Forked) -> None:
    """SIGKILL the whole process group (the shell or the forked program is
    its leader), then reap it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    try:
        proc.communicate(timeout=_REAP_TIMEOUT)
    except subprocess.TimeoutExpired:
        if isinstance(proc, Forked):
            return  # the fork server reaps it and reports its exit
        # A grandchild left the group (setsid) and holds our pipes: stop reading.
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        proc.wait(timeout=_REAP_TIMEOUT)
