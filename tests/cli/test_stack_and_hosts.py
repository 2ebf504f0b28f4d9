"""Stack file, host registry, local inventory, placement, admission: via the CLI."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import psutil  # type: ignore[import-untyped,unused-ignore]
import pytest

from ledger.hosts import Host
from tests.conftest import Runner


def events(workspace: Path) -> int:
    conn = sqlite3.connect(workspace / ".chassis" / "ledger.db")
    try:
        return int(conn.execute("SELECT COUNT(*) FROM stored_events").fetchone()[0])
    finally:
        conn.close()


@pytest.fixture
def example(run: Runner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "shop"
    run.ok("init", str(root), "--name", "shop", "--example")
    monkeypatch.chdir(root)
    return root


def test_example_stack_validates(run: Runner, example: Path) -> None:
    data = json.loads(run.ok("stack", "validate", "--json").stdout)
    assert data["profiles"] == ["maximal-decoupled", "monolith", "ternary-split-3"]
    assert data["environments"]["dev"] == ["dev-1", "dev-2", "dev-3"]


def test_bad_stack_file_is_one_line_and_records_nothing(run: Runner, example: Path) -> None:
    before = events(example)
    stack = example / "chassis.toml"
    text = stack.read_text()
    stack.write_text(text.replace("http = 8081 }", 'http = "8081" }', 1))
    result = run("stack", "validate")
    assert result.exit_code == 3
    assert result.stderr == (
        f"chassis: error: {stack}: components.api.ports.http: expected an integer, "
        "found string '8081'\n"
    )
    stack.write_text(text.replace('"gateway", "api", "worker"]', '"gateway", "api", "cache"]'))
    result = run("host", "list")
    assert result.exit_code == 3 and "no component 'cache'" in result.stderr
    assert events(example) == before


def test_declared_hosts_register_on_first_use(run: Runner, example: Path) -> None:
    before = events(example)
    hosts = json.loads(run.ok("host", "list", "--json").stdout)
    assert [h["name"] for h in hosts] == ["dev-1", "dev-2", "dev-3", "prod-1", "prod-2", "prod-3"]
    assert events(example) == before + 6
    run.ok("host", "list")
    assert events(example) == before + 6, "unchanged declarations append nothing"


def test_host_add_show_remove_keeps_history(run: Runner, example: Path) -> None:
    run.ok(
        "host", "add", "lab-1", "--connector", "local", "--root", "/srv/lab", "--label", "gpu=none"
    )
    shown = json.loads(run.ok("host", "show", "lab-1", "--json").stdout)
    assert shown["labels"] == {"gpu": "none"} and shown["environment"] == "default"
    again = run("host", "add", "lab-1", "--connector", "local", "--root", "/srv/lab")
    assert again.exit_code == 9 and "already exists" in again.stderr
    declared = run("host", "remove", "dev-1", "--reason", "x")
    assert declared.exit_code == 9 and "declared in" in declared.stderr
    run.ok("host", "remove", "lab-1", "--reason", "decommissioned")
    listed = [h["name"] for h in json.loads(run.ok("host", "list", "--json").stdout)]
    assert "lab-1" not in listed
    assert "lab-1" in [
        h["name"] for h in json.loads(run.ok("host", "list", "--removed", "--json").stdout)
    ]
    lab = str(Host.id_for("lab-1"))
    log = json.loads(run.ok("ledger", "log", "--aggregate", lab, "--json").stdout)
    assert [e["topic"] for e in log] == ["chassis.host.registered.v1", "chassis.host.removed.v1"]
    run.ok("host", "add", "lab-1", "--connector", "local", "--root", "/srv/lab2")
    assert json.loads(run.ok("host", "show", "lab-1", "--json").stdout)["root"] == "/srv/lab2"


def test_local_inventory_matches_psutil_and_is_recorded_once(run: Runner, example: Path) -> None:
    first = json.loads(run.ok("host", "inventory", "dev-1", "dev-2", "--json").stdout)
    assert [(r["host"], r["recorded"]) for r in first] == [("dev-1", True), ("dev-2", True)]
    facts = first[0]["facts"]
    assert facts["cpu_logical"] == psutil.cpu_count(logical=True)
    assert facts["cpu_physical"] == psutil.cpu_count(logical=False)
    assert facts["memory_total_bytes"] == psutil.virtual_memory().total
    assert facts["disks"][0] == {
        **facts["disks"][0],
        "path": "/",
        "total_bytes": psutil.disk_usage("/").total,
    }
    assert facts["disks"][1]["path"] == str(example / ".chassis" / "hosts" / "dev-1")
    before = events(example)
    second = json.loads(run.ok("host", "inventory", "dev-1", "--json").stdout)
    assert second[0]["recorded"] is False and second[0]["digest"] == first[0]["digest"]
    assert events(example) == before
    shown = json.loads(run.ok("host", "show", "dev-1", "--json").stdout)
    assert shown["facts_digest"] == first[0]["digest"]


def test_stack_show_places_every_profile_deterministically(run: Runner, example: Path) -> None:
    shown = {}
    for profile in ("monolith", "ternary-split-3", "maximal-decoupled"):
        data = json.loads(
            run.ok("stack", "show", "--profile", profile, "--env", "dev", "--json").stdout
        )
        again = json.loads(
            run.ok("stack", "show", "--profile", profile, "--env", "dev", "--json").stdout
        )
        assert data == again
        shown[profile] = {g["group"]: g["host"] for g in data["groups"]}
    assert list(shown["monolith"]) == ["all"]
    assert len(set(shown["ternary-split-3"].values())) == 3, "spread over three hosts"
    assert shown["maximal-decoupled"]["worker"] == "dev-3", "the only host labelled role=batch"


def test_impossible_placement_names_group_and_records_nothing(run: Runner, example: Path) -> None:
    run("host", "inventory", "--all")  # dev hosts recorded; prod ones unreachable here
    stack = example / "chassis.toml"
    stack.write_text(
        stack.read_text().replace('cpu = 0.5, memory = "512MiB"', 'cpu = 64, memory = "512MiB"', 1)
    )
    before = events(example)
    result = run("stack", "show", "--profile", "ternary-split-3", "--env", "dev")
    assert result.exit_code == 12
    assert result.stderr.startswith(
        "chassis: error: cannot place group 'core': cpu: needs 64 cores"
    )
    assert "best host dev-" in result.stderr
    assert events(example) == before


def test_hardware_admission(run: Runner, example: Path) -> None:
    rejected = run("hardware", "validate", "--host", "dev-1", "--runtime", "cuda-small", "--json")
    assert rejected.exit_code == 13
    verdict = json.loads(rejected.stdout)
    assert not verdict["admitted"] and [r["code"] for r in verdict["reasons"]] == ["no-gpu"]
    admitted = json.loads(
        run.ok("hardware", "validate", "--host", "dev-1", "--runtime", "small-cpu", "--json").stdout
    )
    assert admitted["admitted"] and admitted["reasons"] == []
    shown = json.loads(run.ok("host", "show", "dev-1", "--json").stdout)
    assert shown["admissions"]["cuda-small"]["reasons"] == ["no-gpu"]
    assert shown["admissions"]["small-cpu"]["admitted"] is True
    unknown = run("hardware", "validate", "--host", "dev-1", "--runtime", "tpu")
    assert unknown.exit_code == 3 and "unknown runtime 'tpu'" in unknown.stderr


def test_doctor_on_a_local_only_workspace(run: Runner, example: Path) -> None:
    stack = example / "chassis.toml"
    text = stack.read_text()
    stack.write_text(
        text[: text.index("[environments.prod]")]
        + text[
            text.index(
                "# ------------------------------------------------------------------ releases"
            ) :
        ]
    )
    before = events(example)
    result = run("doctor", "--json")
    assert result.exit_code == 0, result.stdout
    checks = {c["name"]: c["status"] for c in json.loads(result.stdout)}
    assert checks["ledger"] == checks["keys"] == checks["workspace"] == "pass"
    assert checks["host dev-1: reachable"] == checks["host dev-1: python3"] == "pass"
    assert checks["package names"] in ("pass", "warn")
    assert events(example) == before, "doctor is read-only"


def test_doctor_fails_on_exposed_key_and_outside_workspace(
    run: Runner, example: Path, isolation: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (isolation / "shop-root.key").chmod(0o644)
    result = run("doctor", "--json")
    assert result.exit_code == 14
    keys = next(c for c in json.loads(result.stdout) if c["name"] == "keys")
    assert keys["status"] == "fail" and keys["fix"].startswith("chmod 600")
    monkeypatch.chdir(tmp_path)
    outside = run("doctor", "--json")
    assert outside.exit_code == 14
    assert {c["name"]: c["status"] for c in json.loads(outside.stdout)}["workspace"] == "fail"
