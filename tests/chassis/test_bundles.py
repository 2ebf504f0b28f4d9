"""Release bundles: byte-for-byte reproducible, and unsafe archives refused."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from adapters import archive
from chassis.bundles import BundleError, BundleInfo, build_bundle, check_bundle, sha256_file


def make_tree(root: Path) -> Path:
    (root / "app" / "static").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "VERSION").write_text("1.2.3\n")
    (root / "app" / "main.py").write_text("print('hi')\n")
    (root / "app" / "run.sh").write_text("#!/bin/sh\necho run\n")
    (root / "app" / "run.sh").chmod(0o700)
    (root / "app" / "static" / "index.html").write_text("<p>héllo</p>\n")
    (root / "app" / "static" / "index.html").chmod(0o600)
    (root / "app" / "a.txt").write_bytes(os.urandom(5000))
    (root / "app" / "latest").symlink_to("static/index.html")
    return root


def members(bundle: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(bundle, "r:gz") as tar:
        return {m.name: m for m in tar.getmembers()}


def test_same_tree_twice_gives_identical_bytes(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "src")
    first = build_bundle(tree, tmp_path / "one.tar.gz")
    second = build_bundle(tree, tmp_path / "two.tar.gz")
    assert first == second
    assert (tmp_path / "one.tar.gz").read_bytes() == (tmp_path / "two.tar.gz").read_bytes()
    assert first == hashlib.sha256((tmp_path / "one.tar.gz").read_bytes()).hexdigest()


def test_a_copy_elsewhere_with_other_mtimes_and_owners_gives_identical_bytes(
    tmp_path: Path,
) -> None:
    tree = make_tree(tmp_path / "src")
    digest = build_bundle(tree, tmp_path / "orig.tar.gz")

    copy = tmp_path / "elsewhere" / "deeper" / "copy"
    shutil.copytree(tree, copy, symlinks=True)
    for path in [copy, *copy.rglob("*")]:
        os.utime(path, (1_700_000_000, 1_700_000_000), follow_symlinks=False)
        if os.geteuid() == 0:
            os.chown(path, 1234, 4321, follow_symlinks=False)
    (copy / "app" / "main.py").chmod(0o664)  # group-writable: still 0644 in the bundle
    old_umask = os.umask(0o077)
    try:
        (copy / "empty").rmdir()
        (copy / "empty").mkdir()  # recreated with another mode and inode order
    finally:
        os.umask(old_umask)

    assert build_bundle(copy, tmp_path / "copy.tar.gz") == digest
    assert (tmp_path / "copy.tar.gz").read_bytes() == (tmp_path / "orig.tar.gz").read_bytes()


def test_entries_are_sorted_and_normalised(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "src")
    bundle = tmp_path / "b.tar.gz"
    build_bundle(tree, bundle)
    with tarfile.open(bundle, "r:gz") as tar:
        names = tar.getnames()
        infos = tar.getmembers()
    assert names == sorted(names)
    assert names[0] == "VERSION"
    for m in infos:
        assert (m.mtime, m.uid, m.gid, m.uname, m.gname) == (0, 0, 0, "", "")
    by_name = members(bundle)
    assert by_name["app/run.sh"].mode == 0o755  # executable bit kept
    assert by_name["app/main.py"].mode == 0o644
    assert by_name["app/static/index.html"].mode == 0o644  # 0600 opened up
    assert by_name["app"].isdir() and by_name["app"].mode == 0o755
    assert by_name["empty"].isdir()
    assert by_name["app/latest"].issym()
    assert by_name["app/latest"].linkname == "static/index.html"

    header = bundle.read_bytes()[:10]
    assert header[:3] == b"\x1f\x8b\x08"
    assert header[3] & 0x08 == 0, "gzip header must not carry a file name"
    assert header[4:8] == b"\0\0\0\0", "gzip header mtime must be 0"


def test_bundle_unpacks_with_tar_to_the_same_tree(tmp_path: Path) -> None:
    tar_bin = shutil.which("tar")
    if tar_bin is None:
        pytest.skip("tar is not installed")
    tree = make_tree(tmp_path / "src")
    bundle = tmp_path / "b.tar.gz"
    build_bundle(tree, bundle)
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run([tar_bin, "-xzf", str(bundle), "-C", str(out)], check=True)
    for path in tree.rglob("*"):
        twin = out / path.relative_to(tree)
        if path.is_symlink():
            assert twin.readlink() == path.readlink()
        elif path.is_file():
            assert twin.read_bytes() == path.read_bytes()
            assert bool(twin.stat().st_mode & stat.S_IXUSR) == bool(path.stat().st_mode & 0o100)
        else:
            assert twin.is_dir()


def test_bundle_unpacks_with_the_hosts_reader_to_the_same_tree(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "src")
    bundle = tmp_path / "b.tar.gz"
    build_bundle(tree, bundle)
    releases = tmp_path / "releases"
    releases.mkdir()
    summary = archive.unpack(bundle, releases, "r1", "release-id")
    out = releases / "r1"
    assert (summary.files, summary.symlinks, summary.top_level) == (
        5,
        1,
        ("VERSION", "app", "empty"),
    )
    assert (out / ".chassis-release").read_text() == "release-id\n"
    assert sorted(p.name for p in releases.iterdir()) == ["r1"]
    for path in tree.rglob("*"):
        twin = out / path.relative_to(tree)
        if path.is_symlink():
            assert twin.readlink() == path.readlink()
        elif path.is_file():
            assert twin.read_bytes() == path.read_bytes()
            want = 0o755 if path.stat().st_mode & stat.S_IXUSR else 0o644
            assert stat.S_IMODE(twin.lstat().st_mode) == want
        else:
            assert twin.is_dir() and stat.S_IMODE(twin.stat().st_mode) == 0o755


def test_check_bundle_reports_contents(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "src")
    bundle = tmp_path / "b.tar.gz"
    build_bundle(tree, bundle)
    expected_size = sum(
        p.stat().st_size for p in tree.rglob("*") if p.is_file() and not p.is_symlink()
    )
    assert check_bundle(bundle) == BundleInfo(
        files=5, size=expected_size, top_level=["VERSION", "app", "empty"]
    )


def test_sha256_file_matches_hashlib(tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    data = os.urandom(3 * 1024 * 1024 + 17)
    blob.write_bytes(data)
    assert sha256_file(blob) == hashlib.sha256(data).hexdigest()
    assert sha256_file(str(blob)) == hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------- refused to build


def test_build_refuses_a_symlink_pointing_outside(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "src")
    (tree / "app" / "passwd").symlink_to("../../../etc/passwd")
    with pytest.raises(
        BundleError, match=r"app/passwd: symlink target '../../../etc/passwd' leaves the bundle"
    ) as e:
        build_bundle(tree, tmp_path / "b.tar.gz")
    assert e.value.exit_code == 3
    assert not (tmp_path / "b.tar.gz").exists()


def test_build_refuses_an_absolute_symlink(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "src")
    (tree / "passwd").symlink_to("/etc/passwd")
    with pytest.raises(BundleError, match=r"passwd.*absolute symlink target '/etc/passwd'"):
        build_bundle(tree, tmp_path / "b.tar.gz")


def test_build_refuses_a_link_escaping_through_another_link(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "src")
    (tree / "here").symlink_to(".")
    (tree / "up").symlink_to("here/..")  # "." lexically, the tree's parent in fact
    with pytest.raises(BundleError, match=r"up: symlink target 'here/..' leaves the bundle"):
        build_bundle(tree, tmp_path / "b.tar.gz")


def test_build_refuses_special_files(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "src")
    os.mkfifo(tree / "app" / "pipe")
    with pytest.raises(BundleError, match=r"app/pipe: FIFO \(special file\) cannot go"):
        build_bundle(tree, tmp_path / "b.tar.gz")


def test_build_refuses_a_device_file(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "src")
    try:
        os.mknod(tree / "null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("creating a device node needs CAP_MKNOD")
    with pytest.raises(BundleError, match=r"null: device file cannot go"):
        build_bundle(tree, tmp_path / "b.tar.gz")


def test_build_refuses_output_inside_the_tree(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "src")
    with pytest.raises(BundleError, match="outside the source tree"):
        build_bundle(tree, tree / "dist" / "b.tar.gz")


def test_build_refuses_a_missing_source(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="not a directory"):
        build_bundle(tmp_path / "nope", tmp_path / "b.tar.gz")


# ----------------------------------------------------------- refused to check


def craft(path: Path, *entries: tuple[tarfile.TarInfo, bytes | None]) -> Path:
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def regular(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.mode = 0o644
    return info, data


def special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.mode = 0o777 if kind == tarfile.SYMTYPE else 0o644
    return info, None


@pytest.mark.parametrize(
    ("entries", "member", "problem"),
    [
        ([regular("ok"), regular("../evil")], "../evil", "'..' component"),
        ([regular("app/../../evil")], "app/../../evil", "'..' component"),
        ([regular("/abs")], "/abs", "absolute path"),
        (
            [special("passwd", tarfile.SYMTYPE, "/etc/passwd")],
            "passwd",
            "symlink to absolute path '/etc/passwd'",
        ),
        (
            [special("app/up", tarfile.SYMTYPE, "../../etc/passwd")],
            "app/up",
            "leaves the bundle",
        ),
        (
            [special("here", tarfile.SYMTYPE, "."), special("up", tarfile.SYMTYPE, "here/..")],
            "up",
            "leaves the bundle",
        ),
        (
            [special("etc", tarfile.SYMTYPE, "app"), regular("etc/passwd")],
            "etc/passwd",
            "written through symlink 'etc'",
        ),
        ([special(".", tarfile.SYMTYPE, "/")], ".", "root must be a directory"),
        ([special("loop", tarfile.SYMTYPE, "loop")], "loop", "loops"),
        ([special("null", tarfile.CHRTYPE)], "null", "device file"),
        ([special("sda", tarfile.BLKTYPE)], "sda", "device file"),
        ([special("pipe", tarfile.FIFOTYPE)], "pipe", "FIFO"),
        ([special("hard", tarfile.LNKTYPE, "/etc/shadow")], "hard", "hard link"),
        ([special("hard", tarfile.LNKTYPE, "../x")], "hard", "hard link"),
        ([special("hard", tarfile.LNKTYPE, "later"), regular("later")], "hard", "hard link"),
    ],
)
def test_check_bundle_rejects_unsafe_members(
    tmp_path: Path,
    entries: list[tuple[tarfile.TarInfo, bytes | None]],
    member: str,
    problem: str,
) -> None:
    bundle = craft(tmp_path / "bad.tar.gz", *entries)
    with pytest.raises(BundleError) as e:
        check_bundle(bundle)
    assert e.value.member == member
    assert problem in e.value.problem
    line = e.value.diagnostics()
    assert "\n" not in line
    assert str(bundle) in line and repr(member) in line and problem in line
    assert isinstance(e.value, ValueError)
    assert e.value.exit_code == 3


def test_check_bundle_rejects_setuid(tmp_path: Path) -> None:
    info, data = regular("app/su")
    info.mode = 0o4755
    with pytest.raises(BundleError, match="setuid"):
        check_bundle(craft(tmp_path / "bad.tar.gz", (info, data)))


def test_check_bundle_accepts_safe_links_and_dot_prefixes(tmp_path: Path) -> None:
    root, _ = special(".", tarfile.DIRTYPE)
    root.mode = 0o755
    bundle = craft(
        tmp_path / "ok.tar.gz",
        (root, None),
        regular("./app/a.txt", b"abc"),
        special("./app/link", tarfile.SYMTYPE, "a.txt"),
        special("./alias", tarfile.SYMTYPE, "app/../app"),
    )
    assert check_bundle(bundle) == BundleInfo(files=1, size=3, top_level=["alias", "app"])


def test_check_bundle_refuses_even_a_tame_hard_link(tmp_path: Path) -> None:
    """Hard links are never placed: the one reader has no use for them."""
    bundle = craft(
        tmp_path / "bad.tar.gz",
        regular("app/a.txt", b"abc"),
        special("app/hard", tarfile.LNKTYPE, "app/a.txt"),
    )
    with pytest.raises(BundleError, match=r"'app/hard': hard link to 'app/a.txt'"):
        check_bundle(bundle)


def test_build_bundle_checks_its_output_with_the_hosts_reader(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "src")
    (tree / ".chassis-release").write_text("not yours\n")
    with pytest.raises(BundleError, match=r"\.chassis-release.*reserved") as e:
        build_bundle(tree, tmp_path / "b.tar.gz")
    assert str(tree / ".chassis-release") in e.value.diagnostics()
    assert not (tmp_path / "b.tar.gz").exists()
    assert not list(tmp_path.glob(".b.tar.gz*"))


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"not a gzip file at all", "not a readable tar.gz"),
        (gzip.compress(b"gzip but not a tar" * 40, mtime=0), "not a readable tar.gz"),
    ],
    ids=["not-gzip", "gzip-not-tar"],  # stable ids: xdist workers must collect the same tests
)
def test_check_bundle_rejects_garbage(tmp_path: Path, content: bytes, problem: str) -> None:
    bundle = tmp_path / "junk.tar.gz"
    bundle.write_bytes(content)
    with pytest.raises(BundleError, match=problem):
        check_bundle(bundle)


def test_check_bundle_rejects_truncated_archive(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "src")
    bundle = tmp_path / "b.tar.gz"
    build_bundle(tree, bundle)
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(bundle.read_bytes()[: bundle.stat().st_size // 2])
    with pytest.raises(BundleError, match=r"cut\.tar\.gz: not a readable tar\.gz"):
        check_bundle(cut)


def test_check_bundle_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="no such file"):
        check_bundle(tmp_path / "missing.tar.gz")
