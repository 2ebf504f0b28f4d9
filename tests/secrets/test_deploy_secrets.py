"""Deploying with secrets from the store: ``env = { DB_PASSWORD = { secret = "db_password" } }``.

Real processes on local hosts (``shop``) and over sshd (``lab``). The plan
records ``store:db_password@N``, pinned to the version current when it was
made: a rotation and ``redeploy`` put version 2 on the host, ``rollback``
replays the plan of revision 1 and so reveals version 1 again. The values
never reach the ledger's rows, receipts, exports, any command's output or a
process's command line; retained release directories on the hosts keep no
env file except the active release's and the rollback target's.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import Result

from tests.conftest import Runner
from tests.engine.conftest import shop  # noqa: F401 - the shop fixture
from tests.engine.test_deploy_ssh import lab  # noqa: F401 - the lab fixture
from tests.engine.test_lifecycle import backend  # noqa: F401 - the backend fixture
from tests.engine.test_secrets import add_api_env
from tests.export.test_export_cli import expand
from tests.rawstore import RawStore
from tests.sshd import SSHTestHost

# Long (deploys, health windows, many processes): the parallel run starts
# these first (tests/scheduling.py).
pytestmark = pytest.mark.slow

DEPLOY = ("deploy", "shop", "--env", "dev", "--profile", "ternary-split-3")
ENV_LINE = 'env = { DB_PASSWORD = { secret = "db_password" } }'
V1 = "db-pass-one-7Hq2cLm9-aaaa"
V2 = "db-pass-two-Rt9wKp4z-bbbb"
VALUES = (V1, V2)


class Recording(Runner):
    """The CLI, in-process, keeping every command's stdout and stderr."""

    def __init__(self) -> None:
        self.outputs: list[str] = []

    def __call__(self, *args: str, input: str | None = None) -> Result:
        result = super().__call__(*args, input=input)
        self.outputs.append(f"$ chassis {' '.join(args)}\n{result.stdout}{result.stderr}")
        return result


@pytest.fixture
def run() -> Recording:
    """Overrides the shared ``run``: ``shop`` and ``lab`` use this one too."""
    return Recording()


@pytest.fixture
def stored(
    run: Recording,
    shop: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> Path:
    """``shop`` with db_password version 1 in the store and used by api."""
    monkeypatch.setenv("NEW_DB_PASSWORD", V1)
    run.ok("secret", "set", "db_password", "--from-env", "NEW_DB_PASSWORD", "--reason", "first")
    add_api_env(shop, ENV_LINE)
    return shop


def rotate(run: Recording, value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEW_DB_PASSWORD", value)
    run.ok("secret", "rotate", "db_password", "--from-env", "NEW_DB_PASSWORD", "--reason", "new")


# What the hosts hold and run.


def env_file_value(current: Path, component: str = "api") -> str | None:
    """DB_PASSWORD in ``component``'s env file of the release ``current`` names."""
    text = (current / f".env.{component}").read_text()
    found = re.search(r"^DB_PASSWORD=(.*)$", text, re.M)
    return found.group(1).strip("'\"") if found else None


def shop_current(workspace: Path, component: str = "api") -> Path:
    (found,) = [
        p
        for p in (workspace / ".chassis" / "hosts").glob("*/current")
        if (p / f".env.{component}").exists()
    ]
    return found


def processes(under: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """(pid, environment) of every process whose ``CHASSIS_HOST_ROOT`` is under ``under``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "environ").read_bytes()
        except OSError:
            continue
        env = dict(
            item.decode(errors="replace").split("=", 1) for item in raw.split(b"\0") if b"=" in item
        )
        if env.get("CHASSIS_HOST_ROOT", "").startswith(str(under)):
            yield int(entry.name), env


def running_values(under: Path, component: str = "api") -> set[str | None]:
    """DB_PASSWORD as the running ``component`` processes see it."""
    return {
        env.get("DB_PASSWORD")
        for _, env in processes(under)
        if env.get("CHASSIS_COMPONENT") == component
    }


def no_value_in_cmdlines() -> None:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        for value in VALUES:
            assert value.encode() not in cmdline, (entry.name, cmdline)


def stale_env_files(root: Path, keep: set[str]) -> list[Path]:
    """``.env.*`` files in release directories of ``root`` other than ``keep``."""
    return sorted(
        p
        for d in (root / "releases").iterdir()
        if d.is_dir() and d.name not in keep
        for p in d.glob(".env.*")
    )


# What chassis records and prints.


def everything_recorded(run: Recording, workspace: Path, tmp_path: Path) -> list[bytes]:
    """Ledger rows, every file of the workspace's state (host roots left
    out: that is where the values belong), receipts shown, exports to files."""
    seen: list[bytes] = []
    for row in RawStore(f"sqlite:///{workspace / '.chassis' / 'ledger.db'}").rows():
        seen += [row.state, row.topic.encode(), expand(row.state)]
    for path in (workspace / ".chassis").rglob("*"):
        if path.is_file() and "hosts" not in path.relative_to(workspace / ".chassis").parts:
            seen.append(path.read_bytes())
    for command in (
        ("ledger", "log", "--json"),
        ("history", "shop", "--env", "dev", "--json"),
        ("status", "shop", "--env", "dev", "--json"),
        ("secret", "list", "--json"),
        ("secret", "show", "db_password", "--json"),
    ):
        result = run(*command)
        seen.append(result.stdout.encode())
    receipts = json.loads(run.ok("receipts", "list", "--json").stdout)
    assert receipts, "the deploys issued receipts"
    for receipt in receipts:
        seen.append(expand(run.ok("receipts", "show", receipt["digest"]).stdout.encode()))
        seen.append(run.ok("receipts", "show", receipt["digest"], "--statement").stdout.encode())
    for format in ("otlp-json", "cloudevents", "dsse"):
        target = tmp_path / f"export-{format}.jsonl"
        run.ok("receipts", "export", "--format", format, "--to", str(target))
        seen += [expand(line) for line in target.read_bytes().splitlines()]
        seen.append(expand(run.ok("receipts", "export", "--format", format).stdout.encode()))
    return seen


def assert_no_value_anywhere(run: Recording, workspace: Path, tmp_path: Path) -> None:
    seen = everything_recorded(run, workspace, tmp_path)
    seen += [text.encode() for text in run.outputs]
    for value in VALUES:
        for blob in seen:
            assert value.encode() not in blob, blob[:200]


def revision(run: Recording, app: str, env: str, number: int) -> dict[str, object]:
    history = json.loads(run.ok("history", app, "--env", env, "--json").stdout)
    found: dict[str, object] = next(r for r in history["revisions"] if r["revision"] == number)
    return found


def api_secrets(plan: dict[str, object]) -> dict[str, str]:
    hosts = plan["hosts"]
    assert isinstance(hosts, list)
    api = next(c for h in hosts for c in h["components"] if c["name"] == "api")
    secrets: dict[str, str] = api["secrets"]
    return secrets


# Tests.


def test_rotate_redeploy_and_rollback_restore_each_version_and_nothing_leaks(
    run: Recording, stored: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = json.loads(run.ok(*DEPLOY, "--release", "v1", "--dry-run", "--json").stdout)
    assert api_secrets(plan) == {"DB_PASSWORD": "store:db_password@1"}, "the version is pinned"
    first = json.loads(run.ok(*DEPLOY, "--release", "v1", "--json").stdout)
    assert first["status"] == "deployed"
    current = shop_current(stored)
    assert env_file_value(current) == V1
    assert oct((current / ".env.api").stat().st_mode & 0o777) == "0o600"
    assert running_values(stored) == {V1}
    no_value_in_cmdlines()

    rotate(run, V2, monkeypatch)
    dry = run.ok(*DEPLOY, "--release", "v1", "--dry-run", "--json")
    assert api_secrets(json.loads(dry.stdout)) == {"DB_PASSWORD": "store:db_password@2"}
    assert "api.DB_PASSWORD db_password@1 -> @2" in dry.stderr, dry.stderr
    redeployed = json.loads(run.ok("redeploy", "shop", "--env", "dev", "--json").stdout)
    assert redeployed["status"] == "deployed", redeployed
    assert "secrets changed: api.DB_PASSWORD db_password@1 -> @2" in redeployed["description"]
    assert env_file_value(shop_current(stored)) == V2
    assert running_values(stored) == {V2}
    no_value_in_cmdlines()

    rolled = json.loads(run.ok("rollback", "shop", "--env", "dev", "--json").stdout)
    assert rolled["target_revision"] == 1 and rolled["status"] == "deployed", rolled
    assert env_file_value(shop_current(stored)) == V1, "the plan of revision 1 replayed @1"
    assert running_values(stored) == {V1}
    no_value_in_cmdlines()
    assert json.loads(run.ok("status", "shop", "--env", "dev", "--json").stdout)
    run.ok("ledger", "verify")
    assert_no_value_anywhere(run, stored, tmp_path)


def test_retained_releases_keep_no_env_file_and_a_restored_one_gets_it_again(
    run: Recording, stored: Path, tmp_path: Path
) -> None:
    from chassis.sample_app import build_sample_release

    bundle, _ = build_sample_release(tmp_path / "dist4", "v4")
    run.ok("release", "add", "v4", "--artifact", str(bundle))
    hosts = stored / ".chassis" / "hosts"
    dirs: dict[str, dict[str, str]] = {}
    for label in ("v1", "v2", "v4"):
        run.ok(*DEPLOY, "--release", label)
        dirs[label] = {h.name: (h / "current").resolve().name for h in hosts.iterdir()}
    for host in hosts.iterdir():
        keep = {dirs["v4"][host.name], dirs["v2"][host.name]}  # active, rollback target
        assert (host / "releases" / dirs["v1"][host.name]).is_dir(), "v1 is retained"
        assert stale_env_files(host, keep) == [], host
        for name in keep:
            assert list((host / "releases" / name).glob(".env.*")), (host, name)
    api_host = shop_current(stored).parent
    assert not (api_host / "releases" / dirs["v1"][api_host.name] / ".env.api").exists()

    # v1 comes back through configure: its env file is written again.
    rolled = json.loads(run.ok("rollback", "shop", "--env", "dev", "--to", "1", "--json").stdout)
    assert rolled["status"] == "deployed", rolled
    assert shop_current(stored).resolve().name == dirs["v1"][api_host.name]
    assert env_file_value(shop_current(stored)) == V1
    assert running_values(stored) == {V1}
    for host in hosts.iterdir():
        keep = {dirs["v1"][host.name], dirs["v4"][host.name]}
        assert stale_env_files(host, keep) == [], host


def test_a_failed_redeploy_restores_the_version_the_host_ran(
    run: Recording, stored: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The redeploy writes version 2 into the same release directory; api
    exits on it, and the restore writes version 1 back before starting the
    previous process, which is then healthy again with version 1."""
    stack = stored / "chassis.toml"
    text = stack.read_text()
    port = re.search(r'command = "python3 app/api.py --port (\d+)"', text)
    assert port is not None
    stack.write_text(
        text.replace(
            port.group(0),
            'command = "case \\"$DB_PASSWORD\\" in *broken*) exit 3;; esac; '
            f'exec python3 app/api.py --port {port.group(1)}"',
        )
    )
    run.ok(*DEPLOY, "--release", "v1")
    assert running_values(stored) == {V1}
    broken = "db-pass-broken-Zx81qq-cccc"
    rotate(run, broken, monkeypatch)
    failed = run("redeploy", "shop", "--env", "dev", "--json")
    assert failed.exit_code == 16, failed.output
    result = json.loads(failed.stdout)
    api_host = shop_current(stored).parent.name
    assert result["hosts"][api_host]["restored"] is True, result
    assert env_file_value(shop_current(stored)) == V1
    assert running_values(stored) == {V1}
    assert broken not in failed.stdout + failed.stderr
    run.ok("ledger", "verify")


def test_store_failures_are_one_line_with_the_store_exit_code_before_any_intent(
    run: Recording, stored: Path
) -> None:
    stack = stored / "chassis.toml"
    text = stack.read_text()
    stack.write_text(text.replace('secret = "db_password"', 'secret = "no_such"'))
    before = run.ok("ledger", "log", "--json").stdout
    unknown = run(*DEPLOY, "--release", "v1")
    assert unknown.exit_code == 10, unknown.output
    (line,) = unknown.stderr.strip().splitlines()[-1:]
    assert "component api: env DB_PASSWORD" in line and "no_such" in line, line
    assert run.ok("ledger", "log", "--json").stdout == before

    stack.write_text(text)
    db = sqlite3.connect(stored / ".chassis" / "ledger.db")
    try:
        ((ciphertext,),) = db.execute("SELECT ciphertext FROM chassis_secret_versions").fetchall()
        flipped = bytes([ciphertext[0] ^ 1]) + bytes(ciphertext[1:])
        db.execute("UPDATE chassis_secret_versions SET ciphertext = ?", (flipped,))
        db.commit()
    finally:
        db.close()
    before = run.ok("ledger", "log", "--json").stdout
    tampered = run(*DEPLOY, "--release", "v1")
    assert tampered.exit_code == 8, tampered.output
    assert "component api: env DB_PASSWORD" in tampered.stderr, tampered.stderr
    assert run.ok("ledger", "log", "--json").stdout == before


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        ('{ secret = "no way" }', "secret name 'no way'"),
        ('{ secret = "db_password", from_env = "X" }', "exactly one of from_env, from_file or"),
        ("{ }", "exactly one of from_env, from_file or secret"),
    ],
)
def test_a_bad_secret_reference_is_refused_by_the_stack_check(
    run: Recording,
    shop: Path,  # noqa: F811
    entry: str,
    why: str,
) -> None:
    add_api_env(shop, f"env = {{ DB_PASSWORD = {entry} }}")
    result = run("stack", "validate")
    assert result.exit_code == 3 and why in result.stderr, result.stderr
    assert "components.api.env.DB_PASSWORD" in result.stderr


def test_a_key_made_after_the_secret_deploys_only_once_granted(
    run: Recording, stored: Path
) -> None:
    run.ok("key", "new", "bob", "--roles", "operator")
    before = run.ok("ledger", "log", "--json").stdout
    refused = run("--key", "bob", *DEPLOY, "--release", "v1")
    assert refused.exit_code == 5, refused.output
    line = refused.stderr.strip().splitlines()[-1]
    assert "component api: env DB_PASSWORD" in line and "not a recipient" in line, line
    assert run.ok("ledger", "log", "--json").stdout == before, "nothing recorded"
    assert running_values(stored) == set()

    run.ok("secret", "grant", "db_password", "bob", "--reason", "on call")
    deployed = json.loads(run.ok("--key", "bob", *DEPLOY, "--release", "v1", "--json").stdout)
    assert deployed["status"] == "deployed"
    assert env_file_value(shop_current(stored)) == V1
    assert running_values(stored) == {V1}
    for text in run.outputs:
        assert V1 not in text


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
def test_a_key_granted_after_a_rotation_rolls_back_to_the_older_version(
    run: Recording,
    backend: str,  # noqa: F811 - requested before shop: the ledger's backend
    stored: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 16: ``grant`` seals every version the granter can open, so a key
    created after a rotation deploys the current version and rolls back to
    the older one (before: exit 5 on the rollback)."""
    run.ok(*DEPLOY, "--release", "v1")  # revision 1 runs @1, deployed by the workspace key
    rotate(run, V2, monkeypatch)
    run.ok("key", "new", "bob", "--roles", "operator")
    granted = run.ok("secret", "grant", "db_password", "bob", "--reason", "joins", "--json")
    assert json.loads(granted.stdout)["versions"] == [1, 2], granted.stdout
    for number in ("1", "2"):
        checked = run.ok("--key", "bob", "secret", "verify", "db_password", "--version", number)
        assert "ok" in checked.stdout
    redeployed = json.loads(
        run.ok("--key", "bob", "redeploy", "shop", "--env", "dev", "--json").stdout
    )
    assert redeployed["status"] == "deployed", redeployed
    assert env_file_value(shop_current(stored)) == V2 and running_values(stored) == {V2}
    rolled = run("--key", "bob", "rollback", "shop", "--env", "dev", "--json")
    assert rolled.exit_code == 0, rolled.stderr
    assert json.loads(rolled.stdout)["target_revision"] == 1
    assert env_file_value(shop_current(stored)) == V1, "bob revealed version 1"
    assert running_values(stored) == {V1}
    run.ok("ledger", "verify")
    for value in VALUES:
        for text in run.outputs:
            assert value not in text


def test_over_ssh_each_version_reaches_the_host_and_rollback_restores_it(
    run: Recording,
    lab: tuple[Path, list[SSHTestHost], dict[str, Path]],  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root, _, roots = lab
    from chassis.sample_app import build_sample_release

    bundle, _ = build_sample_release(tmp_path / "dist4", "v4")
    run.ok("release", "add", "v4", "--artifact", str(bundle))
    monkeypatch.setenv("NEW_DB_PASSWORD", V1)
    run.ok("secret", "set", "db_password", "--from-env", "NEW_DB_PASSWORD")
    add_api_env(root, ENV_LINE)
    deploy = ("deploy", "lab", "--env", "lab", "--profile", "split", "--release")
    run.ok(*deploy, "v1")
    (api_root,) = [r for r in roots.values() if (r / "current" / ".env.api").exists()]
    assert env_file_value(api_root / "current") == V1
    assert running_values(api_root) == {V1}
    no_value_in_cmdlines()

    rotate(run, V2, monkeypatch)
    dry = run.ok(*deploy, "v1", "--dry-run")
    assert "api.DB_PASSWORD db_password@1 -> @2" in dry.stderr, dry.stderr
    dirs: dict[str, dict[str, str]] = {}
    for label in ("v2", "v4"):
        run.ok(*deploy, label)
        assert env_file_value(api_root / "current") == V2
        assert running_values(api_root) == {V2}
        dirs[label] = {h: (r / "current").resolve().name for h, r in roots.items()}
    for host, host_root in roots.items():
        # v1's directory is retained, without its env files.
        assert stale_env_files(host_root, {dirs["v4"][host], dirs["v2"][host]}) == [], host
        assert len([d for d in (host_root / "releases").iterdir() if d.is_dir()]) == 3
    no_value_in_cmdlines()

    rolled = json.loads(run.ok("rollback", "lab", "--env", "lab", "--to", "1", "--json").stdout)
    assert rolled["status"] == "deployed", rolled
    assert env_file_value(api_root / "current") == V1, "revision 1's plan replayed @1"
    assert running_values(api_root) == {V1}
    no_value_in_cmdlines()
    for value in VALUES:
        for text in run.outputs:
            assert value not in text
        for row in RawStore(f"sqlite:///{root / '.chassis' / 'ledger.db'}").rows():
            assert value.encode() not in expand(row.state)
    run.ok("ledger", "verify")


def test_secret_leases_list_where_each_version_runs_and_when_it_expires(
    run: Recording, stored: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 16, item 4: ``chassis secret leases`` from the ledger: which
    version each host runs, and when its TTL runs out."""
    from datetime import UTC, datetime, timedelta

    from chassis.secret_leases import leases
    from chassis.workspace import Workspace
    from ledger.storage import open_ledger

    assert json.loads(run.ok("secret", "leases", "--json").stdout) == []
    run.ok(*DEPLOY, "--release", "v1")
    first = json.loads(run.ok("secret", "leases", "--json").stdout)
    assert [(r["secret"], r["version"], r["component"], r["env"]) for r in first] == [
        ("db_password", 1, "api", "DB_PASSWORD")
    ]
    assert first[0]["expires"] is None and first[0]["current"] is True
    monkeypatch.setenv("NEW_DB_PASSWORD", V2)
    run.ok(
        "secret", "rotate", "db_password", "--from-env", "NEW_DB_PASSWORD", "--ttl", "1h",
        "--reason", "with a lease",
    )  # fmt: skip
    stale = json.loads(run.ok("secret", "leases", "--json").stdout)
    assert [(r["version"], r["current"]) for r in stale] == [(1, False)], "v1 still runs"
    run.ok("redeploy", "shop", "--env", "dev")
    rows = json.loads(run.ok("secret", "leases", "--json").stdout)
    assert [(r["version"], r["current"], r["expired"]) for r in rows] == [(2, True, False)]
    assert rows[0]["expires"] is not None
    reader = open_ledger(Workspace.find(stored).storage(), None)
    try:
        later = leases(reader, datetime.now(UTC) + timedelta(hours=2))
    finally:
        reader.close()
    assert [(r["version"], r["expired"]) for r in later] == [(2, True)]
    assert V1 not in "".join(run.outputs) and V2 not in "".join(run.outputs)
