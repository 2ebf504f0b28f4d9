"""Deploy benchmark: ``chassis deploy`` vs a bare fabric script vs ansible-playbook.

Run from the repository root (``make bench`` runs it after ``make compile``
and installing ansible-core into the venv)::

    python bench/deploy.py [--quick] [--hosts 1,4,8] [--rounds R] [--json]

Whole-process and independent of Chassis' internals: **Chassis is timed
exactly as ansible-playbook is**, as a subprocess, from just before
``subprocess.Popen`` until its blocking ``wait`` returns (no 50 ms polling),
with the environment a user has. For every host count N (default 1, 4 and
8; ``--quick`` 1 and 4) it uses N real sshd hosts on loopback (127.0.0.31,
.32, …; as many as the largest N are started once, and every host count uses
the first N of them, each tool and round in its own root directory on each
host) and has the tools do the same job on all N hosts in parallel:

1. **chassis** — ``<venv>/bin/chassis deploy bench --env lab --profile spread
   --release vK --max-parallel N --json``: the installed console script, run
   with ``cwd`` = the workspace, stdin ``/dev/null``, stdout and stderr to
   files, the caller's environment without any ``CHASSIS_*`` variable plus
   ``CHASSIS_KEYS_DIR`` (where the workspace's key is). What is timed is
   everything the command does: interpreter start, imports, finding the
   workspace, reading ``chassis.toml``, loading the key, opening the ledger,
   the deploy itself (every step a signed ledger event), and exit. The stack
   has N groups, one per host, each running one copy of the sample app's
   ``api`` service on its own port with an HTTP health check on ``/healthz``.
   The packages are byte-compiled first (``python -m compileall -q chassis
   ledger projections adapters proofs``, what ``make compile`` runs; an
   editable install never is, and ``PYTHONDONTWRITEBYTECODE`` would keep it
   so), so the figure is a compiled start, as an installed wheel has.
2. **bare fabric** — ``python bench/bare_fabric.py JOB.json``, timed as a
   whole command like the others (interpreter start and ``import fabric``
   included, as the issue's own table timed it): one thread and one fabric
   ``Connection`` per host; put the bundle, check its sha256 on the host,
   unpack it into ``releases/<id>``, stop the old process (pidfile), start
   the new one detached, poll ``/healthz`` every 100 ms until 200, swap the
   ``current`` symlink. No ledger. The floor any deploy tool pays. The same
   code is also called in this process (**fabric, in-process**: no start,
   no import; its own roots and ports) and shown beside it, judged against
   no budget: the floor without a start.
3. **ansible-playbook** (ansible-core, a subprocess, timed like chassis): the
   same tasks with ``copy``, ``stat`` (sha256), ``unarchive``, ``shell``
   (pkill by pidfile; nohup start), ``uri`` (retries) and ``file`` (symlink);
   ``forks = N``; no fact gathering, pipelining, a fixed interpreter.

Phases, each of R rounds (default 3, so every time is a median of 3; 5 would
take some 10 minutes here, see below; ``--quick`` 2; ``--rounds R`` for
more): **cold** — every round gets fresh roots on every host and, for
Chassis, a fresh workspace (its ledger, key, the releases registered), and
each tool deploys v1 there; **warm** — on the last cold round's roots, R
upgrades v2, v3, … v(R+1), each tool once per round; **no-op** — R more
``chassis deploy`` of the release that is already active (Chassis answers
``noop``; budget <= 0.5 s), timed beside ``python -c pass``, ``python -c
"import fabric"`` and ``chassis --version`` (the interpreter's, a fabric
script's and the CLI's bare start). The order of the tools rotates
from one round to the next. After every deploy, untimed, each host's
``/healthz`` must name the new version and its ``current`` link must point at
it (after a no-op: still the active one). A second table splits each chassis
figure into its host steps (what ``chassis deploy`` itself reports on stderr,
``HOST: STEP ok (0.42s)``; the slowest host's sum) and the rest of the
process (interpreter start, imports, pre-flight, plan, ledger, receipts).
A third gives the whole machine's busy CPU seconds (``/proc/stat``) over
each tool's deploy: every process counts, the tool's own, the sshd hosts'
and what they run for it. Two cores can give a deploy at most twice its
wall time, so where a tool's CPU nears that, it is what bounds its time.

Untimed and reported on its own: the Chassis workspace of each cold round is
set up in this process with the code ``chassis init``, ``chassis release
add`` and ``chassis host trust-key`` run (host keys pinned, confirming only
the sshd's real fingerprint), and its hosts are inventoried once (``chassis
host inventory``; ``prepare`` would otherwise probe them on the first
deploy). The previous cold round's app processes are stopped between rounds.

What every tool pays alike: the same sshd hosts, whose login shell runs for
every command; host keys pinned and checked (Chassis' workspace known_hosts,
``paramiko.RejectPolicy`` with the same file, ``StrictHostKeyChecking=yes``
with the same file); health polled every 100 ms until one 200 (Chassis'
check is configured to ``interval_ms = 100, passes = 1`` for that reason);
fresh SSH connections for every deploy (ansible's ControlPersist masters are
closed after each run, untimed); N hosts in parallel (``--max-parallel N``,
``forks = N``, N threads).

Budgets (issue 17), reported, not enforced (exit 0 unless the script
crashes): at 8 hosts ansible-playbook ÷ chassis >= 10x, cold and warm;
chassis ÷ bare fabric <= 1.3x at 4 and 8 hosts and <= 1.6x at 1 host; a
no-op deploy <= 0.5 s. A ratio is the median of the per-round ratios; a time
is printed as median [min–max]. Progress goes to stderr; ``--json`` prints one
object with every figure.

Duration on the shared 2-core development machine: 6.6 minutes for the
default (1, 4 and 8 hosts, 3 rounds) while other work kept the load average
at 6–10, 14 minutes at 13–15; ``--quick`` 2.7 minutes at 1–10, 6 at 10–13.
An idle machine should take less. ansible-playbook is about three quarters
of it (25–40 s per deploy at 8 hosts there), which is why the default is 3
rounds, not 5. Numbers from a busy machine are noisy: the load average at
start and end is printed with them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# ``python bench/deploy.py`` puts bench/ first on sys.path, where bench/ledger.py
# would shadow the ``ledger`` package: put the repository root there.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from bench import bare_fabric  # noqa: E402
from bench._sshd_hosts import SSHDUnavailable, bench_hosts  # noqa: E402
from bench.bare_fabric import WAIT_EXITED  # noqa: E402
from chassis.config.env import EnvVars  # noqa: E402
from chassis.connect import pin_host_key  # noqa: E402
from chassis.engine.releases import add_release  # noqa: E402
from chassis.hosts import environment_hosts, get_host, sync_declared  # noqa: E402
from chassis.inventory import inventory  # noqa: E402
from chassis.keyring import load_acting_key  # noqa: E402
from chassis.sample_app import build_sample_release  # noqa: E402
from chassis.stack.spec import load_stack  # noqa: E402
from chassis.trust_admin import init_workspace  # noqa: E402
from chassis.workspace import Workspace  # noqa: E402
from ledger.storage import open_ledger  # noqa: E402
from tests.sshd import SSHTestHost, free_port  # noqa: E402

CPUS = os.cpu_count() or 1
APP = "bench"
ENVIRONMENT = "lab"
PROFILE = "spread"
HEALTH_INTERVAL_S = 0.1
HEALTH_WINDOW_S = 15.0
HEALTH_TIMEOUT_S = 2.0
CONNECT_TIMEOUT_S = 10.0
TOOLS = ("fabric", "chassis", "ansible", "fabric-inproc")
COLUMNS = {
    "chassis": "chassis",
    "fabric": "bare fabric script",
    "fabric-inproc": "fabric, in-process",
    "ansible": "ansible-playbook",
}
SCRIPT = Path(bare_fabric.__file__)
PACKAGES = ("chassis", "ledger", "projections", "adapters", "proofs")
"""What ``make compile`` byte-compiles."""

ANSIBLE_OVER_CHASSIS_MIN = 10.0
"""ansible-playbook ÷ chassis, at 8 hosts (and more), cold and warm."""
NOOP_MAX_S = 0.5


def chassis_over_fabric_max(hosts: int) -> float | None:
    """The chassis ÷ bare fabric budget at ``hosts`` hosts (none between 1 and 4)."""
    if hosts == 1:
        return 1.6
    return 1.3 if hosts >= 4 else None


def ansible_over_chassis_min(hosts: int) -> float | None:
    return ANSIBLE_OVER_CHASSIS_MIN if hosts >= 8 else None


@dataclass(frozen=True)
class Sizes:
    host_counts: tuple[int, ...]
    rounds: int


FULL = Sizes(host_counts=(1, 4, 8), rounds=3)
QUICK = Sizes(host_counts=(1, 4), rounds=2)


def progress(message: str) -> None:
    print(f"  .. {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Release:
    version: str
    bundle: Path
    sha256: str

    @property
    def dir_name(self) -> str:
        """The release directory the bare tools unpack into."""
        return f"{self.version}-{self.sha256[:16]}"


@dataclass(frozen=True)
class Target:
    """One host as one tool sees it: its own root directory and app port."""

    host: SSHTestHost
    root: Path
    port: int


class ToolUnavailable(Exception):
    """The tool cannot run here (the reason is the message)."""


class ToolFailed(Exception):
    """A deploy did not do its job (the message says what went wrong)."""


# ---------------------------------------------------------------- checking


def http_get(address: str, port: int, path: str = "/healthz") -> tuple[int, str]:
    """Status and body of one GET; ``(0, why)`` when nothing answered."""
    try:
        with urllib.request.urlopen(
            f"http://{address}:{port}{path}", timeout=HEALTH_TIMEOUT_S
        ) as response:
            return int(response.status), response.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except OSError as e:
        return 0, str(e)


def check_deployed(tool: str, targets: list[Target], release: Release) -> None:
    """Every host serves ``release`` and its ``current`` link points at it."""
    problems = []
    for t in targets:
        status, body = http_get(t.host.address, t.port)
        if status != 200 or release.version not in body.split():
            problems.append(f"{t.host.name}: /healthz answered {status} {body.strip()!r}")
            continue
        try:
            current = (t.root / "current" / "VERSION").read_text().strip()
        except OSError as e:
            current = f"unreadable ({e})"
        if current != release.version:
            problems.append(f"{t.host.name}: current/VERSION is {current}")
    if problems:
        raise ToolFailed(f"{tool} did not deploy {release.version}: " + "; ".join(problems))


# ------------------------------------------------------------------ chassis


def chassis_stack(targets: list[Target], health: str) -> str:
    components, groups, hosts = [], [], []
    for i, t in enumerate(targets, start=1):
        h = t.host
        components.append(
            f"[components.api{i}]\n"
            f'command = "python3 app/api.py --port {t.port} --bind {h.address}"\n'
            f"ports = {{ http = {t.port} }}\n"
            f"health = {health}\n"
        )
        groups.append(f'groups.g{i} = {{ components = ["api{i}"], labels = {{ slot = "{i}" }} }}')
        hosts.append(
            f'  {{ name = "{h.name}", connector = "ssh", address = "{h.address}", '
            f'port = {h.port}, user = "{h.user}", key = "{h.client_key}", root = "{t.root}", '
            f'labels = {{ slot = "{i}" }} }},'
        )
    return (
        f'[app]\nname = "{APP}"\n\n'
        + "\n".join(components)
        + f"\n[profiles.{PROFILE}]\n"
        + "\n".join(groups)
        + f"\n\n[environments.{ENVIRONMENT}]\nhosts = [\n"
        + "\n".join(hosts)
        + "\n]\n"
    )


def chassis_executable() -> Path:
    """The installed console script beside this interpreter (the venv's)."""
    here = Path(sys.executable).parent / "chassis"
    if here.is_file():
        return here
    found = shutil.which("chassis")
    if found is None:
        raise SystemExit("deploy benchmark: no chassis console script (pip install -e .)")
    return Path(found)


def user_environment(keys: Path) -> dict[str, str]:
    """The caller's environment as a user's shell has it, with no ``CHASSIS_*``
    setting of the caller's and the workspace's key directory."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHASSIS_")}
    env[EnvVars.KEYS_DIR] = str(keys)
    return env


def machine_busy_s() -> float:
    """CPU seconds the whole machine has been busy since boot (``/proc/stat``:
    every process, the kernel's own work included; idle and iowait not)."""
    with open("/proc/stat", encoding="ascii") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


class MachineCPU:
    """The machine's busy CPU seconds over a ``with`` block, in ``seconds``.
    Everything counts: the tool, the sshd hosts and what they run for it."""

    seconds = 0.0

    def __enter__(self) -> MachineCPU:
        self._start = machine_busy_s()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = machine_busy_s() - self._start


def timed_process(
    argv: Sequence[str | Path],
    *,
    cwd: Path,
    env: dict[str, str],
    stdout: Path,
    stderr: Path | None = None,
    timeout: float = 60.0,
    cpu: MachineCPU | None = None,
) -> tuple[float, int]:
    """Seconds from just before the process starts until it has ended, and the
    exit status. stdin is ``/dev/null``; stdout (and stderr, or with stdout)
    go to files, read afterwards. With ``cpu``, the machine's busy CPU
    seconds over the same span go there."""
    with contextlib.ExitStack() as files:
        out = files.enter_context(stdout.open("wb"))
        err = files.enter_context(stderr.open("wb")) if stderr else subprocess.STDOUT
        if cpu is not None:
            files.enter_context(cpu)
        started = time.perf_counter()
        process = subprocess.Popen(
            [str(a) for a in argv],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=env,
            cwd=cwd,
        )
        # A blocking wait returns the moment the process ends; subprocess's
        # wait(timeout=...) polls every 50 ms, which would round every tool's
        # time up by 25 ms on average. The timeout is a timer that kills it.
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            process.kill()

        timer = threading.Timer(timeout, expire)
        timer.start()
        try:
            status = process.wait()
        finally:
            timer.cancel()
        elapsed = time.perf_counter() - started
    if expired.is_set():
        raise subprocess.TimeoutExpired([str(a) for a in argv], timeout)
    return elapsed, status


STEP_DONE = re.compile(r"^(?P<host>\S+): (?P<step>\S+) ok \((?P<seconds>\d+(?:\.\d+)?)s\)$")
"""How ``chassis deploy`` reports each host step it finished (on stderr)."""


def host_steps(progress_lines: list[str]) -> dict[str, dict[str, float]]:
    """Seconds of each host step ``chassis deploy`` reported, per host."""
    found: dict[str, dict[str, float]] = {}
    for line in progress_lines:
        match = STEP_DONE.match(line.strip())
        if match:
            steps = found.setdefault(match["host"], {})
            steps[match["step"]] = steps.get(match["step"], 0.0) + float(match["seconds"])
    return found


class ChassisTool:
    """A workspace (set up in this process, untimed) and one ``chassis deploy``
    process per deploy."""

    name = "chassis"

    def __init__(
        self, base: Path, targets: list[Target], releases: list[Release], cli: Path
    ) -> None:
        self.targets = targets
        self.cli = cli
        self.cpu = MachineCPU()  # the last deploy's
        self.keys = base / "keys"
        self.root = base / "workspace"
        self.logs = base / "chassis-logs"
        self.logs.mkdir(parents=True)
        self.env = user_environment(self.keys)
        self.setup: dict[str, float] = {}
        self.events: list[int] = []
        self.last_progress: list[str] = []
        self.runs = 0
        started = time.perf_counter()
        # What `chassis init`, `chassis release add` and the first read of
        # the stack's declared hosts do.
        created = init_workspace(
            self.root, name=APP, key_name=None, keys=self.keys, ledger_url=None
        )
        self.key_name = created.key_name
        health = (
            '{ type = "http", port = "http", path = "/healthz", '
            f"interval_ms = {round(HEALTH_INTERVAL_S * 1000)}, passes = 1, "
            f"timeout_ms = {round(HEALTH_TIMEOUT_S * 1000)}, "
            f"window_ms = {round(HEALTH_WINDOW_S * 1000)} }}"
        )
        (self.root / "chassis.toml").write_text(chassis_stack(targets, health))
        ws, stack = Workspace(self.root), load_stack(self.root / "chassis.toml")
        ledger = open_ledger(ws.storage(), load_acting_key(self.keys, self.key_name))
        try:
            for release in releases:
                add_release(ledger, ws, APP, release.version, release.bundle, {})
            sync_declared(ledger, stack)
            self.setup["workspace_and_releases_s"] = time.perf_counter() - started
            started = time.perf_counter()
            expected = {t.host.name: t.host.host_key_fingerprint for t in targets}
            for t in targets:
                # What `chassis host trust-key NAME` does, confirming only the
                # fingerprint this sshd's host key really has.
                fingerprint, outcome = pin_host_key(
                    ws,
                    get_host(ledger, t.host.name),
                    replace=False,
                    confirm=expected[t.host.name].__eq__,
                    timeout=CONNECT_TIMEOUT_S,
                )
                if outcome != "pinned":
                    raise ToolFailed(f"{t.host.name}: host key {fingerprint} {outcome}")
            self.setup["pin_host_keys_s"] = time.perf_counter() - started
            started = time.perf_counter()
            # What `chassis host inventory --all` does.
            for result in inventory(ledger, ws, environment_hosts(ledger, ENVIRONMENT)):
                if result.error:
                    raise ToolFailed(f"inventory: {result.error}")
            self.setup["host_inventory_s"] = time.perf_counter() - started
        finally:
            ledger.close()

    def ledger_length(self) -> int:
        """Events in the ledger (read untimed, between deploys)."""
        ledger = open_ledger(Workspace(self.root).storage(), None)
        try:
            return ledger.max_seq()
        finally:
            ledger.close()

    def _deploy(self, release: Release, expect: str) -> float:
        self.runs += 1
        stdout = self.logs / f"{self.runs}-{release.version}.json"
        stderr = self.logs / f"{self.runs}-{release.version}.log"
        before = self.ledger_length()
        limit = 120 + 30 * len(self.targets)
        argv: list[str | Path] = [
            self.cli,
            "deploy",
            APP,
            "--env",
            ENVIRONMENT,
            "--profile",
            PROFILE,
            "--release",
            release.version,
            "--max-parallel",
            str(len(self.targets)),
            "--json",
        ]
        try:
            elapsed, status = timed_process(
                argv,
                cwd=self.root,
                env=self.env,
                stdout=stdout,
                stderr=stderr,
                timeout=limit,
                cpu=self.cpu,
            )
        except subprocess.TimeoutExpired:
            raise ToolFailed(
                f"chassis deploy {release.version} ran past {limit} s: "
                + " | ".join(stderr.read_text(errors="replace").splitlines()[-10:])
            ) from None
        self.last_progress = stderr.read_text(errors="replace").splitlines()
        try:
            result = json.loads(stdout.read_text())
        except ValueError:
            result = {"status": f"no JSON summary: {stdout.read_text(errors='replace')!r}"}
        if status != 0 or result.get("status") != expect:
            raise ToolFailed(
                f"chassis deploy {release.version} exited {status}, "
                f"{result.get('status')}: {result.get('description')}; "
                f"progress: {' | '.join(line[:300] for line in self.last_progress[-6:])}"
            )
        self.events.append(self.ledger_length() - before)
        return elapsed

    def deploy(self, release: Release) -> float:
        return self._deploy(release, "deployed")

    def noop(self, release: Release) -> float:
        """``chassis deploy`` of the release that is already active everywhere."""
        return self._deploy(release, "noop")


# ------------------------------------------------------------- bare fabric


class FabricTool:
    """The bare fabric script (``bench/bare_fabric.py``): timed as a whole
    command like the others (``in_process=False``, what the budgets compare
    against, as the issue's own table did), or called in this process (the
    floor without an interpreter start or ``import fabric``)."""

    def __init__(self, base: Path, targets: list[Target], *, in_process: bool) -> None:
        self.name = "fabric-inproc" if in_process else "fabric"
        self.targets = targets
        self.cpu = MachineCPU()  # the last deploy's
        self.in_process = in_process
        self.base = base / self.name
        self.base.mkdir(parents=True)
        self.runs = 0

    def job(self, release: Release) -> dict[str, Any]:
        return {
            "hosts": [
                {
                    "name": t.host.name,
                    "address": t.host.address,
                    "user": t.host.user,
                    "ssh_port": t.host.port,
                    "client_key": str(t.host.client_key),
                    "known_hosts": str(t.host.known_hosts),
                    "root": str(t.root),
                    "app_port": t.port,
                }
                for t in self.targets
            ],
            "release": {
                "bundle": str(release.bundle),
                "sha256": release.sha256,
                "dir_name": release.dir_name,
            },
            "health": {
                "interval_s": HEALTH_INTERVAL_S,
                "window_s": HEALTH_WINDOW_S,
                "timeout_s": HEALTH_TIMEOUT_S,
            },
            "connect_timeout_s": CONNECT_TIMEOUT_S,
        }

    def deploy(self, release: Release) -> float:
        job = self.job(release)
        if self.in_process:
            started = time.perf_counter()
            try:
                with self.cpu:
                    bare_fabric.deploy(job)
            except bare_fabric.DeployFailed as e:
                raise ToolFailed(str(e)) from None
            return time.perf_counter() - started
        self.runs += 1
        job_file = self.base / f"{self.runs}-{release.version}.json"
        job_file.write_text(json.dumps(job))
        log = self.base / f"{self.runs}-{release.version}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHASSIS_")}
        seconds, status = timed_process(
            [sys.executable, SCRIPT, job_file], cwd=self.base, env=env, stdout=log, cpu=self.cpu
        )
        if status != 0:
            raise ToolFailed(f"bare fabric script exited {status}: {log.read_text()[-500:]}")
        return seconds


# ----------------------------------------------------------------- ansible

ANSIBLE_CFG = """\
[defaults]
inventory = {inventory}
forks = {forks}
host_key_checking = True
interpreter_python = /usr/bin/python3
gathering = explicit
retry_files_enabled = False
local_tmp = {local_tmp}
remote_tmp = {remote_tmp}
nocows = True
stdout_callback = default

[ssh_connection]
pipelining = True
control_path_dir = {control_dir}
control_path = %(directory)s/%%h-%%p-%%r
"""


def playbook() -> list[dict[str, Any]]:
    """The playbook (JSON is YAML): the bare fabric script's steps as tasks."""
    root = "{{ app_root }}"
    rel = "{{ app_root }}/releases/{{ release }}"
    pidfile = "{{ app_root }}/run/api.pid"
    stop = (
        f"f={pidfile}; if [ -f $f ]; then pid=$(cat $f); pkill -F $f || true; "
        f"{WAIT_EXITED} rm -f $f; echo stopped; else echo none; fi"
    )
    start = (
        f"mkdir -p {root}/run {root}/logs && cd {rel} || exit 1; "
        "setsid nohup python3 app/api.py --port {{ app_port }} --bind {{ app_bind }} "
        f">> {root}/logs/api.log 2>&1 < /dev/null & echo $! > {pidfile}"
    )
    tasks: list[dict[str, Any]] = [
        {
            "name": "releases directory",
            "ansible.builtin.file": {"path": f"{root}/releases", "state": "directory"},
        },
        {
            "name": "upload the bundle",
            "ansible.builtin.copy": {"src": "{{ bundle }}", "dest": f"{rel}.tar.gz"},
        },
        {
            "name": "verify its sha256 on the host",
            "ansible.builtin.stat": {
                "path": f"{rel}.tar.gz",
                "checksum_algorithm": "sha256",
                "get_checksum": True,
            },
            "register": "uploaded",
            "failed_when": "uploaded.stat.checksum | default('') != sha256",
        },
        {
            "name": "release directory",
            "ansible.builtin.file": {"path": rel, "state": "directory"},
        },
        {
            "name": "unpack",
            "ansible.builtin.unarchive": {
                "src": f"{rel}.tar.gz",
                "dest": rel,
                "remote_src": True,
            },
        },
        {
            "name": "stop the old process",
            "ansible.builtin.shell": stop,
            "register": "stopped",
            "changed_when": "stopped.stdout == 'stopped'",
        },
        {"name": "start the new one detached", "ansible.builtin.shell": start},
        {
            "name": "health check",
            "ansible.builtin.uri": {
                "url": "http://{{ app_bind }}:{{ app_port }}/healthz",
                "status_code": 200,
                "timeout": round(HEALTH_TIMEOUT_S),
            },
            "register": "health",
            "until": "health.status == 200",
            "retries": round(HEALTH_WINDOW_S / HEALTH_INTERVAL_S),
            "delay": HEALTH_INTERVAL_S,
        },
        {
            "name": "swap current",
            "ansible.builtin.file": {
                "src": "releases/{{ release }}",
                "dest": f"{root}/current",
                "state": "link",
                "force": True,
            },
        },
    ]
    return [{"name": "deploy", "hosts": "bench", "gather_facts": False, "tasks": tasks}]


class AnsibleTool:
    name = "ansible"

    def __init__(self, base: Path, targets: list[Target]) -> None:
        self.targets = targets
        self.cpu = MachineCPU()  # the last deploy's
        self.base = base / "ansible"
        self.version = ""
        try:
            self.version = package_version("ansible-core")
        except PackageNotFoundError:
            raise ToolUnavailable(
                "ansible-core is not installed (pip install ansible-core)"
            ) from None
        here = Path(sys.executable).parent / "ansible-playbook"
        found = str(here) if here.is_file() else shutil.which("ansible-playbook")
        if found is None:
            raise ToolUnavailable("ansible-core is installed but ansible-playbook is not on PATH")
        self.executable = found
        self.ssh = shutil.which("ssh")
        if self.ssh is None:
            raise ToolUnavailable("ansible needs the OpenSSH client (ssh), which is missing")
        self.control_dir = self.base / "cp"
        for directory in (self.base, self.control_dir, self.base / "tmp", self.base / "home"):
            directory.mkdir(parents=True, exist_ok=True)
        known_hosts = targets[0].host.known_hosts
        key = targets[0].host.client_key
        ssh_args = (
            f"-F /dev/null -o UserKnownHostsFile={known_hosts} -o GlobalKnownHostsFile=/dev/null "
            "-o StrictHostKeyChecking=yes -o IdentitiesOnly=yes"
        )
        lines = ["[bench]"]
        for t in targets:
            h = t.host
            lines.append(
                f"{h.name} ansible_host={h.address} ansible_port={h.port} ansible_user={h.user} "
                f"ansible_ssh_private_key_file={key} app_root={t.root} app_port={t.port} "
                f"app_bind={h.address}"
            )
        lines += [
            "",
            "[bench:vars]",
            "ansible_connection=ssh",
            "ansible_python_interpreter=/usr/bin/python3",
            f"ansible_ssh_common_args='{ssh_args}'",
            "",
        ]
        self.inventory = self.base / "inventory.ini"
        self.inventory.write_text("\n".join(lines))
        self.config = self.base / "ansible.cfg"
        self.config.write_text(
            ANSIBLE_CFG.format(
                inventory=self.inventory,
                forks=len(targets),
                local_tmp=self.base / "tmp" / "local",
                remote_tmp=self.base / "tmp" / "remote",
                control_dir=self.control_dir,
            )
        )
        self.playbook = self.base / "deploy.yml"
        self.playbook.write_text(json.dumps(playbook(), indent=2) + "\n")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
        self.env.update(
            {
                "ANSIBLE_CONFIG": str(self.config),
                "ANSIBLE_HOME": str(self.base / "home"),
                "ANSIBLE_NOCOLOR": "1",
                "LC_ALL": "C.UTF-8",  # ansible-core refuses a non-UTF-8 locale
                "LANG": "C.UTF-8",
            }
        )
        self.runs = 0

    def deploy(self, release: Release) -> float:
        self.runs += 1
        variables = self.base / f"vars-{self.runs}.json"
        variables.write_text(
            json.dumps(
                {
                    "release": release.dir_name,
                    "bundle": str(release.bundle),
                    "sha256": release.sha256,
                }
            )
        )
        log = self.base / f"run-{self.runs}-{release.version}.log"
        limit = 120 + 30 * len(self.targets)
        argv = [self.executable, str(self.playbook), "--extra-vars", f"@{variables}"]
        try:
            elapsed, status = timed_process(
                argv, cwd=self.base, env=self.env, stdout=log, timeout=limit, cpu=self.cpu
            )
        except subprocess.TimeoutExpired:
            tail = log.read_text(errors="replace").strip().splitlines()[-15:]
            raise ToolFailed(
                f"ansible-playbook ran past {limit} s:\n    " + "\n    ".join(tail)
            ) from None
        finally:
            self.close_masters()  # untimed
        if status != 0:
            tail = log.read_text(errors="replace").strip().splitlines()[-15:]
            raise ToolFailed(f"ansible-playbook exited {status}:\n    " + "\n    ".join(tail))
        return elapsed

    def close_masters(self) -> None:
        """End the ControlPersist masters, so each run pays its own connections."""
        assert self.ssh is not None
        for t in self.targets:
            h = t.host
            subprocess.run(
                [
                    self.ssh,
                    "-F",
                    "/dev/null",
                    "-o",
                    f"ControlPath={self.control_dir}/%h-%p-%r",
                    "-p",
                    str(h.port),
                    "-l",
                    h.user,
                    "-O",
                    "exit",
                    h.address,
                ],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                check=False,
            )


# ---------------------------------------------------------------- cleanup


def stop_processes_under(prefixes: Sequence[Path], grace_s: float = 5.0) -> int:
    """Stop every process whose working directory is inside one of ``prefixes``:
    the app servers the tools started (and any ssh master ansible left there).
    Returns how many there were."""
    wanted = tuple(str(p).rstrip("/") + "/" for p in prefixes)

    def ours() -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                cwd = os.readlink(entry / "cwd")
            except OSError:
                continue
            if (cwd + "/").startswith(wanted):
                found.append(int(entry.name))
        return found

    first = ours()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = ours()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace_s
        while pids and time.monotonic() < deadline:
            time.sleep(0.05)
            pids = ours()
        if not pids:
            break
    return len(first)


# -------------------------------------------------------------------- run


@dataclass
class CountResults:
    """Every figure for one host count."""

    hosts: int
    cold: dict[str, list[float]] = field(default_factory=dict)
    warm: dict[str, list[float]] = field(default_factory=dict)
    noop: list[float] = field(default_factory=list)
    python_pass: list[float] = field(default_factory=list)
    import_fabric: list[float] = field(default_factory=list)
    chassis_version: list[float] = field(default_factory=list)
    setup: dict[str, list[float]] = field(default_factory=dict)
    chassis_events: dict[str, list[int]] = field(default_factory=dict)
    orders: dict[str, list[list[str]]] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    chassis_progress: dict[str, list[str]] = field(default_factory=dict)
    chassis_steps: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    machine_cpu: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    """phase -> tool -> the machine's busy CPU seconds of each deploy."""
    processes_stopped: int = 0
    seconds: float = 0.0


def allocate_ports(hosts: list[SSHTestHost], tools: int) -> list[list[int]]:
    """``tools`` distinct free ports on each host's address."""
    table = []
    for h in hosts:
        ports: list[int] = []
        while len(ports) < tools:
            port = free_port(h.address)
            if port not in ports:
                ports.append(port)
        table.append(ports)
    return table


Tool = ChassisTool | FabricTool | AnsibleTool


def run_count(
    base: Path,
    hosts: list[SSHTestHost],
    releases: list[Release],
    rounds: int,
    cli: Path,
    ansible_missing: str | None,
) -> CountResults:
    """Cold, warm and no-op rounds on ``hosts``."""
    n = len(hosts)
    results = CountResults(hosts=n)
    started = time.perf_counter()
    if ansible_missing:
        results.unavailable["ansible"] = ansible_missing
    rotation = 0

    def next_order(tools: dict[str, Tool]) -> list[str]:
        nonlocal rotation
        turn = rotation % len(TOOLS)
        rotation += 1
        return [t for t in TOOLS[turn:] + TOOLS[:turn] if t in tools]

    def deploy_all(phase: str, what: str, tools: dict[str, Tool], release: Release) -> None:
        order = next_order(tools)
        results.orders.setdefault(phase, []).append(order)
        for name in order:
            progress(f"{n} hosts, {what}: {name} deploys {release.version}")
            tool = tools[name]
            try:
                seconds = tool.deploy(release)
                check_deployed(name, tool.targets, release)
            except ToolFailed as e:
                if name != "ansible":
                    raise
                results.unavailable["ansible"] = f"{what} failed: {e}"
                del tools["ansible"]
                continue
            progress(f"{n} hosts, {what}: {name} took {seconds:.2f} s")
            getattr(results, phase).setdefault(name, []).append(seconds)
            results.machine_cpu.setdefault(phase, {}).setdefault(name, []).append(tool.cpu.seconds)
            if isinstance(tool, ChassisTool):
                results.chassis_events.setdefault(phase, []).append(tool.events[-1])
                results.chassis_progress[phase] = tool.last_progress
                record_steps(phase, seconds, tool.last_progress)

    def record_steps(phase: str, seconds: float, lines: list[str]) -> None:
        """What the host steps took (the slowest host's sum) and what the rest
        of the process did (start, pre-flight, plan, ledger, receipts)."""
        steps = host_steps(lines)
        slowest = max((sum(v.values()) for v in steps.values()), default=0.0)
        names = {name for v in steps.values() for name in v}
        results.chassis_steps.setdefault(phase, []).append(
            {
                "total_s": seconds,
                "host_steps_slowest_host_s": slowest,
                "rest_s": seconds - slowest,
                "step_max_over_hosts_s": {
                    name: max(v.get(name, 0.0) for v in steps.values()) for name in sorted(names)
                },
            }
        )

    tools: dict[str, Tool] = {}
    chassis: ChassisTool | None = None
    roots: list[Path] = []
    for r in range(1, rounds + 1):
        if roots:  # the previous cold round's app servers: nothing uses them again
            results.processes_stopped += stop_processes_under(roots)
        ports = allocate_ports(hosts, len(TOOLS))
        roots = [h.root / f"{n}h-r{r}" for h in hosts]
        targets = {
            tool: [Target(h, roots[i] / tool, ports[i][t]) for i, h in enumerate(hosts)]
            for t, tool in enumerate(TOOLS)
        }
        progress(f"{n} hosts, cold {r}/{rounds}: chassis workspace, host keys, inventory")
        chassis = ChassisTool(base / f"r{r}", targets["chassis"], releases, cli)
        for key, value in chassis.setup.items():
            results.setup.setdefault(key, []).append(value)
        tools = {
            "chassis": chassis,
            "fabric": FabricTool(base / f"r{r}", targets["fabric"], in_process=False),
            "fabric-inproc": FabricTool(base / f"r{r}", targets["fabric-inproc"], in_process=True),
        }
        if "ansible" not in results.unavailable:
            tools["ansible"] = AnsibleTool(base / f"r{r}", targets["ansible"])
        deploy_all("cold", f"cold {r}/{rounds}", tools, releases[0])
    assert chassis is not None
    for r in range(1, rounds + 1):
        deploy_all("warm", f"warm {r}/{rounds}", tools, releases[r])
    active = releases[rounds]
    reference = Path(sys.executable)
    logs = base / "reference"
    logs.mkdir()
    for r in range(1, rounds + 1):
        progress(f"{n} hosts, no-op {r}/{rounds}: chassis deploys {active.version} again")
        bare_starts: list[tuple[list[str | Path], list[float]]] = [
            ([reference, "-c", "pass"], results.python_pass),
            ([reference, "-c", "import fabric"], results.import_fabric),
            ([cli, "--version"], results.chassis_version),
        ]
        for i, (argv, into) in enumerate(bare_starts):
            seconds, status = timed_process(
                argv, cwd=chassis.root, env=chassis.env, stdout=logs / f"{r}-{i}.out"
            )
            if status != 0:
                raise ToolFailed(f"{argv} exited {status}")
            into.append(seconds)
        seconds = chassis.noop(active)
        check_deployed("chassis", chassis.targets, active)
        results.noop.append(seconds)
        results.chassis_events.setdefault("noop", []).append(chassis.events[-1])
        results.chassis_progress["noop"] = chassis.last_progress
        record_steps("noop", seconds, chassis.last_progress)
    for name in TOOLS:  # a tool that failed part way is not compared
        if name not in tools:
            results.cold.pop(name, None)
            results.warm.pop(name, None)
    results.seconds = time.perf_counter() - started
    return results


def byte_compile() -> dict[str, Any]:
    """``make compile``: the project's packages byte-compiled, so the CLI
    starts as an installed wheel would (an editable install never is)."""
    argv = [sys.executable, "-m", "compileall", "-q", *PACKAGES]
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)
    return {
        "command": "python -m compileall -q " + " ".join(PACKAGES),
        "exit_status": done.returncode,
        "seconds": round(time.perf_counter() - started, 2),
        "errors": (done.stdout + done.stderr).strip()[-2000:],
    }


def run(sizes: Sizes, cli: Path) -> list[CountResults]:
    found: list[CountResults] = []
    with contextlib.ExitStack() as stack:
        base = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="chassis-bdeploy-")))
        most = max(sizes.host_counts)
        progress(f"starting {most} sshd hosts on 127.0.0.31…")
        hosts = stack.enter_context(bench_hosts(base / "sshd", most))
        # Registered after the hosts, so it runs before they stop (and before
        # the directory goes): no process the deploys started outlives the run.
        stack.callback(lambda: stop_processes_under([base]))
        dist = base / "dist"
        dist.mkdir()
        releases = [
            Release(f"v{i}", *build_sample_release(dist, f"v{i}"))
            for i in range(1, sizes.rounds + 2)
        ]
        ansible_missing = None
        try:
            AnsibleTool(base / "probe", [Target(hosts[0], hosts[0].root / "probe", 0)])
        except ToolUnavailable as e:
            ansible_missing = str(e)
        for n in sizes.host_counts:
            results = run_count(
                base / f"{n}h", hosts[:n], releases, sizes.rounds, cli, ansible_missing
            )
            results.processes_stopped += stop_processes_under([h.root for h in hosts])
            found.append(results)
    return found


# ------------------------------------------------------------------ report


def spread(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
    }


def per_round_ratio(top: list[float] | None, bottom: list[float] | None) -> float | None:
    """The median of ``top[i] / bottom[i]`` over the rounds both have."""
    if not top or not bottom or len(top) != len(bottom):
        return None
    return statistics.median(a / b for a, b in zip(top, bottom, strict=True))


def judged(value: float | None, limit: float | None, at_least: bool) -> dict[str, Any]:
    if value is None or limit is None:
        verdict = "n/a" if value is None else "no budget"
    else:
        verdict = "OK" if (value >= limit if at_least else value <= limit) else "OVER"
    return {
        "value": value,
        "budget": None if limit is None else (">= " if at_least else "<= ") + f"{limit:g}",
        "verdict": verdict,
    }


def breakdown(deploys: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians [ranges] of what ``chassis deploy`` said its host steps took."""
    names = sorted({name for d in deploys for name in d["step_max_over_hosts_s"]})
    return {
        "total_s": spread([d["total_s"] for d in deploys]),
        "host_steps_slowest_host_s": spread([d["host_steps_slowest_host_s"] for d in deploys]),
        "rest_s": spread([d["rest_s"] for d in deploys]),
        "step_median_s": {
            name: statistics.median(d["step_max_over_hosts_s"].get(name, 0.0) for d in deploys)
            for name in names
        },
        "per_deploy": deploys,
    }


def report(found: list[CountResults], meta: dict[str, Any]) -> dict[str, Any]:
    counts = []
    for res in found:
        phases = {}
        for phase in ("cold", "warm"):
            times: dict[str, list[float]] = getattr(res, phase)
            phases[phase] = {
                "seconds": times,
                "summary_s": {tool: spread(v) for tool, v in times.items()},
                "ansible_over_chassis": judged(
                    per_round_ratio(times.get("ansible"), times.get("chassis")),
                    ansible_over_chassis_min(res.hosts),
                    at_least=True,
                ),
                "chassis_over_fabric": judged(
                    per_round_ratio(times.get("chassis"), times.get("fabric")),
                    chassis_over_fabric_max(res.hosts),
                    at_least=False,
                ),
                # Shown beside it, judged against nothing: the script's own
                # start (interpreter, import fabric) taken out of the floor.
                "chassis_over_fabric_in_process": judged(
                    per_round_ratio(times.get("chassis"), times.get("fabric-inproc")),
                    None,
                    at_least=False,
                ),
                "tool_order_per_round": res.orders.get(phase, []),
                "machine_cpu_s": res.machine_cpu.get(phase, {}),
                "machine_cpu_summary_s": {
                    tool: spread(v) for tool, v in res.machine_cpu.get(phase, {}).items()
                },
            }
        noop = spread(res.noop)
        counts.append(
            {
                "hosts": res.hosts,
                **phases,
                "noop": {
                    "seconds": res.noop,
                    "summary_s": noop,
                    **{
                        k: v
                        for k, v in judged(
                            None if noop is None else noop["median"], NOOP_MAX_S, at_least=False
                        ).items()
                        if k != "value"
                    },
                },
                "reference": {
                    "python_pass_s": res.python_pass,
                    "python_pass_summary_s": spread(res.python_pass),
                    "import_fabric_s": res.import_fabric,
                    "import_fabric_summary_s": spread(res.import_fabric),
                    "chassis_version_s": res.chassis_version,
                    "chassis_version_summary_s": spread(res.chassis_version),
                },
                "chassis_setup_untimed_s": {k: spread(v) for k, v in res.setup.items()},
                "chassis_ledger_events_per_deploy": res.chassis_events,
                "chassis_breakdown": {
                    phase: breakdown(deploys) for phase, deploys in res.chassis_steps.items()
                },
                "chassis_last_progress": res.chassis_progress,
                "unavailable": res.unavailable,
                "processes_stopped": res.processes_stopped,
                "seconds": round(res.seconds, 1),
            }
        )
    return {**meta, "host_counts": counts}


def cell(summary: dict[str, float] | None, digits: int = 2) -> str:
    if summary is None:
        return "n/a"
    return (
        f"{summary['median']:.{digits}f} s "
        f"[{summary['min']:.{digits}f}–{summary['max']:.{digits}f}]"
    )


def ratio_cell(figure: dict[str, Any]) -> str:
    value = figure["value"]
    if value is None:
        return "n/a"
    if figure["budget"] is None:
        return f"{value:.2f}×"
    return f"{value:.2f}× {figure['verdict']} ({figure['budget'].replace(' ', '')}×)"


def print_row(cells: Sequence[str]) -> None:
    print("| " + " | ".join(cells) + " |")


def print_text(data: dict[str, Any]) -> None:
    print(
        f"Chassis deploy benchmark ({data['mode']}): "
        f"{', '.join(str(c['hosts']) for c in data['host_counts'])} sshd hosts on loopback, "
        f"{data['rounds']} rounds, {data['cpu_count']} CPUs, Python {data['python']}, "
        f"{data['seconds']:.0f} s"
    )
    load = data["loadavg_1m_start_end"]
    print(f"  load average (1 min) at start {load[0]:.2f}, at end {load[1]:.2f}")
    print("  versions: " + ", ".join(f"{k} {v}" for k, v in sorted(data["versions"].items())))
    compiled = data["byte_compiled"]
    print(
        f"  chassis timed as a process: {data['chassis_command']} (byte-compiled first: "
        f"{compiled['command']}, exit {compiled['exit_status']})"
    )
    print("  times: median [min–max] of the rounds; ratios: median of per-round ratios")
    print()
    print_row(
        [
            "hosts",
            "phase",
            *COLUMNS.values(),
            "ansible ÷ chassis",
            "chassis ÷ fabric",
            "chassis ÷ fabric in-process",
        ]
    )
    print_row(["---:", "---", *("---:" for _ in COLUMNS), "---:", "---:", "---:"])
    for count in data["host_counts"]:
        for phase in ("cold", "warm"):
            figures = count[phase]
            print_row(
                [
                    str(count["hosts"]),
                    phase,
                    *(cell(figures["summary_s"].get(tool)) for tool in COLUMNS),
                    ratio_cell(figures["ansible_over_chassis"]),
                    ratio_cell(figures["chassis_over_fabric"]),
                    ratio_cell(figures["chassis_over_fabric_in_process"]),
                ]
            )
    print()
    print(
        "The whole machine's busy CPU seconds per deploy (every process: the tool, the sshd "
        "hosts and what they run for it, the apps' start; median [min–max]):"
    )
    print()
    print_row(["hosts", "phase", *COLUMNS.values()])
    print_row(["---:", "---", *("---:" for _ in COLUMNS)])
    for count in data["host_counts"]:
        for phase in ("cold", "warm"):
            cpu = count[phase]["machine_cpu_summary_s"]
            print_row([str(count["hosts"]), phase, *(cell(cpu.get(tool)) for tool in COLUMNS)])
    print()
    print_row(
        [
            "hosts",
            "chassis deploy, no-op",
            "chassis --version",
            "python -c pass",
            "python -c 'import fabric'",
            "no-op budget",
        ]
    )
    print_row(["---:", "---:", "---:", "---:", "---:", "---"])
    for count in data["host_counts"]:
        noop, ref = count["noop"], count["reference"]
        print_row(
            [
                str(count["hosts"]),
                cell(noop["summary_s"]),
                cell(ref["chassis_version_summary_s"], 3),
                cell(ref["python_pass_summary_s"], 3),
                cell(ref["import_fabric_summary_s"], 3),
                f"{noop['budget'].replace(' ', '')} s {noop['verdict']}",
            ]
        )
    print()
    print(
        "Where chassis deploy's time goes (its own per-step report on stderr; "
        "host steps = the slowest host's sum; rest = start, pre-flight, plan, ledger, receipts):"
    )
    print()
    print_row(["hosts", "phase", "chassis process", "host steps", "rest", "host steps (median)"])
    print_row(["---:", "---", "---:", "---:", "---:", "---"])
    for count in data["host_counts"]:
        for phase, figures in count["chassis_breakdown"].items():
            print_row(
                [
                    str(count["hosts"]),
                    phase,
                    cell(figures["total_s"]),
                    cell(figures["host_steps_slowest_host_s"]),
                    cell(figures["rest_s"]),
                    " ".join(
                        f"{name} {value:.2f}" for name, value in figures["step_median_s"].items()
                    )
                    or "none",
                ]
            )
    print()
    print("Untimed chassis set-up per cold round (in process), median [min–max]:")
    for count in data["host_counts"]:
        setup = count["chassis_setup_untimed_s"]
        print(
            f"  {count['hosts']} hosts: "
            + ", ".join(
                f"{k.removesuffix('_s').replace('_', ' ')} {cell(v)}" for k, v in setup.items()
            )
        )
    for count in data["host_counts"]:
        events = count["chassis_ledger_events_per_deploy"]
        print(
            f"  ledger events per chassis deploy at {count['hosts']} hosts: "
            + "; ".join(f"{phase} {values}" for phase, values in events.items())
        )
        for tool, why in count["unavailable"].items():
            print(f"  {tool} at {count['hosts']} hosts: unavailable: {why}")
    verdicts = [
        f"{c['hosts']} hosts {phase} {name.replace('_', ' ')} {c[phase][name]['verdict']}"
        for c in data["host_counts"]
        for phase in ("cold", "warm")
        for name in ("ansible_over_chassis", "chassis_over_fabric")
        if c[phase][name]["verdict"] in ("OK", "OVER")
    ] + [f"{c['hosts']} hosts no-op {c['noop']['verdict']}" for c in data["host_counts"]]
    over = [v for v in verdicts if v.endswith("OVER") or v.endswith("n/a")]
    print()
    print(
        f"Budgets: {len(verdicts) - len(over)} of {len(verdicts)} OK"
        + (f"; over: {', '.join(over)}" if over else "")
    )


def tool_versions() -> dict[str, str]:
    found = {}
    for package in ("fabric", "paramiko", "ansible-core"):
        with contextlib.suppress(PackageNotFoundError):
            found[package] = package_version(package)
    ssh = shutil.which("ssh")
    if ssh:
        done = subprocess.run([ssh, "-V"], capture_output=True, text=True, check=False)
        found["openssh"] = (done.stderr or done.stdout).strip().split(",")[0]
    return found


def host_counts(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected e.g. 1,4,8") from None
    if not counts or min(counts) < 1 or max(counts) > 200:
        raise argparse.ArgumentTypeError(f"{text!r}: host counts are 1..200")
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 and 4 hosts, 2 rounds")
    parser.add_argument(
        "--hosts", type=host_counts, help="host counts, e.g. 1,4,8 (the default; quick 1,4)"
    )
    parser.add_argument("--rounds", type=int, help="rounds per phase (default 3, quick 2)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    sizes = Sizes(
        host_counts=args.hosts or sizes.host_counts,
        rounds=sizes.rounds if args.rounds is None else args.rounds,
    )
    if sizes.rounds < 1:
        parser.error("--rounds must be >= 1")
    # The workspace's own ledger, keys and key choice; never the caller's.
    for name in [k for k in os.environ if k.startswith("CHASSIS_")]:
        os.environ.pop(name, None)
    cli = chassis_executable()

    start, load_start = time.perf_counter(), os.getloadavg()
    progress("byte-compiling " + ", ".join(PACKAGES))
    compiled = byte_compile()
    if compiled["exit_status"] != 0:
        progress(f"compileall exited {compiled['exit_status']}: {compiled['errors']}")
    try:
        found = run(sizes, cli)
    except SSHDUnavailable as e:
        print(f"deploy benchmark: cannot start ssh hosts: {e}", file=sys.stderr)
        return 0
    meta = {
        "mode": (
            "quick"
            if args.quick
            else "default"
            if args.hosts is None and args.rounds is None
            else "custom"
        ),
        "rounds": sizes.rounds,
        "cpu_count": CPUS,
        "python": platform.python_version(),
        "host": socket.gethostname(),
        "versions": tool_versions(),
        "chassis_command": (
            f"{cli} deploy {APP} --env {ENVIRONMENT} --profile {PROFILE} --release vK "
            "--max-parallel N --json"
        ),
        "byte_compiled": compiled,
        "seconds": time.perf_counter() - start,
        # Other work on the machine skews every figure: say how busy it was.
        "loadavg_1m_start_end": [round(load_start[0], 2), round(os.getloadavg()[0], 2)],
    }
    data = report(found, meta)
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print_text(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
