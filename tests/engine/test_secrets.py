"""Secrets: literal secret-looking values are refused where they would be
recorded; references are resolved at deploy time and only the reference is
ever recorded, receipted or printed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import Runner

DEPLOY = ("deploy", "shop", "--env", "dev", "--profile", "ternary-split-3")
SECRET = "hunter2-4f9c-s3cr3t"


def add_api_env(shop: Path, line: str) -> None:
    stack = shop / "chassis.toml"
    text = stack.read_text()
    stack.write_text(text.replace("[components.api]\n", f"[components.api]\n{line}\n", 1))


@pytest.mark.parametrize(
    ("line", "where"),
    [
        ('env = { DATABASE_URL = "postgres://app:hunter2@db/shop" }', "env.DATABASE_URL"),
        ('env = { UPSTREAM_AUTH = "Bearer abcdefghijklmnopqrstuvwxyz0123" }', "UPSTREAM_AUTH"),
        ('env = { DB_PASSWORD = "x" }', "components.api.env.DB_PASSWORD"),
    ],
)
def test_literal_secrets_in_the_stack_are_refused(
    run: Runner, shop: Path, line: str, where: str
) -> None:
    add_api_env(shop, line)
    before = run.ok("ledger", "log", "--json").stdout
    result = run(*DEPLOY, "--release", "v1")
    assert result.exit_code == 3
    assert where in result.stderr and "from_env" in result.stderr
    assert "hunter2" not in result.stderr and "abcdefghij" not in result.stderr
    assert run.ok("ledger", "log", "--json").stdout == before


def test_secret_looking_labels_and_release_config_are_refused(run: Runner, shop: Path) -> None:
    stack = shop / "chassis.toml"
    text = stack.read_text()
    label = 'labels = { note = "https://ops:pw123@vault.example" },'
    stack.write_text(text.replace('name = "dev-1",', f'name = "dev-1", {label}', 1))
    result = run("stack", "validate")
    assert result.exit_code == 3 and "labels.note" in result.stderr
    assert "pw123" not in result.stderr
    stack.write_text(text)
    bundle = next((shop.parent / "dist").glob("*v1*.tar.gz"))
    leak = "UPSTREAM=https://u:pw123@h"
    added = run("release", "add", "v1-leak", "--artifact", str(bundle), "--config", leak)
    assert added.exit_code == 3 and "pw123" not in added.stderr, added.output


def test_a_secret_reference_reaches_the_host_and_nothing_else(
    run: Runner, shop: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_api_env(shop, 'env = { DATABASE_URL = { from_env = "SHOP_DB_URL" } }')
    missing = run(*DEPLOY, "--release", "v1")
    assert missing.exit_code == 3 and "SHOP_DB_URL is not set" in missing.stderr
    topics = {e["topic"] for e in json.loads(run.ok("ledger", "log", "--json").stdout)}
    assert not any(t.startswith("chassis.installation.") for t in topics), "refused before intent"

    monkeypatch.setenv("SHOP_DB_URL", f"postgres://app:{SECRET}@db/shop")
    plan = json.loads(run.ok(*DEPLOY, "--release", "v1", "--dry-run", "--json").stdout)
    api = next(c for h in plan["hosts"] for c in h["components"] if c["name"] == "api")
    assert api["secrets"] == {"DATABASE_URL": "env:SHOP_DB_URL"}
    assert "DATABASE_URL" not in api["env"]
    outputs = [run.ok(*DEPLOY, "--release", "v1", "--json").stdout]
    env_files = list((shop / ".chassis" / "hosts").glob("*/releases/*/.env.api"))
    assert len(env_files) == 1 and SECRET in env_files[0].read_text()
    assert oct(env_files[0].stat().st_mode & 0o777) == "0o600"
    run.ok(*DEPLOY, "--release", "v2")
    rolled = run.ok("rollback", "shop", "--env", "dev", "--json").stdout
    outputs += [rolled, run.ok("history", "shop", "--env", "dev", "--json").stdout]
    outputs.append(run.ok("ledger", "log", "--json").stdout)
    for receipt in json.loads(run.ok("receipts", "list", "--json").stdout):
        outputs.append(run.ok("receipts", "show", receipt["digest"], "--statement").stdout)
    outputs.append(run.ok("receipts", "export", "--format", "otlp-json").stdout)
    outputs.append(run.ok("receipts", "export", "--format", "cloudevents").stdout)
    for text in outputs:
        assert SECRET not in text
    for path in (shop / ".chassis").glob("*.db*"):
        assert SECRET.encode() not in path.read_bytes(), path
