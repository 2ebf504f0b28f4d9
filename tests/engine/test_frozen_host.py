"""A host that freezes in the middle of a deploy fails by name within a bounded
time, and every host is put back on the release it ran.

h2's sshd session is SIGSTOPped once the deploy has started changing h2 (a
new file appears in its releases directory): its TCP connection stays up and
nothing answers, as with a hung machine. The deploy runs in a subprocess
with a deadline, so the old behaviour (waiting forever) fails the test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.connectors.ssh import SSHConnector
from adapters.supervisors.direct import DirectSupervisor
from tests.adapters.test_ssh_timeouts import _descendants
from tests.conftest import Runner
from tests.engine.test_deploy_ssh import DEPLOY, lab  # noqa: F401 - the fixture
from tests.sshd import SSHTestHost

REPO = Path(__file__).resolve().parents[2]
Lab = tuple[Path, list[SSHTestHost], dict[str, Path]]


@pytest.fixture
def stopped() -> Iterator[list[int]]:
    """Pids a test SIGSTOPped; killed (and continued) afterwards."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        for sig in (signal.SIGKILL, signal.SIGCONT):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                break


def test_a_host_frozen_mid_deploy_fails_in_bounded_time_and_all_are_restored(
    run: Runner,
    lab: Lab,  # noqa: F811 - the fixture
    stopped: list[int],
) -> None:
    root, hosts, roots = lab
    run.ok(*DEPLOY, "--release", "v1")
    stack = root / "chassis.toml"
    stack.write_text(
        stack.read_text().replace(
            "[environments.lab]\n", "[environments.lab]\nssh_timeout_ms = 2000\n"
        )
    )
    h2 = hosts[1]
    listener = int((h2.config_dir / "sshd.pid").read_text())
    releases = roots[h2.name] / "releases"
    before = set(os.listdir(releases))

    started = time.monotonic()
    deploy = subprocess.Popen(
        [sys.executable, "-m", "chassis", *DEPLOY, "--release", "v2", "--json"],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        while set(os.listdir(releases)) == before:  # h2 is being changed
            assert deploy.poll() is None, deploy.communicate()
            assert time.monotonic() - started < 60, "the deploy never reached h2"
            time.sleep(0.01)
        for pid in _descendants(listener):  # every session: only the deploy's is open
            try:
                os.kill(pid, signal.SIGSTOP)
            except ProcessLookupError:
                continue  # a command of the session that ended since the listing
            stopped.append(pid)
        out, err = deploy.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        deploy.kill()
        deploy.communicate()
        pytest.fail("the deploy still waits on the frozen host after 90 s")
    took = time.monotonic() - started

    assert deploy.returncode == 16, (out, err)
    summary = json.loads(out)
    detail = summary["hosts"]["h2"]["detail"]
    assert summary["hosts"]["h2"]["ok"] is False
    assert "host h2" in detail and ("stopped answering" in detail or "no progress" in detail), (
        detail
    )
    assert sorted(n for n, h in summary["hosts"].items() if h["restored"]) == ["h1", "h2", "h3"]
    assert took < 60, took

    rows = json.loads(run.ok("status", "lab", "--env", "lab", "--json").stdout)
    assert {r["label"] for r in rows} == {"v1"}
    for host in hosts:  # reality agrees, h2 included (a new session reaches it)
        with SSHConnector(host.settings()) as connector:
            supervisor = DirectSupervisor(connector, str(roots[host.name]))
            for row in (r for r in rows if r["host"] == host.name):
                state = supervisor.state(row["component"])
                assert state.running and state.release_id == row["release_id"], (row, state)
    run.ok("ledger", "verify")
