"""Hostile bundles are refused at ``release add`` by the reader the hosts
unpack with (issue 11): one clear line naming the entry, exit 3, nothing
registered. Bundles from ordinary writers still pass."""

from __future__ import annotations

import ast
import gzip
import json
import resource
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from adapters import archive
from chassis.bundles import BundleError, build_bundle, check_bundle
from tests.conftest import Runner
from tests.hostile_bundles import CORPUS, OK, Hostile, gz, header, member, pax

IDS = [h.id for h in CORPUS]


def test_the_corpus_is_large_and_covers_both_reproduced_bypasses() -> None:
    assert len(CORPUS) >= 20
    assert len(set(IDS)) == len(IDS)
    assert {"bad-checksum-hides-entries", "gnu-prefix-marker-symlink"} <= set(IDS)
    assert sum(h.old_check_accepts for h in CORPUS) >= 20


@pytest.mark.parametrize("hostile", CORPUS, ids=IDS)
def test_check_bundle_refuses(tmp_path: Path, hostile: Hostile) -> None:
    bundle = tmp_path / f"{hostile.id}.tar.gz"
    bundle.write_bytes(hostile.build())
    with pytest.raises(BundleError) as e:
        check_bundle(bundle)
    assert e.value.member == hostile.entry
    assert hostile.problem in e.value.problem
    line = e.value.diagnostics()
    assert "\n" not in line and "\x00" not in line
    assert e.value.exit_code == 3


@pytest.mark.parametrize("hostile", CORPUS, ids=IDS)
def test_release_add_refuses_with_one_line(
    run: Runner, workspace: Path, tmp_path: Path, hostile: Hostile
) -> None:
    bundle = tmp_path / "dist" / f"{hostile.id}.tar.gz"
    bundle.parent.mkdir()
    bundle.write_bytes(hostile.build())
    result = run("release", "add", "bad", "--artifact", str(bundle))
    assert result.exit_code == 3, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.startswith(f"chassis: error: bundle {bundle}: ")
    if hostile.entry is not None:
        assert f"member {hostile.entry!r}: " in line
    assert hostile.problem in line
    listed = run.ok("release", "list", "--json").stdout
    assert "bad" not in {r.get("label") for r in json.loads(listed)}
    assert not list((workspace / ".chassis").glob("bundles/*"))


# ----------------------------------------------------------------- limits


def test_limits_are_the_documented_defaults() -> None:
    assert archive.MAX_FILE_BYTES == 2 * 1024**3
    assert archive.MAX_ENTRIES == 100_000
    assert archive.Limits() == archive.Limits(2 * 1024**3, 100_000, 16 * 1024**3)


def test_entry_count_limit(tmp_path: Path) -> None:
    bundle = tmp_path / "many.tar.gz"
    bundle.write_bytes(gz(*(member(f"f{i}".encode(), b"x") for i in range(6))))
    assert check_bundle(bundle, archive.Limits(max_entries=6)).files == 6
    with pytest.raises(BundleError, match=r"member 'f5': more than 5 entries \(the limit\)"):
        check_bundle(bundle, archive.Limits(max_entries=5))


def test_file_size_and_total_limits(tmp_path: Path) -> None:
    bundle = tmp_path / "sizes.tar.gz"
    bundle.write_bytes(gz(member(b"a", b"x" * 100), member(b"b", b"y" * 100)))
    assert check_bundle(bundle, archive.Limits(max_file_bytes=100)).size == 200
    with pytest.raises(BundleError, match=r"'a': file is 100 bytes, over the limit of 99"):
        check_bundle(bundle, archive.Limits(max_file_bytes=99))
    with pytest.raises(BundleError, match=r"'b': the files hold more than 150 bytes"):
        check_bundle(bundle, archive.Limits(max_total_bytes=150))


def test_padding_after_the_end_is_bounded(tmp_path: Path) -> None:
    bundle = tmp_path / "zeros.tar.gz"
    bundle.write_bytes(gz(OK, end=bytes(3 << 20)))
    with pytest.raises(BundleError, match="bytes of padding after the end-of-archive marker"):
        check_bundle(bundle)


def test_a_bundle_without_an_end_marker_is_truncated(tmp_path: Path) -> None:
    bundle = tmp_path / "cut.tar.gz"
    bundle.write_bytes(gzip.compress(OK))
    with pytest.raises(BundleError, match=r"not a readable tar\.gz archive .*end-of-archive"):
        check_bundle(bundle)


def test_a_file_cut_short_inside_its_data(tmp_path: Path) -> None:
    bundle = tmp_path / "cut.tar.gz"
    bundle.write_bytes(gzip.compress(header(b"big", size=5000) + bytes(1024)))
    with pytest.raises(BundleError, match=r"member 'big': .*ends inside a file's data"):
        check_bundle(bundle)


# ------------------------------------------------ ordinary writers still pass


def tree(root: Path) -> Path:
    deep = root / "app" / ("d" * 60) / ("e" * 70)
    deep.mkdir(parents=True)
    (deep / ("f" * 120 + ".txt")).write_text("deep\n")
    (root / "app" / "héllo wörld.txt").write_text("unicode\n")
    (root / "app" / "link").symlink_to("héllo wörld.txt")
    (root / "app" / "run.sh").write_text("#!/bin/sh\n")
    (root / "app" / "run.sh").chmod(0o755)
    (root / "empty").mkdir()
    return root


def expected(root: Path) -> dict[str, tuple[str, str | bytes]]:
    found: dict[str, tuple[str, str | bytes]] = {}
    for path in root.rglob("*"):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            found[rel] = ("link", str(path.readlink()))
        elif path.is_file():
            found[rel] = (oct(0o755 if path.stat().st_mode & 0o100 else 0o644), path.read_bytes())
        else:
            found[rel] = ("dir", "")
    return found


def writers(src: Path, out: Path) -> dict[str, Path]:
    made: dict[str, Path] = {}
    for name, fmt in (("tarfile-gnu", tarfile.GNU_FORMAT), ("tarfile-pax", tarfile.PAX_FORMAT)):
        made[name] = out / f"{name}.tar.gz"
        with tarfile.open(made[name], "w:gz", format=fmt) as tar:
            tar.add(src, arcname=".")
    made["chassis"] = out / "chassis.tar.gz"
    build_bundle(src, made["chassis"])
    tar_bin = shutil.which("tar")
    if tar_bin is not None:
        for style in ("gnu", "posix"):
            made[f"gnu-tar-{style}"] = out / f"gnu-tar-{style}.tar.gz"
            subprocess.run(
                [
                    tar_bin,
                    f"--format={style}",
                    "-czf",
                    str(made[f"gnu-tar-{style}"]),
                    "-C",
                    str(src),
                    ".",
                ],
                check=True,
            )
    git = shutil.which("git")
    if git is not None:
        repo = out / "repo"
        shutil.copytree(src, repo, symlinks=True)

        def git_in_repo(*args: str) -> None:
            subprocess.run([git, *args], check=True, cwd=repo, capture_output=True)

        git_in_repo("init", "-q", ".")
        git_in_repo("add", "-A")
        git_in_repo("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "t")
        made["git-archive"] = out / "git-archive.tar.gz"
        git_in_repo("archive", "--format=tar.gz", "-o", str(made["git-archive"]), "HEAD")
    return made


def test_bundles_from_ordinary_writers_are_accepted_and_unpack_alike(tmp_path: Path) -> None:
    src = tree(tmp_path / "src")
    want = expected(src)
    for name, bundle in writers(src, tmp_path).items():
        summary = archive.scan(bundle)
        assert summary.files == 3 and summary.symlinks == 1, name
        releases = tmp_path / f"releases-{name}"
        releases.mkdir()
        archive.unpack(bundle, releases, "r", "id")
        got = expected(releases / "r")
        assert got.pop(".chassis-release") == ("0o644", b"id\n"), name
        if name == "git-archive":  # git keeps no empty directory
            got["empty"] = ("dir", "")
        assert got == want, name


def test_git_archive_placeholder_names_are_accepted(tmp_path: Path) -> None:
    long = ("app/" + "d" * 60 + "/" + "f" * 120 + ".txt").encode()
    placeholder = b"45b983be36b73c0788dc9cbcb76cbb80fc7bb057.data"
    bundle = tmp_path / "git.tar.gz"
    bundle.write_bytes(
        gz(
            pax(("comment", b"45b983be36b73c0788dc9cbcb76cbb80fc7bb057"), kind=b"g"),
            pax(("path", long)),
            member(placeholder, b"deep\n"),
        )
    )
    assert archive.scan(bundle).top_level == ("app",)


def test_a_shortened_header_name_is_accepted_but_not_a_different_one(tmp_path: Path) -> None:
    long = b"app/a/b/c/" + b"f" * 120 + b".txt"
    ok = tmp_path / "ok.tar.gz"
    ok.write_bytes(gz(pax(("path", long)), member(b"app/c/" + b"f" * 90, b"x")))
    assert archive.scan(ok).files == 1
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(gz(pax(("path", long)), member(b"app/z/" + b"f" * 90, b"x")))
    with pytest.raises(archive.ArchiveRefused, match="the header names 'app/z/"):
        archive.scan(bad)


# ------------------------------------------------------ the shipped module


def test_the_reader_is_self_contained() -> None:
    """It is shipped as source to a bare ``python3 -``: stdlib imports only."""
    tree_ = ast.parse(archive.source())
    ours = {"adapters", "chassis", "ledger", "projections", "proofs"}
    for node in ast.walk(tree_):
        names = (
            [a.name for a in node.names]
            if isinstance(node, ast.Import)
            else [node.module or ""]
            if isinstance(node, ast.ImportFrom)
            else []
        )
        for name in names:
            assert name.split(".")[0] not in ours, name
            if name != "__future__":
                assert name.split(".")[0] in sys.stdlib_module_names, name


def oldest_python() -> str | None:
    """Python 3.8, the oldest a host may have (pyenv's shims would pick another)."""
    for candidate in (
        Path.home() / ".pyenv/versions/3.8.18/bin/python3",
        Path("/usr/bin/python3.8"),
    ):
        if candidate.is_file():
            return str(candidate)
    return None


@pytest.mark.parametrize("python", ["python3", "oldest"])
def test_the_shipped_script_runs_on_stdin(tmp_path: Path, python: str) -> None:
    exe = oldest_python() if python == "oldest" else shutil.which("python3")
    if exe is None:
        pytest.skip(f"no {python} interpreter here")
    good = tmp_path / "good.tar.gz"
    good.write_bytes(gz(OK))
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(CORPUS[0].build())
    (tmp_path / "releases").mkdir()
    script = archive.source().encode()

    def host(*args: str) -> tuple[int, dict[str, object] | None]:
        proc = subprocess.run(
            [exe, "-", *args], input=script, capture_output=True, check=False, cwd=tmp_path
        )
        return proc.returncode, archive.host_report(proc.stdout.decode())

    assert host("unpack", str(good), "releases", "r1", "id") == (
        0,
        {"ok": True, "files": 1, "dirs": 1, "symlinks": 0, "size": 5, "top_level": ["app"]},
    )
    assert (tmp_path / "releases" / "r1" / "app" / "ok.txt").read_text() == "fine\n"
    code, report = host("unpack", str(bad), "releases", "r2", "id")
    assert code == archive.REFUSED_EXIT and report is not None
    assert report["refused"] is True and report["entry"] == "hidden"
    assert sorted(p.name for p in (tmp_path / "releases").iterdir()) == ["r1"]
    assert host("check", str(bad))[0] == archive.REFUSED_EXIT


def test_a_failed_write_names_the_file_and_leaves_nothing(tmp_path: Path) -> None:
    """A disk that fills up mid-file (here: a file-size rlimit) is not a
    refusal: the host script names the file and the error, exits 1, and
    removes the partial directory."""
    bundle = tmp_path / "big.tar.gz"
    bundle.write_bytes(gz(OK, member(b"app/big.bin", bytes(64 * 1024))))
    (tmp_path / "releases").mkdir()

    def small_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    proc = subprocess.run(
        [sys.executable, "-I", "-", "unpack", str(bundle), str(tmp_path / "releases"), "r", "id"],
        input=archive.source().encode(),
        capture_output=True,
        check=False,
        preexec_fn=small_files,
    )
    assert proc.returncode == 1, proc.stderr
    assert archive.host_report(proc.stdout.decode()) == {
        "ok": False,
        "refused": False,
        "entry": None,
        "problem": "app/big.bin: File too large",
    }
    assert list((tmp_path / "releases").iterdir()) == []
