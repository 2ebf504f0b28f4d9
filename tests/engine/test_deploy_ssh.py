"""The same deploy flow against three real sshd hosts on 127.0.0.11-13."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.connectors.ssh import SSHConnector
from adapters.supervisors.direct import DirectSupervisor
from chassis.sample_app import build_sample_release
from tests.conftest import Runner
from tests.engine.conftest import free_port
from tests.sshd import SSHTestHost

# Long (deploys, health windows, many processes): the parallel run starts
# these first (tests/scheduling.py).
pytestmark = pytest.mark.slow

DEPLOY = ("deploy", "lab", "--env", "lab", "--profile", "split")


@pytest.fixture
def lab(
    run: Runner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ssh_hosts: list[SSHTestHost]
) -> Iterator[tuple[Path, list[SSHTestHost], dict[str, Path]]]:
    root = tmp_path / "lab"
    run.ok("init", str(root), "--name", "lab")
    roots = {h.name: tmp_path / f"root-{h.name}" for h in ssh_hosts}
    api, gateway = free_port(), free_port()
    hosts = "".join(
        f'  {{ name = "{h.name}", connector = "ssh", address = "{h.address}", port = {h.port}, '
        f'user = "{h.user}", key = "{h.client_key}", root = "{roots[h.name]}" }},\n'
        for h in ssh_hosts
    )
    (root / "chassis.toml").write_text(
        '[app]\nname = "lab"\n\n'
        f'[components.gateway]\ncommand = "python3 app/gateway.py --bind 0.0.0.0 --port {gateway} '
        f'--upstream 127.0.0.1:{api}"\nports = {{ http = {gateway} }}\n'
        'health = { type = "http", port = "http", path = "/healthz", window_ms = 4000 }\n\n'
        f'[components.api]\ncommand = "python3 app/api.py --bind 0.0.0.0 --port {api}"\n'
        f"ports = {{ http = {api} }}\n"
        'health = { type = "http", port = "http", path = "/healthz", window_ms = 4000 }\n\n'
        '[components.worker]\ncommand = "python3 app/worker.py"\n'
        'health = { type = "command", command = "test -f ../../run/worker.ready" }\n\n'
        "[profiles.split]\n"
        'groups.edge = { components = ["gateway"] }\n'
        'groups.core = { components = ["api"] }\n'
        'groups.jobs = { components = ["worker"] }\n\n'
        f"[environments.lab]\nhosts = [\n{hosts}]\n"
    )
    monkeypatch.chdir(root)
    for host in ssh_hosts:
        run.ok("host", "trust-key", host.name, "--yes")
    dist = tmp_path / "dist"
    for version, config in (("v1", ()), ("v2", ()), ("v3", ("--config", "FAIL_HEALTH=1"))):
        bundle, _ = build_sample_release(dist, version)
        run.ok("release", "add", version, "--artifact", str(bundle), *config)
    yield root, ssh_hosts, roots
    for host in ssh_hosts:
        with SSHConnector(host.settings()) as connector:
            supervisor = DirectSupervisor(connector, str(roots[host.name]))
            for component in ("gateway", "api", "worker"):
                supervisor.stop(component)


def test_deploy_over_ssh_with_restore(
    run: Runner, lab: tuple[Path, list[SSHTestHost], dict[str, Path]]
) -> None:
    _, hosts, roots = lab
    first = json.loads(run.ok(*DEPLOY, "--release", "v1", "--json").stdout)
    assert first["status"] == "deployed"
    rows = json.loads(run.ok("status", "lab", "--env", "lab", "--json").stdout)
    assert {r["label"] for r in rows} == {"v1"} and len(rows) == 3
    by_component = {r["component"]: r for r in rows}
    api_host = next(h for h in hosts if h.name == by_component["api"]["host"])
    api_port = int(
        Path("chassis.toml")
        .read_text()
        .split("[components.api]")[1]
        .split("http = ")[1]
        .split(" ")[0]
    )
    with urllib.request.urlopen(f"http://{api_host.address}:{api_port}/healthz", timeout=5) as r:
        assert r.read().decode().startswith("ok api v1")
    current = roots[api_host.name] / "current"
    assert (
        current.is_symlink()
        and (current / ".chassis-release").read_text().strip() == by_component["api"]["release_id"]
    )

    run.ok(*DEPLOY, "--release", "v2")
    failed = run(*DEPLOY, "--release", "v3", "--json")
    assert failed.exit_code == 16
    rows = json.loads(run.ok("status", "lab", "--env", "lab", "--json").stdout)
    assert {r["label"] for r in rows} == {"v2"}
    with urllib.request.urlopen(f"http://{api_host.address}:{api_port}/healthz", timeout=5) as r:
        assert "v2" in r.read().decode()
    again = json.loads(run.ok(*DEPLOY, "--release", "v2", "--json").stdout)
    assert again["status"] == "noop"
    run.ok("ledger", "verify")


def test_a_host_down_before_deploy_costs_the_others_nothing(
    run: Runner,
    lab: tuple[Path, list[SSHTestHost], dict[str, Path]],
    closed_port: tuple[str, int],
) -> None:
    """h3 is inventoried, then goes away (its address now refuses connections):
    the pre-flight finds it before the intent, so the deploy exits 11 naming
    h3 and its cause, records nothing and leaves h1 and h2 running v1."""
    root, hosts, roots = lab
    run.ok(*DEPLOY, "--release", "v1")
    before = run.ok("ledger", "log", "--json").stdout
    releases = {h.name: (roots[h.name] / "current").resolve() for h in hosts}
    stack = root / "chassis.toml"
    h3 = hosts[2]
    stack.write_text(
        stack.read_text().replace(
            f'address = "{h3.address}", port = {h3.port}',
            f'address = "{closed_port[0]}", port = {closed_port[1]}',
        )
    )
    result = run(*DEPLOY, "--release", "v2", "--max-failures", "0", "--json")
    assert result.exit_code == 11
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("chassis: error: host h3 (") and "refused" in error.lower()
    assert "nothing was recorded" in error and "Traceback" not in result.stderr
    assert run.ok("ledger", "log", "--json").stdout == before
    assert {h.name: (roots[h.name] / "current").resolve() for h in hosts} == releases
    rows = json.loads(run.ok("status", "lab", "--env", "lab", "--json").stdout)
    assert {r["label"] for r in rows} == {"v1"}
    # Redeploying what every host already runs touches no host, so it needs
    # none: a recorded no-op, without the pre-flight (issue 17's no-op budget).
    again = run.ok(*DEPLOY, "--release", "v1", "--json")
    assert json.loads(again.stdout)["status"] == "noop"
    assert "pre-flight: reaching" not in again.stderr


def _tree(root: Path) -> dict[str, object]:
    """Where ``current`` points and every file under it (config included)."""
    current = root / "current"
    target = current.resolve()
    files = {
        str(p.relative_to(target)): p.read_bytes()
        for p in sorted(target.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }
    return {"target": current.readlink().as_posix(), "files": files}


def test_rollback_over_ssh_restores_files_config_and_processes(
    run: Runner, lab: tuple[Path, list[SSHTestHost], dict[str, Path]]
) -> None:
    _, hosts, roots = lab
    run.ok(*DEPLOY, "--release", "v1")
    v1 = {name: _tree(root) for name, root in roots.items()}
    run.ok(*DEPLOY, "--release", "v2")
    assert run(*DEPLOY, "--release", "v3").exit_code == 16
    assert {name: _tree(root) for name, root in roots.items()} != v1

    result = json.loads(run.ok("rollback", "lab", "--env", "lab", "--json").stdout)
    assert result["target_revision"] == 1 and result["restored_exactly"] is True
    assert [s["revision"] for s in result["skipped"]] == [], "3 failed after 2: not before it"
    assert {name: _tree(root) for name, root in roots.items()} == v1
    rows = json.loads(run.ok("status", "lab", "--env", "lab", "--json").stdout)
    by_component = {r["component"]: r for r in rows}
    assert {r["label"] for r in rows} == {"v1"}
    api_host = next(h for h in hosts if h.name == by_component["api"]["host"])
    section = Path("chassis.toml").read_text().split("[components.api]")[1]
    api_port = int(section.split("http = ")[1].split(" ")[0])
    with urllib.request.urlopen(f"http://{api_host.address}:{api_port}/healthz", timeout=5) as r:
        assert r.read().decode().startswith("ok api v1")
    # Rolling back the rollback (to the revision it undid) brings v2 back.
    again = json.loads(run.ok("rollback", "lab", "--env", "lab", "--to", "2", "--json").stdout)
    assert again["restored_exactly"] is True
    with urllib.request.urlopen(f"http://{api_host.address}:{api_port}/healthz", timeout=5) as r:
        assert "v2" in r.read().decode()
    run.ok("ledger", "verify")
