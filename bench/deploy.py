"""Deploy benchmark: Chassis vs a bare fabric script vs ansible-playbook.

Run from the repository root::

    python bench/deploy.py [--quick] [--hosts N] [--rounds R] [--json]

Starts N real sshd hosts on loopback (127.0.0.31, .32, …; default 8, quick
3), each with its own root directory, and has three tools do the same job on
all of them in parallel, in the same run:

1. **Chassis** (``chassis.engine.deploy.deploy``, in process): a workspace
   whose profile has N groups, one per host, each running one copy of the
   sample app's ``api`` service on its own port with an HTTP health check on
   ``/healthz``. Every step is a signed ledger event.
2. **bare fabric**: one thread and one fabric ``Connection`` per host; put the
   bundle, check its sha256 on the host, unpack it into ``releases/<id>``,
   stop the old process (pidfile), start the new one detached, poll
   ``/healthz`` until 200, swap the ``current`` symlink. No ledger.
3. **ansible-playbook** (ansible-core, a subprocess): the same tasks with
   ``copy``, ``stat`` (sha256), ``unarchive``, ``shell`` (pkill by pidfile;
   nohup start), ``uri`` (retries) and ``file`` (symlink); ``forks = N``.

Each tool first deploys release v1 to fresh roots, then upgrades R times
(v2, v3, …; default 3, quick 1); the order of the tools rotates from one
phase to the next. After every deploy (untimed) each host's ``/healthz`` must
name the new version and its ``current`` link must point at it.

What every tool pays alike: the same sshd hosts, whose login shell runs for
every command; host keys pinned and checked (Chassis' workspace known_hosts,
``paramiko.RejectPolicy`` with the same file, ``StrictHostKeyChecking=yes``
with the same file); health polled every 100 ms until one 200 (Chassis'
check is configured to ``interval_ms = 100, passes = 1`` for that reason);
fresh SSH connections for every deploy (ansible's ControlPersist masters are
closed after each run, untimed). Ansible gets its fast settings: no fact
gathering, pipelining, a fixed interpreter. Its figure includes its process
start (the Chassis figure opens the workspace, stack and ledger but runs in
this process; ``chassis deploy`` would add the CLI's start). Chassis hosts are
inventoried once before timing (``prepare`` would otherwise probe them on the
first deploy); that setup is reported on its own.

Budgets (DESIGN.md §10), reported, not enforced (exit 0 unless the script
crashes): Chassis >= 8x faster than ansible-playbook (the issue asks >= 3x)
and <= 1.5x the bare fabric script. Ratios of upgrades are the median of the
per-round ratios. Progress goes to stderr; ``--json`` prints one object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
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

import fabric  # noqa: E402
import paramiko  # noqa: E402

from bench._sshd_hosts import SSHDUnavailable, bench_hosts  # noqa: E402
from chassis.config.env import EnvVars  # noqa: E402
from chassis.connect import pin_host_key  # noqa: E402
from chassis.engine.deploy import DeployOptions  # noqa: E402
from chassis.engine.deploy import deploy as chassis_deploy  # noqa: E402
from chassis.engine.releases import add_release  # noqa: E402
from chassis.hosts import environment_hosts, get_host, sync_declared  # noqa: E402
from chassis.inventory import inventory  # noqa: E402
from chassis.keyring import load_acting_key  # noqa: E402
from chassis.sample_app import build_sample_release  # noqa: E402
from chassis.stack.spec import load_stack  # noqa: E402
from chassis.trust_admin import init_workspace  # noqa: E402
from chassis.workspace import Workspace  # noqa: E402
from ledger.application import Ledger  # noqa: E402
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
TOOLS = ("fabric", "chassis", "ansible")
LABELS = {
    "chassis": "Chassis deploy() (ledger, in process)",
    "fabric": "bare fabric script (no ledger)",
    "ansible": "ansible-playbook (subprocess)",
}


@dataclass(frozen=True)
class Sizes:
    hosts: int
    upgrade_rounds: int


FULL = Sizes(hosts=8, upgrade_rounds=3)
QUICK = Sizes(hosts=3, upgrade_rounds=1)


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


def wait_healthy(address: str, port: int) -> None:
    """Poll ``/healthz`` every 100 ms until it answers 200 (the bare script's gate)."""
    deadline = time.monotonic() + HEALTH_WINDOW_S
    while True:
        started = time.monotonic()
        status, body = http_get(address, port)
        if status == 200:
            return
        if started + HEALTH_INTERVAL_S > deadline:
            raise ToolFailed(f"{address}:{port}/healthz never answered 200 (last: {status} {body})")
        time.sleep(max(0.0, started + HEALTH_INTERVAL_S - time.monotonic()))


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


class ChassisTool:
    """A workspace, its ledger and signing key; one ``deploy()`` call per deploy."""

    name = "chassis"

    def __init__(self, base: Path, targets: list[Target], releases: list[Release]) -> None:
        self.targets = targets
        self.keys = base / "keys"
        self.root = base / "workspace"
        self.setup: dict[str, float] = {}
        self.events: list[int] = []
        self.notes: list[str] = []
        started = time.perf_counter()
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
        with self._ledger(ws) as ledger:
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
            for result in inventory(ledger, ws, environment_hosts(ledger, ENVIRONMENT)):
                if result.error:
                    raise ToolFailed(f"inventory: {result.error}")
            self.setup["host_inventory_s"] = time.perf_counter() - started

    @contextlib.contextmanager
    def _ledger(self, ws: Workspace) -> Iterator[Ledger]:
        ledger = open_ledger(ws.storage(), load_acting_key(self.keys, self.key_name))
        try:
            yield ledger
        finally:
            ledger.close()

    def deploy(self, release: Release) -> float:
        self.notes.clear()
        started = time.perf_counter()
        # What `chassis deploy` does after its imports: find the workspace,
        # read the stack, load the key, open the ledger, deploy, close.
        ws = Workspace.find(self.root)
        stack = load_stack(ws.stack_file)
        with self._ledger(ws) as ledger:
            before = ledger.max_seq()
            result = chassis_deploy(
                ledger,
                ws,
                stack,
                app=APP,
                environment=ENVIRONMENT,
                profile=PROFILE,
                label=release.version,
                options=DeployOptions(max_parallel=len(self.targets)),
                progress=self.notes.append,
            )
            events = ledger.max_seq() - before
        elapsed = time.perf_counter() - started
        self.events.append(events)
        if result.status != "deployed":
            raise ToolFailed(
                f"chassis deploy {release.version}: {result.status}: {result.description}; "
                f"hosts: {json.dumps(result.hosts)}; progress: {' | '.join(self.notes[-10:])}"
            )
        return elapsed


# ------------------------------------------------------------- bare fabric


# Wait until process $pid has exited. A zombie counts as exited: on this
# machine PID 1 reaps orphans only about once a second, so `kill -0` alone
# would add a second to every stop (Chassis' supervisor skips zombies too).
WAIT_EXITED = (
    "while { IFS= read -r st < /proc/$pid/stat; } 2>/dev/null && st=${st##*) } && "
    '[ "${st%% *}" != Z ]; do sleep 0.05; done;'
)


def bare_fabric_host(target: Target, release: Release) -> None:
    """Everything a deploy does on one host, with fabric and nothing else."""
    h = target.host
    conn = fabric.Connection(
        host=h.address,
        user=h.user,
        port=h.port,
        config=fabric.Config(ssh_config=paramiko.SSHConfig(), lazy=True),
        connect_kwargs={
            "key_filename": [str(h.client_key)],
            "allow_agent": False,
            "look_for_keys": False,
            "timeout": CONNECT_TIMEOUT_S,
        },
    )
    conn.client.load_host_keys(str(h.known_hosts))
    conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
    q = shlex.quote
    root = str(target.root)
    rel = f"{root}/releases/{release.dir_name}"
    bundle = f"{rel}.tar.gz"
    pidfile = f"{root}/run/api.pid"

    def run(command: str) -> str:
        return str(conn.run(command, hide=True, in_stream=False).stdout)

    try:
        run(f"mkdir -p {q(root + '/releases')} {q(root + '/run')} {q(root + '/logs')}")
        conn.put(str(release.bundle), bundle)
        found = run(f"sha256sum < {q(bundle)}").split()[0]
        if found != release.sha256:
            raise ToolFailed(f"{h.name}: uploaded bundle has sha256 {found}")
        tmp = q(rel + ".unpack")
        run(
            f"rm -rf {tmp} && mkdir -p {tmp} && tar -xzf {q(bundle)} -C {tmp} && "
            f"rm -rf {q(rel)} && mv {tmp} {q(rel)}"
        )
        run(
            f"f={q(pidfile)}; if [ -f $f ]; then pid=$(cat $f); kill $pid 2>/dev/null; "
            f"{WAIT_EXITED} rm -f $f; fi"
        )
        run(
            f"cd {q(rel)} || exit 1; setsid nohup python3 app/api.py --port {target.port} "
            f"--bind {h.address} >> {q(root + '/logs/api.log')} 2>&1 < /dev/null & "
            f"echo $! > {q(pidfile)}"
        )
        wait_healthy(h.address, target.port)
        link = q(root + "/current")
        run(f"ln -sfn {q('releases/' + release.dir_name)} {link}.tmp && mv -T {link}.tmp {link}")
    finally:
        conn.close()


class FabricTool:
    name = "fabric"

    def __init__(self, targets: list[Target]) -> None:
        self.targets = targets

    def deploy(self, release: Release) -> float:
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=len(self.targets)) as pool:
            futures = [pool.submit(bare_fabric_host, t, release) for t in self.targets]
            for future in futures:
                future.result()
        return time.perf_counter() - started


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
        started = time.perf_counter()
        limit = 120 + 30 * len(self.targets)
        try:
            with log.open("wb") as out:
                done = subprocess.run(
                    [self.executable, str(self.playbook), "--extra-vars", f"@{variables}"],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=self.env,
                    cwd=self.base,
                    check=False,
                    timeout=limit,
                )
            elapsed = time.perf_counter() - started
        except subprocess.TimeoutExpired:
            tail = log.read_text(errors="replace").strip().splitlines()[-15:]
            raise ToolFailed(
                f"ansible-playbook ran past {limit} s:\n    " + "\n    ".join(tail)
            ) from None
        finally:
            self.close_masters()  # untimed
        if done.returncode != 0:
            tail = log.read_text(errors="replace").strip().splitlines()[-15:]
            raise ToolFailed(
                f"ansible-playbook exited {done.returncode}:\n    " + "\n    ".join(tail)
            )
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


def stop_processes_under(base: Path, grace_s: float = 5.0) -> int:
    """Stop every process whose working directory is inside ``base``: the app
    servers all three tools started (and any ssh master ansible left there).
    Returns how many there were."""
    prefix = str(base).rstrip("/") + "/"

    def ours() -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                cwd = os.readlink(entry / "cwd")
            except OSError:
                continue
            if (cwd + "/").startswith(prefix):
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
class Results:
    hosts: int
    first: dict[str, float] = field(default_factory=dict)
    upgrades: dict[str, list[float]] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    setup: dict[str, float] = field(default_factory=dict)
    chassis_events: list[int] = field(default_factory=list)
    orders: list[list[str]] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    processes_stopped: int = 0


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


def run(sizes: Sizes) -> Results:
    results = Results(hosts=sizes.hosts)
    versions = [f"v{i}" for i in range(1, sizes.upgrade_rounds + 2)]
    with contextlib.ExitStack() as stack:
        base = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="chassis-bdeploy-")))
        progress(f"starting {sizes.hosts} sshd hosts on 127.0.0.31…")
        hosts = stack.enter_context(bench_hosts(base / "sshd", sizes.hosts))
        # Registered after the hosts, so it runs before they stop (and before
        # the directory goes): no process the deploys started outlives the run.
        stack.callback(lambda: setattr(results, "processes_stopped", stop_processes_under(base)))
        dist = base / "dist"
        dist.mkdir()
        releases = [Release(v, *build_sample_release(dist, v)) for v in versions]
        ports = allocate_ports(hosts, len(TOOLS))

        def targets(index: int, tool: str) -> list[Target]:
            return [Target(h, h.root / tool, ports[n][index]) for n, h in enumerate(hosts)]

        tool_targets = {tool: targets(i, tool) for i, tool in enumerate(TOOLS)}
        progress("chassis: workspace, releases, pinning host keys, inventory")
        chassis = ChassisTool(base, tool_targets["chassis"], releases)
        results.setup = dict(chassis.setup)
        tools: dict[str, ChassisTool | FabricTool | AnsibleTool] = {
            "chassis": chassis,
            "fabric": FabricTool(tool_targets["fabric"]),
        }
        try:
            ansible = AnsibleTool(base, tool_targets["ansible"])
            tools["ansible"] = ansible
            results.versions["ansible-core"] = ansible.version
        except ToolUnavailable as e:
            results.unavailable["ansible"] = str(e)
        for phase, release in enumerate(releases):
            order = [t for t in TOOLS[phase % 3 :] + TOOLS[: phase % 3] if t in tools]
            results.orders.append(order)
            what = "first deploy" if phase == 0 else f"upgrade {phase}"
            for name in order:
                progress(f"{what}: {name} deploys {release.version} to {sizes.hosts} hosts")
                try:
                    seconds = tools[name].deploy(release)
                    check_deployed(name, tool_targets[name], release)
                except ToolFailed as e:
                    if name != "ansible":
                        raise
                    results.unavailable["ansible"] = f"{what} failed: {e}"
                    del tools["ansible"]
                    continue
                progress(f"{what}: {name} took {seconds:.2f} s")
                if phase == 0:
                    results.first[name] = seconds
                else:
                    results.upgrades.setdefault(name, []).append(seconds)
        results.chassis_events = chassis.events
        for name in TOOLS:
            if name not in tools and name in results.upgrades:
                del results.upgrades[name]  # a tool that failed later is not compared
            if name not in tools:
                results.first.pop(name, None)
    return results


# ------------------------------------------------------------------ report


def ratio(results: Results, top: str, bottom: str) -> dict[str, float | None]:
    """``top / bottom`` for the first deploy and (median per-round) for upgrades."""
    first = None
    if top in results.first and bottom in results.first:
        first = results.first[top] / results.first[bottom]
    upgrade = None
    if results.upgrades.get(top) and results.upgrades.get(bottom):
        upgrade = statistics.median(
            a / b for a, b in zip(results.upgrades[top], results.upgrades[bottom], strict=True)
        )
    return {"first": first, "upgrade": upgrade}


def report(results: Results, meta: dict[str, Any]) -> dict[str, Any]:
    ansible_ratio = ratio(results, "ansible", "chassis")
    fabric_ratio = ratio(results, "chassis", "fabric")

    def verdict(figure: dict[str, float | None], ok: Callable[[float], bool]) -> str:
        """Judged on the upgrades (a restart included), else on the first deploy."""
        value = figure["upgrade"] if figure["upgrade"] is not None else figure["first"]
        return "n/a" if value is None else ("PASS" if ok(value) else "FAIL")

    figures = {
        "ansible_over_chassis": {
            **ansible_ratio,
            "meaning": "ansible-playbook time / Chassis time (higher: Chassis faster)",
            "budget": ">= 8 (DESIGN.md §10); >= 3 (issue)",
            "verdict_design": verdict(ansible_ratio, lambda r: r >= 8),
            "verdict_issue": verdict(ansible_ratio, lambda r: r >= 3),
        },
        "chassis_over_fabric": {
            **fabric_ratio,
            "meaning": "Chassis time / bare fabric time (the ledger's and engine's cost)",
            "budget": "<= 1.5 (DESIGN.md §10)",
            "verdict_design": verdict(fabric_ratio, lambda r: r <= 1.5),
        },
    }
    return {
        **meta,
        "first_deploy_s": results.first,
        "upgrade_s": results.upgrades,
        "upgrade_median_s": {k: statistics.median(v) for k, v in results.upgrades.items() if v},
        "unavailable": results.unavailable,
        "chassis_setup_s": results.setup,
        "chassis_events_per_deploy": results.chassis_events,
        "tool_order_per_phase": results.orders,
        "processes_stopped_at_end": results.processes_stopped,
        "ratios": figures,
    }


def fmt(value: float | None, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:.2f}{suffix}"


def print_text(data: dict[str, Any]) -> None:
    print(
        f"Chassis deploy benchmark ({data['mode']}): {data['hosts']} ssh hosts on loopback, "
        f"{data['cpu_count']} CPUs, Python {data['python']}, {data['seconds']:.0f} s"
    )
    load = data["loadavg_1m_start_end"]
    print(f"  load average (1 min) at start {load[0]:.2f}, at end {load[1]:.2f}")
    print("  versions: " + ", ".join(f"{k} {v}" for k, v in sorted(data["versions"].items())))
    setup = data["chassis_setup_s"]
    print(
        "  chassis setup (untimed): "
        + ", ".join(f"{k.removesuffix('_s').replace('_', ' ')} {v:.2f} s" for k, v in setup.items())
    )
    print()
    print(f"  {'tool':<40} {'first deploy':>13} {'upgrade (median)':>17}  upgrades")
    for tool in TOOLS:
        label = LABELS[tool]
        if tool in data["unavailable"]:
            print(f"  {label:<40} {'unavailable':>13}: {data['unavailable'][tool]}")
            continue
        first = data["first_deploy_s"].get(tool)
        ups = data["upgrade_s"].get(tool, [])
        median = data["upgrade_median_s"].get(tool)
        rounds = " ".join(f"{u:.2f}" for u in ups)
        print(f"  {label:<40} {fmt(first, ' s'):>13} {fmt(median, ' s'):>17}  [{rounds}]")
    events = data["chassis_events_per_deploy"]
    if events:
        print(f"  ledger events per Chassis deploy: {events}")
    print()
    for key, figure in data["ratios"].items():
        print(
            f"  {key.replace('_', ' ')}: first {fmt(figure['first'], 'x')}, "
            f"upgrade {fmt(figure['upgrade'], 'x')}  ({figure['meaning']})"
        )
        print(
            f"      budget {figure['budget']}: design {figure['verdict_design']}"
            + (f", issue {figure['verdict_issue']}" if "verdict_issue" in figure else "")
        )


def tool_versions() -> dict[str, str]:
    found = {}
    for package in ("fabric", "paramiko"):
        with contextlib.suppress(PackageNotFoundError):
            found[package] = package_version(package)
    ssh = shutil.which("ssh")
    if ssh:
        done = subprocess.run([ssh, "-V"], capture_output=True, text=True, check=False)
        found["openssh"] = (done.stderr or done.stdout).strip().split(",")[0]
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 hosts, one upgrade round")
    parser.add_argument("--hosts", type=int, help="number of ssh hosts (default 8, quick 3)")
    parser.add_argument("--rounds", type=int, help="upgrade rounds (default 3, quick 1)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    sizes = Sizes(
        hosts=args.hosts or sizes.hosts,
        upgrade_rounds=sizes.upgrade_rounds if args.rounds is None else args.rounds,
    )
    if sizes.hosts < 1 or sizes.upgrade_rounds < 0:
        parser.error("--hosts must be >= 1 and --rounds >= 0")
    # The workspace's own ledger, keys and key choice; never the caller's.
    for name in (EnvVars.LEDGER, EnvVars.WORKSPACE, EnvVars.KEY, EnvVars.KEYS_DIR):
        os.environ.pop(name, None)

    start, load_start = time.perf_counter(), os.getloadavg()
    try:
        results = run(sizes)
    except SSHDUnavailable as e:
        print(f"deploy benchmark: cannot start ssh hosts: {e}", file=sys.stderr)
        return 0
    meta = {
        "mode": "quick" if args.quick else "full",
        "hosts": sizes.hosts,
        "upgrade_rounds": sizes.upgrade_rounds,
        "cpu_count": CPUS,
        "python": platform.python_version(),
        "host": socket.gethostname(),
        "versions": {**tool_versions(), **results.versions},
        "seconds": time.perf_counter() - start,
        # Other work on the machine skews every figure: say how busy it was.
        "loadavg_1m_start_end": [round(load_start[0], 2), round(os.getloadavg()[0], 2)],
    }
    data = report(results, meta)
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print_text(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
