"""Fast start (issue 13, item 8): a command imports what it uses, no more.

``chassis --version`` and ``chassis --help`` import no command module and
nothing heavy; ``chassis status`` opens the ledger (eventsourcing, SQLite,
cryptography for the signatures) but never SSH, the engine or the exporters;
a subcommand's ``--help`` imports no SSH and no engine. Checked in a fresh
interpreter per command (what it imported, from ``sys.modules`` at exit),
never by timing: ``bench/startup.py`` times it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from chassis.cli import cli
from chassis.cli.lazy import Lazy, LazyGroup

REPO = Path(__file__).resolve().parents[2]

SSH = ["paramiko", "fabric", "invoke"]
NEVER_FOR_STATUS = [
    *SSH,
    "chassis.engine",
    "chassis.export",
    "chassis.inventory",
    "chassis.connect",
    "psycopg",
    "psycopg_pool",
    "pynvml",
    "psutil",
    "rich",
]
NEVER_FOR_VERSION = [
    *NEVER_FOR_STATUS,
    "eventsourcing",
    "cryptography",
    "nacl",
    "sqlite3",
    "msgspec",
    "ledger",
    "projections",
    "proofs",
    "asyncio",
]

PROBE = """
import atexit, json, os, sys

def dump():
    with open(os.environ["CHASSIS_TEST_MODULES"], "w") as f:
        json.dump(sorted(sys.modules), f)

atexit.register(dump)
sys.argv = ["chassis", *sys.argv[1:]]
from chassis.cli import main
main()
"""


def imported(tmp_path: Path, *args: str, cwd: Path | None = None) -> set[str]:
    """The modules ``chassis ARGS`` imported, run as a new process (exit 0)."""
    out = tmp_path / "modules.json"
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "CHASSIS_TEST_MODULES": str(out), "PYTHONPATH": path}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        cwd=cwd or Path.cwd(),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return set(json.loads(out.read_text()))


def offending(modules: set[str], banned: list[str]) -> list[str]:
    return sorted(m for m in modules if any(m == b or m.startswith(b + ".") for b in banned))


@pytest.mark.parametrize("args", [["--version"], ["--help"]])
def test_version_and_help_import_no_command_and_nothing_heavy(
    tmp_path: Path, args: list[str]
) -> None:
    modules = imported(tmp_path, *args)
    assert not offending(modules, NEVER_FOR_VERSION)
    commands = sorted(m for m in modules if m.startswith("chassis.cli."))
    assert commands == ["chassis.cli.app", "chassis.cli.lazy"]


@pytest.mark.parametrize("args", [["status"], ["status", "--json"]])
def test_status_reads_the_ledger_without_ssh_engine_or_exporters(
    tmp_path: Path, workspace: Path, args: list[str]
) -> None:
    modules = imported(tmp_path, *args, cwd=workspace)
    assert "eventsourcing" in modules  # it did open the ledger
    assert not offending(modules, NEVER_FOR_STATUS)


@pytest.mark.parametrize(
    "path",
    [["deploy"], ["stack", "deploy"], ["rollback"], ["recover"], ["host", "trust-key"]],
)
def test_a_subcommands_help_imports_no_ssh_and_no_engine(tmp_path: Path, path: list[str]) -> None:
    modules = imported(tmp_path, *path, "--help")
    assert not offending(modules, [*SSH, "chassis.engine"])


def lazy_groups(group: click.Group, path: list[str]) -> list[tuple[list[str], LazyGroup]]:
    found = [(path, group)] if isinstance(group, LazyGroup) else []
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        sub = group.get_command(ctx, name)
        if isinstance(sub, click.Group):
            found += lazy_groups(sub, [*path, name])
    return found


def test_the_lazy_tables_hold_each_commands_own_short_help() -> None:
    groups = lazy_groups(cli, [])
    assert [p for p, _ in groups][:1] == [[]], "the root group is lazy"
    for path, group in groups:
        for name, entry in group.lazy.items():
            where = " ".join(["chassis", *path, name])
            command = group.load(name)
            assert command.name == name, where
            stored = click.Command(name, help=entry.help)
            for limit in (40, 60, 80, 1000):
                assert stored.get_short_help_str(limit) == command.get_short_help_str(limit), (
                    f"{where}: the short help in its lazy table differs from the command's"
                )


def test_help_lists_every_command_and_alias() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    listed = result.stdout.split("Commands:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    names = [line.split()[0] for line in listed]
    assert names == cli.list_commands(click.Context(cli))
    assert {"deploy", "plan", "status", "stack", "host", "ledger"} <= set(names)
    stack = cli.get_command(click.Context(cli), "stack")
    assert isinstance(stack, click.Group)
    assert stack.get_command(click.Context(stack), "deploy") is cli.get_command(
        click.Context(cli), "deploy"
    )


def test_an_unknown_command_is_told_the_close_names_not_yet_imported() -> None:
    group = LazyGroup(
        "g", lazy={"deploy": Lazy("chassis.cli.deploy_cmd:deploy_command", "Deploy.")}
    )
    result = CliRunner().invoke(group, ["deplo"])
    assert result.exit_code == 2
    assert "No such command 'deplo'" in result.stderr
    if hasattr(click.exceptions, "NoSuchCommand"):  # click >= 8.4 suggests
        assert "deploy" in result.stderr.split("No such command 'deplo'", 1)[1]


@pytest.mark.parametrize(
    ("args", "status"),
    [(["--help"], 0), (["--version"], 0), (["deplo"], 2), (["status"], 0), (["ledger"], 2)],
)
def test_ending_without_teardown_keeps_the_output_and_the_exit_status(
    tmp_path: Path, workspace: Path, args: list[str], status: int
) -> None:
    """The console script ends with ``os._exit`` once the command is done:
    everything it printed arrives and its status is the command's, exactly as
    with the interpreter's full exit (``CHASSIS_FULL_EXIT=1``)."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))

    def run(**extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "chassis", *args],
            cwd=workspace,
            env={**os.environ, "PYTHONPATH": path, **extra},
            capture_output=True,
            text=True,
            timeout=60,
        )

    fast, full = run(), run(CHASSIS_FULL_EXIT="1")
    assert fast.returncode == full.returncode == status, fast.stderr
    assert (fast.stdout, fast.stderr) == (full.stdout, full.stderr)
    assert fast.stdout or fast.stderr


def test_exit_handlers_still_run_when_the_teardown_is_skipped(tmp_path: Path) -> None:
    modules = imported(tmp_path, "--version")  # the probe writes them from an exit handler
    assert "chassis.cli" in modules
