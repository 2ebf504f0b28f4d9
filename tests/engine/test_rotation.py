"""Rotating a secret: a new value in the environment reaches the hosts.

Reproduced before: with a new value exported, deploying the active release
again said "noop: already active on every host" and the host kept the old
token. Now the plan carries a keyed fingerprint of each secret's value, so a
rotated value is a change (shown by ``--dry-run``, recorded by name, never by
value), and ``chassis redeploy`` / ``deploy --force`` restart on purpose.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import Runner
from tests.engine.test_lifecycle import backend  # noqa: F401 - the backend fixture
from tests.engine.test_secrets import DEPLOY, add_api_env

# Long (deploys, health windows, many processes): the parallel run starts
# these first (tests/scheduling.py).
pytestmark = pytest.mark.slow

OLD = "old-token-5c1d-aaaa-0000"
NEW = "new-token-9e2b-bbbb-1111"


def api_env_file(shop: Path) -> Path:
    (found,) = (shop / ".chassis" / "hosts").glob("*/current/.env.api")
    return found


def last_revision(run: Runner) -> dict[str, object]:
    history = json.loads(run.ok("history", "shop", "--env", "dev", "--json").stdout)
    entry: dict[str, object] = history["revisions"][-1]
    return entry


@pytest.fixture
def rotating(backend: str, shop: Path, monkeypatch: pytest.MonkeyPatch) -> Path:  # noqa: F811
    add_api_env(shop, 'env = { API_TOKEN = { from_env = "SHOP_API_TOKEN" } }')
    monkeypatch.setenv("SHOP_API_TOKEN", OLD)
    return shop


def test_a_rotated_secret_is_a_change_and_reaches_the_host(
    run: Runner, rotating: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run.ok(*DEPLOY, "--release", "v1")
    assert OLD in api_env_file(rotating).read_text()
    same = json.loads(run.ok(*DEPLOY, "--release", "v1", "--json").stdout)
    assert same["status"] == "noop", "the same value is no change"

    monkeypatch.setenv("SHOP_API_TOKEN", NEW)
    dry = run.ok(*DEPLOY, "--release", "v1", "--dry-run", "--json")
    assert "api.API_TOKEN" in dry.stderr and NEW not in dry.stderr + dry.stdout
    rotated = json.loads(run.ok(*DEPLOY, "--release", "v1", "--json").stdout)
    assert rotated["status"] == "deployed", rotated
    assert "secrets changed: api.API_TOKEN" in rotated["description"]
    text = api_env_file(rotating).read_text()
    assert NEW in text and OLD not in text
    entry = last_revision(run)
    assert "api.API_TOKEN" in str(entry["description"])
    log = run.ok("ledger", "log", "--json").stdout
    assert NEW not in log and OLD not in log
    run.ok("ledger", "verify")


def test_redeploy_restarts_the_active_release_as_a_new_revision(
    run: Runner, rotating: Path
) -> None:
    run.ok(*DEPLOY, "--release", "v1")
    before = last_revision(run)["revision"]
    pids = {p: p.read_text() for p in (rotating / ".chassis" / "hosts").glob("*/run/*.pid")}
    result = json.loads(
        run.ok("redeploy", "shop", "--env", "dev", "--reason", "weekly restart", "--json").stdout
    )
    assert result["status"] == "deployed" and result["revision"] == int(str(before)) + 1
    entry = last_revision(run)
    assert str(entry["description"]).startswith("redeploy v1") and "weekly restart" in str(
        entry["description"]
    )
    after = {p: p.read_text() for p in pids}
    assert all(after[p] != pids[p] for p in pids), "every component restarted"
    forced = json.loads(run.ok(*DEPLOY, "--release", "v1", "--force", "--json").stdout)
    assert forced["status"] == "deployed"


def test_redeploy_of_nothing_deployed_exits_10(run: Runner, shop: Path) -> None:
    result = run("redeploy", "shop", "--env", "dev")
    assert result.exit_code == 10 and "never been deployed" in result.stderr
