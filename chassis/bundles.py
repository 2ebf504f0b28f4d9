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

Target hosts unpack with ``tar -xzf``; :func:`check_bundle` refuses anything
that could write outside the release directory or create device nodes.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import stat
import tarfile
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from chassis.errors import ChassisError

__all__ = ["BundleError", "BundleInfo", "build_bundle", "check_bundle", "sha256_file"]

_GZIP_LEVEL = 9
_MAX_LINK_HOPS = 40


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
    FIFOs, sockets), absolute or escaping symlinks, or ``out`` inside the tree.
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
        problem = _link_problem(entry.name, links) if entry.kind == "symlink" else None
        if problem:
            raise BundleError(entry.path, problem)

    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        with partial.open("wb") as raw:
            _write_archive(entries, raw)
            raw.flush()
            os.fsync(raw.fileno())
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


def check_bundle(path: Path | str) -> BundleInfo:
    """Open a bundle and check that ``tar -xzf`` can unpack it safely.

    Refused: absolute member names, ``..`` components, symlinks whose target
    leaves the archive root (followed through other symlinks in the archive),
    members written through a symlink, hard links to anything but an earlier
    regular file, device files and other special files, setuid/setgid files.
    Returns a :class:`BundleInfo`; raises :class:`BundleError` naming the first
    bad member, or the file when it is not a readable tar.gz.
    """
    members = _read_members(Path(path))
    links = {name: m.linkname for name, m in members if m.issym()}
    regular: set[str] = set()
    top: set[str] = set()
    files = size = 0
    for name, m in members:
        problem = _member_problem(name, m, links, regular)
        if problem:
            raise BundleError(path, problem, member=m.name)
        if name != ".":
            top.add(name.split("/", 1)[0])
        if m.isreg():
            regular.add(name)
            files += 1
            size += m.size
    return BundleInfo(files=files, size=size, top_level=sorted(top))


def _read_members(path: Path) -> list[tuple[str, tarfile.TarInfo]]:
    """Every member with its normalised name; raises BundleError for bad names."""
    found: list[tuple[str, tarfile.TarInfo]] = []
    try:
        with tarfile.open(path, mode="r:gz") as tar:
            for m in tar:
                found.append((_safe_name(path, m.name), m))
    except BundleError:
        raise
    except FileNotFoundError as e:
        raise BundleError(path, "no such file") from e
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, OSError) as e:
        raise BundleError(path, f"not a readable tar.gz archive ({e})") from e
    return found


def _safe_name(path: Path, name: str) -> str:
    """The member's name without ``./`` prefixes, or BundleError when unsafe."""
    if not name or "\x00" in name:
        raise BundleError(path, "empty or malformed member name", member=name)
    if name.startswith("/"):
        raise BundleError(path, "absolute path", member=name)
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise BundleError(path, "path has a '..' component", member=name)
    return "/".join(parts) or "."


def _member_problem(
    name: str, m: tarfile.TarInfo, links: Mapping[str, str], regular: set[str]
) -> str | None:
    if m.ischr() or m.isblk():
        return "device file"
    if m.isfifo():
        return "FIFO (special file)"
    if not (m.isreg() or m.isdir() or m.issym() or m.islnk()):
        return f"unsupported member type {m.type!r}"
    if name == "." and not m.isdir():
        return "the archive root must be a directory"
    if not m.isdir() and m.mode & (stat.S_ISUID | stat.S_ISGID):
        return f"setuid/setgid mode {m.mode:o}"
    parents = name.split("/")[:-1]
    for depth in range(1, len(parents) + 1):
        through = "/".join(parents[:depth])
        if through in links:
            return f"would be written through symlink {through!r}"
    if m.issym():
        return _link_problem(name, links)
    if m.islnk():
        parts = [p for p in m.linkname.split("/") if p not in ("", ".")]
        if m.linkname.startswith("/") or ".." in parts:
            return f"hard link to {m.linkname!r} escapes the bundle"
        if "/".join(parts) not in regular:
            return f"hard link to {m.linkname!r}, which is not an earlier regular file"
    return None


def _resolve_link(name: str, links: Mapping[str, str]) -> str | None:
    """Where symlink ``name`` lands inside the archive, following the archive's
    own symlinks like the kernel would; None when it leaves the root."""
    resolved: list[str] = name.split("/")[:-1]
    pending: list[str] = list(reversed(links[name].split("/")))
    hops = 0
    while pending:
        part = pending.pop()
        if part in ("", "."):
            continue
        if part == "..":
            if not resolved:
                return None
            resolved.pop()
            continue
        candidate = "/".join([*resolved, part])
        if candidate in links:
            hops += 1
            target = links[candidate]
            if hops > _MAX_LINK_HOPS:
                raise _LinkLoop
            if target.startswith("/"):
                return None
            pending.extend(reversed(target.split("/")))
            continue
        resolved.append(part)
    return "/".join(resolved) or "."


def _link_problem(name: str, links: Mapping[str, str]) -> str | None:
    target = links[name]
    if target.startswith("/"):
        return f"symlink to absolute path {target!r}"
    try:
        if _resolve_link(name, links) is None:
            return f"symlink target {target!r} leaves the bundle"
    except _LinkLoop:
        return f"symlink target {target!r} loops"
    return None


class _LinkLoop(Exception):
    """More than _MAX_LINK_HOPS symlinks followed (the kernel's ELOOP)."""
