"""Hostile bundles forced past ``release add`` are refused on the host by the
same reader, locally and over SSH, and change nothing outside the release
directory: the whole world around the host root (every path, type, mode,
owner, content and link target) hashes the same before and after, and no
``.unpack`` directory is left behind (issue 11).

The bundle is put on the host by the executor's own ``upload`` and
``verify`` steps, then its ``unpack`` step runs: exactly what a deploy does
with a bundle whose sha256 the ledger recorded.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from adapters.connectors.base import Connector
from adapters.connectors.local import LocalConnector
from adapters.connectors.ssh import SSHConnector
from adapters.supervisors.direct import DirectSupervisor
from chassis.bundles import sha256_file
from chassis.engine.executor import HostDeployment, StepFailed
from chassis.engine.plan import HostPlan, Plan
from chassis.sample_app import build_sample_release
from tests.hostile_bundles import BY_ID, CORPUS, Hostile
from tests.sshd import SSHTestHost

OVER_SSH = [
    "bad-checksum-hides-entries",
    "gnu-prefix-marker-symlink",
    "symlink-escape",
    "write-through-symlink",
    "hard-link",
    "data-after-end-marker",
    "directory-then-symlink",
    "sticky-world-writable-directory",
]
Record = tuple[str, bool, str, dict[str, Any]]


def snapshot(top: Path) -> dict[str, tuple[int, int, int, int, str]]:
    """Every path under ``top``: type, permission bits, owner, group, and the
    sha256 of a file, the target of a link, or the device of a node."""
    found: dict[str, tuple[int, int, int, int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for path in [Path(dirpath), *(Path(dirpath, n) for n in (*dirnames, *filenames))]:
            st = path.lstat()
            if stat.S_ISREG(st.st_mode):
                what = hashlib.sha256(path.read_bytes()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                what = os.readlink(path)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                what = f"dev {st.st_rdev}"
            else:
                what = ""
            found[path.relative_to(top).as_posix()] = (
                stat.S_IFMT(st.st_mode),
                stat.S_IMODE(st.st_mode),
                st.st_uid,
                st.st_gid,
                what,
            )
    return found


@pytest.fixture
def world(tmp_path: Path) -> Path:
    """``world/host`` is the host root; beside it, things an escape would hit."""
    top = tmp_path / "world"
    (top / "host").mkdir(parents=True)
    (top / "victim.txt").write_text("precious\n")
    (top / "outside").mkdir()
    (top / "outside" / "keep.txt").write_text("keep\n")
    return top


def deployment(
    connector: Connector, root: Path, bundle: Path, steps: list[str], records: list[Record]
) -> HostDeployment:
    sha = sha256_file(bundle)
    host = HostPlan(
        host=connector.name,
        connector="local" if isinstance(connector, LocalConnector) else "ssh",
        address="127.0.0.1",
        root=str(root),
        supervisor="direct",
        groups=[],
        components=[],
        steps=steps,
    )
    plan = Plan(
        app="shop",
        environment="test",
        profile="p",
        label="bad",
        release_id=hashlib.sha256(b"release:" + sha.encode()).hexdigest(),
        release_dir=sha[:16],
        bundle_sha256=sha,
        bundle_size=bundle.stat().st_size,
        hosts=[host],
    )
    return HostDeployment(
        plan=plan,
        host=host,
        connector=connector,
        supervisor=DirectSupervisor(connector, str(root)),
        bundle=bundle,
        record=lambda step, ok, detail, data: records.append((step, ok, detail, data)),
    )


def refused_on_host(connector: Connector, world: Path, hostile: Hostile) -> None:
    root = world / "host"
    bundle = world.parent / "dist" / f"{hostile.id}.tar.gz"
    bundle.parent.mkdir(exist_ok=True)
    bundle.write_bytes(hostile.build())
    records: list[Record] = []
    deployment(connector, root, bundle, ["upload", "verify"], records).run()
    assert [r[:2] for r in records] == [("upload", True), ("verify", True)]

    before = snapshot(world)
    unpack = deployment(connector, root, bundle, ["unpack"], records)
    with pytest.raises(StepFailed) as e:
        unpack.run()
    after = snapshot(world)

    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"{hostile.id} changed {changed}"
    assert not list((root / "releases").glob("*.unpack"))
    step, ok, detail, data = records[-1]
    assert (step, ok) == ("unpack", False)
    assert e.value.step == "unpack" and e.value.detail == detail
    assert "\n" not in detail
    assert detail.startswith(f"bundle refused on {connector.name}: ")
    if hostile.entry is not None:
        assert f"entry {hostile.entry!r}: " in detail
        assert data["entry"] == hostile.entry
    assert hostile.problem in detail
    assert data["refused"] is True


@pytest.mark.parametrize("hostile", CORPUS, ids=[h.id for h in CORPUS])
def test_refused_on_a_local_host(world: Path, hostile: Hostile) -> None:
    refused_on_host(LocalConnector("local-1"), world, hostile)


@pytest.fixture
def ssh_connector(ssh_hosts: list[SSHTestHost]) -> Iterator[SSHConnector]:
    with SSHConnector(ssh_hosts[0].settings()) as connector:
        yield connector


@pytest.mark.parametrize("hostile_id", OVER_SSH)
def test_refused_on_an_ssh_host(world: Path, ssh_connector: SSHConnector, hostile_id: str) -> None:
    refused_on_host(ssh_connector, world, BY_ID[hostile_id])


# ------------------------------------------------- good bundles, stale state


def place_good(connector: Connector, world: Path) -> tuple[Path, str, list[Record]]:
    """Unpack the sample app after planting a stale ``.unpack`` symlink that
    points outside and a half-unpacked release directory without its marker."""
    bundle, sha = build_sample_release(world.parent / "dist", "9.9.9")
    root = world / "host"
    releases = root / "releases"
    releases.mkdir(parents=True)
    (releases / f"{sha[:16]}.unpack").symlink_to(world / "outside")
    (releases / sha[:16] / "app").mkdir(parents=True)
    (releases / sha[:16] / "app" / "stale.py").write_text("old\n")
    records: list[Record] = []
    beside = {k: v for k, v in snapshot(world).items() if not k.startswith("host")}
    deployment(connector, root, bundle, ["upload", "verify", "unpack"], records).run()
    assert {k: v for k, v in snapshot(world).items() if not k.startswith("host")} == beside
    return releases / sha[:16], sha, records


def check_placed(world: Path, release: Path, records: list[Record]) -> None:
    assert records[-1][:2] == ("unpack", True)
    assert records[-1][3] == {"files": 5, "dirs": 1, "symlinks": 0, "size": records[-1][3]["size"]}
    assert sorted(p.name for p in release.iterdir()) == [".chassis-release", "VERSION", "app"]
    assert sorted(p.name for p in (release / "app").iterdir()) == [
        "api.py",
        "gateway.py",
        "score.py",
        "worker.py",
    ]
    assert stat.S_IMODE(release.stat().st_mode) == 0o755
    assert stat.S_IMODE((release / "app" / "api.py").stat().st_mode) == 0o755
    assert stat.S_IMODE((release / "VERSION").stat().st_mode) == 0o644
    assert (release / "VERSION").read_text() == "9.9.9\n"
    marker = release / ".chassis-release"
    assert stat.S_IMODE(marker.stat().st_mode) == 0o644 and len(marker.read_text()) == 65
    assert not list(release.parent.glob("*.unpack"))
    assert sorted(p.name for p in (world / "outside").iterdir()) == ["keep.txt"]


def test_a_good_bundle_replaces_stale_state_locally(world: Path) -> None:
    connector = LocalConnector("local-1")
    release, _, records = place_good(connector, world)
    check_placed(world, release, records)
    again: list[Record] = []
    bundle = next((world.parent / "dist").glob("*.tar.gz"))
    deployment(connector, world / "host", bundle, ["unpack"], again).run()
    assert again == [("unpack", True, "already unpacked", {})]


def test_a_good_bundle_replaces_stale_state_over_ssh(
    world: Path, ssh_connector: SSHConnector
) -> None:
    release, _, records = place_good(ssh_connector, world)
    check_placed(world, release, records)


def test_a_host_without_python3_is_named(world: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    connector = LocalConnector("local-1")
    bundle, _ = build_sample_release(world.parent / "dist", "9.9.9")
    records: list[Record] = []
    deployment(connector, world / "host", bundle, ["upload", "verify"], records).run()
    monkeypatch.setenv("PATH", "/nonexistent")
    connector.host_python = "python3"  # found on PATH, not at /usr/bin/python3
    with pytest.raises(StepFailed, match="python3 is not installed there; unpacking needs it"):
        deployment(connector, world / "host", bundle, ["unpack"], records).run()
    assert not list((world / "host" / "releases").glob("*.unpack"))
