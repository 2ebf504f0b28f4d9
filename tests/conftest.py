"""Shared fixtures: an isolated environment per test and real ledger backends.

PostgreSQL tests use ``CHASSIS_TEST_POSTGRES`` (default
``postgresql://postgres@127.0.0.1:5432/test``) with one schema per test.
Where the server is absent the test is skipped with the reason, except under
``CI=true``, where absence is a failure.
"""

from __future__ import annotations

import gc
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, settings

from chassis.cli import cli
from ledger.application import Ledger
from ledger.keys import KeyPair

pytest_plugins = ["tests.sshd", "tests.scheduling"]

POSTGRES_URL = os.environ.get("CHASSIS_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# Hypothesis's default 200 ms deadline and too-slow health check are timing
# assertions: on a loaded two-core machine running eight workers they fail
# tests whose behaviour is right. Properties are judged on outcomes only.
settings.register_profile("chassis", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("chassis")


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    """Move what collection built (modules, test items, fixtures' code) out
    of the collector's reach: a worker's full collections would otherwise
    walk it again and again for the whole run (a third of the time they
    took in a run of tests/engine and tests/cli)."""
    gc.collect()
    gc.freeze()


def _real_interpreter(found: str) -> str | None:
    """The interpreter a ``python3`` that is a script (a version manager's
    shim) stands for: the system's, as on a real host, else the shim's target."""
    with open(found, "rb") as head:
        if head.read(2) != b"#!":
            return None  # a real interpreter already
    if os.access("/usr/bin/python3", os.X_OK):
        return "/usr/bin/python3"
    answer = subprocess.run(
        [found, "-c", "import sys; print(sys.executable)"], capture_output=True, text=True
    )
    target = answer.stdout.strip()
    return target if answer.returncode == 0 and target and target != found else None


@pytest.fixture(scope="session", autouse=True)
def host_python3(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Local hosts run ``python3`` from PATH (the sample apps, env loaders).

    On a machine with pyenv that is a bash shim which forks a dozen shells
    before it execs the interpreter: ~90 ms of CPU a call, which the process
    accounting of one suite run put at a third of all its CPU. A host has a
    real ``python3``; so do the tests' hosts. Nothing is changed where
    ``python3`` already is one.
    """
    found = shutil.which("python3")
    target = _real_interpreter(found) if found else None
    if target is None:
        return
    bin_dir = tmp_path_factory.mktemp("host-bin")
    (bin_dir / "python3").symlink_to(target)
    os.environ["PATH"] = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"


@pytest.fixture(autouse=True)
def isolation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keys, config and cwd under tmp; no inherited CHASSIS_* settings."""
    for name in (
        "CHASSIS_LEDGER",
        "CHASSIS_KEY",
        "CHASSIS_WORKSPACE",
        "CHASSIS_SIGNING_KEY",
        "CHASSIS_DEBUG",
    ):
        monkeypatch.delenv(name, raising=False)
    keys = tmp_path / "keys"
    monkeypatch.setenv("CHASSIS_KEYS_DIR", str(keys))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("NO_COLOR", "1")
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.chdir(home)
    return keys


def _postgres_unavailable() -> str | None:
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed"
    try:
        psycopg.connect(POSTGRES_URL, connect_timeout=3).close()
    except psycopg.Error as e:
        return f"PostgreSQL at {POSTGRES_URL} is unreachable: {str(e).strip().splitlines()[0]}"
    return None


@pytest.fixture(scope="session")
def postgres_available() -> None:
    reason = _postgres_unavailable()
    if reason is not None:
        if IN_CI:
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)


@pytest.fixture
def postgres_url(postgres_available: None) -> Iterator[str]:
    """A ledger URL on a fresh schema, dropped afterwards."""
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:12]}"
    yield f"{POSTGRES_URL}?schema={schema}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each backend in turn: a SQLite file, then a PostgreSQL schema."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def run() -> Runner:
    return Runner()


class Runner:
    """Runs the real CLI in-process; exceptions without an exit code surface."""

    def __call__(self, *args: str, input: str | None = None) -> Result:
        return CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)

    def ok(self, *args: str) -> Result:
        result = self(*args)
        assert result.exit_code == 0, f"exit {result.exit_code}: {result.stderr}{result.stdout}"
        return result


@pytest.fixture
def workspace(run: Runner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh workspace with a root key, on SQLite, as the cwd."""
    root = tmp_path / "shop"
    run.ok("init", str(root), "--name", "shop")
    monkeypatch.chdir(root)
    return root


@pytest.fixture
def root_key(isolation: Path) -> KeyPair:
    from ledger.keys import generate_keypair

    return generate_keypair(isolation, "root")


@pytest.fixture
def ledger(ledger_url: str, root_key: KeyPair) -> Iterator[Ledger]:
    """A ledger on each backend whose trust is rooted in ``root_key``."""
    from ledger.storage import StorageConfig, open_ledger
    from ledger.trust import Trust

    opened = open_ledger(StorageConfig.from_url(ledger_url), root_key, create=True)
    opened.append(
        Trust.establish(
            keyid=root_key.keyid, name="root", public_key=root_key.public_key, ledger_name="test"
        )
    )
    yield opened
    opened.close()
