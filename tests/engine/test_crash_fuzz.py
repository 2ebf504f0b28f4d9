"""Crash fuzzing: a real ``chassis`` process killed at a random moment of a
deploy, a rollback, a placement change that retires hosts and a repair, then
``chassis recover``; whatever the moment, the ledger verifies, no lease is
left, status says what really runs, nothing runs that the ledger does not
record, and no release is left half unpacked.

Two kinds of kill, alternating by seed (``random.Random`` seeded with the
operation and the seed, so a case is reproduced by its id):

``event``
    ``python -m tests.crashing event:*:N``: the process ``os._exit(137)``s
    right after the ``N``-th event it appends (``N`` drawn within what an
    uncrashed run appends): every record boundary, including the intent and
    the lease's first renewal.
``timer``
    plain ``python -m chassis`` SIGKILLed from here after a delay drawn
    within the time an uncrashed run takes: between records too (while a
    host is being changed and nothing says so yet).

After the kill and ``chassis recover shop --env dev`` (exit 0):

* ``chassis ledger verify`` passes and ``history`` shows no lease;
* ``status --live`` tells the truth: a component reads "running" exactly
  when its recorded release runs (pidfile and ``/proc``);
* every process under a host's root belongs to a component the ledger
  records active there, in that release's directory (the process groups the
  supervisor recorded);
* no ``releases/*.unpack`` staging directory is left and every release
  directory holds its ``.chassis-release`` marker;
* the installation is whole: the three components run one release (one of
  the releases before or after the operation), ``current`` points at it on
  every host that runs it and on no other, and the HTTP services answer
  with its label. A repair killed before it recorded its intent leaves the
  drift it was to repair (recover has nothing to do): then ``reconcile
  --repair`` is run again first.

The normal suite runs ``CHASSIS_SOAK_RUNS`` cases in all (default 12: three
seeds per operation); ``make soak`` runs 200. ``CHASSIS_SOAK_SEED`` shifts
the seeds (default 0) to explore others. A seed fixes ``N`` or the delay,
not the machine: which host's event is the ``N``-th varies with how the
parallel hosts interleave, and what a delay hits with load, so a failing
case may take a few reruns to repeat; its message says what was killed
when, what recover did and every check that failed.

Besides the random cases, a placement change is killed right after each
host it leaves is recorded retired (``HOST:retire``).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from adapters.archive import MARKER
from adapters.connectors.local import LocalConnector
from adapters.supervisors.direct import DirectSupervisor
from ledger.releases import release_dir_name
from tests import crashing
from tests.conftest import Runner
from tests.engine.test_deploy_local import DEPLOY
from tests.engine.test_reconcile import kill_group
from tests.engine.test_recover import assert_hosts_agree_with_status, fast, lease  # noqa: F401

# Long (deploys, health windows, many processes): the parallel run starts
# these first (tests/scheduling.py).
pytestmark = pytest.mark.slow

HOSTS = ("dev-1", "dev-2", "dev-3")
COMPONENTS = ("api", "gateway", "worker")
MONOLITH = ("deploy", "shop", "--env", "dev", "--profile", "monolith")
DEFAULT_RUNS = 12
RUNS = max(int(os.environ.get("CHASSIS_SOAK_RUNS", str(DEFAULT_RUNS))), 1)
SEED_BASE = int(os.environ.get("CHASSIS_SOAK_SEED", "0"))


@dataclass(frozen=True)
class Operation:
    """One operation to kill: how to get there, what to run, what may be
    found running afterwards, and what an uncrashed run costs (measured on a
    2-core machine with the ``fast`` health settings; used only to draw the
    kill moment, so a slower machine just sees the earlier part more often)."""

    name: str
    setup: Callable[[Runner, Path], None]
    args: tuple[str, ...]
    labels: frozenset[str]
    """The releases the installation may run after recovery."""
    events: int
    """About how many events an uncrashed run appends."""
    seconds: float
    """About how long an uncrashed run takes, interpreter start included."""
    hosts: dict[str, int] = field(default_factory=dict)
    """label → how many hosts run it (where a placement differs by label)."""


def _deploy_v1(run: Runner, shop: Path) -> None:
    run.ok(*DEPLOY, "--release", "v1")


def _deploy_v1_v2(run: Runner, shop: Path) -> None:
    run.ok(*DEPLOY, "--release", "v1")
    run.ok(*DEPLOY, "--release", "v2")


def _drift(run: Runner, shop: Path) -> None:
    """v1 deployed, then the api killed and the worker's release directory and
    bundle deleted: the repair restarts one and uploads and unpacks the other."""
    run.ok(*DEPLOY, "--release", "v1")
    rows = json.loads(run.ok("status", "shop", "--env", "dev", "--json").stdout)
    where = {r["component"]: r for r in rows}
    api, worker = where["api"], where["worker"]
    kill_group(LocalConnector(api["host"]), shop / ".chassis" / "hosts" / api["host"], "api")
    releases = shop / ".chassis" / "hosts" / worker["host"] / "releases"
    name = release_dir_name(worker["release_id"])
    shutil.rmtree(releases / name)
    (releases / f"{name}.tar.gz").unlink()


OPERATIONS = {
    op.name: op
    for op in (
        Operation("deploy", _deploy_v1, (*DEPLOY, "--release", "v2"), frozenset({"v1", "v2"}),
                  events=34, seconds=2.0),
        Operation("rollback", _deploy_v1_v2, ("rollback", "shop", "--env", "dev"),
                  frozenset({"v1", "v2"}), events=36, seconds=1.8),
        Operation("retire", _deploy_v1, (*MONOLITH, "--release", "v2"),
                  frozenset({"v1", "v2"}), events=16, seconds=3.0, hosts={"v1": 3, "v2": 1}),
        Operation("repair", _drift, ("reconcile", "shop", "--env", "dev", "--repair"),
                  frozenset({"v1"}), events=26, seconds=3.2),
    )
}  # fmt: skip


@dataclass(frozen=True)
class Case:
    operation: str
    seed: int

    @property
    def mode(self) -> str:
        """Alternating by seed, and across operations for one seed."""
        return ("event", "timer")[(self.seed + list(OPERATIONS).index(self.operation)) % 2]

    @property
    def id(self) -> str:
        return f"{self.operation}-{self.mode}-seed{self.seed}"


CASES = [
    Case(name, SEED_BASE + seed)
    for seed in range(-(-RUNS // len(OPERATIONS)))
    for name in OPERATIONS
][:RUNS]


@dataclass
class Kill:
    """What was done to the operation's process, for the failure report."""

    how: str
    exit_code: int
    stderr: str
    elapsed: float

    @property
    def hit(self) -> bool:
        """Whether the process died where killed (rather than finishing first)."""
        return self.exit_code in (crashing.CRASHED, -signal.SIGKILL)

    def describe(self) -> str:
        outcome = "killed" if self.hit else f"finished first with exit {self.exit_code}"
        tail = " | ".join(self.stderr.strip().splitlines()[-3:])
        return f"{self.how}: {outcome} after {self.elapsed:.2f}s" + (
            f" (stderr: {tail})" if tail else ""
        )


def kill_at_event(shop: Path, op: Operation, rng: random.Random) -> Kill:
    n = rng.randint(1, op.events)
    began = time.monotonic()
    done = crashing.run(f"event:*:{n}", *op.args, cwd=shop)
    return Kill(f"exit after event {n}", done.returncode, done.stderr, time.monotonic() - began)


def kill_at_time(shop: Path, op: Operation, rng: random.Random) -> Kill:
    delay = rng.uniform(0.05, op.seconds)
    began = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "chassis", *op.args],
        cwd=shop,
        env=crashing.environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        process.wait(delay)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
    _, err = process.communicate(timeout=120)
    return Kill(f"SIGKILL at {delay:.3f}s", process.returncode, err, time.monotonic() - began)


# What the hosts hold.


def host_root(shop: Path, host: str) -> Path:
    return shop / ".chassis" / "hosts" / host


def recorded(run: Runner) -> dict[str, dict[str, str]]:
    """host → component → release id the ledger records active."""
    rows = json.loads(run.ok("status", "shop", "--env", "dev", "--json").stdout)
    found: dict[str, dict[str, str]] = {}
    for row in rows:
        found.setdefault(row["host"], {})[row["component"]] = row["release_id"]
    return found


def processes_under(shop: Path) -> Iterator[tuple[str, psutil.Process, str]]:
    """(host, process, where) for every live process whose working directory
    or command line lies under a host's root (``where`` is that path)."""
    roots = {host: str(host_root(shop, host)) + os.sep for host in HOSTS}
    for process in psutil.process_iter(["pid", "cwd", "cmdline", "status"]):
        info = process.info
        if info.get("status") == psutil.STATUS_ZOMBIE:
            continue
        cwd = (info.get("cwd") or "").removesuffix(" (deleted)") + os.sep
        texts = [cwd, *(info.get("cmdline") or [])]
        for host, root in roots.items():
            where = next((t for t in texts if t.startswith(root) or f" {root}" in t), None)
            if where is not None:
                yield host, process, where
                break


def short(cmdline: list[str]) -> str:
    """A command line on one line, each argument cut to 60 characters."""
    parts = [" ".join(arg.split()) for arg in cmdline]
    return " ".join(p if len(p) <= 60 else p[:57] + "..." for p in parts)


def process_problems(shop: Path, active: dict[str, dict[str, str]]) -> list[str]:
    """Processes on a host that are not in a process group the supervisor
    recorded for a component active there, or that run in another release's
    directory than the one recorded."""
    groups: dict[str, dict[int, str]] = {}
    for host in HOSTS:
        supervisor = DirectSupervisor(LocalConnector(host), str(host_root(shop, host)))
        for component, release in active.get(host, {}).items():
            state = supervisor.state(component)
            if state.running and state.pid is not None and state.release_id == release:
                groups.setdefault(host, {})[state.pid] = release
    problems = []
    for host, process, where in processes_under(shop):
        try:
            pgid = os.getpgid(process.pid)
            cmdline = short(process.cmdline())
        except (ProcessLookupError, psutil.Error):
            continue  # gone meanwhile
        owner = groups.get(host, {}).get(pgid)
        releases = str(host_root(shop, host) / "releases") + os.sep
        in_dir = where.split(releases, 1)[1].split(os.sep, 1)[0] if releases in where else None
        if owner is None:
            recorded_there = active.get(host) or "nothing"
            problems.append(
                f"{host}: leftover process {process.pid} (group {pgid}) `{cmdline}` in {where}: "
                f"no component recorded active there runs in that group "
                f"(recorded on {host}: {recorded_there})"
            )
        elif in_dir is not None and in_dir != release_dir_name(owner):
            problems.append(
                f"{host}: process {process.pid} `{cmdline}` runs in releases/{in_dir}, "
                f"but its group's recorded release is {release_dir_name(owner)}"
            )
    return problems


def unpack_problems(shop: Path) -> list[str]:
    problems = []
    for host in HOSTS:
        releases = host_root(shop, host) / "releases"
        if not releases.is_dir():
            continue
        for entry in sorted(releases.iterdir()):
            if entry.name.endswith(".unpack"):
                problems.append(f"{host}: half-unpacked staging dir releases/{entry.name} left")
            elif entry.is_dir() and not (entry / MARKER).is_file():
                problems.append(f"{host}: releases/{entry.name} has no {MARKER} marker")
    return problems


def live_status(run: Runner) -> tuple[int, list[dict[str, Any]], str]:
    result = run("status", "shop", "--env", "dev", "--live", "--json")
    rows: list[dict[str, Any]] = json.loads(result.stdout) if result.stdout.strip() else []
    return result.exit_code, rows, result.stderr.strip()


def truth_problems(shop: Path, rows: list[dict[str, Any]]) -> list[str]:
    """Rows of ``status --live`` that say other than what the hosts show:
    "running" where the recorded release does not run, "down" or
    "restarting" where something runs, "wrong-release" where the recorded
    one runs or nothing does ("drifted" and "unknown" may go either way)."""
    problems = []
    for row in rows:
        host, component, said = row["host"], row["component"], row["state"]
        state = DirectSupervisor(LocalConnector(host), str(host_root(shop, host))).state(component)
        runs_it = state.running and state.release_id == row["release_id"]
        lie = {
            "running": not runs_it,
            "down": state.running,
            "restarting": state.running,
            "wrong-release": not state.running or runs_it,
            "unreachable": True,
        }.get(said, False)
        if lie:
            problems.append(
                f"{host}/{component}: status --live says {said!r} for "
                f"{row['label']} ({row['release_id'][:16]}), the host has "
                f"{'running' if state.running else 'not running'} {state.release_id!r} "
                f"({state.detail})"
            )
    return problems


def whole_problems(
    run: Runner, shop: Path, op: Operation, rows: list[dict[str, Any]], code: int, stderr: str
) -> list[str]:
    """The installation runs one release, everywhere it is recorded, and
    nothing where it is not."""
    problems = []
    if code != 0:
        problems.append(f"status --live exit {code}: {stderr}")
    not_running = [
        f"{r['host']}/{r['component']} {r['state']} ({r['health']}; {r['detail']})"
        for r in rows
        if r["state"] != "running" or r["healthy"] is not True
    ]
    if not_running:
        problems.append(f"not running and healthy per status --live: {not_running}")
    if sorted(r["component"] for r in rows) != sorted(COMPONENTS):
        problems.append(f"components recorded: {sorted(r['component'] for r in rows)}")
    labels = {r["label"] for r in rows}
    if len(labels) != 1 or not labels <= op.labels:
        problems.append(f"releases recorded: {sorted(labels)}, expected one of {sorted(op.labels)}")
        return problems
    (label,) = labels
    hosts = {r["host"] for r in rows}
    if label in op.hosts and len(hosts) != op.hosts[label]:
        problems.append(f"{label} recorded on {sorted(hosts)}, expected {op.hosts[label]} host(s)")
    for host in sorted(set(HOSTS) - hosts):
        root = host_root(shop, host)
        if (root / "current").is_symlink():
            target = os.readlink(root / "current")
            problems.append(f"{host}: runs nothing per the ledger, but current -> {target}")
        supervisor = DirectSupervisor(LocalConnector(host), str(root))
        for component in COMPONENTS:
            state = supervisor.state(component)
            if state.running:
                problems.append(
                    f"{host}: runs nothing per the ledger, but {component} runs "
                    f"{state.release_id} (pid {state.pid})"
                )
    if not problems:
        try:
            assert_hosts_agree_with_status(run, shop, label)
        except AssertionError as e:
            problems.append(f"hosts disagree with status for {label}: {e}".strip())
    return problems


def consistency_problems(run: Runner, shop: Path) -> list[str]:
    """What must hold whenever no operation runs, whatever was killed when."""
    problems = []
    verify = run("ledger", "verify")
    if verify.exit_code != 0:
        problems.append(f"ledger verify exit {verify.exit_code}: {verify.stderr.strip()}")
    held = lease(run)
    if held is not None:
        problems.append(f"lease still held: {held}")
    problems += unpack_problems(shop)
    problems += process_problems(shop, recorded(run))
    return problems


def history_text(run: Runner) -> str:
    result = run("history", "shop", "--env", "dev", "--json")
    if result.exit_code != 0:
        return f"(history exit {result.exit_code})"
    revisions = json.loads(result.stdout)["revisions"]
    return "; ".join(
        f"r{r['revision']} {r['operation']} {r['label']} {r['status']}: {r['description']}"
        for r in revisions[-3:]
    )


def stop_strays(shop: Path) -> None:
    """Kill what the case left running under the hosts that the shop fixture's
    supervisor stop cannot know of (groups no pidfile names any more)."""
    for _, process, _ in list(processes_under(shop)):
        with contextlib.suppress(ProcessLookupError, psutil.Error):
            os.killpg(os.getpgid(process.pid), signal.SIGKILL)


def assert_recovers(run: Runner, shop: Path, op: Operation, report: list[str]) -> None:
    """``chassis recover``, then every check; fails with ``report`` (what was
    killed when) and each problem found."""
    recovered = run("recover", "shop", "--env", "dev", "--json")
    outcome = recovered.stdout.strip()
    with contextlib.suppress(ValueError):
        data = json.loads(outcome)
        outcome = f"{data['outcome']} r{data['revision']} {data['label']}: " + "; ".join(
            f"{h} {o['action']} ok={o['ok']} ({o['detail']})"
            for h, o in sorted(data.get("hosts", {}).items())
        )
    said = "\n    ".join(recovered.stderr.strip().splitlines())
    report.append(f"recover exit {recovered.exit_code}: {outcome}\n    {said}")
    problems = [] if recovered.exit_code == 0 else [f"recover exit {recovered.exit_code}"]

    problems += consistency_problems(run, shop)
    code, rows, stderr = live_status(run)
    problems += truth_problems(shop, rows)
    if op.name == "repair" and code == 18 and not problems:
        # Killed before the repair recorded its intent: the drift is still
        # there to repair, and nothing else is wrong.
        repaired = run("reconcile", "shop", "--env", "dev", "--repair")
        report.append(f"reconcile --repair again: exit {repaired.exit_code}")
        if repaired.exit_code != 0:
            problems.append(f"reconcile --repair exit {repaired.exit_code}: {repaired.stderr}")
        problems += consistency_problems(run, shop)
        code, rows, stderr = live_status(run)
    problems += whole_problems(run, shop, op, rows, code, stderr)
    if problems:
        report.append(f"history: {history_text(run)}")
        pytest.fail("\n".join([*report, "problems:", *(f"  - {p}" for p in problems)]))


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_recover_after_a_random_kill(run: Runner, fast: Path, case: Case) -> None:  # noqa: F811
    shop = fast
    op = OPERATIONS[case.operation]
    rng = random.Random(f"chassis-crash-fuzz:{case.operation}:{case.seed}")
    op.setup(run, shop)
    try:
        killed = (kill_at_event if case.mode == "event" else kill_at_time)(shop, op, rng)
        report = [f"{case.id}: {op.name} `chassis {' '.join(op.args)}`", killed.describe()]
        if not killed.hit and killed.exit_code != 0:
            pytest.fail("\n".join([*report, "the uncrashed operation itself failed"]))
        assert_recovers(run, shop, op, report)
    finally:
        stop_strays(shop)


@pytest.mark.slow
@pytest.mark.parametrize("which", [0, 1], ids=["first-retired-host", "second-retired-host"])
def test_recover_after_a_kill_right_after_a_retire_is_recorded(
    run: Runner,
    fast: Path,  # noqa: F811
    which: int,
) -> None:
    """The placement change killed once a host it leaves is recorded retired
    (by a ``retire`` step before anything there stops, where the engine
    records one; else by the host's record as retired)."""
    shop = fast
    op = OPERATIONS["retire"]
    op.setup(run, shop)
    plan = json.loads(run.ok("plan", *op.args[1:], "--json").stdout)
    kept = {h["host"] for h in plan["hosts"]}
    host = sorted(set(HOSTS) - kept)[which]
    try:
        began = time.monotonic()
        done = crashing.run(f"{host}:retire", *op.args, cwd=shop)
        elapsed = time.monotonic() - began
        killed = Kill(f"exit at {host}:retire", done.returncode, done.stderr, elapsed)
        report = [f"retire of {host}: `chassis {' '.join(op.args)}`", killed.describe()]
        assert killed.hit, "\n".join([*report, f"no retire of {host} recorded"])
        assert_recovers(run, shop, op, report)
    finally:
        stop_strays(shop)
