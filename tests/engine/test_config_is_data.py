"""Release config keys and values are data, never shell code (issue 11, item 2).

The reproduction: ``chassis release add v1 --config 'X;id>/tmp/owned-$(hostname);Y=1'``
deployed "active and healthy" and ran ``id`` on every host, because the
executor wrote config keys unquoted into an env file that the direct
supervisor's wrapper sourced with ``sh``. Now the key is refused at input;
a release already in a ledger with such a key is refused by the one
env-file writer at ``configure``; and values of any shape reach the process
exactly, through a real deploy.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

import chassis.cli.release as release_cli
import chassis.engine.releases as releases
from adapters.connectors.local import LocalConnector
from adapters.supervisors.direct import DirectSupervisor
from chassis.bundles import build_bundle
from tests.conftest import Runner

HOSTILE_KEY = "X;touch {owned};Y"

STACK = """\
[app]
name = "cfg"

[components.echo]
command = "printf '%s' \\"$NASTY\\" > ../../run/nasty.txt; printf '%s' \\"$PLAIN\\" > ../../run/plain.txt; exec sleep 60"
health = {{ type = "command", command = "test -f ../../run/plain.txt", interval_ms = 100, passes = 1, window_ms = 5000 }}

[profiles.one]
groups.all = {{ components = ["echo"] }}

[environments.dev]
hosts = [ {{ name = "dev-1", connector = "local", root = "{root}" }} ]
"""  # noqa: E501

NASTY_VALUE = "$(touch {owned}) `touch {owned}` ${{HOME}} 'q' \"dq\" \\ ; # =\nline2\r\n\t✓"


def events(workspace: Path) -> int:
    conn = sqlite3.connect(workspace / ".chassis" / "ledger.db")
    try:
        return int(conn.execute("SELECT COUNT(*) FROM stored_events").fetchone()[0])
    finally:
        conn.close()


@pytest.fixture
def cfg(run: Runner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A workspace with one local host and a component that writes what it sees."""
    workspace = tmp_path / "cfg"
    run.ok("init", str(workspace), "--name", "cfg")
    host_root = tmp_path / "host-root"
    (workspace / "chassis.toml").write_text(STACK.format(root=host_root))
    source = tmp_path / "src"
    source.mkdir()
    (source / "VERSION").write_text("1\n")
    build_bundle(source, tmp_path / "bundle.tar.gz")
    monkeypatch.chdir(workspace)
    yield workspace
    DirectSupervisor(LocalConnector("dev-1"), str(host_root)).stop("echo", timeout=2)


def test_a_hostile_config_key_is_refused_at_release_add(
    run: Runner, cfg: Path, tmp_path: Path
) -> None:
    owned = tmp_path / "owned"
    before = events(cfg)
    key = HOSTILE_KEY.format(owned=owned)
    result = run(
        "release",
        "add",
        "v1",
        "--artifact",
        str(tmp_path / "bundle.tar.gz"),
        "--config",
        f"{key}=1",
    )
    assert result.exit_code == 3
    assert result.stderr.count("\n") == 1
    assert result.stderr == (
        f"chassis: error: release v1: config key: environment variable name {key!r}: "
        "expected 1-128 letters, digits or '_', not starting with a digit\n"
    )
    assert events(cfg) == before
    assert not (cfg / ".chassis" / "bundles").exists()
    assert not owned.exists()


@pytest.mark.parametrize(
    ("config", "why"),
    [
        ("1X=1", "not starting with a digit"),
        ("A-B=1", "'A-B'"),
        ("A\nB=1", "'A\\nB'"),
        ("NUL=a\x00b", "config NUL: value contains a NUL byte"),
        ("NONCHAR=\ufffe", "config NONCHAR: value contains U+FFFE"),
    ],
)
def test_config_keys_and_unrepresentable_values_are_refused(
    run: Runner, cfg: Path, tmp_path: Path, config: str, why: str
) -> None:
    before = events(cfg)
    result = run(
        "release", "add", "v1", "--artifact", str(tmp_path / "bundle.tar.gz"), "--config", config
    )
    assert result.exit_code == 3 and why in result.stderr
    assert result.stderr.count("\n") == 1
    assert events(cfg) == before


def test_any_config_value_reaches_the_process_exactly(
    run: Runner, cfg: Path, tmp_path: Path
) -> None:
    owned = tmp_path / "owned"
    value = NASTY_VALUE.format(owned=owned)
    run.ok(
        "release",
        "add",
        "v1",
        "--artifact",
        str(tmp_path / "bundle.tar.gz"),
        "--config",
        f"NASTY={value}",
        "--config",
        "PLAIN=plain",
    )
    summary = json.loads(
        run.ok(
            "deploy", "cfg", "--env", "dev", "--profile", "one", "--release", "v1", "--json"
        ).stdout
    )
    assert summary["status"] == "deployed"
    run_dir = tmp_path / "host-root" / "run"
    assert (run_dir / "nasty.txt").read_bytes() == value.encode()
    assert (run_dir / "plain.txt").read_text() == "plain"
    assert not owned.exists()


def test_a_hostile_key_already_in_the_ledger_is_refused_by_the_writer(
    run: Runner, cfg: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A release registered before keys were checked: input validation is
    # bypassed here to put one in the ledger, as an old version would have.
    owned = tmp_path / "owned"
    key = HOSTILE_KEY.format(owned=owned)
    with monkeypatch.context() as patch:
        for module in (releases, release_cli):
            patch.setattr(module, "check_release_input", lambda label, config: None, raising=False)
        run.ok(
            "release",
            "add",
            "v1",
            "--artifact",
            str(tmp_path / "bundle.tar.gz"),
            "--config",
            f"{key}=1",
            "--config",
            "PLAIN=plain",
        )
    result = run("deploy", "cfg", "--env", "dev", "--profile", "one", "--release", "v1", "--json")
    assert not owned.exists(), "the config key ran as a shell command on the host"
    assert result.exit_code == 16
    summary = json.loads(result.stdout)
    assert summary["status"] == "failed"
    host = summary["hosts"]["dev-1"]
    assert host["step"] == "configure" and not host["ok"]
    assert host["detail"].startswith("component echo: invalid environment variable name(s)")
    assert not owned.exists()
    assert not (tmp_path / "host-root" / "run" / "plain.txt").exists()  # nothing started
