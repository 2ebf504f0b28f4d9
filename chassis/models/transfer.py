"""The host side of ``model materialize``: receive files, take the
inventory of a model, place a complete model (``guides/model_assets.md``).

On a host, under ``MODELS`` (``<root>/models``)::

    sha256/<manifest digest>/<files…>    complete, immutable (files 0444)
    .partial/<manifest digest>/<files…>  in progress: received files, and
                                         ``<file>.part`` while one arrives
    by-name/<name> -> ../sha256/<digest> replaced atomically

This file runs two ways, unchanged, like ``adapters/archive.py``:

* imported: :func:`receive_command`, :func:`inventory_command` and
  :func:`place_command` build ``(command, stdin prefix)``; :func:`host_report`
  reads the JSON line the host printed;
* shipped to the host's ``python3 -I``, where :func:`main` runs one operation
  and prints one JSON line.

Its stdin carries this file's source first (exactly ``len(source)`` bytes,
read by a one-line bootstrap given with ``-c``), then the operation's input:
for ``receive`` a header (``LENGTH`` newline, then JSON ``[[path, size,
sha256, offset], …]``) followed by each file's bytes from its offset, in
order, streamed and never held whole; for ``inventory`` and ``place`` the
manifest as JSON. So it needs only the standard library and Python 3.8, and
imports nothing of ours. One ``receive`` takes any number of files: a model
of many small files costs one process on the host, not one per file.

``receive`` appends to ``<file>.part`` from the offset the sender resumes at
(the inventory said how long the partial was), and the SHA-256 of the whole
file (the kept prefix, then every byte written) is computed here, on the
target, as it is written: a thread hashes the file from the disk behind the
writer, so the stream never waits on the prefix being hashed. At the file's
last byte: SHA-256 matches → fsync, ``.part`` renamed to the file's name
(mode 0444); it does not → the partial is deleted (a corrupt prefix must
never be resumed). Input that ends early (the connection dropped) leaves
the partial, fsynced, for the next run to resume; the files before it are
complete.

Every path below ``MODELS`` is walked through directory file descriptors
with ``O_NOFOLLOW``: nothing is read or written through a symlink planted
in the tree (DESIGN.md §1, principle 10).
"""

from __future__ import annotations

# Imports are few and light: the host pays for them on every file.
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import stat
import sys
import threading
import time
from typing import Any

__all__ = [
    "MISMATCH_EXIT",
    "host_report",
    "inventory_command",
    "main",
    "path_problem",
    "place_command",
    "receive_command",
    "source",
]

MISMATCH_EXIT = 4
"""``receive``'s exit status when a file's bytes did not match (its partial is gone)."""
PARTIAL_SUFFIX = ".part"
FILE_MODE = 0o444
DIR_MODE = 0o755
LOCK_WAIT_S = 30.0
"""How long ``receive`` waits for another receiver of the same file (a cut
session whose receiver is still draining its input) before giving up."""

_CHUNK = 1 << 20
_HEX64 = re.compile(r"[0-9a-f]{64}\Z")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")
_MAX_PATH_BYTES = 4095
_MAX_COMPONENT_BYTES = 255
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | _O_CLOEXEC
_O_READ = os.O_RDONLY | os.O_NOFOLLOW | _O_CLOEXEC
_BOOT_NAME = "__chassis_model_transfer__"


def source() -> str:
    """This file's text: what is shipped to the host's ``python3``."""
    with open(__file__, encoding="utf-8") as f:  # noqa: PTH123
        return f.read()


# ----------------------------------------------------------------- paths


def path_problem(path: object) -> str | None:
    """Why ``path`` is not a manifest path (relative, ``/``-separated, no
    empty, ``.`` or ``..`` component, no control character), or None."""
    if not isinstance(path, str) or not path:
        return "empty path"
    if path.startswith("/"):
        return f"absolute path {path!r}"
    if any(ord(c) < 32 or ord(c) == 127 for c in path):
        return f"control character in path {path!r}"
    if "\\" in path:
        return f"backslash in path {path!r}"
    if len(path.encode("utf-8", "surrogatepass")) > _MAX_PATH_BYTES:
        return f"path longer than {_MAX_PATH_BYTES} bytes: {path[:60]!r}…"
    for part in path.split("/"):
        if part in ("", ".", ".."):
            return f"path {path!r} has an empty, '.' or '..' component"
        if len(part.encode("utf-8", "surrogatepass")) > _MAX_COMPONENT_BYTES - len(PARTIAL_SUFFIX):
            return f"path {path!r} has a component longer than 250 bytes"
        if part.endswith(PARTIAL_SUFFIX):
            return f"path {path!r} ends a component in {PARTIAL_SUFFIX!r} (kept for partials)"
    return None


def _parts(path: str) -> list[str]:
    problem = path_problem(path)
    if problem is not None:
        raise ValueError(problem)
    return path.split("/")


def _open_dir(base_fd: int, parts: list[str], create: bool) -> int:
    """A new fd of ``base_fd/parts…``, every component opened with
    ``O_NOFOLLOW`` (created 0755 when ``create``); ``FileNotFoundError`` when
    absent and not ``create``; an ``OSError`` (ELOOP/ENOTDIR) for a symlink."""
    fd = os.dup(base_fd)
    try:
        for part in parts:
            try:
                child = os.open(part, _O_DIR, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, DIR_MODE, dir_fd=fd)
                child = os.open(part, _O_DIR, dir_fd=fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_models(models: str, create: bool) -> int:
    """The fd of ``MODELS`` (the operator's configured root: followed)."""
    if create:
        os.makedirs(models, mode=DIR_MODE, exist_ok=True)  # noqa: PTH103
    return os.open(models, os.O_RDONLY | os.O_DIRECTORY | _O_CLOEXEC)


def _lstat_at(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _hash_at(dir_fd: int, name: str) -> str:
    fd = os.open(name, _O_READ, dir_fd=dir_fd)
    try:
        digest = hashlib.sha256()
        while True:
            chunk = os.read(fd, _CHUNK)
            if not chunk:
                return digest.hexdigest()
            digest.update(chunk)
    finally:
        os.close(fd)


def _remove_tree_at(dir_fd: int, name: str) -> None:
    """Remove ``name`` (a tree, file or link) under ``dir_fd``, never following a link."""
    st = _lstat_at(dir_fd, name)
    if st is None:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=dir_fd)
        return
    fd = os.open(name, _O_DIR, dir_fd=dir_fd)
    try:
        for child in os.listdir(fd):  # noqa: PTH208
            _remove_tree_at(fd, child)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=dir_fd)


def _fsync_dir(fd: int) -> None:
    try:
        os.fsync(fd)
    except OSError as e:  # some file systems refuse fsync on a directory
        if e.errno not in (errno.EINVAL, errno.EBADF):
            raise


def _free_bytes(path: str) -> int:
    """What an unprivileged user may still write on the file system holding
    ``path`` (or its nearest existing parent)."""
    probe = os.path.abspath(path)  # noqa: PTH100
    while True:
        try:
            info = os.statvfs(probe)
        except FileNotFoundError:
            parent = os.path.dirname(probe)  # noqa: PTH120
            if parent == probe:
                raise
            probe = parent
            continue
        return int(info.f_bavail * info.f_frsize)


# --------------------------------------------------------------- receive


class _Hasher(threading.Thread):
    """SHA-256 of the file behind ``fd``, read back from the disk as the
    writer reports bytes written: the kept prefix first, then the new bytes."""

    def __init__(self, fd: int) -> None:
        super().__init__(name="sha256", daemon=True)
        self.fd = fd
        self.digest = hashlib.sha256()
        self.error: BaseException | None = None
        self._written = 0
        self._done = False
        self._cond = threading.Condition()

    def wrote(self, upto: int, done: bool = False) -> None:
        with self._cond:
            self._written = upto
            self._done = self._done or done
            self._cond.notify()

    def run(self) -> None:
        position = 0
        try:
            while True:
                with self._cond:
                    while position >= self._written and not self._done:
                        self._cond.wait()
                    limit = self._written
                    if position >= limit and self._done:
                        return
                while position < limit:
                    chunk = os.pread(self.fd, min(_CHUNK, limit - position), position)
                    if not chunk:
                        raise OSError(errno.EIO, "file shrank while it was hashed")
                    self.digest.update(chunk)
                    position += len(chunk)
        except BaseException as e:  # reported by the writer
            self.error = e


def _lock(fd: int) -> None:
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise OSError(
                    errno.EBUSY,
                    f"another transfer of this file is still running after {LOCK_WAIT_S:g}s",
                ) from None
            time.sleep(0.05)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class _Input:
    """The files' bytes on stdin, after the header: read in exact amounts."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.consumed = 0
        self.ended = False

    def read(self, most: int) -> bytes:
        """Up to ``most`` bytes; ``b""`` once the input ended."""
        if self.ended or most <= 0:
            return b""
        chunk: bytes = self.stream.read1(min(most, _CHUNK))
        if not chunk:
            self.ended = True
        self.consumed += len(chunk)
        return chunk

    def skip(self, count: int) -> None:
        while count > 0:
            chunk = self.read(count)
            if not chunk:
                return
            count -= len(chunk)


class _Place:
    """What ``receive`` is asked to place once every file arrived whole."""

    def __init__(self, name: str, files: list[tuple[str, int, str]]) -> None:
        self.name = name
        self.files = files


def _header(stream: Any) -> tuple[list[tuple[str, int, str, int]], _Place | None]:
    """``LENGTH\\n`` then that many bytes of JSON: ``{"files": [[path, size,
    sha256, offset], …], "place": null | {"name": NAME, "manifest": [[path,
    size, sha256], …]}}``."""
    line = stream.readline(32)
    if not line.endswith(b"\n") or not line[:-1].isdigit():
        raise ValueError("the stream does not start with a header")
    header = json.loads(stream.read(int(line[:-1])).decode("utf-8"))
    if not isinstance(header, dict) or not isinstance(header.get("files"), list):
        raise ValueError("the header is not a JSON object with files")
    files = []
    for row in header["files"]:
        if (
            not isinstance(row, list)
            or len(row) != 4
            or not isinstance(row[3], int)
            or not 0 <= row[3] <= (row[1] if isinstance(row[1], int) else -1)
        ):
            raise ValueError(f"header row {row!r} is not [path, size, sha256, offset]")
        path, size, sha256 = _manifest_rows([row[:3]])[0]
        files.append((path, size, sha256, row[3]))
    wanted = header.get("place")
    if wanted is None:
        return files, None
    if not isinstance(wanted, dict) or not isinstance(wanted.get("name"), str):
        raise ValueError("the header's place is not {name, manifest}")
    return files, _Place(wanted["name"], _manifest_rows(wanted.get("manifest")))


def receive(models: str, digest: str, stream: Any) -> dict[str, Any]:
    """Receive the files the header on ``stream`` (a binary reader with
    ``read1``) names, one after the other, into ``MODELS/.partial/DIGEST``;
    see the module docstring. One report per file: ``ok``; or ``mismatch``
    (deleted), ``short`` (the input ended: kept), ``stale`` (the partial is
    shorter than the offset sent from; its bytes were skipped) or another
    ``problem`` (its bytes skipped, the next file received). With ``place``
    in the header and every file whole, the model is placed too (:func:`place`,
    its report under ``place``): one process on the host for the whole job."""
    if not _HEX64.match(digest):
        raise ValueError("digest must be 64 lowercase hex digits")
    files, wanted = _header(stream)
    models_fd = _open_models(models, create=True)
    try:
        base_fd = _open_dir(models_fd, [".partial", digest], create=True)
    finally:
        os.close(models_fd)
    data = _Input(stream)
    reports: list[dict[str, Any]] = []
    try:
        for path, size, sha256, offset in files:
            if data.ended:
                reports.append(
                    {
                        "ok": False,
                        "path": path,
                        "short": True,
                        "received": 0,
                        "problem": "not started: the stream ended before it",
                    }
                )
                continue
            start = data.consumed
            try:
                report = _receive_one(base_fd, path, size, sha256, offset, data)
            except OSError as e:
                data.skip(start + size - offset - data.consumed)
                problem = e.strerror or str(e)
                if e.filename:
                    problem = f"{e.filename}: {problem}"
                report = {"ok": False, "path": path, "problem": f"{path}: {problem}"}
            reports.append(report)
    finally:
        os.close(base_fd)
    placed: dict[str, Any] | None = None
    if wanted is not None and all(r["ok"] for r in reports):
        try:
            placed = place(models, digest, wanted.name, wanted.files)
        except (OSError, ValueError) as e:
            placed = {"ok": False, "problem": _problem(e)}
    return {"ok": True, "files": reports, "place": placed}


def _receive_one(
    base_fd: int, path: str, size: int, sha256: str, offset: int, data: _Input
) -> dict[str, Any]:
    parts = path.split("/")
    dir_fd = _open_dir(base_fd, parts[:-1], create=True)
    name = parts[-1]
    part = name + PARTIAL_SUFFIX
    try:
        fd = os.open(
            part, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | _O_CLOEXEC, 0o644, dir_fd=dir_fd
        )
        try:
            _lock(fd)
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise OSError(errno.EINVAL, f"{part} is not a regular file")
            if info.st_size < offset:
                data.skip(size - offset)
                return {
                    "ok": False,
                    "stale": True,
                    "path": path,
                    "received": 0,
                    "problem": f"the partial holds {info.st_size} bytes, fewer than the "
                    f"offset {offset} (changed since the inventory)",
                }
            if info.st_size != offset:
                os.ftruncate(fd, offset)
            return _receive_into(fd, dir_fd, name, part, path, size, sha256, offset, data)
        finally:
            os.close(fd)
    finally:
        os.close(dir_fd)


def _receive_into(
    fd: int,
    dir_fd: int,
    name: str,
    part: str,
    path: str,
    size: int,
    sha256: str,
    offset: int,
    data: _Input,
) -> dict[str, Any]:
    hasher = _Hasher(fd)
    hasher.start()
    written = offset
    try:
        os.lseek(fd, offset, os.SEEK_SET)
        hasher.wrote(offset)
        while written < size:
            chunk = data.read(size - written)
            if not chunk:
                break
            _write_all(fd, chunk)
            written += len(chunk)
            hasher.wrote(written)
    finally:
        hasher.wrote(written, done=True)
        hasher.join()
    if hasher.error is not None:
        raise hasher.error
    received = written - offset
    if written < size:
        # The input ended short: the sender stopped or the connection dropped.
        # What arrived is kept (fsynced) for the next run to resume from.
        os.fsync(fd)
        return {
            "ok": False,
            "short": True,
            "path": path,
            "received": received,
            "kept": written,
            "problem": f"the stream ended after {written} of {size} bytes; the partial is kept",
        }
    actual = hasher.digest.hexdigest()
    if actual != sha256:
        os.unlink(part, dir_fd=dir_fd)
        return {
            "ok": False,
            "mismatch": True,
            "path": path,
            "received": received,
            "sha256": actual,
            "problem": f"sha256 mismatch on the host: expected {sha256}, got {actual}; "
            "the partial was deleted",
        }
    os.fchmod(fd, FILE_MODE)
    os.fsync(fd)
    os.rename(part, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    _fsync_dir(dir_fd)
    return {
        "ok": True,
        "path": path,
        "size": size,
        "sha256": actual,
        "received": received,
        "resumed_from": offset,
    }


# ------------------------------------------------------------- inventory


class _Dirs:
    """Directory fds under one base, opened once each (never following a link)."""

    def __init__(self, base_fd: int | None) -> None:
        self.base_fd = base_fd
        self.fds: dict[str, int | None] = {}

    def get(self, parent: list[str]) -> int | None:
        if self.base_fd is None:
            return None
        key = "/".join(parent)
        if key not in self.fds:
            try:
                self.fds[key] = _open_dir(self.base_fd, parent, create=False)
            except OSError:  # absent, or a symlink/file where a directory should be
                self.fds[key] = None
        return self.fds[key]

    def close(self) -> None:
        for fd in self.fds.values():
            if fd is not None:
                os.close(fd)
        if self.base_fd is not None:
            os.close(self.base_fd)


def _subdir(models_fd: int | None, parts: list[str]) -> int | None:
    if models_fd is None:
        return None
    try:
        return _open_dir(models_fd, parts, create=False)
    except OSError:
        return None


def _manifest(data: bytes) -> list[tuple[str, int, str]]:
    return _manifest_rows(json.loads(data.decode("utf-8")))


def _manifest_rows(rows: object) -> list[tuple[str, int, str]]:
    if not isinstance(rows, list):
        raise ValueError("the manifest is not a JSON list")
    files = []
    for row in rows:
        if (
            not isinstance(row, list)
            or len(row) != 3
            or not isinstance(row[0], str)
            or not isinstance(row[1], int)
            or row[1] < 0
            or not isinstance(row[2], str)
            or not _HEX64.match(row[2])
        ):
            raise ValueError(f"manifest row {row!r} is not [path, size, sha256]")
        _parts(row[0])
        files.append((row[0], row[1], row[2]))
    return files


def _check_file(dirs: _Dirs, parts: list[str], size: int, sha256: str, verify: bool) -> str:
    """``ok``, ``missing``, ``wrong-size``, ``wrong-sha256`` or ``not-a-file``."""
    fd = dirs.get(parts[:-1])
    if fd is None:
        return "missing"
    st = _lstat_at(fd, parts[-1])
    if st is None:
        return "missing"
    if not stat.S_ISREG(st.st_mode):
        return "not-a-file"
    if st.st_size != size:
        return "wrong-size"
    if verify and _hash_at(fd, parts[-1]) != sha256:
        return "wrong-sha256"
    return "ok"


def inventory(models: str, digest: str, verify: bool, manifest: bytes) -> dict[str, Any]:
    """For each manifest file: where it is complete (``sha256`` or
    ``partial``, with the right size, and with ``verify`` the right SHA-256),
    what was wrong with a copy that is not, and the size of its ``.part``."""
    if not _HEX64.match(digest):
        raise ValueError("digest must be 64 lowercase hex digits")
    files = _manifest(manifest)
    try:
        models_fd: int | None = _open_models(models, create=False)
    except FileNotFoundError:
        models_fd = None
    complete = _Dirs(_subdir(models_fd, ["sha256", digest]))
    partial = _Dirs(_subdir(models_fd, [".partial", digest]))
    report: list[dict[str, Any]] = []
    try:
        for path, size, sha256 in files:
            parts = path.split("/")
            entry: dict[str, Any] = {"path": path, "at": None, "problem": None, "part": 0}
            for where, dirs in (("sha256", complete), ("partial", partial)):
                state = _check_file(dirs, parts, size, sha256, verify)
                if state == "ok":
                    entry["at"] = where
                    break
                if state != "missing" and entry["problem"] is None:
                    entry["problem"] = f"{state} in {where}"
            if entry["at"] is None:
                fd = partial.get(parts[:-1])
                st = None if fd is None else _lstat_at(fd, parts[-1] + PARTIAL_SUFFIX)
                if st is not None and stat.S_ISREG(st.st_mode) and st.st_size <= size:
                    entry["part"] = int(st.st_size)
            report.append(entry)
    finally:
        complete.close()
        partial.close()
        if models_fd is not None:
            os.close(models_fd)
    return {
        "ok": True,
        "complete_dir": complete.base_fd is not None,
        "partial_dir": partial.base_fd is not None,
        "free_bytes": _free_bytes(models),
        "files": report,
    }


# ----------------------------------------------------------------- place


def place(models: str, digest: str, name: str, files: list[tuple[str, int, str]]) -> dict[str, Any]:
    """Make ``sha256/DIGEST`` complete and point ``by-name/NAME`` at it.

    No complete directory yet: the partial one is renamed to it (one atomic
    rename) once it holds every file. One already there (a repair, or a
    concurrent run that finished first): files received into the partial
    directory replace their namesakes in it, one rename each, and the partial
    directory goes. Then every file is checked for presence and size, and the
    ``by-name`` link is replaced by a rename.
    """
    if not _HEX64.match(digest):
        raise ValueError("digest must be 64 lowercase hex digits")
    if not _NAME.match(name):
        raise ValueError(f"model name {name!r} is not a name (letters, digits, '.', '_', '-')")
    models_fd = _open_models(models, create=True)
    try:
        sha_fd = _open_dir(models_fd, ["sha256"], create=True)
        partials_fd = _open_dir(models_fd, [".partial"], create=True)
        try:
            how = _settle(sha_fd, partials_fd, digest, files)
            complete = _Dirs(_subdir(sha_fd, [digest]))
            try:
                for path, size, sha in files:
                    state = _check_file(complete, path.split("/"), size, sha, False)
                    if state != "ok":
                        return {
                            "ok": False,
                            "path": path,
                            "problem": f"{path}: {state} in sha256/{digest[:16]}… after placement",
                        }
            finally:
                complete.close()
        finally:
            os.close(sha_fd)
            os.close(partials_fd)
        by_name = _open_dir(models_fd, ["by-name"], create=True)
        try:
            tmp = f".{name}.tmp-{os.urandom(6).hex()}"
            os.symlink(f"../sha256/{digest}", tmp, dir_fd=by_name)
            try:
                os.rename(tmp, name, src_dir_fd=by_name, dst_dir_fd=by_name)
            except BaseException:
                os.unlink(tmp, dir_fd=by_name)
                raise
            _fsync_dir(by_name)
        finally:
            os.close(by_name)
    finally:
        os.close(models_fd)
    return {"ok": True, "placed": how, "link": f"by-name/{name}", "dir": f"sha256/{digest}"}


def _settle(sha_fd: int, partials_fd: int, digest: str, files: list[tuple[str, int, str]]) -> str:
    """Move the partial directory (or the files in it) into ``sha256/DIGEST``."""
    if _lstat_at(partials_fd, digest) is None:
        return "present"
    if _lstat_at(sha_fd, digest) is None:
        partial = _Dirs(_subdir(partials_fd, [digest]))
        try:
            for path, size, sha in files:
                parts = path.split("/")
                state = _check_file(partial, parts, size, sha, False)
                if state != "ok":
                    raise ValueError(f"{path}: {state} in the partial directory")
                fd = partial.get(parts[:-1])
                if fd is not None and _lstat_at(fd, parts[-1] + PARTIAL_SUFFIX) is not None:
                    os.unlink(parts[-1] + PARTIAL_SUFFIX, dir_fd=fd)
            for fd in [partial.base_fd, *partial.fds.values()]:
                if fd is not None:
                    _fsync_dir(fd)
        finally:
            partial.close()
        try:
            os.rename(digest, digest, src_dir_fd=partials_fd, dst_dir_fd=sha_fd)
        except OSError as e:
            if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            # Another run placed it first: fall through to the merge.
        else:
            _fsync_dir(sha_fd)
            _fsync_dir(partials_fd)
            return "renamed"
    partial_fd = _open_dir(partials_fd, [digest], create=False)
    complete_fd = _open_dir(sha_fd, [digest], create=False)
    try:
        for path, size, _sha in files:
            parts = path.split("/")
            try:
                src = _open_dir(partial_fd, parts[:-1], create=False)
            except OSError:
                continue
            try:
                st = _lstat_at(src, parts[-1])
                if st is None or not stat.S_ISREG(st.st_mode) or st.st_size != size:
                    continue
                dst = _open_dir(complete_fd, parts[:-1], create=True)
                try:
                    os.rename(parts[-1], parts[-1], src_dir_fd=src, dst_dir_fd=dst)
                    _fsync_dir(dst)
                finally:
                    os.close(dst)
            finally:
                os.close(src)
    finally:
        os.close(partial_fd)
        os.close(complete_fd)
    _remove_tree_at(partials_fd, digest)
    _fsync_dir(partials_fd)
    return "merged"


# ------------------------------------------------------ the controller side


def _command(op: str, args: list[str], payload: bytes, python: str) -> tuple[str, bytes]:
    import shlex

    code = source().encode("utf-8")
    boot = (
        f"import sys;exec(compile(sys.stdin.buffer.read({len(code)}),'chassis-model-transfer',"
        f"'exec'),{{'__name__':'{_BOOT_NAME}'}})"
    )
    # -I: no PYTHON* variables, user site or current directory on the path.
    return shlex.join([python, "-I", "-c", boot, op, *args]), code + payload


def _manifest_bytes(files: list[tuple[str, int, str]]) -> bytes:
    return json.dumps([list(f) for f in files], separators=(",", ":")).encode("utf-8")


def receive_command(
    models: str,
    digest: str,
    files: list[tuple[str, int, str, int]],
    *,
    place: tuple[str, list[tuple[str, int, str]]] | None = None,
    python: str = "python3",
) -> tuple[str, bytes]:
    """``(command, stdin prefix)`` receiving ``files`` (path, size, sha256,
    offset): send the prefix, then each file's bytes from its offset, in
    order. ``place`` (name, manifest): place the model too if all arrive whole."""
    wanted = None if place is None else {"name": place[0], "manifest": [list(f) for f in place[1]]}
    header = json.dumps(
        {"files": [list(f) for f in files], "place": wanted}, separators=(",", ":")
    ).encode("utf-8")
    payload = b"%d\n" % len(header) + header
    return _command("receive", [models, digest], payload, python)


def inventory_command(
    models: str,
    digest: str,
    files: list[tuple[str, int, str]],
    *,
    verify: bool,
    python: str = "python3",
) -> tuple[str, bytes]:
    """``(command, stdin)`` taking the inventory of ``files`` (path, size, sha256)."""
    args = [models, digest, "1" if verify else "0"]
    return _command("inventory", args, _manifest_bytes(files), python)


def place_command(
    models: str,
    digest: str,
    name: str,
    files: list[tuple[str, int, str]],
    *,
    python: str = "python3",
) -> tuple[str, bytes]:
    """``(command, stdin)`` placing the model and its ``by-name`` link."""
    return _command("place", [models, digest, name], _manifest_bytes(files), python)


def host_report(stdout: str) -> dict[str, Any] | None:
    """The JSON line :func:`main` printed, or None when there is none."""
    for line in reversed(stdout.strip().splitlines()):
        try:
            report = json.loads(line)
        except ValueError:
            continue
        if isinstance(report, dict) and isinstance(report.get("ok"), bool):
            return report
    return None


# ------------------------------------------------------------- the host side

_USAGE = "usage: receive MODELS DIGEST | inventory MODELS DIGEST 0|1 | place MODELS DIGEST NAME"


def _problem(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return f"{e.filename}: {e.strerror}" if e.filename else e.strerror
    return str(e)


def main(argv: list[str] | None = None) -> int:
    """Run one operation; print one JSON line; 0, :data:`MISMATCH_EXIT`, or 1."""
    import signal

    # A dropped SSH session must not stop the receiver before the partial is
    # written and fsynced; a closed stdout is a BrokenPipeError, caught below.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    args = sys.argv[1:] if argv is None else argv
    stdin = sys.stdin.buffer
    try:
        if len(args) == 3 and args[0] == "receive":
            report = receive(args[1], args[2], stdin)
        elif len(args) == 4 and args[0] == "inventory" and args[3] in ("0", "1"):
            report = inventory(args[1], args[2], args[3] == "1", stdin.read())
        elif len(args) == 4 and args[0] == "place":
            report = place(args[1], args[2], args[3], _manifest(stdin.read()))
        else:
            raise ValueError(_USAGE)
    except (OSError, ValueError) as e:
        report = {"ok": False, "mismatch": False, "problem": _problem(e)}
    files = report.get("files") if report["ok"] and args[0] == "receive" else None
    if files is not None and not all(f["ok"] for f in files):
        code = MISMATCH_EXIT if any(f.get("mismatch") for f in files) else 1
    else:
        code = 0 if report["ok"] else 1
    try:
        sys.stdout.write(json.dumps(report, sort_keys=True) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        pass
    return code


if __name__ in ("__main__", _BOOT_NAME):
    sys.exit(main())
