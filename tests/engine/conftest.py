"""A workspace with the example stack on free ports and sample releases v1-v3,
whose processes are always stopped afterwards."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.connectors.local import LocalConnector
from adapters.supervisors.direct import DirectSupervisor
from chassis.sample_app import build_sample_release
from tests import ports
from tests.conftest import Runner


def distinct_free_ports() -> tuple[int, int]:
    first = free_port()
    second = free_port()
    while second == first:
        second = free_port()
    return first, second


def free_port() -> int:
    return ports.free_port()


@pytest.fixture
def shop(run: Runner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    root = build_shop(run, tmp_path, monkeypatch)
    yield root
    stop_shop(root)


def build_shop(run: Runner, where: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The example workspace ``where/shop`` (three local hosts, releases v1,
    v2 and a v3 that fails its health gate), made the cwd."""
    root = where / "shop"
    run.ok("init", str(root), "--name", "shop", "--example")
    stack = root / "chassis.toml"
    gateway, api = distinct_free_ports()
    text = re.sub(r"\b8081\b", str(api), re.sub(r"\b8080\b", str(gateway), stack.read_text()))
    stack.write_text(text.replace("window_ms = 8000", "window_ms = 4000"))
    monkeypatch.chdir(root)
    dist = where / "dist"
    for version, config in (("v1", ()), ("v2", ()), ("v3", ("--config", "FAIL_HEALTH=1"))):
        bundle, _ = build_sample_release(dist, version)
        run.ok("release", "add", version, "--artifact", str(bundle), *config)
    return root


def stop_shop(root: Path) -> None:
    """Stop whatever the example stack runs on the workspace's hosts."""
    for host in ("dev-1", "dev-2", "dev-3"):
        supervisor = DirectSupervisor(LocalConnector(host), str(root / ".chassis" / "hosts" / host))
        for component in ("gateway", "api", "worker"):
            supervisor.stop(component)
