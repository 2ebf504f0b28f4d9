"""Release bundles: reproducible ``.tar.gz`` archives and the safety check run
before one is uploaded.

A release is content (DESIGN.md §1, principle 4): its id derives from the
sha256 of the bundle, so :func:`build_bundle` makes the bytes depend only on
the tree's paths, contents and executable bits — never on mtimes, owners,
umask, directory order or where the tree lives. The archive is POSIX.1-2001
(pax) tar inside gzip with a zero header mtime and no file name; entries are
sorted by path, mtimes are 0, uid/gid 0 with empty owner names, and modes
are 0644/0755 (0755 where the owner could execute).

Byte-identical output also needs the same zlib; bundles built on machines with
a different zlib may differ, which is why the id is taken from the bytes that
were built, never recomputed elsewhere.

:func:`check_bundle` and the hosts read bundles with the same strict reader,
:mod:`adapters.archive`, so the bytes that were checked are the bytes that
are placed; :func:`build_bundle` checks its own output with it too.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import stat
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from adapters import archive
from chassis.errors import ChassisError

__all__ = ["BundleError", "BundleInfo", "build_bundle", "check_bundle", "sha256_file"]

_GZIP_LEVEL = 9


class BundleError(ChassisError, ValueError):
    """A bundle cannot be built or is unsafe to unpack; names the file and member."""

    exit_code = 3

    def __init__(self, path: Path | str, problem: str, member: str | None = None) -> None:
        self.path = str(path)
        self.problem = problem
        self.member = member
        super().__init__(self.diagnostics())

    def diagnostics(self) -> str:
        where = f"{self.path}: member {self.member!r}" if self.member is not None else self.path
        return f"bundle {where}: {self.problem}"


@dataclass(frozen=True)
class BundleInfo:
    """What a checked bundle holds: regular files, their total size in bytes,
    and the sorted top-level names."""

    files: int
    size: int
    top_level: list[str]


def sha256_file(path: Path | str) -> str:
    """Hex sha256 of a file, read in chunks."""
    with Path(path).open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# ------------------------------------------------------------------ building


@dataclass(frozen=True)
class _Entry:
    name: str  # POSIX path relative to the tree root
    path: Path  # on disk
    kind: str  # "dir" | "file" | "symlink"
    mode: int
    size: int = 0
    target: str = ""


def build_bundle(source_dir: Path, out: Path) -> str:
    """Write a deterministic tar.gz of ``source_dir`` to ``out``; return its sha256 hex.

    The same tree (or a copy of it anywhere, with any mtimes and owners) always
    gives the same bytes. Symlinks are kept when their relative target stays
    inside the tree. Raises :class:`BundleError` for special files (devices,
    FIFOs, sockets), absolute or escaping symlinks, ``out`` inside the tree, or
    anything else the hosts' reader would refuse (checked on the written bytes,
    before ``out`` is replaced).
    """
    source = Path(source_dir)
    if not source.is_dir():
        raise BundleError(source, "source is not a directory")
    root = source.resolve()
    target = Path(out)
    if target.resolve().is_relative_to(root):
        raise BundleError(target, f"output must be outside the source tree {root}")

    entries = sorted(_collect(source), key=lambda e: e.name)
    links = {e.name: e.target for e in entries if e.kind == "symlink"}
    for entry in entries:
        problem = archive.symlink_problem(entry.name, links) if entry.kind == "symlink" else None
        if problem:
            raise BundleError(entry.path, problem)

    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        with partial.open("wb") as raw:
            _write_archive(entries, raw)
            raw.flush()
            os.fsync(raw.fileno())
        try:
            check_bundle(partial)
        except BundleError as e:
            raise BundleError(source / e.member if e.member else source, e.problem) from None
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    return sha256_file(target)


def _collect(directory: Path, prefix: str = "") -> Iterable[_Entry]:
    with os.scandir(directory) as it:
        children = sorted(it, key=lambda d: d.name)
    for child in children:
        name = f"{prefix}{child.name}"
        path = Path(child.path)
        st = child.stat(follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            link = str(path.readlink())
            if PurePosixPath(link).is_absolute():
                raise BundleError(path, f"absolute symlink target {link!r} (use a relative link)")
            yield _Entry(name, path, "symlink", 0o777, target=link)
        elif stat.S_ISDIR(st.st_mode):
            yield _Entry(name, path, "dir", 0o755)
            yield from _collect(path, f"{name}/")
        elif stat.S_ISREG(st.st_mode):
            mode = 0o755 if st.st_mode & stat.S_IXUSR else 0o644
            yield _Entry(name, path, "file", mode, size=st.st_size)
        else:
            raise BundleError(path, f"{_special_kind(st.st_mode)} cannot go in a bundle")


def _special_kind(mode: int) -> str:
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device file"
    if stat.S_ISFIFO(mode):
        return "FIFO (special file)"
    if stat.S_ISSOCK(mode):
        return "socket (special file)"
    return "special file"


def _tarinfo(entry: _Entry) -> tarfile.TarInfo:
    info = tarfile.TarInfo(entry.name)
    info.mode = entry.mode
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if entry.kind == "dir":
        info.type = tarfile.DIRTYPE
    elif entry.kind == "symlink":
        info.type = tarfile.SYMTYPE
        info.linkname = entry.target
    else:
        info.type = tarfile.REGTYPE
        info.size = entry.size
    return info


def _write_archive(entries: list[_Entry], raw: BinaryIO) -> None:
    # filename="" keeps FNAME out of the gzip header; mtime=0 zeroes MTIME.
    with (
        gzip.GzipFile(
            filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=_GZIP_LEVEL
        ) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8") as tar,
    ):
        for entry in entries:
            info = _tarinfo(entry)
            if entry.kind != "file":
                tar.addfile(info)
                continue
            with entry.path.open("rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size != entry.size:
                    raise BundleError(entry.path, "file changed size while the bundle was built")
                tar.addfile(info, f)


# ------------------------------------------------------------------ checking


def check_bundle(path: Path | str, limits: archive.Limits | None = None) -> BundleInfo:
    """Check a bundle with the reader that will unpack it on the hosts.

    :mod:`adapters.archive` is the one reader: ``release add`` checks with it
    and the host unpacks with it, so a bundle cannot mean one thing here and
    another there. Its refusals (see ``guides/deployment.md``) become a
    :class:`BundleError` naming the entry and the problem; ``limits``
    overrides the size and count limits (the hosts apply the defaults).
    """
    try:
        summary = archive.scan(path, limits)
    except archive.ArchiveRefused as e:
        raise BundleError(path, e.problem, member=e.entry) from None
    except FileNotFoundError:
        raise BundleError(path, "no such file") from None
    except OSError as e:
        raise BundleError(path, f"cannot read it: {e.strerror or e}") from None
    return BundleInfo(files=summary.files, size=summary.size, top_level=list(summary.top_level))
