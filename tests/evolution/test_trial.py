"""The trial slot with real processes: a candidate runs beside production on
moved ports, under ``<root>/trials/<slot>``, and goes away without a trace;
production's processes are never touched (DESIGN.md §9: no mocks)."""

from __future__ import annotations

import fnmatch
import json
import random
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec
import pytest

from adapters.connectors.local import LocalConnector
from adapters.connectors.ssh import SSHConnector
from adapters.supervisors.direct import DirectSupervisor
from adapters.supervisors.systemd import unit_name, unit_pattern
from chassis.engine.deploy import prepare
from chassis.engine.executor import declared_ports
from chassis.engine.plan import ComponentPlan, HostPlan, Plan
from chassis.evolution.trial import (
    TRIAL_STEPS,
    TrialError,
    TrialResult,
    leftover_slots,
    run_trial,
    slot_root,
    slot_supervisors,
    sweep_slot,
    teardown_trial,
    trial_plan,
    trial_unit_prefix,
)
from chassis.keyring import load_acting_key
from chassis.stack.spec import load_stack
from chassis.workspace import Workspace, keys_dir
from ledger.application import Ledger
from ledger.storage import open_ledger
from tests.conftest import Runner
from tests.sshd import SSHTestHost

DEPLOY = ("deploy", "shop", "--env", "dev", "--profile", "ternary-split-3")
SLOT = "0123abcd"
Call = tuple[str, str, bool, str, dict[str, Any]]


# -- helpers -------------------------------------------------------------------------


@contextmanager
def candidate(
    workspace: Path, app: str, env: str, profile: str, label: str
) -> Iterator[tuple[Ledger, Workspace, Plan, Path]]:
    """The plan and bundle of ``label``, compiled as ``chassis deploy`` compiles them."""
    ws = Workspace.find(workspace)
    ledger = open_ledger(ws.storage(), load_acting_key(keys_dir(), ws.settings().default_key))
    try:
        plan, bundle = prepare(
            ledger,
            ws,
            load_stack(ws.stack_file),
            app=app,
            environment=env,
            profile=profile,
            label=label,
            progress=lambda _: None,
        )
        yield ledger, ws, plan, bundle
    finally:
        ledger.close()


def free_offset(plan: Plan, address: str = "127.0.0.1") -> int:
    """An offset that moves every declared port onto a free one."""
    ports = {p for h in plan.hosts for c in h.components for p in declared_ports(c)}
    rng = random.Random()
    for _ in range(200):
        offset = rng.randrange(500, 4000)
        moved = [p + offset for p in ports]
        if max(moved) > 65535 or set(moved) & ports:
            continue
        if all(bindable(address, p) for p in moved):
            return offset
    raise AssertionError("no free port offset found")


def bindable(address: str, port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((address, port))
        except OSError:
            return False
        return True


def get(address: str, port: int, path: str = "/") -> Any:
    with urllib.request.urlopen(f"http://{address}:{port}{path}", timeout=5) as response:
        body = response.read().decode()
    return json.loads(body) if path in ("/", "/upstream") else body


def placed(plan: Plan) -> dict[str, tuple[HostPlan, ComponentPlan]]:
    """component → (its host's plan, its plan)."""
    return {c.name: (h, c) for h in plan.hosts for c in h.components}


def running(root: str) -> dict[str, tuple[int, int]]:
    """component → (pid, start) of what the direct supervisor runs under ``root``."""
    supervisor = DirectSupervisor(LocalConnector("probe"), root)
    found = {}
    for component in ("gateway", "api", "worker"):
        state = supervisor.state(component)
        if state.running and state.pid is not None and state.start is not None:
            found[component] = (state.pid, state.start)
    return found


def tree(root: str) -> set[str]:
    """Every path under a production root, its trials excluded."""
    base = Path(root)
    return {
        str(p.relative_to(base))
        for p in base.rglob("*")
        if p.relative_to(base).parts[0] != "trials"
    }


def production(plan: Plan) -> dict[str, Any]:
    """What production runs now: processes, files, ``current``."""
    return {
        h.host: {
            "processes": running(h.root),
            "files": tree(h.root),
            "current": str(Path(h.root, "current").resolve()),
        }
        for h in plan.hosts
    }


def steps_of(calls: list[Call], host: str) -> list[tuple[str, bool]]:
    return [(step, ok) for h, step, ok, _, _ in calls if h == host]


def assert_serves(plan: Plan, version: str, offset: int = 0) -> None:
    for component in ("gateway", "api"):
        host, spec = placed(plan)[component]
        doc = get(host.address, spec.ports["http"] + offset)
        assert (doc["service"], doc["version"]) == (component, version)


# -- moving a plan (pure) ------------------------------------------------------------


def sample_plan(*, supervisor: str = "direct", app: str = "shop") -> Plan:
    def component(name: str, port: int | None, command: str, env: dict[str, str]) -> ComponentPlan:
        return ComponentPlan(
            name=name,
            command=command,
            env=env,
            ports={"http": port} if port else {},
            health={"type": "http", "port": "http", "path": "/healthz"} if port else None,
        )

    return Plan(
        app=app,
        environment="dev",
        profile="p",
        label="v2",
        release_id="r2",
        release_dir="r2",
        bundle_sha256="0" * 64,
        bundle_size=1,
        hosts=[
            HostPlan(
                host="h1",
                connector="local",
                address="127.0.0.1",
                root="/srv/shop",
                supervisor=supervisor,
                groups=["g"],
                components=[
                    component(
                        "gateway",
                        8080,
                        "python3 app/gateway.py --port 8080 --upstream 127.0.0.1:8081 --x 18080",
                        {"UPSTREAM": "http://127.0.0.1:8081/", "OTHER": "80800 08080 8080x"},
                    ),
                    ComponentPlan(
                        name="api",
                        command="python3 app/api.py --port 8081",
                        env={},
                        ports={"http": 8081},
                        health={"type": "http", "port": 8081, "path": "/healthz"},
                    ),
                    component("worker", None, "python3 app/worker.py", {}),
                ],
                steps=["upload", "verify", "unpack", "configure", "stop-old", "start", "health"],
            )
        ],
    )


def test_trial_plan_moves_root_steps_and_ports() -> None:
    moved = trial_plan(sample_plan(), SLOT, 1000)
    host = moved.hosts[0]
    assert host.root == f"/srv/shop/trials/{SLOT}"
    assert host.steps == list(TRIAL_STEPS)
    assert not {"stop-old", "swap", "prune"} & set(host.steps)
    gateway, api, worker = host.components
    assert gateway.ports == {"http": 9080}
    assert gateway.command == (
        "python3 app/gateway.py --port 9080 --upstream 127.0.0.1:9081 --x 18080"
    )
    assert gateway.env == {
        "UPSTREAM": "http://127.0.0.1:9081/",
        "OTHER": "80800 08080 9080x",  # no digit on either side: moved
        "CHASSIS_TRIAL_SLOT": SLOT,
    }
    assert gateway.health is not None and gateway.health["port"] == "http"
    assert api.ports == {"http": 9081} and api.health is not None and api.health["port"] == 9081
    assert worker.command == "python3 app/worker.py" and worker.env == {"CHASSIS_TRIAL_SLOT": SLOT}
    # The candidate's plan itself is left as it was.
    assert sample_plan().hosts[0].components[0].ports == {"http": 8080}
    assert moved.digest() != sample_plan().digest()
    assert (moved.label, moved.release_id) == ("v2", "r2")


def test_a_port_pushed_past_65535_is_refused_naming_it() -> None:
    with pytest.raises(TrialError) as refused:
        trial_plan(sample_plan(), SLOT, 65535 - 8081 + 1)
    message = str(refused.value)
    assert "host h1" in message and "component api" in message and "port 8081" in message
    assert "65536" in message


@pytest.mark.parametrize("offset", [0, -5, 1])
def test_an_offset_that_is_not_positive_or_lands_on_a_declared_port_is_refused(
    offset: int,
) -> None:
    with pytest.raises(TrialError):  # 1: gateway 8080 -> 8081, the api's port
        trial_plan(sample_plan(), SLOT, offset)


@pytest.mark.parametrize("slot", ["", "0123abc", "0123ABCD", "../../etc", "0123abcd/x", "g" * 8])
def test_a_slot_that_is_not_hex_is_refused(slot: str) -> None:
    with pytest.raises(TrialError):
        trial_plan(sample_plan(), slot, 1000)
    with pytest.raises(TrialError):
        slot_root("/srv/shop", slot)


def test_systemd_trial_units_are_apart_from_production_units() -> None:
    """Production's start disables every unit matching its component's pattern:
    a trial unit must never match it, nor production's units the trial's."""
    prefix = trial_unit_prefix("shop", SLOT)
    trial_units = [unit_name(prefix, c, "r2") for c in ("api", "gateway")]
    production_units = [unit_name("chassis-shop", c, "r1") for c in ("api", "gateway")]
    for component in ("api", "gateway", f"trial-{SLOT}-api"):
        pattern = unit_pattern("chassis-shop", component)
        assert not any(fnmatch.fnmatchcase(u, pattern) for u in trial_units)
    for component in ("api", "gateway"):
        pattern = unit_pattern(prefix, component)
        assert not any(fnmatch.fnmatchcase(u, pattern) for u in production_units)
    assert trial_plan(sample_plan(supervisor="systemd"), SLOT, 1000).hosts[0].supervisor == (
        "systemd"
    )
    with pytest.raises(TrialError, match="systemd unit"):
        trial_plan(sample_plan(supervisor="systemd", app="a" * 60), SLOT, 1000)


# -- real trials on the shop -----------------------------------------------------------


def test_a_trial_runs_beside_production_and_teardown_removes_it(run: Runner, shop: Path) -> None:
    run.ok(*DEPLOY, "--release", "v1")
    calls: list[Call] = []
    with candidate(shop, "shop", "dev", "ternary-split-3", "v2") as (ledger, ws, plan, bundle):
        before = production(plan)
        assert all(before[h]["processes"] for h in before)
        offset = free_offset(plan)
        try:
            result = run_trial(
                ledger,
                ws,
                plan,
                slot=SLOT,
                port_offset=offset,
                record=lambda *call: calls.append(call),
                progress=None,
                bundle=bundle,
            )
            assert isinstance(result, TrialResult)
            assert result.passed, result.to_dict()
            for host in plan.hosts:
                trial = result.hosts[host.host]
                assert (trial.ok, trial.step) == (True, None)
                assert steps_of(calls, host.host) == [(s, True) for s in TRIAL_STEPS]
                assert set(trial.logs) == {c.name for c in host.components}
            gates = {c for t in result.hosts.values() for c in t.health.get("gates", {})}
            assert gates == {"gateway", "api", "worker"}
            assert all(
                t.health["gates"][c]["passed"]
                for t in result.hosts.values()
                for c in t.health["gates"]
            )
            assert any("ready" in line for line in result.hosts[worker_host(plan)].logs["worker"])

            # Production: the same processes, files and `current`, still v1.
            assert production(plan) == before
            assert_serves(plan, "v1")
            # The trial: v2 on the moved ports, talking to the trial's api.
            assert_serves(plan, "v2", offset)
            gateway_host, gateway = placed(plan)["gateway"]
            upstream = get(gateway_host.address, gateway.ports["http"] + offset, "/upstream")
            assert (upstream["service"], upstream["version"]) == ("api", "v2")
            # Its files are all under trials/<slot>.
            for host in plan.hosts:
                slot = Path(host.root, "trials", SLOT)
                assert (slot / "releases" / plan.release_dir / ".chassis-release").is_file()
                assert list(Path(host.root, "trials").iterdir()) == [slot]
                assert set(running(str(slot))) == {c.name for c in host.components}
                assert not (Path(host.root) / "releases" / plan.release_dir).exists()
            trial_processes = {h.host: running(slot_root(h.root, SLOT)) for h in plan.hosts}
        finally:
            teardown_trial(ledger, ws, plan, SLOT, lambda *call: calls.append(call))

        teardowns = [c for c in calls if c[1] == "teardown"]
        assert sorted((h, ok) for h, _, ok, _, _ in teardowns) == [
            (h.host, True) for h in sorted(plan.hosts, key=lambda h: h.host)
        ]
        for name, _, _, _, data in teardowns:
            assert sorted(data["stopped"]) == sorted(trial_processes[name])
        for host in plan.hosts:
            assert not Path(host.root, "trials").exists()
            for pid, _ in trial_processes[host.host].values():
                assert not alive(pid)
        for component in ("gateway", "api"):
            host, spec = placed(plan)[component]
            with pytest.raises(urllib.error.URLError):
                get(host.address, spec.ports["http"] + offset)
        assert production(plan) == before
        assert_serves(plan, "v1")

        # A second teardown is harmless: it stops nothing and records so.
        calls.clear()
        teardown_trial(ledger, ws, plan, SLOT, lambda *call: calls.append(call))
        assert [(step, ok, data["stopped"]) for _, step, ok, _, data in calls] == [
            ("teardown", True, [])
        ] * len(plan.hosts)
        assert production(plan) == before
    run.ok("ledger", "verify")


def test_a_candidate_failing_its_health_fails_the_trial_only(run: Runner, shop: Path) -> None:
    run.ok(*DEPLOY, "--release", "v1")
    calls: list[Call] = []
    with candidate(shop, "shop", "dev", "ternary-split-3", "v3") as (ledger, ws, plan, bundle):
        before = production(plan)
        offset = free_offset(plan)
        try:
            result = run_trial(
                ledger,
                ws,
                plan,
                slot=SLOT,
                port_offset=offset,
                record=lambda *call: calls.append(call),
                progress=None,
                bundle=bundle,
            )
            assert not result.passed
            for component in ("gateway", "api"):
                host, spec = placed(plan)[component]
                trial = result.hosts[host.host]
                assert (trial.ok, trial.step) == (False, "health")
                assert f"{component} failed its health gate" in trial.detail
                assert trial.health["component"] == component
                assert trial.health["gate"]["passed"] is False
                probed = f":{spec.ports['http'] + offset}/healthz: status 503"
                assert probed in json.dumps(trial.health["gate"]["last"])
                assert steps_of(calls, host.host) == [
                    *[(s, True) for s in TRIAL_STEPS[:-1]],
                    ("health", False),
                ]
                assert trial.logs[component], "the log tail comes back"
            assert result.hosts[worker_host(plan)].ok
            assert result.failed_hosts() == sorted(
                placed(plan)[c][0].host for c in ("gateway", "api")
            )
            assert production(plan) == before
            assert_serves(plan, "v1")
        finally:
            teardown_trial(ledger, ws, plan, SLOT, lambda *call: calls.append(call))
        assert all(not Path(h.root, "trials").exists() for h in plan.hosts)
        assert production(plan) == before
        assert_serves(plan, "v1")


def test_a_slot_left_behind_is_found_and_swept(run: Runner, shop: Path) -> None:
    """A trial whose teardown never ran (the process died): recover's
    leftover_slots finds it on each host and sweep_slot stops and removes it."""
    run.ok(*DEPLOY, "--release", "v1")
    with candidate(shop, "shop", "dev", "ternary-split-3", "v2") as (ledger, ws, plan, bundle):
        before = production(plan)
        try:
            result = run_trial(
                ledger,
                ws,
                plan,
                slot=SLOT,
                port_offset=free_offset(plan),
                record=lambda *call: None,
                progress=None,
                bundle=bundle,
            )
            assert result.passed, result.to_dict()
            left = {h.host: running(slot_root(h.root, SLOT)) for h in plan.hosts}
            for host in plan.hosts:
                connector = LocalConnector(host.host)
                assert leftover_slots(connector, host.root) == [SLOT]
                Path(host.root, "trials", "not-a-slot").mkdir()  # ignored, never removed
                stopped = sweep_slot(
                    connector,
                    slot_supervisors(plan.app, host.supervisor, connector),
                    host.root,
                    SLOT,
                )
                assert sorted(stopped) == sorted(left[host.host])
                assert leftover_slots(connector, host.root) == []
                assert not Path(host.root, "trials", SLOT).exists()
                assert Path(host.root, "trials", "not-a-slot").is_dir()
                for pid, _ in left[host.host].values():
                    assert not alive(pid)
                # Idempotent.
                assert (
                    sweep_slot(
                        connector,
                        slot_supervisors(plan.app, host.supervisor, connector),
                        host.root,
                        SLOT,
                    )
                    == []
                )
            assert production(plan) == before
            assert_serves(plan, "v1")
        finally:
            teardown_trial(ledger, ws, plan, SLOT, lambda *call: None)


def test_sweep_refuses_a_path_that_is_not_a_slot(tmp_path: Path) -> None:
    connector = LocalConnector("h")
    (tmp_path / "keep").mkdir()
    for slot in ("..", "../keep", ""):
        with pytest.raises(TrialError):
            sweep_slot(
                connector, lambda root: DirectSupervisor(connector, root), str(tmp_path), slot
            )
    assert (tmp_path / "keep").is_dir()
    with pytest.raises(TrialError):
        leftover_slots(connector, "relative/root")


# -- over SSH ------------------------------------------------------------------------------


def test_a_trial_and_its_teardown_over_ssh(
    run: Runner, lab: tuple[Path, list[SSHTestHost], dict[str, Path]]
) -> None:
    root, hosts, roots = lab
    run.ok("deploy", "lab", "--env", "lab", "--profile", "split", "--release", "v1")
    calls: list[Call] = []
    with candidate(root, "lab", "lab", "split", "v2") as (ledger, ws, plan, bundle):
        offset = free_offset(plan, "0.0.0.0")
        address = {h.name: h.address for h in hosts}
        before = {
            h.host: (running(h.root), str(Path(h.root, "current").resolve())) for h in plan.hosts
        }
        try:
            result = run_trial(
                ledger,
                ws,
                plan,
                slot=SLOT,
                port_offset=offset,
                record=lambda *call: calls.append(call),
                progress=None,
                bundle=bundle,
            )
            assert result.passed, result.to_dict()
            for host in plan.hosts:
                assert steps_of(calls, host.host) == [(s, True) for s in TRIAL_STEPS]
            for component in ("gateway", "api"):
                host, spec = placed(plan)[component]
                port = spec.ports["http"]
                assert get(address[host.host], port + offset)["version"] == "v2"
                assert get(address[host.host], port)["version"] == "v1"
            for name, path in roots.items():
                slot = path / "trials" / SLOT
                assert slot.is_dir() and name in before
                with SSHConnector(next(h for h in hosts if h.name == name).settings()) as ssh:
                    assert leftover_slots(ssh, str(path)) == [SLOT]
        finally:
            teardown_trial(ledger, ws, plan, SLOT, lambda *call: calls.append(call))
        assert [c[2] for c in calls if c[1] == "teardown"] == [True] * len(plan.hosts)
        for host in plan.hosts:
            assert not Path(host.root, "trials").exists()
            assert (running(host.root), str(Path(host.root, "current").resolve())) == before[
                host.host
            ]
        for component in ("gateway", "api"):
            host, spec = placed(plan)[component]
            assert get(address[host.host], spec.ports["http"])["version"] == "v1"


# -- small helpers -----------------------------------------------------------------------


def worker_host(plan: Plan) -> str:
    return placed(plan)["worker"][0].host


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(") ")[2].split()[0] not in ("Z", "X")


def test_trial_result_to_dict_is_json() -> None:
    plan = trial_plan(sample_plan(), SLOT, 1000)
    result = TrialResult(hosts={}, plan=plan, slot=SLOT, port_offset=1000)
    assert not result.passed  # no host: nothing passed
    data = json.loads(json.dumps(result.to_dict()))
    assert data["plan_digest"] == plan.digest() and data["hosts"] == {}
    assert msgspec.convert(msgspec.to_builtins(plan), Plan).digest() == plan.digest()
