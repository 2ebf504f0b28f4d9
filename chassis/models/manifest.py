"""The manifest of a model source: every file's relative path, size and sha256.

A source is a directory (every regular file under it) or a single file (one
entry, named by its file name). Paths are data (DESIGN.md §1 principle 10):
they become file names on hosts, so a name that is not UTF-8, holds a control
character or is ``.``/``..`` is refused, as is anything that is not a regular
file or a directory (a FIFO, a device, a socket).

Symlinks are followed only where they stay in the model: a link that resolves
inside the source directory, or, in a Hugging Face cache
(``models--ORG--NAME/snapshots/<commit>/``), a link into that repository's
own ``blobs/`` directory (and from there into the cache-wide shared blob store
``<cache>/blobs/`` when it carries the ``.huggingface-shared-blobs`` marker).
A link anywhere else is refused with the path named, and nothing is recorded.

Hashing streams each file in 1 MiB chunks; no file is ever read whole.
"""

from __future__ import annotations

import hashlib
import os
import stat
import unicodedata
from pathlib import Path

from chassis.errors import ChassisError
from ledger.models import ModelFile

__all__ = [
    "CHUNK_BYTES",
    "ManifestError",
    "build_manifest",
    "file_sha256",
    "path_problem",
    "shown_path",
]

CHUNK_BYTES = 1 << 20
"""Hashing reads this many bytes at a time."""

SHARED_BLOBS_MARKER = ".huggingface-shared-blobs"
"""Marks ``<cache>/blobs/`` as huggingface_hub's cache-wide shared blob store."""

_LINE_BREAKS = frozenset({"Cc", "Zl", "Zp"})
"""Unicode categories refused in a name: control characters, line and paragraph separators."""


class ManifestError(ChassisError):
    """A model source cannot be recorded as it is (exit 3); names the path."""

    exit_code = 3


def shown_path(path: object) -> str:
    """``path`` as text for one line: as is when plainly printable, else quoted
    with its odd characters escaped."""
    text = os.fsdecode(path) if isinstance(path, Path | bytes) else str(path)
    return text if text.isprintable() else repr(text)


def path_problem(path: str) -> str | None:
    """Why ``path`` is not a manifest path (relative, ``/``-separated, each part
    a UTF-8 file name with no control character, never ``.`` or ``..``), or None."""
    if not path:
        return "an empty path"
    if path.startswith("/"):
        return f"{shown_path(path)}: an absolute path"
    for part in path.split("/"):
        problem = _name_problem(part)
        if problem is not None:
            return f"{shown_path(path)}: {problem}"
    return None


def _name_problem(name: str) -> str | None:
    if name in ("", ".", ".."):
        return f"{name!r} is not a file name"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "the name is not UTF-8"
    if any(unicodedata.category(c) in _LINE_BREAKS for c in name):
        return "the name holds a control character"
    return None


def build_manifest(source: Path) -> list[ModelFile]:
    """The files of ``source`` (a directory or a single file), sorted by path.

    Raises :class:`ManifestError` (exit 3), naming the path, for a missing
    source, a refused name, a symlink leaving the model, a file that is not
    regular, a directory with no files, or a file that changes while read.
    """
    given = source.expanduser()
    try:
        found = given.stat()
    except FileNotFoundError:
        raise ManifestError(f"{shown_path(given)}: model source not found") from None
    except OSError as e:
        raise ManifestError(f"{shown_path(given)}: cannot read: {e.strerror or e}") from None
    if stat.S_ISDIR(found.st_mode):
        return _directory(given)
    if stat.S_ISREG(found.st_mode):
        problem = _name_problem(given.name)
        if problem is not None:
            raise ManifestError(f"{shown_path(given)}: {problem}")
        size, sha256 = file_sha256(Path(os.path.realpath(given)))
        return [ModelFile(path=given.name, size=size, sha256=sha256)]
    raise ManifestError(f"{shown_path(given)}: {_kind(found.st_mode)}, not a file or directory")


def file_sha256(path: Path) -> tuple[int, str]:
    """``(size, sha256 hex)`` of the regular file ``path``, streamed in
    :data:`CHUNK_BYTES` chunks. Refuses (:class:`ManifestError`) what is not a
    regular file once opened, and a file whose size changed while it was read."""
    try:
        # O_NONBLOCK: opening a FIFO swapped in must not hang; regular files ignore it.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise ManifestError(f"{shown_path(path)}: cannot read: {e.strerror or e}") from None
    with os.fdopen(fd, "rb", buffering=0) as f:
        opened = os.fstat(f.fileno())
        if not stat.S_ISREG(opened.st_mode):
            raise ManifestError(f"{shown_path(path)}: {_kind(opened.st_mode)}, not a regular file")
        digest = hashlib.sha256()
        buffer = bytearray(CHUNK_BYTES)
        view = memoryview(buffer)
        size = 0
        while True:
            count = f.readinto(buffer)
            if not count:
                break
            digest.update(view[:count])
            size += count
        if size != opened.st_size or os.fstat(f.fileno()).st_size != size:
            raise ManifestError(f"{shown_path(path)}: changed while it was read; try again")
    return size, digest.hexdigest()


class _Walk:
    """One directory source: its real root and where its links may lead."""

    def __init__(self, source: Path) -> None:
        self.source = source
        self.root = Path(os.path.realpath(source))
        self.blobs, self.shared = _hf_blob_dirs(self.root)
        self.files: list[tuple[str, Path]] = []

    def run(self) -> list[ModelFile]:
        self.walk(self.root, (), frozenset({self.root}))
        if not self.files:
            raise ManifestError(f"{shown_path(self.source)}: no files to record")
        self.files.sort(key=lambda item: item[0])
        manifest = []
        for relative, real in self.files:
            size, sha256 = file_sha256(real)
            manifest.append(ModelFile(path=relative, size=size, sha256=sha256))
        return manifest

    def shown(self, parts: tuple[str, ...]) -> str:
        return shown_path(self.source.joinpath(*parts))

    def walk(self, directory: Path, parts: tuple[str, ...], ancestors: frozenset[Path]) -> None:
        try:
            with os.scandir(directory) as listing:
                entries = sorted(listing, key=lambda e: e.name)
        except OSError as e:
            raise ManifestError(f"{self.shown(parts)}: cannot list: {e.strerror or e}") from None
        for entry in entries:
            here = (*parts, entry.name)
            problem = _name_problem(entry.name)
            if problem is not None:
                raise ManifestError(f"{self.shown(here)}: {problem}")
            path = directory / entry.name
            try:
                if entry.is_symlink():
                    path = self.followed(path, here)
                    mode = path.stat().st_mode
                else:
                    mode = entry.stat(follow_symlinks=False).st_mode
            except OSError as e:
                raise ManifestError(f"{self.shown(here)}: cannot read: {e.strerror or e}") from None
            if stat.S_ISDIR(mode):
                if path in ancestors:
                    raise ManifestError(f"{self.shown(here)}: a symlink loop (to {path})")
                self.walk(path, here, ancestors | {path})
            elif stat.S_ISREG(mode):
                self.files.append(("/".join(here), path))
            else:
                raise ManifestError(
                    f"{self.shown(here)}: {_kind(mode)}; a model holds regular files only"
                )

    def followed(self, link: Path, parts: tuple[str, ...]) -> Path:
        """Where ``link`` leads, if it stays in the model; else refused."""
        try:
            target = Path(os.path.realpath(link, strict=True))
        except (OSError, RuntimeError):
            raise ManifestError(
                f"{self.shown(parts)}: a dangling or looping symlink (-> "
                f"{shown_path(link.readlink())})"
            ) from None
        if target == self.root or self.root in target.parents:
            return target
        if self.blobs is not None and target.is_file():
            if target.parent == self.blobs:
                return target
            first = Path(os.path.normpath(link.parent / link.readlink()))
            if (
                self.shared is not None
                and self.shared in target.parents
                and Path(os.path.realpath(first.parent)) == self.blobs
            ):
                return target
        where = "the source directory"
        if self.blobs is not None:
            where += f" or {shown_path(self.blobs)}"
        raise ManifestError(
            f"{self.shown(parts)}: a symlink out of the model (-> {shown_path(target)}); "
            f"only links inside {where} are followed"
        )


def _directory(source: Path) -> list[ModelFile]:
    return _Walk(source).run()


def _hf_blob_dirs(root: Path) -> tuple[Path | None, Path | None]:
    """For a source inside ``models--ORG--NAME/snapshots/<commit>/``: that
    repository's ``blobs/`` and, where marked, the cache's shared blob store."""
    for place in (root, *root.parents):
        snapshots = place.parent
        repo = snapshots.parent
        if snapshots.name == "snapshots" and repo.name.startswith("models--") and place != repo:
            blobs = repo / "blobs"
            if not blobs.is_dir():
                return None, None
            shared = repo.parent / "blobs"
            marked = shared.is_dir() and (shared / SHARED_BLOBS_MARKER).is_file()
            return (
                Path(os.path.realpath(blobs)),
                Path(os.path.realpath(shared)) if marked else None,
            )
    return None, None


def _kind(mode: int) -> str:
    for test, word in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISLNK, "a symlink"),
    ):
        if test(mode):
            return word
    return "not a regular file"
