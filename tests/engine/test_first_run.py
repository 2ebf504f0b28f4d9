"""First run: ``chassis init --example`` writes a stack whose release bundle
exists, so the first deploy works as written (reproduced before: the
example pointed at dist/NAME-v1.tar.gz, which nothing had built)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.connectors.local import LocalConnector
from adapters.supervisors.direct import DirectSupervisor
from tests.conftest import Runner
from tests.engine.conftest import distinct_free_ports
from tests.engine.test_deploy_local import get


@pytest.fixture
def example(run: Runner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    root = tmp_path / "shop"
    run.ok("init", str(root), "--name", "shop", "--example")
    monkeypatch.chdir(root)
    yield root
    for host in ("dev-1", "dev-2", "dev-3"):
        supervisor = DirectSupervisor(LocalConnector(host), str(root / ".chassis" / "hosts" / host))
        for component in ("gateway", "api", "worker"):
            supervisor.stop(component)


def test_the_example_deploys_right_after_init(run: Runner, example: Path) -> None:
    assert (example / "dist" / "sample-app-v1.tar.gz").is_file()
    stack = example / "chassis.toml"
    gateway, api = distinct_free_ports()  # the example's 8080/8081 may be taken here
    stack.write_text(
        re.sub(r"\b8081\b", str(api), re.sub(r"\b8080\b", str(gateway), stack.read_text()))
    )
    run.ok("stack", "validate")
    run.ok("deploy", "shop", "--env", "dev", "--profile", "ternary-split-3", "--release", "v1")
    code, body = get(gateway, "/healthz")
    assert code == 200 and "v1" in body, body
    run.ok("ledger", "verify")
