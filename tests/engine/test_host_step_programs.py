"""What a deploy runs on a host, counted: each host program is a fork and a
round trip on every host of every deploy, so none runs twice for one answer.

A real local host and the sample app's ``api`` (an HTTP server with a health
check); the connector is the real one, counting what it is asked to run.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import msgspec

from adapters.connectors.base import CommandResult
from adapters.connectors.local import LocalConnector
from adapters.health.owner import OWNER_SCRIPT
from adapters.supervisors.direct import DirectSupervisor
from chassis.bundles import sha256_file
from chassis.engine.executor import HostDeployment
from chassis.engine.plan import ComponentPlan, HostPlan, Plan
from chassis.sample_app import build_sample_release
from tests.ports import free_port

STEPS = ["upload", "verify", "unpack", "configure", "stop-old", "start", "health", "swap"]


class _CountingLocal(LocalConnector):
    """A real local connector that notes each host program it runs, by step."""

    def __init__(self) -> None:
        super().__init__("h1")
        self.step = ""
        self.owner_looks: list[str] = []

    def run_python(
        self,
        source: str,
        args: Sequence[str] = (),
        *,
        timeout: float = 60.0,
        stdin: bytes | None = None,
        display: str,
    ) -> CommandResult:
        if source == OWNER_SCRIPT:
            self.owner_looks.append(self.step)
        return super().run_python(source, args, timeout=timeout, stdin=stdin, display=display)


def _deployment(
    connector: _CountingLocal, root: Path, bundle: Path, port: int, previous: list[str]
) -> HostDeployment:
    sha = sha256_file(bundle)
    api = ComponentPlan(
        name="api",
        command=f"python3 app/api.py --port {port} --bind 127.0.0.1",
        env={},
        ports={"http": port},
        health={"type": "http", "port": "http", "path": "/healthz", "interval_ms": 100},
    )
    host = HostPlan(
        host="h1",
        connector="local",
        address="127.0.0.1",
        root=str(root),
        supervisor="direct",
        groups=["g"],
        components=[api],
        steps=STEPS,
    )
    plan = Plan(
        app="shop",
        environment="test",
        profile="p",
        label=bundle.name,
        release_id=hashlib.sha256(b"release:" + sha.encode()).hexdigest(),
        release_dir=sha[:16],
        bundle_sha256=sha,
        bundle_size=bundle.stat().st_size,
        hosts=[host],
    )

    def record(step: str, ok: bool, detail: str, data: object) -> None:
        assert ok, f"{step}: {detail}"

    return HostDeployment(
        plan=plan,
        host=host,
        connector=connector,
        supervisor=DirectSupervisor(connector, str(root)),
        bundle=bundle,
        record=record,
        previous_components=previous,
    )


def _deploy(
    connector: _CountingLocal, root: Path, bundle: Path, port: int, previous: list[str]
) -> None:
    """The steps one at a time, in one deployment, so each look is noted
    with the step it ran in."""
    deployment = _deployment(connector, root, bundle, port, previous)
    every = deployment.host
    for step in STEPS:
        connector.step = step
        deployment.host = msgspec.structs.replace(every, steps=[step])
        deployment.run()


def _before_the_gate(looks: list[str]) -> list[str]:
    """The looks before the gate's (which looks at each passing probe, and
    at failing ones every half second: as many as the start takes)."""
    assert looks[-1] == "health", looks
    return [step for step in looks if step != "health"]


def test_the_ports_are_looked_at_once_before_a_first_start_and_after_each_stop(
    tmp_path: Path,
) -> None:
    """A first deploy (nothing to stop): stop-old's look at the ports is the
    start's too, since it stopped nothing. An upgrade stops the old release,
    so the start looks again."""
    dist = tmp_path / "dist"
    dist.mkdir()
    v1, _ = build_sample_release(dist, "v1")
    v2, _ = build_sample_release(dist, "v2")
    root, port = tmp_path / "host", free_port("127.0.0.1")
    connector = _CountingLocal()
    try:
        _deploy(connector, root, v1, port, [])
        assert _before_the_gate(connector.owner_looks) == ["stop-old"]
        connector.owner_looks.clear()
        _deploy(connector, root, v2, port, ["api"])
        assert _before_the_gate(connector.owner_looks) == ["stop-old", "start"]
    finally:
        DirectSupervisor(LocalConnector("h1"), str(root)).stop("api")
