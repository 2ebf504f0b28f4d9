"""Deploying the sample app to three local hosts: real processes, real HTTP."""

from __future__ import annotations

import hashlib
import json
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from ledger.canonical import canonical_json
from tests.conftest import Runner

# Long (deploys, health windows, many processes): the parallel run starts
# these first (tests/scheduling.py).
pytestmark = pytest.mark.slow

DEPLOY = ("deploy", "shop", "--env", "dev", "--profile", "ternary-split-3")


def status(run: Runner) -> dict[tuple[str, str], dict[str, Any]]:
    rows = json.loads(run.ok("status", "shop", "--env", "dev", "--json").stdout)
    return {(r["host"], r["component"]): r for r in rows}


def port_of(shop: Path, component: str) -> int:
    stack = (shop / "chassis.toml").read_text()
    section = stack[stack.index(f"[components.{component}]") :]
    return int(section.split("http = ", 1)[1].split(" ", 1)[0])


def get(port: int, path: str = "/") -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_plan_is_data_and_changes_nothing(run: Runner, shop: Path) -> None:
    before = json.loads(run.ok("ledger", "log", "--json").stdout)
    plan = json.loads(
        run.ok(
            "plan",
            "shop",
            "--env",
            "dev",
            "--profile",
            "ternary-split-3",
            "--release",
            "v1",
            "--json",
        ).stdout
    )
    dry = json.loads(run.ok(*DEPLOY, "--release", "v1", "--dry-run", "--json").stdout)
    assert plan == dry
    digest = plan.pop("digest")
    assert digest == hashlib.sha256(b"chassis.plan.v1\x00" + canonical_json(plan)).hexdigest()
    assert sorted(h["host"] for h in plan["hosts"]) == ["dev-1", "dev-2", "dev-3"]
    after = json.loads(run.ok("ledger", "log", "--json").stdout)
    assert after == before, "planning appends nothing: no intent, no host, no inventory"
    hosts = json.loads(run.ok("host", "list", "--json").stdout)
    assert all(h["facts"] is None for h in hosts), "hosts probed for a plan are not recorded"


def test_deploy_v1_v2_then_failing_v3_is_restored(run: Runner, shop: Path) -> None:
    first = json.loads(run.ok(*DEPLOY, "--release", "v1", "--json").stdout)
    assert first["status"] == "deployed" and first["revision"] == 1
    rows = status(run)
    assert {k[1] for k in rows} == {"gateway", "api", "worker"}
    assert {r["label"] for r in rows.values()} == {"v1"}
    api, gateway = port_of(shop, "api"), port_of(shop, "gateway")
    code, body = get(api, "/healthz")
    assert code == 200 and body.startswith("ok api v1")
    api_host = next(host for host, component in rows if component == "api")
    host_root = shop / ".chassis" / "hosts" / api_host
    assert (host_root / "current").resolve().name == first_release_dir(host_root)

    run.ok(*DEPLOY, "--release", "v2")
    assert {r["label"] for r in status(run).values()} == {"v2"}
    assert json.loads(get(gateway, "/")[1])["version"] == "v2"

    again = json.loads(run.ok(*DEPLOY, "--release", "v2", "--json").stdout)
    assert again["status"] == "noop"

    failed = run(*DEPLOY, "--release", "v3", "--json")
    assert failed.exit_code == 16
    summary = json.loads(failed.stdout)
    assert summary["status"] == "failed" and "health" in summary["description"]
    assert all(h["restored"] for h in summary["hosts"].values())
    assert {r["label"] for r in status(run).values()} == {"v2"}
    assert get(api, "/healthz")[0] == 200 and "v2" in get(api, "/healthz")[1]

    history = json.loads(run.ok("history", "shop", "--env", "dev", "--json").stdout)
    assert [(r["revision"], r["label"], r["status"]) for r in history["revisions"]] == [
        (1, "v1", "superseded"),
        (2, "v2", "deployed"),
        (3, "v2", "noop"),
        (4, "v3", "failed"),
    ]
    assert history["last_successful"] == 2 and history["lease"] is None
    log = json.loads(run.ok("ledger", "log", "--json").stdout)
    health_steps = [e for e in log if e["topic"] == "chassis.installation.step-recorded.v1"]
    assert health_steps, "every step outcome is an event"
    run.ok("ledger", "verify")


def first_release_dir(host_root: Path) -> str:
    return sorted(p.name for p in (host_root / "releases").iterdir() if p.is_dir())[0]


def test_corrupted_bundle_is_refused_before_any_event(run: Runner, shop: Path) -> None:
    """The store copy no longer has its release's sha256: the pre-flight refuses
    it (exit 8) before the intent, so no host is touched and nothing recorded."""
    run.ok(*DEPLOY, "--release", "v1")
    store = shop / ".chassis" / "bundles"
    releases = json.loads(run.ok("release", "list", "--json").stdout)
    v2 = next(r for r in releases if r["label"] == "v2")
    bundle = store / f"{v2['bundle_sha256']}.tar.gz"
    data = bytearray(bundle.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bundle.write_bytes(bytes(data))
    before = run.ok("ledger", "log", "--json").stdout
    result = run(*DEPLOY, "--release", "v2", "--json")
    assert result.exit_code == 8
    assert "sha256" in result.stderr and "nothing was recorded" in result.stderr
    assert run.ok("ledger", "log", "--json").stdout == before
    assert {r["label"] for r in status(run).values()} == {"v1"}


def test_missing_command_restores_the_previous_release(run: Runner, shop: Path) -> None:
    run.ok(*DEPLOY, "--release", "v1")
    stack = shop / "chassis.toml"
    stack.write_text(stack.read_text().replace("python3 app/worker.py", "python3 app/missing.py"))
    result = run(*DEPLOY, "--release", "v2", "--json")
    assert result.exit_code == 16
    hosts = json.loads(result.stdout)["hosts"]
    # Caught at start, or (when python3 takes longer than the supervisor's settle
    # time to fail) at the health gate: either way the worker is named with its error.
    worker = next(h for h in hosts.values() if not h["ok"])
    assert worker["step"] in ("start", "health")
    assert worker["detail"].startswith("worker ") and "missing.py" in worker["detail"]
    assert {r["label"] for r in status(run).values()} == {"v1"}


def test_port_already_in_use(run: Runner, shop: Path) -> None:
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", port_of(shop, "api")))
    squatter.listen(1)
    try:
        result = run(*DEPLOY, "--release", "v1", "--json")
    finally:
        squatter.close()
    assert result.exit_code == 16, result.stdout
    api = next(h for h in json.loads(result.stdout)["hosts"].values() if not h["ok"])
    assert api["detail"].startswith("api ") and "address already in use" in api["detail"].lower()
    assert status(run) == {}, "nothing is recorded as running after the restore"


def test_unknown_names_are_refused_before_any_event(run: Runner, shop: Path) -> None:
    before = len(json.loads(run.ok("ledger", "log", "--json").stdout))
    cases = [
        (
            ("deploy", "nope", "--env", "dev", "--profile", "monolith", "--release", "v1"),
            "unknown app 'nope'",
        ),
        (
            ("deploy", "shop", "--env", "qa", "--profile", "monolith", "--release", "v1"),
            "no environment 'qa'",
        ),
        (
            ("deploy", "shop", "--env", "dev", "--profile", "huge", "--release", "v1"),
            "no profile 'huge'",
        ),
        (
            ("deploy", "shop", "--env", "dev", "--profile", "monolith", "--release", "v9"),
            "no release 'v9'",
        ),
    ]
    for args, message in cases:
        result = run(*args)
        assert result.exit_code != 0 and message in result.stderr, (args, result.stderr)
    assert len(json.loads(run.ok("ledger", "log", "--json").stdout)) == before


def test_a_profile_change_retires_the_hosts_the_new_placement_leaves(
    run: Runner, shop: Path
) -> None:
    run.ok(*DEPLOY, "--release", "v1")
    assert len({host for host, _ in status(run)}) == 3
    mono = ("deploy", "shop", "--env", "dev", "--profile", "monolith")
    result = json.loads(run.ok(*mono, "--release", "v2", "--json").stdout)
    retired = {h for h, r in result["hosts"].items() if r["detail"].startswith("retired")}
    rows = status(run)
    (kept,) = {host for host, _ in rows}
    assert retired == {"dev-1", "dev-2", "dev-3"} - {kept}
    assert {component for _, component in rows} == {"gateway", "api", "worker"}
    for host in retired:
        assert not (shop / ".chassis" / "hosts" / host / "current").exists()
    assert "v2" in get(port_of(shop, "api"), "/healthz")[1]
    run.ok(*DEPLOY, "--release", "v1")
    assert len({host for host, _ in status(run)}) == 3
    assert "v1" in get(port_of(shop, "api"), "/healthz")[1]
    run.ok("ledger", "verify")


def test_a_local_deploy_and_its_no_op_load_no_ssh(tmp_path: Path, shop: Path) -> None:
    """fabric, paramiko and invoke load only once a remote host is reached:
    a deploy to local hosts, and the no-op after it, run without them (the
    whole-process deploy's start, issue 17); nor does any deploy load
    http.client."""
    from tests.cli.test_fast_start import SSH, imported, offending

    modules = imported(tmp_path, *DEPLOY, "--release", "v1", cwd=shop)
    assert "chassis.engine.deploy" in modules  # it did deploy
    assert not offending(modules, SSH)
    # The HTTP health probe is a plain socket GET: no http.client (which
    # brings email and ssl) in a deploy.
    assert "adapters.health.http_get" in modules
    assert not offending(modules, ["http.client", "email", "ssl"])
    assert not offending(imported(tmp_path, *DEPLOY, "--release", "v1", cwd=shop), SSH)
