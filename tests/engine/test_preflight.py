"""Everything is validated before the intent (issue 12, item 5).

- the plan's values are what the host steps accept (``check_plan``), so a
  relative root or a gate that cannot pass never gets as far as an intent;
- every host of the plan answers with its pinned key, in parallel and within
  a bounded time, before anything is recorded: one dead host costs the
  others nothing, and the exit code is 11, one line per host;
- a worker meeting an exception nobody expected records it as that host's
  step failure and the operation restores, releasing its lease.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from chassis.engine import preflight
from chassis.engine.executor import HostDeployment
from chassis.engine.plan import Plan
from chassis.engine.preflight import HostsUnreachable, PlanRefused, check_plan, reach_hosts
from chassis.sample_app import build_sample_release
from chassis.workspace import Workspace
from ledger.hosts import HostSettings
from ledger.installations import Installation
from ledger.storage import open_ledger
from tests.conftest import Runner
from tests.sshd import SSHTestHost

DEPLOY = ("deploy", "shop", "--env", "dev", "--profile", "ternary-split-3")
LAB = ("deploy", "lab", "--env", "lab", "--profile", "one", "--release", "v1")


def installation_events(root: Path, app: str, environment: str) -> list[Any]:
    ledger = open_ledger(Workspace.find(root).storage(), None)
    try:
        key = Installation.id_for(Installation.key(app, environment))
        return [e for _, e in ledger.verified_events(key)]
    finally:
        ledger.close()


def ledger_log(run: Runner) -> str:
    return run.ok("ledger", "log", "--json").stdout


def labels(run: Runner) -> set[str]:
    rows = json.loads(run.ok("status", "shop", "--env", "dev", "--json").stdout)
    return {r["label"] for r in rows}


# -- the plan's values --------------------------------------------------------------------


def sample_plan(**host: Any) -> dict[str, Any]:
    component = {
        "name": "api",
        "command": "python3 app/api.py",
        "env": {"GREETING": "hello"},
        "ports": {"http": 8081},
        "health": {"type": "http", "port": "http", "path": "/healthz"},
    }
    return {
        "app": "shop",
        "environment": "dev",
        "profile": "one",
        "label": "v1",
        "release_id": "a" * 64,
        "release_dir": "a" * 16,
        "bundle_sha256": "b" * 64,
        "bundle_size": 1,
        "hosts": [
            {
                "host": "lab-1",
                "connector": "ssh",
                "address": "10.0.0.1",
                "root": "/srv/shop",
                "supervisor": "direct",
                "groups": ["all"],
                "components": [component],
                "steps": ["upload"],
                **host,
            }
        ],
    }


def refusal(data: dict[str, Any]) -> str:
    with pytest.raises(PlanRefused) as caught:
        check_plan(msgspec.convert(data, Plan))
    assert caught.value.exit_code == 3
    message = str(caught.value)
    assert "\n" not in message and message.startswith("shop/dev v1: host lab-1: ")
    assert message.endswith("nothing was recorded or changed")
    return message


def test_a_sound_plan_passes() -> None:
    check_plan(msgspec.convert(sample_plan(), Plan))


def with_health(**health: Any) -> dict[str, Any]:
    data = sample_plan()
    data["hosts"][0]["components"][0]["health"].update(health)
    return data


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (sample_plan(root="srv/shop"), "root 'srv/shop' is not an absolute path"),
        (with_health(passes=0), "passes must be an int >= 1"),
        (with_health(timeout_ms=0), "timeout_ms must be an int >= 1"),
        (with_health(path="healthz"), "must start with '/'"),
        (with_health(port="admin"), "health port 'admin'"),
        (with_health(expect_status=42), "not an HTTP status"),
        (sample_plan(supervisor="systemd", root="/srv/my shop"), "systemd unit"),
    ],
    ids=["relative-root", "passes-0", "timeout-0", "path", "port-name", "status", "systemd-root"],
)
def test_a_value_a_step_would_refuse_is_refused_first(data: dict[str, Any], words: str) -> None:
    """Plans of hosts added by hand (``host add``) or recorded before the
    stack file's rules: the same refusals the steps would raise mid-deploy."""
    assert words in refusal(data)


def test_ports_and_commands_are_checked() -> None:
    data = sample_plan()
    data["hosts"][0]["components"][0]["ports"]["http"] = 70000
    assert "port http = 70000" in refusal(data)
    data = sample_plan()
    data["hosts"][0]["components"][0]["command"] = "  "
    assert refusal(data).startswith("shop/dev v1: host lab-1: component api: empty command;")


# -- worker exceptions ----------------------------------------------------------------------


def explode(self: HostDeployment) -> tuple[str, dict[str, Any]]:
    raise RuntimeError("unexpected in swap")


def test_an_unexpected_exception_in_a_worker_is_recorded_and_restored(
    run: Runner, shop: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: the exception escaped the thread pool with a traceback, the
    lease stayed held, the revision 'pending' and v2's processes running."""
    run.ok(*DEPLOY, "--release", "v1")
    with monkeypatch.context() as patched:
        patched.setattr(HostDeployment, "_swap", explode)
        result = run(*DEPLOY, "--release", "v2", "--json")
    assert result.exit_code == 16, result.stderr
    summary = json.loads(result.stdout)
    assert summary["status"] == "failed"
    assert {h["step"] for h in summary["hosts"].values()} == {"swap"}
    assert all(h["restored"] for h in summary["hosts"].values())
    assert "unexpected RuntimeError: unexpected in swap" in summary["description"]
    assert "Traceback" not in result.stderr
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("chassis: error: ")]
    assert len(errors) == 1 and errors[0].startswith("chassis: error: revision 2: deploy v2 failed")
    failed = [
        e
        for e in installation_events(shop, "shop", "dev")
        if isinstance(e, Installation.StepRecorded) and not e.ok
    ]
    assert {(e.host, e.step) for e in failed} == {(h, "swap") for h in ("dev-1", "dev-2", "dev-3")}
    assert all("(a bug: please report it)" in e.detail for e in failed)
    history = json.loads(run.ok("history", "shop", "--env", "dev", "--json").stdout)
    assert history["lease"] is None and history["revisions"][-1]["status"] == "failed"
    assert labels(run) == {"v1"}
    run.ok("ledger", "verify")
    run.ok(*DEPLOY, "--release", "v2")


def test_an_unexpected_exception_in_a_rollback_worker_is_recorded_and_restored(
    run: Runner, shop: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run.ok(*DEPLOY, "--release", "v1")
    run.ok(*DEPLOY, "--release", "v2")
    with monkeypatch.context() as patched:
        patched.setattr(HostDeployment, "_swap", explode)
        result = run("rollback", "shop", "--env", "dev", "--json")
    assert result.exit_code == 16, result.stderr
    assert "Traceback" not in result.stderr
    assert "unexpected RuntimeError" in json.loads(result.stdout)["description"]
    history = json.loads(run.ok("history", "shop", "--env", "dev", "--json").stdout)
    assert history["lease"] is None and history["revisions"][-1]["status"] == "failed"
    assert labels(run) == {"v2"}
    run.ok("ledger", "verify")


# -- a local deploy: nothing to reach, values checked ------------------------------------


def test_a_gate_that_cannot_pass_is_refused_before_any_event(run: Runner, shop: Path) -> None:
    """The stack file refuses it; before, it passed 'stack validate' and the
    deploy raised a traceback after its intent, holding the lease."""
    run.ok(*DEPLOY, "--release", "v1")
    before = ledger_log(run)
    stack = shop / "chassis.toml"
    stack.write_text(stack.read_text().replace("passes = 3", "passes = 0"))
    result = run(*DEPLOY, "--release", "v2")
    assert result.exit_code == 3
    assert result.stderr.strip() == (
        f"chassis: error: {stack}: components.api.health.passes: expected 1 or more, found 0"
    )
    assert ledger_log(run) == before and labels(run) == {"v1"}


# -- ssh hosts: reachability before the intent -------------------------------------------


def lab(run: Runner, root: Path, hosts: list[tuple[str, str, int, str, str]]) -> Path:
    """A workspace deploying one component to the ssh hosts (name, address,
    port, key, root) with release v1 registered; nothing pinned."""
    run.ok("init", str(root), "--name", "lab")
    lines = "".join(
        f'  {{ name = "{name}", connector = "ssh", address = "{address}", port = {port}, '
        f'user = "root", key = "{key}", root = "{host_root}" }},\n'
        for name, address, port, key, host_root in hosts
    )
    (root / "chassis.toml").write_text(
        '[app]\nname = "lab"\n\n[components.api]\ncommand = "python3 app/worker.py"\n\n'
        '[profiles.one]\ngroups.all = { components = ["api"] }\n\n'
        f"[environments.lab]\nhosts = [\n{lines}]\n"
    )
    bundle, _ = build_sample_release(root.parent / "dist", "v1")
    run.ok("--workspace", str(root), "release", "add", "v1", "--artifact", str(bundle))
    return root


def test_an_unknown_host_key_on_a_first_deploy_exits_11_and_records_nothing(
    run: Runner, tmp_path: Path, ssh_host: SSHTestHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: exit 1 ("internal error") after registering the hosts."""
    h = ssh_host
    root = lab(
        run, tmp_path / "lab", [("lab-1", h.address, h.port, str(h.client_key), str(h.root))]
    )
    monkeypatch.chdir(root)
    before = ledger_log(run)
    result = run(*LAB)
    assert result.exit_code == 11, result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith(f"chassis: error: host lab-1 ({h.address}:{h.port}): unknown host key")
    assert "chassis host trust-key lab-1" in error and "nothing was recorded" in error
    assert ledger_log(run) == before


def test_dead_hosts_are_one_line_each_and_nothing_is_recorded(
    run: Runner,
    tmp_path: Path,
    ssh_host: SSHTestHost,
    closed_port: tuple[str, int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    h = ssh_host
    key = str(h.client_key)
    dead_address, dead_port = closed_port
    root = lab(
        run,
        tmp_path / "lab",
        [
            ("lab-1", h.address, h.port, key, str(h.root)),
            ("lab-2", dead_address, dead_port, key, "/srv/lab"),
            ("lab-3", dead_address, dead_port, key, "/srv/lab"),
        ],
    )
    monkeypatch.chdir(root)
    run.ok("host", "trust-key", "lab-1", "--yes")
    before = ledger_log(run)
    result = run(*LAB)
    assert result.exit_code == 11, result.stderr
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr
    assert [ln.split(":")[0] for ln in lines if "refused" in ln.lower()][:2] == [
        f"host lab-2 ({dead_address}",
        f"host lab-3 ({dead_address}",
    ]
    assert lines[-1] == (
        "chassis: error: 2 of 3 hosts cannot be reached (lab-2, lab-3); "
        "nothing was recorded or changed"
    )
    assert ledger_log(run) == before


def test_a_relative_root_on_a_hand_added_ssh_host_is_refused_before_the_intent(
    run: Runner, tmp_path: Path, ssh_host: SSHTestHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``host add`` does not go through the stack file's rules; the plan check
    catches what the steps would refuse."""
    h = ssh_host
    root = lab(run, tmp_path / "lab", [])
    monkeypatch.chdir(root)
    run.ok(
        *("host", "add", "lab-1", "--connector", "ssh", "--address", h.address),
        *("--port", str(h.port), "--user", "root", "--key", str(h.client_key)),
        *("--root", "srv/lab", "--env", "lab"),
    )
    run.ok("host", "trust-key", "lab-1", "--yes")
    run.ok("host", "inventory", "lab-1")
    before = ledger_log(run)
    result = run(*LAB)
    assert result.exit_code == 3, result.stderr
    assert "root 'srv/lab' is not an absolute path" in result.stderr
    assert ledger_log(run) == before
    assert not installation_events(root, "lab", "lab")


def test_silent_hosts_fail_in_parallel_one_line_each_without_library_noise(
    run: Runner,
    tmp_path: Path,
    ssh_host: SSHTestHost,
    silent_listener: tuple[str, int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Hosts that accept TCP and never speak SSH. Before: paramiko's own
    "Exception (client): Error reading SSH protocol banner" (with its
    traceback) for each host on stderr, then exit 1."""
    monkeypatch.setattr(preflight, "CONNECT_TIMEOUT_S", 1.0)
    address, port = silent_listener
    key = str(ssh_host.client_key)
    root = lab(
        run,
        tmp_path / "lab",
        [("lab-1", address, port, key, "/srv/lab"), ("lab-2", address, port, key, "/srv/lab")],
    )
    monkeypatch.chdir(root)
    before = ledger_log(run)
    started = time.monotonic()
    result = run(*LAB)
    elapsed = time.monotonic() - started
    assert "Exception" not in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert result.exit_code == 11, result.stderr
    assert elapsed < 8, elapsed
    lines = result.stderr.strip().splitlines()
    assert [ln.split(" (")[0] for ln in lines[1:-1]] == ["host lab-1", "host lab-2"]
    assert all("no SSH handshake within 1s" in ln for ln in lines[1:-1])
    assert lines[-1] == (
        "chassis: error: 2 of 2 hosts cannot be reached (lab-1, lab-2); "
        "nothing was recorded or changed"
    )
    assert ledger_log(run) == before


def test_hosts_are_reached_in_parallel_within_a_bound(
    tmp_path: Path, silent_listener: tuple[str, int], run: Runner
) -> None:
    """Two hosts that accept TCP and never speak: both fail after one
    timeout, not two, each named once."""
    run.ok("init", str(tmp_path / "ws"), "--name", "ws")
    ws = Workspace.find(tmp_path / "ws")
    address, port = silent_listener
    settings = HostSettings(
        environment="lab", connector="ssh", root="/srv", address=address, port=port, user="root"
    )
    said: list[str] = []
    started = time.monotonic()
    with pytest.raises(HostsUnreachable) as caught:
        reach_hosts([("a", settings), ("b", settings)], ws, said.append, timeout=1.0)
    elapsed = time.monotonic() - started
    assert elapsed < 4.0, elapsed
    assert caught.value.exit_code == 11
    assert str(caught.value).startswith("2 of 2 hosts cannot be reached (a, b)")
    assert [line.split(" (")[0] for line in said[1:]] == ["host a", "host b"]
