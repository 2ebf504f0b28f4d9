"""Hosts over real SSH (sshd on 127.0.0.11-13): pinning, inventory, doctor,
and every way reaching a host can fail."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import psutil  # type: ignore[import-untyped,unused-ignore]
import pytest

from adapters.connectors.ssh import SSHConnector
from chassis.inventory import ProbeFailed, probe_remote
from tests.conftest import Runner
from tests.sshd import SSHTestHost, write_ed25519_key


def events(workspace: Path) -> int:
    conn = sqlite3.connect(workspace / ".chassis" / "ledger.db")
    try:
        return int(conn.execute("SELECT COUNT(*) FROM stored_events").fetchone()[0])
    finally:
        conn.close()


def host_line(name: str, address: str, port: int, key: Path, root: Path, extra: str = "") -> str:
    return (
        f'  {{ name = "{name}", connector = "ssh", address = "{address}", port = {port}, '
        f'user = "root", key = "{key}", root = "{root}"{extra} }},\n'
    )


@pytest.fixture
def lab(
    run: Runner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ssh_hosts: list[SSHTestHost]
) -> Path:
    """A workspace whose 'lab' environment is the three test sshd hosts."""
    root = tmp_path / "lab"
    run.ok("init", str(root), "--name", "lab")
    hosts = "".join(
        host_line(h.name, h.address, h.port, h.client_key, tmp_path / f"root-{h.name}")
        for h in ssh_hosts
    )
    (root / "chassis.toml").write_text(
        '[app]\nname = "lab"\n\n'
        '[components.api]\ncommand = "true"\nresources = { cpu = 0.5, memory = "64MiB" }\n\n'
        '[profiles.pair]\ngroups.a = { components = ["api"] }\n\n'
        f"[environments.lab]\nhosts = [\n{hosts}]\n"
    )
    monkeypatch.chdir(root)
    return root


def pin_all(run: Runner, hosts: list[SSHTestHost]) -> None:
    for host in hosts:
        result = json.loads(run.ok("host", "trust-key", host.name, "--yes", "--json").stdout)
        assert result["fingerprint"] == host.host_key_fingerprint


def test_unknown_host_key_is_refused_with_its_fingerprint(
    run: Runner, lab: Path, ssh_hosts: list[SSHTestHost]
) -> None:
    run.ok("host", "list")
    before = events(lab)
    result = run("host", "inventory", "h1", "--json")
    assert result.exit_code == 11
    (outcome,) = json.loads(result.stdout)
    assert ssh_hosts[0].host_key_fingerprint in outcome["error"]
    assert "chassis host trust-key h1" in outcome["error"]
    assert events(lab) == before


def test_trust_key_then_inventory_over_ssh_matches_this_machine(
    run: Runner, lab: Path, ssh_hosts: list[SSHTestHost]
) -> None:
    pin_all(run, ssh_hosts)
    again = json.loads(run.ok("host", "trust-key", "h1", "--yes", "--json").stdout)
    assert again["outcome"] == "already-pinned"
    results = json.loads(run.ok("host", "inventory", "--all", "--json").stdout)
    assert [(r["host"], r["ok"], r["recorded"]) for r in results] == [
        ("h1", True, True),
        ("h2", True, True),
        ("h3", True, True),
    ]
    facts = results[0]["facts"]
    assert facts["cpu_logical"] == psutil.cpu_count(logical=True)
    assert facts["memory_total_bytes"] == psutil.virtual_memory().total
    assert facts["boot_time"] == int(psutil.boot_time())
    assert facts["disks"][1]["path"] == str(lab.parent / "root-h1")
    assert facts["gpus"] == [] and facts["gpu_note"]
    placed = json.loads(
        run.ok("stack", "show", "--profile", "pair", "--env", "lab", "--json").stdout
    )
    assert placed["groups"][0]["host"] in {"h1", "h2", "h3"}
    doctor = run("doctor", "--json")
    assert doctor.exit_code == 0, doctor.stdout
    statuses = {c["name"]: c["status"] for c in json.loads(doctor.stdout)}
    for host in ("h1", "h2", "h3"):
        assert statuses[f"host {host}: reachable"] == "pass"
        assert statuses[f"host {host}: python3"] == "pass"
        assert statuses[f"host {host}: disk"] == "pass"


def test_commands_over_ssh_load_paramiko_without_fabric_or_invoke(
    run: Runner, lab: Path, ssh_hosts: list[SSHTestHost], tmp_path: Path
) -> None:
    """fabric and invoke (a fifth of an SSH command's start) serve only the
    exec fallback for hosts without python3: an inventory over SSH, whose
    hosts have it, never imports them (issue 17, start-up)."""
    from tests.cli.test_fast_start import imported, offending

    pin_all(run, ssh_hosts)
    modules = imported(tmp_path, "host", "inventory", "--all", "--json", cwd=lab)
    assert "paramiko" in modules and "adapters.connectors.ssh" in modules  # it did connect
    assert not offending(modules, ["fabric", "invoke"])


def test_unreachable_hosts_are_named_and_the_others_still_inventoried(
    run: Runner,
    lab: Path,
    ssh_hosts: list[SSHTestHost],
    closed_port: tuple[str, int],
    silent_listener: tuple[str, int],
    tmp_path: Path,
) -> None:
    pin_all(run, ssh_hosts)
    stack = lab / "chassis.toml"
    key = ssh_hosts[0].client_key
    head, _, tail = stack.read_text().rpartition("]\n")
    stack.write_text(
        head
        + host_line("gone", *closed_port, key, tmp_path / "gone")
        + host_line("silent", *silent_listener, key, tmp_path / "silent")
        + "]\n"
        + tail
    )
    result = run("host", "inventory", "--all", "--timeout", "2", "--json")
    assert result.exit_code == 11
    outcome = {r["host"]: r for r in json.loads(result.stdout)}
    assert all(outcome[h]["recorded"] for h in ("h1", "h2", "h3"))
    gone = outcome["gone"]["error"]
    assert f"{closed_port[0]}:{closed_port[1]}" in gone and "refused" in gone.lower()
    silent = outcome["silent"]["error"]
    assert f"{silent_listener[0]}:{silent_listener[1]}" in silent


def test_authentication_failure(
    run: Runner, lab: Path, ssh_hosts: list[SSHTestHost], tmp_path: Path
) -> None:
    pin_all(run, ssh_hosts)
    stranger = tmp_path / "stranger"
    write_ed25519_key(stranger, "stranger")
    stack = lab / "chassis.toml"
    stack.write_text(stack.read_text().replace(str(ssh_hosts[1].client_key), str(stranger), 2))
    result = run("host", "inventory", "h1", "--json")
    assert result.exit_code == 11
    assert "authentication failed" in json.loads(result.stdout)[0]["error"].lower()


def test_changed_host_key_is_refused_with_the_fingerprint(
    run: Runner, lab: Path, ssh_hosts: list[SSHTestHost]
) -> None:
    pin_all(run, ssh_hosts)
    known = lab / ".chassis" / "known_hosts"
    h1, h2 = ssh_hosts[0], ssh_hosts[1]
    h1_key = h1.host_key_line.split()[1]
    h2_key = h2.host_key_line.split()[1]
    known.write_text(known.read_text().replace(h2_key, h1_key))  # h2 now "offers" a different key
    result = run("host", "inventory", "h2", "--json")
    assert result.exit_code == 11
    error = json.loads(result.stdout)[0]["error"]
    assert "host key changed" in error and h2.host_key_fingerprint in error
    refused = run("host", "trust-key", "h2", "--yes")
    assert refused.exit_code == 11 and "--replace" in refused.stderr
    run.ok("host", "trust-key", "h2", "--yes", "--replace")
    run.ok("host", "inventory", "h2")


def test_remote_without_python3_gets_a_clear_error(ssh_host: SSHTestHost) -> None:
    with SSHConnector(ssh_host.settings()) as connector, pytest.raises(ProbeFailed) as caught:
        probe_remote("h1", connector, ["/"], python="/nonexistent/python3")
    assert str(caught.value) == (
        "host h1: /nonexistent/python3 is not installed there; the inventory probe needs it "
        "(install python3 on the host)"
    )
