"""Expired secret leases (issue 16): ``chassis reconcile`` reports every copy
of a secret version whose ttl has run out, and ``reconcile --repair`` removes
it through a recorded ``expire-lease`` operation: the component holding it
is stopped and its env files deleted, and the ledger says so (intent, an
``expire-secret`` step before and after, ``components-stopped`` or
``host-retired``), never with the value.

The minimum ttl is a minute: "later" is given as ``--at`` (the CLI) or
``at=`` (the engine), never waited for. Real processes on local hosts
(``shop``, SQLite and PostgreSQL) and over sshd (``lab``).
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from chassis.engine.lifecycle import EXPIRE_STEP
from tests.engine.conftest import shop  # noqa: F401 - the shop fixture
from tests.engine.test_deploy_ssh import lab  # noqa: F401 - the lab fixture
from tests.engine.test_lifecycle import backend  # noqa: F401 - the backend fixture
from tests.engine.test_secrets import add_api_env
from tests.export.test_export_cli import expand
from tests.rawstore import RawStore
from tests.secrets.test_deploy_secrets import (
    ENV_LINE,
    V1,
    V2,
    VALUES,
    Recording,
    env_file_value,
    processes,
    running_values,
    shop_current,
)
from tests.sshd import SSHTestHost

# Long (deploys, health windows, many processes): the parallel run starts
# these first (tests/scheduling.py).
pytestmark = pytest.mark.slow

MONOLITH = ("deploy", "shop", "--env", "dev", "--profile", "monolith")
SPLIT = ("deploy", "shop", "--env", "dev", "--profile", "ternary-split-3")
REPAIR = "chassis reconcile shop --env dev --repair"
OPERATION_STARTED = "chassis.installation.operation-started.v1"


@pytest.fixture
def run() -> Recording:
    """Overrides the shared ``run``: ``shop`` and ``lab`` use this one too."""
    return Recording()


def set_secret(
    run: Recording, monkeypatch: pytest.MonkeyPatch, how: str, value: str, ttl: str
) -> str:
    """Set or rotate db_password; returns when the new version's lease ends."""
    monkeypatch.setenv("NEW_DB_PASSWORD", value)
    run.ok("secret", how, "db_password", "--from-env", "NEW_DB_PASSWORD", "--ttl", ttl)
    expires: str = json.loads(run.ok("secret", "show", "db_password", "--json").stdout)["expires"]
    return expires


def after(expires: str, seconds: int = 5) -> str:
    """A moment ``seconds`` after ``expires``, as ``--at`` takes it."""
    moment = datetime.fromisoformat(expires) + timedelta(seconds=seconds)
    return moment.isoformat().replace("+00:00", "Z")


def ledger_url(workspace: Path) -> str:
    return os.environ.get("CHASSIS_LEDGER") or f"sqlite:///{workspace / '.chassis' / 'ledger.db'}"


def events(url: str, topic: str) -> list[dict[str, Any]]:
    """The payloads of every record of ``topic``, in order."""
    return [
        json.loads(row.state)["event"]["payload"]
        for row in RawStore(url).rows()
        if row.topic == topic
    ]


def components_running(under: Path) -> set[str]:
    return {env.get("CHASSIS_COMPONENT", "") for _, env in processes(under)}


def assert_no_value_recorded(run: Recording, workspace: Path, url: str) -> None:
    """Neither value in any ledger row, state file of the workspace (the
    hosts' roots aside), receipt, export or printed line."""
    seen = [row.state for row in RawStore(url).rows()]
    seen += [expand(row.state) for row in RawStore(url).rows()]
    for path in (workspace / ".chassis").rglob("*"):
        if path.is_file() and "hosts" not in path.relative_to(workspace / ".chassis").parts:
            seen.append(path.read_bytes())
    for receipt in json.loads(run.ok("receipts", "list", "--json").stdout):
        seen.append(expand(run.ok("receipts", "show", receipt["digest"]).stdout.encode()))
    for fmt in ("otlp-json", "cloudevents", "dsse"):
        seen.append(expand(run.ok("receipts", "export", "--format", fmt).stdout.encode()))
    seen += [text.encode() for text in run.outputs]
    for value in VALUES:
        for blob in seen:
            assert value.encode() not in blob, blob[:300]


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
def test_reconcile_reports_an_expired_lease_and_repair_removes_it(
    run: Recording,
    backend: str,  # noqa: F811 - requested before shop: the ledger's backend
    shop: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    expires = set_secret(run, monkeypatch, "set", V1, "1m")
    add_api_env(shop, ENV_LINE)
    run.ok(*MONOLITH, "--release", "v1")
    current = shop_current(shop)
    host, release_dir = current.parent.name, current.resolve().name
    assert env_file_value(current) == V1 and running_values(shop) == {V1}
    url = ledger_url(shop)

    # Before the lease ends, nothing to report.
    set_at = json.loads(run.ok("secret", "show", "db_password", "--json").stdout)["set_at"]
    run.ok("reconcile", "shop", "--env", "dev", "--at", set_at)
    later = after(expires)

    # After: reported, one line, exit 18, nothing recorded about it.
    before = len(RawStore(url).rows())
    found = run("reconcile", "shop", "--env", "dev", "--at", later)
    assert found.exit_code == 18, found.output
    line = (
        f"secret db_password@1 lease expired at {expires} on {host} (component api): "
        f"rotate and redeploy, or run '{REPAIR}' to remove it"
    )
    assert line in found.stdout.splitlines(), found.stdout
    assert "copies of expired secret versions" in found.stderr
    as_json = run("reconcile", "shop", "--env", "dev", "--at", later, "--json")
    assert as_json.exit_code == 18
    (copy,) = json.loads(as_json.stdout)["expired_leases"]
    assert {k: copy[k] for k in ("secret", "version", "host", "component", "active")} == {
        "secret": "db_password", "version": 1, "host": host, "component": "api", "active": True,
    }  # fmt: skip
    assert copy["envs"] == ["DB_PASSWORD"] and copy["expired_at"] == expires
    (lease,) = json.loads(run.ok("secret", "leases", "--json", "--at", later).stdout)
    assert (
        lease["expired"]
        and lease["action"] == f"rotate and redeploy, or run '{REPAIR}' to remove it"
    )
    assert not any(e["operation"] == "expire-lease" for e in events(url, OPERATION_STARTED))
    assert len(RawStore(url).rows()) == before, "a look records nothing new here"

    # The repair stops api, deletes its env file and records why.
    repaired = run("reconcile", "shop", "--env", "dev", "--repair", "--at", later, "--json")
    assert repaired.exit_code == 0, repaired.output
    outcome = json.loads(repaired.stdout)
    assert outcome["expired_leases"] == [] and outcome["drift"] == {}
    assert outcome["expired_removed"][host]["ok"] is True
    assert outcome["expired_removed"][host]["stopped"] == ["api"]
    assert not (current / ".env.api").exists()
    assert list(current.glob(".env.*")), "gateway and worker keep theirs"
    assert running_values(shop) == set()
    assert components_running(shop) >= {"gateway", "worker"}
    assert "api" not in components_running(shop)

    # Recorded: intent, steps with the expiry, the stop, the finish.
    (started,) = [e for e in events(url, OPERATION_STARTED) if e["operation"] == "expire-lease"]
    assert started["host_components"] == {host: ["gateway", "worker"]}
    assert "db_password@1 expired" in started["description"]
    steps = [
        e for e in events(url, "chassis.installation.step-recorded.v1") if e["step"] == EXPIRE_STEP
    ]
    assert [s["data"].get("phase") for s in steps] == ["begin", None]
    assert all(s["ok"] and s["host"] == host for s in steps)
    expired = {
        "secret": "db_password", "version": 1, "expired_at": expires, "component": "api",
        "file": f"releases/{release_dir}/.env.api", "active": True,
    }  # fmt: skip
    assert steps[0]["data"]["expired"] == [expired] and steps[1]["data"]["expired"] == [expired]
    assert steps[1]["data"]["removed"] == [f"releases/{release_dir}/.env.api"]
    (stopped,) = events(url, "chassis.installation.components-stopped.v1")
    assert stopped["host"] == host and stopped["components"] == ["api"]
    assert stopped["revision"] == started["revision"]
    finished = events(url, "chassis.installation.operation-finished.v1")[-1]
    assert finished["revision"] == started["revision"] and finished["status"] == "deployed"

    # What the ledger now says: api runs nowhere, no lease, no drift.
    assert json.loads(run.ok("secret", "leases", "--json").stdout) == []
    assert json.loads(run.ok("secret", "leases", "--json", "--at", later).stdout) == []
    rows = json.loads(run.ok("status", "shop", "--env", "dev", "--json").stdout)
    assert sorted(r["component"] for r in rows) == ["gateway", "worker"]
    run.ok("reconcile", "shop", "--env", "dev", "--at", later)
    run.ok("reconcile", "shop", "--env", "dev")
    run.ok("ledger", "verify")

    # No dead end: rotate and redeploy puts api back, on the new version.
    set_secret(run, monkeypatch, "rotate", V2, "30d")
    run.ok("redeploy", "shop", "--env", "dev")
    assert env_file_value(shop_current(shop)) == V2 and running_values(shop) == {V2}
    assert [r["version"] for r in json.loads(run.ok("secret", "leases", "--json").stdout)] == [2]
    assert_no_value_recorded(run, shop, url)


def test_a_newer_valid_version_says_redeploy_and_retained_copies_are_removed(
    run: Recording,
    shop: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A superseded version expired: redeploying is enough (no rotation).
    After the redeploy of another release, the rollback target's env file
    may still hold it: reconcile finds it on the host, the repair deletes
    it and leaves the running component alone."""
    expires = set_secret(run, monkeypatch, "set", V1, "1m")
    add_api_env(shop, ENV_LINE)
    run.ok(*SPLIT, "--release", "v1")
    current = shop_current(shop)
    host, v1_dir = current.parent.name, current.resolve().name
    set_secret(run, monkeypatch, "rotate", V2, "30d")
    later = after(expires)

    found = run("reconcile", "shop", "--env", "dev", "--at", later)
    assert found.exit_code == 18
    assert (
        f"secret db_password@1 lease expired at {expires} on {host} (component api): "
        f"redeploy to take version 2, or run '{REPAIR}' to remove it"
    ) in found.stdout.splitlines(), found.stdout
    (lease,) = json.loads(run.ok("secret", "leases", "--json", "--at", later).stdout)
    assert lease["action"].startswith("redeploy to take version 2")

    run.ok(*SPLIT, "--release", "v2")  # api runs @2 in v2's directory
    v1_env = current.parent / "releases" / v1_dir / ".env.api"
    assert v1_env.exists(), "the rollback target keeps its env file (version 1)"
    assert running_values(shop) == {V2}
    retained = run("reconcile", "shop", "--env", "dev", "--at", later)
    assert retained.exit_code == 18, retained.output
    assert (
        f"secret db_password@1 lease expired at {expires} on {host}: a copy may remain in "
        f"releases/{v1_dir}/.env.api (component api, a retained release): "
        f"run '{REPAIR}' to remove it"
    ) in retained.stdout.splitlines(), retained.stdout

    repaired = run("reconcile", "shop", "--env", "dev", "--repair", "--at", later, "--json")
    assert repaired.exit_code == 0, repaired.output
    assert json.loads(repaired.stdout)["expired_removed"][host]["stopped"] == []
    assert not v1_env.exists()
    assert env_file_value(shop_current(shop)) == V2 and running_values(shop) == {V2}
    url = ledger_url(shop)
    (done,) = [
        e
        for e in events(url, "chassis.installation.step-recorded.v1")
        if e["step"] == EXPIRE_STEP and e["data"].get("phase") is None
    ]
    assert done["data"]["removed"] == [f"releases/{v1_dir}/.env.api"]
    assert done["data"]["expired"][0]["active"] is False
    assert events(url, "chassis.installation.components-stopped.v1") == []
    run.ok("reconcile", "shop", "--env", "dev", "--at", later)
    run.ok("ledger", "verify")
    assert_no_value_recorded(run, shop, url)


def test_over_ssh_the_repair_stops_the_component_and_deletes_the_env_file(
    run: Recording,
    lab: tuple[Path, list[SSHTestHost], dict[str, Path]],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Through the engine with a future ``at``: api alone on its host, so the
    host is retired (``host-retired``) after the ``expire-secret`` step."""
    from chassis.engine.reconcile import reconcile
    from chassis.workspace import Workspace
    from ledger.keys import load_keypair
    from ledger.storage import open_ledger

    root, _, roots = lab
    expires = set_secret(run, monkeypatch, "set", V1, "1m")
    add_api_env(root, ENV_LINE)
    run.ok("deploy", "lab", "--env", "lab", "--profile", "split", "--release", "v1")
    ((api_host, api_root),) = [
        (h, r) for h, r in roots.items() if (r / "current" / ".env.api").exists()
    ]
    release_dir = (api_root / "current").resolve().name
    assert env_file_value(api_root / "current") == V1
    assert running_values(api_root) == {V1}

    keypair = load_keypair(Path(os.environ["CHASSIS_KEYS_DIR"]) / "lab-root.key")
    ws = Workspace.find(root)
    ledger = open_ledger(ws.storage(), keypair)
    notes: list[str] = []
    later = datetime.fromisoformat(expires) + timedelta(seconds=5)
    try:
        looked = reconcile(
            ledger, ws, app="lab", environment="lab", progress=notes.append, at=later
        )
        assert [(c.host, c.component, c.version) for c in looked.expired] == [(api_host, "api", 1)]
        assert looked.drift == {} and running_values(api_root) == {V1}
        done = reconcile(
            ledger, ws, app="lab", environment="lab", repair=True, progress=notes.append, at=later
        )
        assert done.expired == [] and done.drift == {} and done.unreachable == {}
        assert done.expired_removed[api_host]["ok"] is True
        still = reconcile(
            ledger, ws, app="lab", environment="lab", progress=notes.append,
            at=datetime.now(UTC),
        )  # fmt: skip
        assert still.expired == [] and still.drift == {}
    finally:
        ledger.close()

    assert not (api_root / "current").exists(), "the host runs nothing of lab now"
    assert list(api_root.glob("releases/*/.env.*")) == []
    assert (api_root / "releases" / release_dir).is_dir(), "the release itself stays"
    assert running_values(api_root) == set()
    url = ledger_url(root)
    steps = [
        e for e in events(url, "chassis.installation.step-recorded.v1") if e["host"] == api_host
    ]
    expire_steps = [s for s in steps if s["step"] == EXPIRE_STEP]
    assert [s["data"].get("phase") for s in expire_steps] == ["begin", None]
    assert expire_steps[0]["data"]["expired"][0] == {
        "secret": "db_password", "version": 1, "expired_at": expires, "component": "api",
        "file": f"releases/{release_dir}/.env.api", "active": True,
    }  # fmt: skip
    assert expire_steps[1]["data"]["removed"] == [f"releases/{release_dir}/.env.api"]
    (retired,) = events(url, "chassis.installation.host-retired.v1")
    assert retired["host"] == api_host
    assert json.loads(run.ok("secret", "leases", "--json").stdout) == []
    rows = json.loads(run.ok("status", "lab", "--env", "lab", "--json").stdout)
    assert "api" not in {r["component"] for r in rows}
    run.ok("ledger", "verify")
    for value in VALUES:
        assert not any(value in note for note in notes)
        for row in RawStore(url).rows():
            assert value.encode() not in expand(row.state)
        for text in run.outputs:
            assert value not in text
