"""What a deploy runs on a host, counted: each host program is a fork and a
round trip on every host of every deploy, so none runs twice for one answer.

A real local host and the sample app's ``api`` (an HTTP server with a health
check); the connector is the real one, counting what it is asked to run.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import msgspec

from adapters.connectors.local import LocalConnector
from adapters.health.owner import OWNER_SCRIPT
from adapters.supervisors.direct import DirectSupervisor
from chassis.bundles import sha256_file
from chassis.engine.executor import HostDeployment
from chassis.engine.plan import ComponentPlan, HostPlan, Plan
from chassis.sample_app import build_sample_release
from tests.ports import free_port
from tests.recording import RecordingLocal

STEPS = ["upload", "verify", "unpack", "configure", "stop-old", "start", "health", "swap"]


def _deployment(
    connector: RecordingLocal, root: Path, bundle: Path, port: int, previous: list[str]
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
    connector: RecordingLocal, root: Path, bundle: Path, port: int, previous: list[str]
) -> None:
    """The steps one at a time, in one deployment, so each look is noted
    with the step it ran in."""
    deployment = _deployment(connector, root, bundle, port, previous)
    every = deployment.host
    for step in STEPS:
        connector.step = step
        deployment.host = msgspec.structs.replace(every, steps=[step])
        deployment.run()


def _owner_looks(connector: RecordingLocal) -> list[str]:
    """The step of each port-owner look the connector ran."""
    return [step for step, source in connector.programs if source == OWNER_SCRIPT]


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
    connector = RecordingLocal()
    try:
        _deploy(connector, root, v1, port, [])
        assert _before_the_gate(_owner_looks(connector)) == ["stop-old"]
        connector.programs.clear()
        _deploy(connector, root, v2, port, ["api"])
        assert _before_the_gate(_owner_looks(connector)) == ["stop-old", "start"]
    finally:
        DirectSupervisor(LocalConnector("h1"), str(root)).stop("api")
