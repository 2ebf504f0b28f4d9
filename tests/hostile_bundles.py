"""A corpus of hostile release bundles, built from raw 512-byte tar headers
(and Python's ``tarfile`` where it can write the trick itself).

Each :class:`Hostile` is one attack on the bundle boundary (issue 11): bytes
two tar parsers read differently, entries that act outside the release
directory, or trees over the limits. ``entry`` and ``problem`` are what the
one archive reader (``adapters.archive``) must name when it refuses it.
Shared by the ``release add`` tests and the host unpack tests.
"""

from __future__ import annotations

import gzip
import io
import tarfile
from collections.abc import Callable
from dataclasses import dataclass

BLOCK = 512
END = bytes(2 * BLOCK)
ELF = b"\x7fELF" + bytes(60) + b"#!/bin/sh\nid\n"


def header(
    name: bytes,
    *,
    kind: bytes = b"0",
    size: int = 0,
    mode: int = 0o644,
    linkname: bytes = b"",
    fmt: str = "ustar",
    prefix: bytes = b"",
    checksum: int | None = None,
    magic: bytes | None = None,
) -> bytes:
    """One header block; ``fmt`` "ustar" (POSIX), "gnu" or "v7" (no magic).
    ``prefix`` fills bytes 345-500 whatever the format; ``checksum`` forces a
    (wrong) stored checksum."""
    b = bytearray(BLOCK)
    b[0:100] = name.ljust(100, b"\0")[:100]
    b[100:108] = b"%07o\0" % mode
    b[108:116] = b"%07o\0" % 0
    b[116:124] = b"%07o\0" % 0
    b[124:136] = b"%011o\0" % size
    b[136:148] = b"%011o\0" % 0
    b[156:157] = kind
    b[157:257] = linkname.ljust(100, b"\0")[:100]
    if magic is not None:
        b[257:265] = magic
    elif fmt == "ustar":
        b[257:265] = b"ustar\x0000"
    elif fmt == "gnu":
        b[257:265] = b"ustar  \x00"
    b[345:500] = prefix.ljust(155, b"\0")[:155]
    b[148:156] = b" " * 8
    b[148:156] = b"%06o\0 " % (sum(b) if checksum is None else checksum)
    return bytes(b)


def pad(data: bytes) -> bytes:
    return data + bytes(-len(data) % BLOCK)


def member(name: bytes, data: bytes = b"", **kw: object) -> bytes:
    """A regular file (or any ``kind=``) with its data and padding."""
    return header(name, size=len(data), **kw) + pad(data)  # type: ignore[arg-type]


def directory(name: bytes, mode: int = 0o755) -> bytes:
    return header(name, kind=b"5", mode=mode)


def symlink(name: bytes, target: bytes, **kw: object) -> bytes:
    return header(name, kind=b"2", linkname=target, mode=0o777, **kw)  # type: ignore[arg-type]


def pax_data(*records: tuple[str, bytes]) -> bytes:
    out = b""
    for key, value in records:
        body = b" " + key.encode() + b"=" + value + b"\n"
        length = len(body) + 1
        while len(str(length).encode()) + len(body) != length:
            length += 1
        out += str(length).encode() + body
    return out


def pax(*records: tuple[str, bytes], kind: bytes = b"x") -> bytes:
    data = pax_data(*records)
    return header(b"./PaxHeaders/x", kind=kind, size=len(data)) + pad(data)


def gnu_long(kind: bytes, value: bytes) -> bytes:
    data = value + b"\0"
    return header(b"././@LongLink", kind=kind, size=len(data), fmt="gnu") + pad(data)


def gz(*parts: bytes, end: bytes = END) -> bytes:
    raw = b"".join(parts) + end
    return gzip.compress(raw + bytes(-len(raw) % (20 * BLOCK)), mtime=0)


def with_tarfile(*infos: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for info, data in infos:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def info(
    name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o644, link: str = ""
) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.mode = mode
    ti.linkname = link
    return ti


OK = member(b"app/ok.txt", b"fine\n")


@dataclass(frozen=True)
class Hostile:
    id: str
    build: Callable[[], bytes]
    entry: str | None
    problem: str
    old_check_accepts: bool = False
    """Python's-tarfile ``check_bundle`` (before issue 11) let it through."""


CORPUS: list[Hostile] = [
    # --- the two reproduced bypasses ------------------------------------------
    Hostile(
        "bad-checksum-hides-entries",
        lambda: gz(
            OK,
            header(b"hidden", checksum=1),  # tarfile stops here, GNU tar reads on
            member(b"bin/su", ELF, mode=0o4755),
            header(b"dev/sda", kind=b"4", mode=0o666),
            symlink(b"etc", b"/etc"),
        ),
        "hidden",
        "bad header checksum",
        old_check_accepts=True,
    ),
    Hostile(
        "gnu-prefix-marker-symlink",
        # tarfile reads "a/b/c/.chassis-release" -> inside; GNU tar reads
        # ".chassis-release" -> three levels above the release directory.
        lambda: gz(
            OK,
            symlink(b".chassis-release", b"../../../victim.txt", fmt="gnu", prefix=b"a/b/c"),
        ),
        ".chassis-release",
        "GNU-format header has bytes in the ustar prefix field",
        old_check_accepts=True,
    ),
    # --- other parser differences ---------------------------------------------
    Hostile(
        "gnu-prefix-on-a-file",
        lambda: gz(member(b"x.txt", b"x", fmt="gnu", prefix=b"safe")),
        "x.txt",
        "GNU-format header has bytes in the ustar prefix field",
        old_check_accepts=True,
    ),
    Hostile(
        "ustar-prefix-disagrees-with-pax-path",
        lambda: gz(pax(("path", b"other/b.txt")), member(b"a.txt", b"x", prefix=b"app")),
        "other/b.txt",
        "the header names 'app/a.txt' but its pax path says 'other/b.txt'",
        old_check_accepts=True,
    ),
    Hostile(
        "pax-path-disagrees-with-name",
        lambda: gz(pax(("path", b"app/run.sh")), member(b"app/readme.txt", b"x")),
        "app/run.sh",
        "but its pax path says 'app/run.sh'",
        old_check_accepts=True,
    ),
    Hostile(
        "gnu-long-name-disagrees-with-name",
        lambda: gz(gnu_long(b"L", b"app/y.txt"), member(b"app/x.txt", b"x", fmt="gnu")),
        "app/y.txt",
        "but its GNU long name says 'app/y.txt'",
        old_check_accepts=True,
    ),
    Hostile(
        "two-pax-headers",
        lambda: gz(pax(("path", b"a")), pax(("path", b"b")), member(b"a", b"x")),
        None,
        "two pax headers for one entry",
        old_check_accepts=True,
    ),
    Hostile(
        "pax-path-and-gnu-long-name",
        lambda: gz(pax(("path", b"a.txt")), gnu_long(b"L", b"a.txt"), member(b"a.txt", b"x")),
        "a.txt",
        "both a pax path and a GNU long name",
        old_check_accepts=True,
    ),
    Hostile(
        "two-gnu-long-names",
        lambda: gz(gnu_long(b"L", b"a"), gnu_long(b"L", b"b"), member(b"a", b"x", fmt="gnu")),
        None,
        "two GNU long names for one entry",
        old_check_accepts=True,
    ),
    Hostile(
        "pax-keyword-twice",
        lambda: gz(pax(("path", b"a"), ("path", b"../../b")), member(b"a", b"x")),
        None,
        "gives 'path' twice",
    ),
    Hostile(
        "pax-size-disagrees",
        lambda: gz(pax(("size", b"0")), member(b"a", bytes(BLOCK))),
        "a",
        "pax size '0' disagrees with the header's size 512",
        old_check_accepts=True,
    ),
    Hostile(
        "pax-xattr-capability",
        lambda: gz(
            pax(("SCHILY.xattr.security.capability", b"\x01\x00\x00\x02")),
            member(b"app/tool", ELF, mode=0o755),
        ),
        "app/tool",
        "pax record 'SCHILY.xattr.security.capability' is not accepted",
        old_check_accepts=True,
    ),
    Hostile(
        "pax-global-path",
        lambda: gz(pax(("path", b"evil"), kind=b"g"), OK),
        None,
        "sets path (only a comment is accepted)",
        old_check_accepts=True,
    ),
    Hostile(
        "pax-header-then-end",
        lambda: gz(OK, pax(("path", b"late"))),
        None,
        "not followed by an entry",
    ),
    Hostile(
        "data-after-end-marker",
        lambda: gz(OK, END, member(b"app/late.txt", b"x")),
        None,
        "data after the end-of-archive marker",
        old_check_accepts=True,
    ),
    Hostile(
        "lone-zero-block-then-entry",
        lambda: gz(OK, bytes(BLOCK), member(b"app/late.txt", b"x")),
        None,
        "data after the end-of-archive marker",
        old_check_accepts=True,
    ),
    Hostile(
        "directory-with-data",
        lambda: gz(
            header(b"app/", kind=b"5", size=BLOCK, mode=0o755),
            member(b"app/hidden.txt"),  # tarfile reads this block as a header, tar skips it
        ),
        "app/",
        "a directory with 512 bytes of data",
        old_check_accepts=True,
    ),
    Hostile(
        "v7-header",
        lambda: gz(OK, member(b"old.txt", b"x", fmt="v7")),
        "old.txt",
        "neither POSIX ustar nor GNU",
        old_check_accepts=True,
    ),
    Hostile(
        "name-field-hides-bytes-after-nul",
        lambda: gz(member(b"app/a\0../../evil", b"x")),
        "app/a",
        "name field has bytes after its end",
        old_check_accepts=True,
    ),
    # --- duplicates -------------------------------------------------------------
    Hostile(
        "duplicate-path",
        lambda: gz(member(b"app/run.sh", b"good"), member(b"app/run.sh", b"evil")),
        "app/run.sh",
        "duplicate path",
        old_check_accepts=True,
    ),
    Hostile(
        "duplicate-after-normalising",
        lambda: gz(member(b"app/./run.sh", b"good"), member(b"app//run.sh", b"evil")),
        "app//run.sh",
        "duplicate path: 'app/run.sh' is already a file (entry 'app/./run.sh')",
        old_check_accepts=True,
    ),
    Hostile(
        "file-then-directory",
        lambda: gz(member(b"app", b"x"), directory(b"app/")),
        "app/",
        "duplicate path: 'app' is already a file",
        old_check_accepts=True,
    ),
    Hostile(
        "directory-then-symlink",
        lambda: gz(member(b"lib/a.txt", b"x"), symlink(b"lib", b"app")),
        "lib",
        "duplicate path: 'lib' is already a directory",
    ),
    # --- what an entry may be ---------------------------------------------------
    Hostile(
        "setuid-file",
        lambda: with_tarfile((info("bin/su", mode=0o4755), ELF)),
        "bin/su",
        "setuid/setgid/sticky mode 4755",
    ),
    Hostile(
        "setgid-directory",
        lambda: with_tarfile((info("shared", tarfile.DIRTYPE, 0o2775), None)),
        "shared/",
        "setuid/setgid/sticky mode 2775",
        old_check_accepts=True,
    ),
    Hostile(
        "sticky-world-writable-directory",
        lambda: gz(directory(b"tmp/", mode=0o1777)),
        "tmp/",
        "setuid/setgid/sticky mode 1777",
        old_check_accepts=True,
    ),
    Hostile(
        "character-device",
        lambda: with_tarfile((info("null", tarfile.CHRTYPE), None)),
        "null",
        "device file",
    ),
    Hostile(
        "block-device",
        lambda: gz(header(b"dev/sda", kind=b"4", mode=0o666)),
        "dev/sda",
        "device file",
    ),
    Hostile(
        "fifo",
        lambda: with_tarfile((info("pipe", tarfile.FIFOTYPE), None)),
        "pipe",
        "FIFO",
    ),
    Hostile(
        "hard-link",
        lambda: with_tarfile(
            (info("app/a.txt"), b"x"), (info("app/h", tarfile.LNKTYPE, link="app/a.txt"), None)
        ),
        "app/h",
        "hard link to 'app/a.txt'",
        old_check_accepts=True,
    ),
    Hostile(
        "reserved-marker-name",
        lambda: gz(member(b"./.chassis-release", b"forged\n")),
        "./.chassis-release",
        "'.chassis-release' is reserved",
        old_check_accepts=True,
    ),
    # --- paths ------------------------------------------------------------------
    Hostile(
        "absolute-path",
        lambda: gz(member(b"/etc/cron.d/chassis", b"* * * * * root id\n")),
        "/etc/cron.d/chassis",
        "absolute path",
    ),
    Hostile(
        "dotdot-path",
        lambda: gz(member(b"app/../../escape.txt", b"x")),
        "app/../../escape.txt",
        "'..' component",
    ),
    Hostile(
        "dotdot-in-pax-path",
        lambda: gz(pax(("path", b"../escape.txt")), member(b"", b"x")),
        "../escape.txt",
        "'..' component",
    ),
    Hostile(
        "control-character-name",
        lambda: gz(member(b"app/bad\nname", b"x")),
        "app/bad\nname",
        "control character",
        old_check_accepts=True,
    ),
    Hostile(
        "nul-in-pax-path",
        lambda: gz(pax(("path", b"app/a\0/../../x")), member(b"app/a", b"x")),
        "app/a\0/../../x",
        "control character",
    ),
    Hostile(
        "invalid-utf8-name",
        lambda: gz(member(b"app/\xff.txt", b"x")),
        "app/\\xff.txt",
        "not valid UTF-8",
        old_check_accepts=True,
    ),
    Hostile(
        "file-name-ending-in-slash",
        lambda: gz(member(b"app/x/", b"x")),
        "app/x/",
        "name ending in '/'",
        old_check_accepts=True,
    ),
    # --- symlinks ---------------------------------------------------------------
    Hostile(
        "symlink-absolute",
        lambda: gz(symlink(b"passwd", b"/etc/passwd")),
        "passwd",
        "symlink to absolute path '/etc/passwd'",
    ),
    Hostile(
        "symlink-escape",
        lambda: gz(OK, symlink(b"app/up", b"../../../victim.txt")),
        "app/up",
        "symlink target '../../../victim.txt' leaves the bundle",
    ),
    Hostile(
        "symlink-escape-through-symlink",
        lambda: gz(symlink(b"here", b"."), symlink(b"up", b"here/..")),
        "up",
        "leaves the bundle",
    ),
    Hostile(
        "write-through-symlink",
        lambda: gz(symlink(b"etc", b"app"), member(b"etc/passwd", b"x")),
        "etc/passwd",
        "would be written through symlink 'etc'",
    ),
    Hostile(
        "symlink-loop",
        lambda: gz(symlink(b"a", b"b"), symlink(b"b", b"a")),
        "a",
        "loops",
    ),
    # --- limits -----------------------------------------------------------------
    Hostile(
        "file-over-the-size-limit",
        lambda: gz(header(b"big.bin", size=3 * 1024**3)),
        "big.bin",
        "file is 3221225472 bytes, over the limit of 2147483648",
    ),
]

BY_ID = {h.id: h for h in CORPUS}
