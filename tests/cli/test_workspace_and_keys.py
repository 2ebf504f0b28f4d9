"""The CLI as an operator uses it: init, keys, log, verify, and bad input."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import click
import pytest

from chassis.cli import cli
from tests.conftest import Runner


def seq_count(workspace: Path) -> int:
    conn = sqlite3.connect(workspace / ".chassis" / "ledger.db")
    try:
        return int(conn.execute("SELECT COUNT(*) FROM stored_events").fetchone()[0])
    finally:
        conn.close()


def test_init_creates_workspace_and_root_key(run: Runner, tmp_path: Path, isolation: Path) -> None:
    result = run.ok("init", str(tmp_path / "shop"), "--name", "shop", "--json")
    data = json.loads(result.stdout)
    assert data["name"] == "shop" and data["key"] == "shop-root" and data["created_key"]
    assert (tmp_path / "shop" / "chassis.toml").read_text().startswith("# Chassis stack file")
    settings = json.loads((tmp_path / "shop" / ".chassis" / "workspace.json").read_text())
    assert settings["root_keyid"] == data["root_keyid"]
    assert (isolation / "shop-root.key").stat().st_mode & 0o777 == 0o600
    assert not list((tmp_path / "shop").rglob("*.key")), "private keys never live in the workspace"


def test_init_twice_is_refused(run: Runner, workspace: Path) -> None:
    result = run("init", str(workspace))
    assert result.exit_code == 3
    assert result.stderr.strip() == f"chassis: error: {workspace}: already a chassis workspace"


def test_every_command_has_help_with_an_example() -> None:
    def walk(command: click.Command, path: list[str]) -> list[tuple[list[str], click.Command]]:
        found = [(path, command)]
        if isinstance(command, click.Group):  # lazy groups: list_commands, not .commands
            ctx = click.Context(command)
            for name in command.list_commands(ctx):
                sub = command.get_command(ctx, name)
                assert sub is not None, [*path, name]
                found += walk(sub, [*path, name])
        return found

    for path, _command in walk(cli, []):
        result = Runner()(*path, "--help")
        assert result.exit_code == 0, path
        assert "Example" in result.stdout, f"'chassis {' '.join(path)} --help' has no example"


def test_key_lifecycle(run: Runner, workspace: Path, tmp_path: Path, isolation: Path) -> None:
    new = json.loads(
        run.ok("key", "new", "ci-bot", "--roles", "operator,checkpoint", "--json").stdout
    )
    assert new["roles"] == ["checkpoint", "operator"] and new["private_key_here"]

    other = Runner()
    other.ok("--workspace", str(workspace), "key", "list")  # works from anywhere with --workspace
    external = tmp_path / "alice.pub"
    external.write_bytes((isolation / "ci-bot.pub").read_bytes())
    assert (
        run("key", "trust", str(external), "--roles", "approver").exit_code == 9
    )  # same key again

    from ledger.keys import generate_keypair

    alice_dir = tmp_path / "alice-keys"
    generate_keypair(alice_dir, "alice")
    trusted = json.loads(
        run.ok("key", "trust", str(alice_dir / "alice.pub"), "--roles", "approver", "--json").stdout
    )
    assert trusted["name"] == "alice" and not trusted["private_key_here"]

    listed = json.loads(run.ok("key", "list", "--json").stdout)
    assert [k["name"] for k in listed] == ["shop-root", "ci-bot", "alice"]

    shown = json.loads(run.ok("key", "show", trusted["keyid"][:10], "--json").stdout)
    assert shown["keyid"] == trusted["keyid"]

    revoked = json.loads(
        run.ok("key", "revoke", "alice", "--reason", "left the team", "--json").stdout
    )
    assert revoked["status"] == "revoked" and revoked["revoked_reason"] == "left the team"

    log = json.loads(run.ok("ledger", "log", "--json").stdout)
    assert [e["topic"] for e in log] == [
        "chassis.trust.established.v1",
        "chassis.trust.key-trusted.v1",
        "chassis.trust.key-trusted.v1",
        "chassis.trust.key-revoked.v1",
    ]
    assert [e["seq"] for e in log] == [1, 2, 3, 4]
    assert all(len(e["digest"]) == 64 and len(e["keyid"]) == 64 for e in log)
    limited = json.loads(
        run.ok(
            "ledger", "log", "--since", "2", "--limit", "2", "--aggregate", "trust", "--json"
        ).stdout
    )
    assert [e["seq"] for e in limited] == [2, 3]

    verified = json.loads(run.ok("ledger", "verify", "--json").stdout)
    assert verified["ok"] and verified["events"] == 4 and verified["keys"] == 3


def test_human_output_never_shows_private_material(run: Runner, workspace: Path) -> None:
    outputs = [
        run.ok("key", "new", "ops", "--roles", "operator"),
        run.ok("key", "list"),
        run.ok("key", "show", "ops"),
        run.ok("ledger", "log"),
        run.ok("ledger", "verify"),
    ]
    for result in outputs:
        assert "PRIVATE" not in result.stdout + result.stderr
    assert "OK: 2 events" in outputs[-1].stdout


# Bad input: one line, a documented exit code, nothing written.


def test_command_outside_a_workspace(run: Runner) -> None:
    result = run("key", "list")
    assert result.exit_code == 3
    assert "not inside a chassis workspace" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_ledger_file_that_is_not_sqlite(run: Runner, workspace: Path) -> None:
    db = workspace / ".chassis" / "ledger.db"
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    db.write_bytes(b"this is not a database\n" * 10)
    result = run("ledger", "verify")
    assert result.exit_code == 4
    assert result.stderr.strip() == f"chassis: error: {db}: not a SQLite database"
    assert db.read_bytes() == b"this is not a database\n" * 10


def test_unreachable_postgres_fails_within_ten_seconds(tmp_path: Path) -> None:
    """A server that accepts TCP but never answers: the connect timeout bites."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    port = silent.getsockname()[1]
    env = {
        **os.environ,
        "CHASSIS_LEDGER": f"postgresql://chassis:s3cret@127.0.0.1:{port}/ledger?schema=shop",
    }
    try:
        done = subprocess.run(
            [sys.executable, "-m", "chassis", "init", str(tmp_path / "ws")],
            env=env,
            capture_output=True,
            text=True,
            timeout=10,
        )
    finally:
        silent.close()
    assert done.returncode == 4
    assert done.stderr.startswith(
        f"chassis: error: cannot reach PostgreSQL at 127.0.0.1:{port}/ledger"
    )
    assert "s3cret" not in done.stderr
    assert not (tmp_path / "ws").exists()


def test_refused_connection_postgres(
    run: Runner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("CHASSIS_LEDGER", f"postgresql://postgres@127.0.0.1:{port}/test?schema=shop")
    result = run("init", str(tmp_path / "ws"))
    assert result.exit_code == 4 and "cannot reach PostgreSQL" in result.stderr


def test_key_file_readable_by_others_is_refused(
    run: Runner, workspace: Path, isolation: Path
) -> None:
    before = seq_count(workspace)
    (isolation / "shop-root.key").chmod(0o644)
    result = run("key", "new", "ops", "--roles", "operator")
    assert result.exit_code == 5
    assert "readable by group or others" in result.stderr
    assert seq_count(workspace) == before
    assert not (isolation / "ops.key").exists()


def test_key_without_the_role(run: Runner, workspace: Path, isolation: Path) -> None:
    run.ok("key", "new", "ops", "--roles", "operator")
    before = seq_count(workspace)
    result = run("--key", "ops", "key", "new", "sneaky", "--roles", "admin")
    assert result.exit_code == 6
    assert "does not hold role 'admin'" in result.stderr
    assert seq_count(workspace) == before
    assert not (isolation / "sneaky.key").exists()


def test_revoked_key(run: Runner, workspace: Path) -> None:
    run.ok("key", "new", "second-admin", "--roles", "admin")
    run.ok("key", "revoke", "second-admin", "--reason", "rotated")
    before = seq_count(workspace)
    result = run("--key", "second-admin", "key", "new", "x", "--roles", "operator")
    assert result.exit_code == 6
    assert "was revoked: rotated" in result.stderr
    assert seq_count(workspace) == before


def test_unknown_key_ids(run: Runner, workspace: Path) -> None:
    before = seq_count(workspace)
    unknown_actor = run("--key", "deadbeefdeadbeef", "key", "new", "x")
    assert (
        unknown_actor.exit_code == 5 and "no private key 'deadbeefdeadbeef'" in unknown_actor.stderr
    )
    unknown_target = run("key", "revoke", "deadbeefdeadbeef", "--reason", "x")
    assert unknown_target.exit_code == 5 and "no key named or with id" in unknown_target.stderr
    assert seq_count(workspace) == before


def test_bad_roles_and_missing_public_key(run: Runner, workspace: Path, tmp_path: Path) -> None:
    bad_roles = run("key", "new", "x", "--roles", "superuser")
    assert bad_roles.exit_code == 9 and "expected a comma-separated subset" in bad_roles.stderr
    missing = run("key", "trust", str(tmp_path / "nope.pub"), "--roles", "operator")
    assert missing.exit_code == 5 and "nope.pub: cannot read public key file" in missing.stderr


def test_verify_names_the_tampered_event(run: Runner, workspace: Path) -> None:
    run.ok("key", "new", "ops", "--roles", "operator")
    conn = sqlite3.connect(workspace / ".chassis" / "ledger.db")
    state = conn.execute("SELECT state FROM stored_events WHERE rowid = 2").fetchone()[0]
    conn.execute(
        "UPDATE stored_events SET state = ? WHERE rowid = 2",
        (state.replace(b'"operator"', b'"admin"'),),
    )
    conn.commit()
    conn.close()
    result = run("ledger", "verify")
    assert result.exit_code == 8
    assert result.stderr.startswith("chassis: error: digest-mismatch at seq 2 (aggregate ")
    as_json = run("ledger", "verify", "--json")
    assert as_json.exit_code == 8
    data = json.loads(as_json.stdout)
    assert (data["ok"], data["reason"], data["seq"], data["version"]) == (
        False,
        "digest-mismatch",
        2,
        2,
    )
