"""Ledger URL safety (issue 13 item 6): a PostgreSQL URL names its schema,
reading never creates a ledger, and a workspace remembers the URL it was
initialised with (never a password)."""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from chassis.workspace import Workspace
from ledger.errors import LedgerURLError
from ledger.storage import StorageConfig
from tests.conftest import POSTGRES_URL, Runner

READERS = [
    ("status",),
    ("history", "shop", "--env", "dev"),
    ("ledger", "verify"),
    ("ledger", "log"),
    ("release", "list"),
    ("host", "list"),
    ("key", "list"),
    ("receipts", "list"),
    ("lease", "list"),
    ("audit", "replay", "shop", "--env", "dev", "--at", "1"),
]


def sqlite_tables(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [r[0] for r in conn.execute("SELECT name FROM sqlite_master")]


def postgres_tables(schema: str) -> list[str] | None:
    """The schema's tables, None when the schema does not exist."""
    import psycopg

    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        exists = conn.execute(
            "SELECT 1 FROM information_schema.schemata WHERE schema_name = %s", (schema,)
        ).fetchone()
        if exists is None:
            return None
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (schema,)
        ).fetchall()
        return [r[0] for r in rows]


@pytest.fixture
def empty_schema(postgres_available: None) -> Iterator[str]:
    """A name for a schema nobody initialised (dropped afterwards if made)."""
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:12]}"
    yield schema
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


# 1. A PostgreSQL URL names its schema.


def test_a_postgres_url_without_schema_is_refused_with_the_fix() -> None:
    for url, example in (
        ("postgresql://chassis@db:5432/deploys", "postgresql://chassis@db:5432/deploys"),
        (
            "postgresql://chassis:pw@db:5432/deploys?connect_timeout=9",
            "postgresql://chassis:***@db:5432/deploys",
        ),
        ("postgres://chassis@db/deploys?schema=", "postgres://chassis@db/deploys"),
    ):
        with pytest.raises(LedgerURLError) as caught:
            StorageConfig.from_url(url)
        message = str(caught.value)
        assert "names no schema: add ?schema=NAME" in message
        assert example in message and "schema=chassis_prod" in message
        assert "pw@" not in message and caught.value.exit_code == 3


def test_no_schema_in_the_environment_fails_a_command_with_exit_3(
    run: Runner, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHASSIS_LEDGER", "postgresql://chassis@127.0.0.1:1/deploys")
    result = run("status")
    assert result.exit_code == 3
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(
        "chassis: error: ledger URL 'postgresql://chassis@127.0.0.1:1/deploys' names no schema"
    )
    assert "?schema=chassis_prod" in result.stderr


def test_init_with_a_schemaless_url_creates_nothing(run: Runner, tmp_path: Path) -> None:
    result = run("init", str(tmp_path / "ws"), "--ledger", "postgresql://u@127.0.0.1:1/db")
    assert result.exit_code == 3 and "names no schema" in result.stderr
    assert not (tmp_path / "ws").exists()


# 2. Reading never creates a ledger.


def test_reading_a_missing_sqlite_ledger_creates_nothing(run: Runner, workspace: Path) -> None:
    db = workspace / ".chassis" / "ledger.db"
    db.unlink()
    for command in READERS:
        result = run(*command)
        assert result.exit_code == 4, (command, result.stderr)
        assert result.stderr == (
            f"chassis: error: no ledger at sqlite:///{str(db).lstrip('/')}: the file does not "
            "exist (run 'chassis init' to create one there, or check the ledger URL)\n"
        ), command
        assert not db.exists(), command


def test_reading_a_sqlite_file_without_ledger_tables_creates_none(
    run: Runner, workspace: Path
) -> None:
    db = workspace / ".chassis" / "ledger.db"
    db.unlink()
    for content in ("empty", "other tables"):
        db.unlink(missing_ok=True)
        if content == "empty":
            db.touch()
        else:
            with sqlite3.connect(db) as conn:
                conn.execute("CREATE TABLE notes (x TEXT)")
            conn.close()
        before = sqlite_tables(db)
        for command in READERS:
            result = run(*command)
            assert result.exit_code == 4, (command, result.stderr)
            assert "the file holds no ledger tables (run 'chassis init'" in result.stderr
            assert sqlite_tables(db) == before, command


@pytest.mark.postgres
def test_reading_a_missing_or_empty_postgres_schema_creates_nothing(
    run: Runner, workspace: Path, empty_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import psycopg

    url = f"{POSTGRES_URL}?schema={empty_schema}"
    monkeypatch.setenv("CHASSIS_LEDGER", url)
    for command in READERS:
        result = run(*command)
        assert result.exit_code == 4, (command, result.stderr)
        assert f"schema '{empty_schema}' does not exist (run 'chassis init'" in result.stderr
        assert postgres_tables(empty_schema) is None, command
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {empty_schema}")
    for command in READERS:
        result = run(*command)
        assert result.exit_code == 4, (command, result.stderr)
        assert f"schema '{empty_schema}' holds no ledger tables" in result.stderr
        assert postgres_tables(empty_schema) == [], command


# 3. The workspace remembers its ledger URL.


def test_a_default_workspace_json_is_unchanged(run: Runner, workspace: Path) -> None:
    settings = json.loads((workspace / ".chassis" / "workspace.json").read_text())
    assert sorted(settings) == ["default_key", "name", "root_keyid"]


def test_an_old_workspace_json_still_works(run: Runner, workspace: Path) -> None:
    path = workspace / ".chassis" / "workspace.json"
    old = {k: v for k, v in json.loads(path.read_text()).items() if k != "ledger"}
    path.write_text(json.dumps(old))
    assert Workspace(workspace).settings().ledger is None
    run.ok("ledger", "verify")


def test_init_with_a_sqlite_ledger_elsewhere_remembers_it(
    run: Runner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = tmp_path / "shared.db"
    run.ok("init", str(tmp_path / "ws"), "--name", "shop", "--ledger", f"sqlite:///{shared}")
    settings = json.loads((tmp_path / "ws" / ".chassis" / "workspace.json").read_text())
    assert settings["ledger"] == f"sqlite:///{str(shared).lstrip('/')}"
    assert not (tmp_path / "ws" / ".chassis" / "ledger.db").exists()
    monkeypatch.chdir(tmp_path / "ws")
    run.ok("ledger", "verify")
    # CHASSIS_LEDGER still wins over what the workspace remembers.
    monkeypatch.setenv("CHASSIS_LEDGER", f"sqlite:///{tmp_path / 'elsewhere.db'}")
    result = run("ledger", "verify")
    assert result.exit_code == 4 and "elsewhere.db: the file does not exist" in result.stderr


@pytest.mark.postgres
def test_init_remembers_a_postgres_url_without_its_password(
    run: Runner, tmp_path: Path, empty_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    host_part = POSTGRES_URL.split("://", 1)[1]
    with_password = f"postgresql://{host_part.replace('@', ':hunter2pw@', 1)}"
    url = f"{with_password}?schema={empty_schema}&connect_timeout=7"

    refused = run("init", str(tmp_path / "ws"), "--ledger", url)
    assert refused.exit_code == 3
    assert "--ledger: the URL has a password" in refused.stderr
    assert "PGPASSWORD" in refused.stderr and "hunter2pw" not in refused.stderr
    assert not (tmp_path / "ws").exists() and postgres_tables(empty_schema) is None

    monkeypatch.setenv("CHASSIS_LEDGER", url)
    created = run.ok("init", str(tmp_path / "ws"), "--name", "shop")
    assert "without its password" in created.stderr
    assert "hunter2pw" not in created.stdout + created.stderr
    stored = (tmp_path / "ws" / ".chassis" / "workspace.json").read_text()
    assert "hunter2pw" not in stored
    remembered = json.loads(stored)["ledger"]
    assert remembered.endswith(f"?schema={empty_schema}&connect_timeout=7")
    assert StorageConfig.from_url(remembered).password == ""
    assert not (tmp_path / "ws" / ".chassis" / "ledger.db").exists()

    monkeypatch.delenv("CHASSIS_LEDGER")
    monkeypatch.chdir(tmp_path / "ws")
    verified = run.ok("ledger", "verify")
    assert verified.stdout.startswith("OK: 1 events")


def test_init_uses_the_stack_files_ledger_url(
    run: Runner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --ledger or CHASSIS_LEDGER, init creates (or joins) the ledger
    that later commands will use: ``[ledger] url`` of chassis.toml."""
    root = tmp_path / "ws"
    root.mkdir()
    shared = tmp_path / "team.db"
    (root / "chassis.toml").write_text(
        f'[app]\nname = "shop"\n\n[ledger]\nurl = "sqlite:///{shared}"\n'
    )
    run.ok("init", str(root), "--name", "shop")
    assert "ledger" not in json.loads((root / ".chassis" / "workspace.json").read_text())
    assert "stored_events" in sqlite_tables(shared)
    assert not (root / ".chassis" / "ledger.db").exists()
    monkeypatch.chdir(root)
    run.ok("ledger", "verify")
