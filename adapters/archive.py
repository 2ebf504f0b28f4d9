"""The one reader of release bundles: it checks them at ``release add`` and
unpacks them on the host, so the bytes that were checked are the bytes that
are placed (DESIGN.md §1, principle 10).

Two tar parsers disagree on crafted archives (Python's ``tarfile`` stops
silently at a header with a bad checksum and joins a GNU header's ``prefix``
bytes to its name; GNU ``tar`` skips the bad header and reads on, and ignores
that ``prefix``). Checking with one and unpacking with the other let a checked
bundle place files it was never checked for. So this module walks the raw
512-byte headers itself and refuses, with one line naming the entry, anything
two parsers could read differently or that could act outside the release
directory: bad checksums, bytes after the end-of-archive marker, ``prefix``
games, conflicting pax / GNU long-name records, duplicate paths (also after
normalisation), setuid/setgid/sticky bits, devices, FIFOs, hard links,
symlinks leaving the tree, absolute paths, ``..``, control characters, and
files or trees over the limits below. Only regular files, directories and
symlinks are placed; modes are 0755 or 0644 (the owner's exec bit decides).

This file runs two ways, unchanged, like ``adapters/facts/probe.py``:

* imported: :func:`scan` checks a bundle, :func:`unpack` places one;
* run verbatim as ``python3 -I -c SOURCE unpack BUNDLE RELEASES NAME RELEASE_ID`` on
  the host (see :func:`host_args`), where :func:`main` unpacks and prints
  one JSON line (:func:`host_report` reads it back).

So it needs only the standard library and Python 3.8, and imports nothing of
ours. Unpacking writes into ``RELEASES/NAME.unpack`` through directory file
descriptors, never following a symlink (``O_NOFOLLOW``, ``O_EXCL``), creates
the bundle's symlinks only after every file, writes the ``.chassis-release``
marker the same way, renames the directory to ``RELEASES/NAME``, and removes
the partial directory on any failure. The gzip stream is read as it is
decompressed; a bundle is never held in memory.
"""

from __future__ import annotations

# Imports are few and light: the host pays for them on every unpack.
import contextlib
import gzip
import json
import os
import stat
import sys
import zlib
from collections.abc import Iterator
from typing import Any, NamedTuple, Protocol

__all__ = [
    "MARKER",
    "MAX_ENTRIES",
    "MAX_FILE_BYTES",
    "MAX_TOTAL_BYTES",
    "ArchiveRefused",
    "Limits",
    "Summary",
    "host_args",
    "host_report",
    "main",
    "scan",
    "source",
    "symlink_problem",
    "unpack",
]

MAX_FILE_BYTES = 2 * 1024**3
"""Largest regular file a bundle may hold (2 GiB)."""
MAX_ENTRIES = 100_000
"""Most entries (files, directories, symlinks) a bundle may hold."""
MAX_TOTAL_BYTES = 16 * 1024**3
"""Most bytes all of a bundle's files may hold together (16 GiB)."""
MARKER = ".chassis-release"
"""Written by the unpacker into the release directory; no bundle may hold it."""
REFUSED_EXIT = 3
"""The host script's exit status for a refused bundle (1: it could not run)."""

_BLOCK = 512
_ZERO_BLOCK = bytes(_BLOCK)
_CHUNK = 1 << 20
_MAX_RECORD_BYTES = 1 << 20  # one pax or GNU long-name record
_MAX_PADDING = 1 << 20  # zeros allowed after the end-of-archive marker
_MAX_NAME_BYTES = 4095
_MAX_COMPONENT_BYTES = 255
_MAX_LINK_HOPS = 40
_POSIX = (b"ustar\x00", b"00")
_GNU = (b"ustar ", b" \x00")
_FILE_TYPES = (b"0", b"\x00")
_PAX_KEYS = frozenset(
    {
        "path",
        "linkpath",
        "size",
        "mtime",
        "atime",
        "ctime",
        "uid",
        "gid",
        "uname",
        "gname",
        "comment",
        "hdrcharset",
        "SCHILY.dev",
        "SCHILY.ino",
        "SCHILY.nlink",
    }
)
"""pax keywords accepted; the rest (xattrs, ACLs, sparse maps, …) change what
an extractor does, so they are refused rather than ignored."""
_UTF8_CHARSET = b"ISO-IR 10646 2000 UTF-8"
_HEX = frozenset(b"0123456789abcdef")
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | _O_CLOEXEC
_O_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | _O_CLOEXEC


class ArchiveRefused(Exception):
    """The bundle is refused: ``entry`` (as written in the archive, or None
    for the archive as a whole) and ``problem``, one line."""

    def __init__(self, problem: str, entry: str | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.entry = entry

    def line(self) -> str:
        return self.problem if self.entry is None else f"entry {self.entry!r}: {self.problem}"


class Limits(NamedTuple):
    """Bounds on what one bundle may hold; the host applies the defaults."""

    max_file_bytes: int = MAX_FILE_BYTES
    max_entries: int = MAX_ENTRIES
    max_total_bytes: int = MAX_TOTAL_BYTES


class Summary(NamedTuple):
    """What an accepted bundle holds: counts, bytes of file data, top-level names."""

    files: int
    dirs: int
    symlinks: int
    size: int
    top_level: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "dirs": self.dirs,
            "symlinks": self.symlinks,
            "size": self.size,
            "top_level": list(self.top_level),
        }


def source() -> str:
    """This file's text: what is shipped to the host's ``python3 -``."""
    with open(__file__, encoding="utf-8") as f:  # noqa: PTH123
        return f.read()


# ------------------------------------------------------------- raw headers


class _Header(NamedTuple):
    offset: int
    type: bytes
    name: bytes  # ustar prefix joined, as the header alone says
    linkname: bytes
    mode: int
    size: int


class _Entry(NamedTuple):
    shown: str  # the name as written, for messages
    path: str  # normalised: no "", "." or trailing "/" components; "." is the root
    kind: str  # "file" | "dir" | "symlink"
    mode: int  # 0o644 or 0o755
    size: int
    target: str  # symlinks only


def _shown(raw: bytes) -> str:
    return raw.decode("utf-8", "backslashreplace")


def _cstring(field: bytes, what: str, offset: int, shown: str | None) -> bytes:
    """A NUL-terminated header field; bytes after the NUL would be read by no
    one here but could by a careless parser, so they are refused."""
    head, _, tail = field.partition(b"\x00")
    if tail.strip(b"\x00"):
        raise ArchiveRefused(
            f"{what} field has bytes after its end (header at byte {offset})", shown
        )
    return head


def _number(field: bytes, what: str, offset: int, shown: str | None) -> int:
    """An octal header number (NUL/space padded) or GNU base-256; never negative."""
    if field[:1] == b"\x80":
        value = 0
        for byte in field[1:]:
            value = value * 256 + byte
        return value
    text = field.rstrip(b"\x00 ").lstrip(b" ")
    if not text:
        return 0
    if any(c < 0x30 or c > 0x37 for c in text):
        raise ArchiveRefused(f"malformed {what} field {field!r} (header at byte {offset})", shown)
    return int(text, 8)


def _checksums(block: bytes) -> tuple[int, int]:
    """(unsigned, signed) header sums with the checksum field read as spaces."""
    rest = block[:148] + b" " * 8 + block[156:]
    unsigned = sum(rest)
    signed = unsigned - 256 * sum(1 for b in rest if b > 127)
    return unsigned, signed


def _header(block: bytes, offset: int) -> _Header:
    raw_name = block[:100].partition(b"\x00")[0]
    shown = _shown(raw_name) or None
    stored = block[148:156]
    try:
        checksum = _number(stored, "checksum", offset, shown)
    except ArchiveRefused:
        checksum = -1
    if checksum not in _checksums(block):
        if offset == 0:
            raise ArchiveRefused("not a readable tar.gz archive (no tar header at its start)")
        raise ArchiveRefused(
            f"bad header checksum at byte {offset} (GNU tar would skip this header and read "
            "on, Python's tarfile would stop here: the archive means two different things)",
            shown,
        )
    magic = (block[257:263], block[263:265])
    if magic not in (_POSIX, _GNU):
        if offset == 0:
            raise ArchiveRefused("not a readable tar.gz archive (not a POSIX or GNU tar header)")
        raise ArchiveRefused(
            f"header at byte {offset} is neither POSIX ustar nor GNU format", shown
        )
    name = _cstring(block[:100], "name", offset, shown)
    linkname = _cstring(block[157:257], "linkname", offset, shown)
    if magic == _POSIX:
        prefix = _cstring(block[345:500], "prefix", offset, shown)
        if prefix:
            if not name:
                raise ArchiveRefused(f"prefix without a name (header at byte {offset})", shown)
            name = prefix + b"/" + name
            shown = _shown(name)
    elif any(block[345:500]):
        raise ArchiveRefused(
            f"GNU-format header has bytes in the ustar prefix field (GNU tar ignores them, "
            f"Python's tarfile prepends them to the name) (header at byte {offset})",
            shown,
        )
    mode = _number(block[100:108], "mode", offset, shown)
    for field, what in ((block[108:116], "uid"), (block[116:124], "gid")):
        _number(field, what, offset, shown)
    _number(block[136:148], "mtime", offset, shown)
    size = _number(block[124:136], "size", offset, shown)
    return _Header(offset, block[156:157], name, linkname, mode, size)


def _pax_records(data: bytes, offset: int) -> dict[str, bytes]:
    """``"%d %s=%s\\n"`` records, strictly; a keyword given twice is a conflict."""
    records: dict[str, bytes] = {}
    pos = 0
    where = f"pax header at byte {offset}"
    while pos < len(data):
        space = data.find(b" ", pos)
        digits = data[pos:space] if space > pos else b""
        if not digits.isdigit():
            raise ArchiveRefused(f"malformed {where} (record at byte {pos})")
        length = int(digits)
        record = data[pos : pos + length]
        if length <= len(digits) + 1 or len(record) != length or not record.endswith(b"\n"):
            raise ArchiveRefused(f"malformed {where} (record at byte {pos})")
        key, eq, value = record[space - pos + 1 : -1].partition(b"=")
        if not eq or not key:
            raise ArchiveRefused(f"malformed {where} (record at byte {pos})")
        try:
            keyword = key.decode("ascii")
        except UnicodeDecodeError:
            raise ArchiveRefused(f"{where} has a non-ASCII keyword {key!r}") from None
        if keyword in records:
            raise ArchiveRefused(f"{where} gives {keyword!r} twice (readers differ on which wins)")
        records[keyword] = value
        pos += length
    return records


def _long_record(data: bytes, what: str, offset: int) -> bytes:
    """A GNU ``L``/``K`` record: one NUL-terminated name."""
    value = data.partition(b"\x00")
    if value[2].strip(b"\x00"):
        raise ArchiveRefused(f"GNU {what} record at byte {offset} has bytes after its end")
    if not value[0]:
        raise ArchiveRefused(f"GNU {what} record at byte {offset} is empty")
    return value[0]


def _agrees(short: bytes, long: bytes) -> bool:
    """Whether a header's own name field is what a known writer of ``long``
    puts there: nothing, ``long`` or its truncation, ``long`` shortened by
    dropping directories (libarchive), git's ``<hash>.data`` placeholder, or
    those of the ASCII rendering of ``long`` with ``?`` for each other
    character (Python's tarfile). Anything else conflicts: a reader that
    skips the long name would place another path."""
    if b".." in short.split(b"/"):
        return False
    if not short or long.startswith(short) or _git_placeholder(short):
        return True
    lossy = long.decode("utf-8", "replace").encode("ascii", "replace")
    return _shortens(short, long) or _shortens(short, lossy)


def _git_placeholder(name: bytes) -> bool:
    """``git archive``'s ``<object id>.data`` / ``.paxheader`` for a long path."""
    stem, dot, ext = name.partition(b".")
    return (
        bool(dot) and ext in (b"data", b"paxheader") and len(stem) in (40, 64) and set(stem) <= _HEX
    )


def _shortens(short: bytes, full: bytes) -> bool:
    """``short``'s directories are some of ``full``'s, in order, and its last
    component begins ``full``'s."""
    short_dirs, _, short_base = short.rstrip(b"/").rpartition(b"/")
    full_dirs, _, full_base = full.rstrip(b"/").rpartition(b"/")
    if not short_base or not full_base.startswith(short_base):
        return False
    remaining = iter(full_dirs.split(b"/") if full_dirs else [])
    return all(part in remaining for part in (short_dirs.split(b"/") if short_dirs else []))


def _text(raw: bytes, what: str, shown: str) -> str:
    """A name as text: UTF-8, no control characters, bounded length."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ArchiveRefused(f"{what} is not valid UTF-8", shown) from None
    bad = next((c for c in text if ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0), None)
    if bad is not None:
        raise ArchiveRefused(f"{what} has a control character ({bad!r})", shown)
    if not text:
        raise ArchiveRefused(f"empty {what}", shown)
    if len(raw) > _MAX_NAME_BYTES:
        raise ArchiveRefused(f"{what} is {len(raw)} bytes, over {_MAX_NAME_BYTES}", shown)
    return text


def _normalise(text: str, shown: str) -> str:
    if text.startswith("/"):
        raise ArchiveRefused("absolute path", shown)
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ArchiveRefused("path has a '..' component", shown)
    long_part = next((p for p in parts if len(p.encode("utf-8")) > _MAX_COMPONENT_BYTES), None)
    if long_part is not None:
        raise ArchiveRefused(f"a path component is over {_MAX_COMPONENT_BYTES} bytes", shown)
    return "/".join(parts) or "."


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class _Stream:
    """Decompressed archive bytes with their offset; gzip errors become refusals."""

    def __init__(self, raw: _Readable) -> None:
        self._raw = raw
        self.offset = 0

    def read(self, n: int) -> bytes:
        chunks: list[bytes] = []
        left = n
        while left > 0:
            try:
                chunk = self._raw.read(min(left, _CHUNK))
            except (OSError, EOFError, zlib.error) as e:
                raise ArchiveRefused(f"not a readable tar.gz archive ({e})") from None
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        self.offset += len(data)
        return data

    def exact(self, n: int, what: str, shown: str | None = None) -> bytes:
        data = self.read(n)
        if len(data) != n:
            raise ArchiveRefused(f"not a readable tar.gz archive (it ends inside {what})", shown)
        return data

    def chunks(self, n: int, shown: str) -> Iterator[bytes]:
        """``n`` bytes of entry data in chunks; the padding after them is skipped."""
        left = n
        while left > 0:
            chunk = self.exact(min(left, _CHUNK), "a file's data", shown)
            left -= len(chunk)
            yield chunk
        self.exact(-n % _BLOCK, "a file's padding", shown)


class _Reader:
    """The archive's entries in order, each checked on its own; the tree-wide
    checks (duplicates, parents, symlinks) are :class:`_Tree`'s."""

    def __init__(self, stream: _Stream, limits: Limits) -> None:
        self.stream = stream
        self.limits = limits

    def entries(self) -> Iterator[_Entry]:
        """Yield each entry; a file's data must be consumed with ``stream.chunks``
        before the next one is asked for."""
        pax: dict[str, bytes] | None = None
        long_name: bytes | None = None
        long_link: bytes | None = None
        count = 0
        total = 0
        while True:
            offset = self.stream.offset
            block = self.stream.exact(_BLOCK, "a header (no end-of-archive marker)")
            if block == _ZERO_BLOCK:
                if pax is not None or long_name is not None or long_link is not None:
                    raise ArchiveRefused(
                        f"a pax or GNU long-name record is not followed by an entry (byte {offset})"
                    )
                self._end(offset)
                return
            header = _header(block, offset)
            kind = header.type
            if kind in (b"x", b"g", b"L", b"K"):
                if header.size > _MAX_RECORD_BYTES:
                    raise ArchiveRefused(
                        f"extended header at byte {offset} is {header.size} bytes, over "
                        f"{_MAX_RECORD_BYTES}"
                    )
                data = self.stream.exact(header.size, "an extended header")
                self.stream.exact(-header.size % _BLOCK, "an extended header's padding")
                if kind == b"x":
                    if pax is not None:
                        raise ArchiveRefused(
                            f"two pax headers for one entry (byte {offset}): readers differ "
                            "on which applies"
                        )
                    pax = _pax_records(data, offset)
                elif kind == b"g":
                    extra = sorted(set(_pax_records(data, offset)) - {"comment"})
                    if extra:
                        raise ArchiveRefused(
                            f"pax global header at byte {offset} sets {', '.join(extra)} "
                            "(only a comment is accepted)"
                        )
                elif kind == b"L":
                    if long_name is not None:
                        raise ArchiveRefused(f"two GNU long names for one entry (byte {offset})")
                    long_name = _long_record(data, "long-name", offset)
                else:
                    if long_link is not None:
                        raise ArchiveRefused(
                            f"two GNU long link names for one entry (byte {offset})"
                        )
                    long_link = _long_record(data, "long-link", offset)
                continue
            count += 1
            if count > self.limits.max_entries:
                raise ArchiveRefused(
                    f"more than {self.limits.max_entries} entries (the limit)",
                    _shown(header.name),
                )
            entry = _entry(header, pax or {}, long_name, long_link, self.limits)
            pax = long_name = long_link = None
            total += entry.size
            if total > self.limits.max_total_bytes:
                raise ArchiveRefused(
                    f"the files hold more than {self.limits.max_total_bytes} bytes (the limit)",
                    entry.shown,
                )
            yield entry

    def _end(self, offset: int) -> None:
        """After the first zero block: a second one, then only zero padding."""
        second = self.stream.read(_BLOCK)
        if second != _ZERO_BLOCK:
            if second.strip(b"\x00"):
                raise ArchiveRefused(
                    f"data after the end-of-archive marker at byte {offset} (a reader that "
                    "reads on would find more entries)"
                )
            raise ArchiveRefused(
                f"a single zero block at byte {offset} instead of the two that end an archive"
            )
        padding = 0
        while True:
            chunk = self.stream.read(_CHUNK)
            if not chunk:
                return
            if chunk.strip(b"\x00"):
                raise ArchiveRefused(
                    f"data after the end-of-archive marker at byte {offset} (a reader that "
                    "reads on would find more entries)"
                )
            padding += len(chunk)
            if padding > _MAX_PADDING:
                raise ArchiveRefused(
                    f"more than {_MAX_PADDING} bytes of padding after the end-of-archive marker"
                )


def _entry(
    header: _Header,
    pax: dict[str, bytes],
    long_name: bytes | None,
    long_link: bytes | None,
    limits: Limits,
) -> _Entry:
    """One entry from its header and the extended records before it."""
    shown = _shown(header.name)
    charset = pax.get("hdrcharset")
    if charset is not None and charset != _UTF8_CHARSET:
        raise ArchiveRefused(f"pax hdrcharset {_shown(charset)!r} (only UTF-8 is accepted)", shown)
    unknown = sorted(set(pax) - _PAX_KEYS)
    if unknown:
        raise ArchiveRefused(f"pax record {unknown[0]!r} is not accepted", shown)

    raw = header.name
    if "path" in pax and long_name is not None:
        raise ArchiveRefused("both a pax path and a GNU long name (readers differ)", shown)
    given = pax.get("path", long_name)
    if given is not None:
        what = "pax path" if "path" in pax else "GNU long name"
        if not _agrees(header.name, given):
            raise ArchiveRefused(
                f"the header names {shown!r} but its {what} says {_shown(given)!r}",
                _shown(given),
            )
        raw = given
        shown = _shown(raw)
    text = _text(raw, "name", shown)
    path = _normalise(text, shown)

    link_raw = header.linkname
    if "linkpath" in pax and long_link is not None:
        raise ArchiveRefused("both a pax linkpath and a GNU long link name (readers differ)", shown)
    given_link = pax.get("linkpath", long_link)
    if given_link is not None:
        if not _agrees(header.linkname, given_link):
            raise ArchiveRefused(
                f"the header links to {_shown(header.linkname)!r} but its long link name "
                f"says {_shown(given_link)!r}",
                shown,
            )
        link_raw = given_link

    kind = header.type
    if kind == b"1":
        raise ArchiveRefused(
            f"hard link to {_shown(link_raw)!r} (hard links are not accepted)", shown
        )
    if kind in (b"3", b"4"):
        return _refuse("device file", shown)
    if kind == b"6":
        return _refuse("FIFO (special file)", shown)
    if kind not in (*_FILE_TYPES, b"5", b"2"):
        return _refuse(f"unsupported entry type {_shown(kind)!r}", shown)
    if kind != b"2" and link_raw:
        return _refuse("a link name on an entry that is not a symlink", shown)

    if header.mode & 0o7000:
        return _refuse(f"setuid/setgid/sticky mode {header.mode & 0o7777:o}", shown)
    size = header.size
    if "size" in pax:
        digits = pax["size"]
        if not digits.isdigit() or int(digits) != size:
            raise ArchiveRefused(
                f"pax size {_shown(digits)!r} disagrees with the header's size {size} "
                "(readers differ on where the next header starts)",
                shown,
            )
    if kind != b"5" and text.endswith("/"):
        return _refuse("a name ending in '/' on an entry that is not a directory", shown)
    if path == "." and kind != b"5":
        return _refuse("the archive root must be a directory", shown)
    if path == MARKER:
        return _refuse(f"{MARKER!r} is reserved for the marker Chassis writes", shown)

    if kind == b"5" or kind == b"2":
        if size:
            return _refuse(
                f"a {'directory' if kind == b'5' else 'symlink'} with {size} bytes of data "
                "(readers differ on whether to skip them)",
                shown,
            )
        if kind == b"5":
            return _Entry(shown, path, "dir", 0o755, 0, "")
        target = _text(link_raw, "symlink target", shown) if link_raw else ""
        if not target:
            return _refuse("symlink with an empty target", shown)
        if target.startswith("/"):
            return _refuse(f"symlink to absolute path {target!r}", shown)
        return _Entry(shown, path, "symlink", 0o777, 0, target)

    if size > limits.max_file_bytes:
        return _refuse(f"file is {size} bytes, over the limit of {limits.max_file_bytes}", shown)
    return _Entry(shown, path, "file", 0o755 if header.mode & 0o100 else 0o644, size, "")


def _refuse(problem: str, shown: str) -> _Entry:
    raise ArchiveRefused(problem, shown)


# ------------------------------------------------------------ tree checks


class _Tree:
    """What the entries so far make: each path once, parents real directories."""

    def __init__(self) -> None:
        self.kinds: dict[str, str] = {".": "implied"}
        self.shown: dict[str, str] = {}
        self.links: dict[str, str] = {}
        self.files = self.size = 0

    def add(self, entry: _Entry) -> list[str]:
        """Record ``entry``; return the directories to create for it, parents
        first: the new parents it implies, and itself if a new directory."""
        new: list[str] = []
        if entry.path != ".":
            parts = entry.path.split("/")
            for depth in range(1, len(parts)):
                parent = "/".join(parts[:depth])
                kind = self.kinds.get(parent)
                if kind is None:
                    self.kinds[parent] = "implied"
                    new.append(parent)
                elif kind == "symlink":
                    raise ArchiveRefused(
                        f"would be written through symlink {parent!r}", entry.shown
                    )
                elif kind == "file":
                    raise ArchiveRefused(f"its parent {parent!r} is a file", entry.shown)
        found = self.kinds.get(entry.path)
        if found is not None and not (found == "implied" and entry.kind == "dir"):
            first = self.shown.get(entry.path, entry.path)
            what = "a directory" if found in ("implied", "dir") else f"a {found}"
            raise ArchiveRefused(
                f"duplicate path: {entry.path!r} is already {what} (entry {first!r}); "
                "readers differ on which one wins",
                entry.shown,
            )
        self.kinds[entry.path] = entry.kind
        self.shown[entry.path] = entry.shown
        if entry.kind == "symlink":
            self.links[entry.path] = entry.target
        elif entry.kind == "file":
            self.files += 1
            self.size += entry.size
        elif found is None:
            new.append(entry.path)
        return new

    def check_links(self) -> None:
        for name in self.links:
            problem = symlink_problem(name, self.links)
            if problem:
                raise ArchiveRefused(problem, self.shown[name])

    def summary(self) -> Summary:
        top = {p.split("/", 1)[0] for p in self.kinds if p != "."}
        return Summary(
            files=self.files,
            dirs=sum(1 for p, k in self.kinds.items() if p != "." and k in ("dir", "implied")),
            symlinks=len(self.links),
            size=self.size,
            top_level=tuple(sorted(top)),
        )


class _LinkLoop(Exception):
    """More than _MAX_LINK_HOPS symlinks followed (the kernel's ELOOP)."""


def _resolve_link(name: str, links: dict[str, str]) -> str | None:
    """Where symlink ``name`` lands inside the tree, following the tree's own
    symlinks like the kernel would; None when it leaves the root."""
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


def symlink_problem(name: str, links: dict[str, str]) -> str | None:
    """Why symlink ``name`` (a key of ``links``: path → target) may not be
    placed: absolute, leaving the tree (through other links too), or looping."""
    target = links[name]
    if target.startswith("/"):
        return f"symlink to absolute path {target!r}"
    try:
        if _resolve_link(name, links) is None:
            return f"symlink target {target!r} leaves the bundle"
    except _LinkLoop:
        return f"symlink target {target!r} loops"
    return None


# ------------------------------------------------------------------ writing


class _Writer:
    """Creates entries under one directory fd; every path is walked from it
    with ``O_NOFOLLOW``, so nothing is written through a symlink."""

    def __init__(self, root_fd: int) -> None:
        self.root_fd = root_fd
        self._cached: tuple[str, int] | None = None

    def close(self) -> None:
        if self._cached is not None:
            os.close(self._cached[1])
            self._cached = None

    def _parent(self, path: str) -> tuple[int, str]:
        """(fd of the parent directory, base name) for ``path``."""
        parent, _, base = path.rpartition("/")
        if not parent:
            return self.root_fd, base
        if self._cached is not None and self._cached[0] == parent:
            return self._cached[1], base
        self.close()
        fd = os.dup(self.root_fd)
        try:
            for part in parent.split("/"):
                child = os.open(part, _O_DIR, dir_fd=fd)
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        self._cached = (parent, fd)
        return fd, base

    def mkdir(self, path: str) -> None:
        with _naming(path):
            fd, base = self._parent(path)
            os.mkdir(base, 0o700, dir_fd=fd)
            made = os.open(base, _O_DIR, dir_fd=fd)
            try:
                os.fchmod(made, 0o755)
            finally:
                os.close(made)

    def file(self, path: str, mode: int, chunks: Iterator[bytes]) -> None:
        with _naming(path):
            fd, base = self._parent(path)
            out = os.open(base, _O_NEW_FILE, 0o600, dir_fd=fd)
            try:
                for chunk in chunks:
                    _write_all(out, chunk)
                os.fchmod(out, mode)
            finally:
                os.close(out)

    def symlink(self, path: str, target: str) -> None:
        with _naming(path):
            fd, base = self._parent(path)
            os.symlink(target, base, dir_fd=fd)


@contextlib.contextmanager
def _naming(path: str) -> Iterator[None]:
    """Name the entry's path in an OS error (``os.write`` on a full disk names
    nothing, ``os.open`` only the last component)."""
    try:
        yield
    except OSError as e:
        raise OSError(e.errno, e.strerror, path) from e


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _remove_at(dir_fd: int, name: str) -> None:
    """Remove ``name`` (a tree, file or link) under ``dir_fd`` without following
    any symlink; nothing there is fine."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=dir_fd)
        return
    fd = os.open(name, _O_DIR, dir_fd=dir_fd)
    try:
        os.fchmod(fd, 0o700)
        with os.scandir(fd) as it:
            children = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
        for child, is_dir in children:
            if is_dir:
                _remove_at(fd, child)
            else:
                os.unlink(child, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=dir_fd)


# ------------------------------------------------------------------ reading


def _read(bundle: str | os.PathLike[str], limits: Limits, writer: _Writer | None) -> Summary:
    """Check every entry of ``bundle`` and, with a writer, place it."""
    tree = _Tree()
    with open(bundle, "rb") as raw, gzip.GzipFile(fileobj=raw, mode="rb") as gz:  # noqa: PTH123
        stream = _Stream(gz)
        for entry in _Reader(stream, limits).entries():
            implied = tree.add(entry)
            data = stream.chunks(entry.size, entry.shown) if entry.kind == "file" else None
            if writer is None:
                for _ in data or ():
                    pass
                continue
            for directory in implied:
                writer.mkdir(directory)
            if data is not None:
                writer.file(entry.path, entry.mode, data)
    tree.check_links()
    if writer is not None:
        for name, target in tree.links.items():
            writer.symlink(name, target)
    return tree.summary()


def scan(bundle: str | os.PathLike[str], limits: Limits | None = None) -> Summary:
    """Check ``bundle`` as :func:`unpack` would and place nothing.

    Raises :class:`ArchiveRefused` (entry and problem) or ``OSError`` when the
    file cannot be read.
    """
    return _read(bundle, limits or Limits(), None)


def _plain_name(name: str, what: str) -> None:
    if not name or name in (".", "..") or "/" in name or "\x00" in name:
        raise ValueError(f"{what} {name!r} is not a plain file name")


def unpack(
    bundle: str | os.PathLike[str],
    releases: str | os.PathLike[str],
    name: str,
    release_id: str,
    limits: Limits | None = None,
) -> Summary:
    """Check and place ``bundle`` as ``releases/name``, with the marker.

    Everything is written under ``releases/name.unpack`` (a stale one is
    removed first), which becomes ``releases/name`` only when every entry and
    the marker are in place; on any failure it is removed. An existing
    ``releases/name`` (an unpack without its marker) is replaced. Raises
    :class:`ArchiveRefused` for a refused bundle, ``OSError`` otherwise.
    """
    _plain_name(name, "release directory")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in release_id):
        raise ValueError(f"release id {release_id!r} has a control character")
    staging = f"{name}.unpack"
    releases_fd = os.open(releases, os.O_RDONLY | os.O_DIRECTORY | _O_CLOEXEC)
    try:
        _remove_at(releases_fd, staging)
        os.mkdir(staging, 0o700, dir_fd=releases_fd)
        try:
            root_fd = os.open(staging, _O_DIR, dir_fd=releases_fd)
            writer = _Writer(root_fd)
            try:
                summary = _read(bundle, limits or Limits(), writer)
                marker = os.open(MARKER, _O_NEW_FILE, 0o600, dir_fd=root_fd)
                try:
                    _write_all(marker, f"{release_id}\n".encode())
                    os.fchmod(marker, 0o644)
                finally:
                    os.close(marker)
                os.fchmod(root_fd, 0o755)
            finally:
                writer.close()
                os.close(root_fd)
            _remove_at(releases_fd, name)
            os.rename(staging, name, src_dir_fd=releases_fd, dst_dir_fd=releases_fd)
        except BaseException:
            with contextlib.suppress(OSError):
                _remove_at(releases_fd, staging)
            raise
    finally:
        os.close(releases_fd)
    return summary


# ------------------------------------------------------------ on the host


def host_args(bundle: str, releases: str, name: str, release_id: str) -> list[str]:
    """The arguments that have this file, run on a host by
    ``Connector.run_python``, unpack ``bundle`` as ``releases/name``."""
    return ["unpack", bundle, releases, name, release_id]


def host_report(stdout: str) -> dict[str, Any] | None:
    """The JSON line :func:`main` printed: ``{"ok": true, "files": …}`` or
    ``{"ok": false, "refused": bool, "entry": str | None, "problem": str}``;
    None when there is none (the script did not run)."""
    for line in reversed(stdout.strip().splitlines()):
        try:
            report = json.loads(line)
        except ValueError:
            continue
        if isinstance(report, dict) and isinstance(report.get("ok"), bool):
            return report
    return None


_USAGE = (
    "usage: python3 - check BUNDLE | unpack BUNDLE RELEASES NAME RELEASE_ID "
    "[--max-file-bytes N] [--max-entries N] [--max-total-bytes N]"
)


def _parse(argv: list[str]) -> tuple[str, list[str], Limits]:
    """(command, its arguments, limits); ValueError with the usage when wrong.
    argparse would cost the host more to import than the rest of this file."""
    words: list[str] = []
    limits = Limits()._asdict()
    it = iter(argv)
    for word in it:
        field = word[2:].replace("-", "_")
        if word.startswith("--") and field in limits:
            value = next(it, "")
            if not value.isdigit():
                raise ValueError(f"{word} needs a whole number; {_USAGE}")
            limits[field] = int(value)
        else:
            words.append(word)
    wanted = {"check": 2, "unpack": 5}
    if not words or wanted.get(words[0]) != len(words):
        raise ValueError(_USAGE)
    return words[0], words[1:], Limits(**limits)


def main(argv: list[str] | None = None) -> int:
    """``unpack BUNDLE RELEASES NAME RELEASE_ID`` or ``check BUNDLE``; prints one
    JSON line and returns 0, :data:`REFUSED_EXIT`, or 1 (could not run)."""
    try:
        command, args, limits = _parse(sys.argv[1:] if argv is None else argv)
        if command == "check":
            summary = scan(args[0], limits)
        else:
            summary = unpack(args[0], args[1], args[2], args[3], limits)
    except ArchiveRefused as e:
        report = {"ok": False, "refused": True, "entry": e.entry, "problem": e.problem}
        code = REFUSED_EXIT
    except (OSError, ValueError) as e:
        problem = str(e)
        if isinstance(e, OSError) and e.strerror:
            problem = f"{e.filename}: {e.strerror}" if e.filename else e.strerror
        report = {"ok": False, "refused": False, "entry": None, "problem": problem}
        code = 1
    else:
        report = {"ok": True, **summary.to_dict()}
        code = 0
    sys.stdout.write(json.dumps(report, sort_keys=True) + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
