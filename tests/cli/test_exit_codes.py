"""Every documented exit code, through the real CLI (guides/operations.md, "Exit codes").

The table below has a case for every row of the guide's table (a test checks
that the two list the same codes). Each case builds what it needs, then runs
``python -m chassis`` as a user would, in its own process (forked from one
that has the CLI imported, see :func:`run_chassis`), and checks the
exit code and what stderr says:

- ``error``: exactly one line ``chassis: error: …`` naming the cause, and
  nothing else on stderr (``notes=True``: the command's progress notes may
  come too, but still exactly one error line);
- ``usage``: click's usage block ending in ``Error: …``;
- ``report``: the command prints its report (the failing check, the reasons)
  on stdout and no error line.

Never a Python traceback: that takes ``--debug`` (tested at the end).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from adapters.connectors.fork_server import run_python_module
from adapters.connectors.local import LocalConnector
from adapters.supervisors.direct import DirectSupervisor
from chassis.evolution.fixtures import CLI_MODULES
from chassis.sample_app import build_sample_release
from ledger.keys import generate_keypair
from tests.conftest import Runner
from tests.engine.conftest import distinct_free_ports
from tests.rawstore import RawStore

REPO = Path(__file__).resolve().parents[2]
GUIDE = REPO / "guides" / "operations.md"
DEPLOY = ("deploy", "shop", "--env", "dev", "--profile", "ternary-split-3")
TRACEBACK = "Traceback (most recent call last)"


def quiet_env(**extra: str) -> dict[str, str]:
    """This test's environment (keys dir, config) without CHASSIS_DEBUG, and
    this checkout first on the path."""
    env = {k: v for k, v in os.environ.items() if k != "CHASSIS_DEBUG"}
    return {**env, "PYTHONPATH": str(REPO), **extra}


@dataclass
class Call:
    """One run of the real CLI: arguments, where, extra environment;
    ``fresh``: in a new interpreter (what it changes acts at start-up)."""

    args: list[str]
    cwd: Path
    env: dict[str, str] = field(default_factory=dict)
    fresh: bool = False


def run_chassis(call: Call, *flags: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """``python -m chassis FLAGS ARGS`` as a process of its own, forked from
    a server that has the CLI imported (``chassis.evolution.fixtures.run_cli``:
    a new interpreter costs each case about 0.2 s of CPU importing it), or a
    new interpreter for a ``fresh`` call."""
    args = [*flags, *call.args]
    env = quiet_env(**call.env)
    if call.fresh:
        return subprocess.run(
            [sys.executable, "-m", "chassis", *args],
            cwd=call.cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    return run_python_module(
        "chassis", args, cwd=str(call.cwd), env=env, timeout=timeout, preload=CLI_MODULES
    )


class Setup:
    """What a case may need, built on demand in the test's tmp_path."""

    def __init__(self, run: Runner, tmp_path: Path) -> None:
        self.run = run
        self.tmp = tmp_path
        self._example: Path | None = None
        self._shop: Path | None = None
        self.cleanups: list[Callable[[], None]] = []

    def example(self) -> Path:
        """A workspace from ``init --example`` (three local dev hosts, ssh prod hosts)."""
        if self._example is None:
            root = self.tmp / "example"
            self.run.ok("init", str(root), "--name", "shop", "--example")
            self._example = root
        return self._example

    def shop(self) -> Path:
        """The example on free ports with sample releases v1, v2 and a failing v3."""
        if self._shop is None:
            root = self.example()
            stack = root / "chassis.toml"
            gateway, api = distinct_free_ports()
            text = re.sub(
                r"\b8081\b", str(api), re.sub(r"\b8080\b", str(gateway), stack.read_text())
            )
            stack.write_text(text.replace("window_ms = 8000", "window_ms = 4000"))
            dist = self.tmp / "dist"
            for version, config in (("v1", ()), ("v2", ()), ("v3", ("--config", "FAIL_HEALTH=1"))):
                bundle, _ = build_sample_release(dist, version)
                self.in_ws(root, "release", "add", version, "--artifact", str(bundle), *config)
            self.cleanups.append(lambda: stop_shop(root))
            self._shop = root
        return self._shop

    def in_ws(self, root: Path, *args: str) -> str:
        """Run a command in ``root`` in-process (setup, not under test); its stdout."""
        return self.run.ok("--workspace", str(root), *args).stdout

    def stack(self, text: str) -> Path:
        """A workspace whose chassis.toml is ``text`` (written after init)."""
        root = self.tmp / "custom"
        self.run.ok("init", str(root), "--name", "lab")
        (root / "chassis.toml").write_text(text)
        return root


def stop_shop(root: Path) -> None:
    for host in ("dev-1", "dev-2", "dev-3"):
        supervisor = DirectSupervisor(LocalConnector(host), str(root / ".chassis" / "hosts" / host))
        for component in ("gateway", "api", "worker"):
            supervisor.stop(component)


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (the kernel's pick of a free
    one, released at once), so connecting to it is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def ssh_stack(address: str, port: int, root: str) -> str:
    return (
        '[app]\nname = "lab"\n\n[components.api]\ncommand = "python3 app/api.py"\n\n'
        '[profiles.one]\ngroups.all = { components = ["api"] }\n\n'
        "[environments.lab]\nhosts = [\n"
        f'  {{ name = "lab-1", connector = "ssh", address = "{address}", port = {port}, '
        f'user = "deploy", root = "{root}" }},\n]\n'
    )


def with_release(setup: Setup, root: Path) -> None:
    bundle, _ = build_sample_release(setup.tmp / "dist", "v1")
    setup.in_ws(root, "release", "add", "v1", "--artifact", str(bundle))


# -- the cases --------------------------------------------------------------------------


def usage(setup: Setup) -> Call:
    return Call(["deploy", "shop"], setup.tmp)


def not_a_workspace(setup: Setup) -> Call:
    return Call(["status"], setup.tmp)


def relative_ssh_root(setup: Setup) -> Call:
    """Passed 'stack validate' and broke mid-deploy (issue 12)."""
    return Call(["stack", "validate"], setup.stack(ssh_stack("10.0.0.1", 22, "srv/lab")))


def health_passes_zero(setup: Setup) -> Call:
    """Passed 'stack validate' and broke mid-deploy (issue 12)."""
    root = setup.example()
    stack = root / "chassis.toml"
    stack.write_text(stack.read_text().replace("passes = 3", "passes = 0"))
    return Call(["stack", "validate"], root)


def storage(setup: Setup) -> Call:
    root = setup.example()
    (root / ".chassis" / "ledger.db").write_bytes(b"not a database at all\n" * 10)
    return Call(["ledger", "verify"], root)


def key_file(setup: Setup) -> Call:
    args = ["--key", "nobody", "host", "add", "x-1", "--env", "dev"]
    args += ["--connector", "local", "--root", "/tmp/x-1"]
    return Call(args, setup.example())


def unauthorised(setup: Setup) -> Call:
    root = setup.example()
    generate_keypair(Path(os.environ["CHASSIS_KEYS_DIR"]), "stranger")
    args = ["--key", "stranger", "host", "add", "x-1", "--env", "dev"]
    args += ["--connector", "local", "--root", "/tmp/x-1"]
    return Call(args, root)


def conflict(setup: Setup) -> Call:
    """Two processes: a deploy of the failing v3 holds the lease through its
    health gate (4 s on every host, nothing appended meanwhile) while a second
    deploy asks for it."""
    root = setup.shop()
    setup.in_ws(root, *DEPLOY, "--release", "v1")
    store = RawStore(f"sqlite:///{root / '.chassis' / 'ledger.db'}")

    def started() -> int:
        return sum(
            1
            for row in store.rows()
            if row.topic.endswith(".step-recorded.v1")
            and re.search(rb'"step": ?"start"', row.state)
        )

    assert started() == 3
    first = subprocess.Popen(
        [sys.executable, "-m", "chassis", *DEPLOY, "--release", "v3"],
        cwd=root,
        env=quiet_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def finish() -> None:  # before the processes are stopped
        first.wait(timeout=120)

    setup.cleanups.insert(0, finish)
    deadline = time.monotonic() + 60
    while started() < 6:  # every host is in v3's health gate
        assert first.poll() is None and time.monotonic() < deadline, "the first deploy ended"
        time.sleep(0.05)
    return Call([*DEPLOY, "--release", "v2"], root)


def verification(setup: Setup) -> Call:
    root = setup.example()
    setup.in_ws(root, "host", "list")  # registers the declared hosts
    store = RawStore(f"sqlite:///{root / '.chassis' / 'ledger.db'}")
    row = next(r for r in store.rows() if b"dev-2" in r.state)
    store.set_state(row.seq, row.state.replace(b"dev-2", b"dev-9"))
    return Call(["ledger", "verify"], root)


def domain_rule(setup: Setup) -> Call:
    return Call(["host", "remove", "dev-1", "--reason", "gone"], setup.example())


def unknown_host(setup: Setup) -> Call:
    """Was 9."""
    return Call(["host", "show", "nohost"], setup.example())


def unknown_host_removed(setup: Setup) -> Call:
    """Was 9."""
    return Call(["host", "remove", "nohost", "--reason", "gone"], setup.example())


def unknown_host_inventory(setup: Setup) -> Call:
    """Was 9."""
    return Call(["host", "inventory", "dev-1", "nohost"], setup.example())


def unknown_host_trust_key(setup: Setup) -> Call:
    """Was 9."""
    return Call(["host", "trust-key", "nohost", "--yes"], setup.example())


def unknown_host_hardware(setup: Setup) -> Call:
    """Was 9."""
    return Call(
        ["hardware", "validate", "--host", "nohost", "--runtime", "cuda-large"], setup.example()
    )


def unknown_environment_history(setup: Setup) -> Call:
    """Was 1."""
    return Call(["history", "shop", "--env", "nope"], setup.example())


def unknown_app(setup: Setup) -> Call:
    """Was 1."""
    return Call(
        ["deploy", "nope", "--env", "dev", "--profile", "monolith", "--release", "v1"],
        setup.example(),
    )


def unknown_release(setup: Setup) -> Call:
    """Was 3."""
    args = ["deploy", "shop", "--env", "dev", "--profile", "monolith", "--release", "v9"]
    return Call(args, setup.example())


def never_deployed(setup: Setup) -> Call:
    return Call(["rollback", "shop", "--env", "dev"], setup.example())


def unreachable_first_deploy(setup: Setup) -> Call:
    """A first deploy to a host whose port refuses connections. Was 1."""
    root = setup.stack(ssh_stack("127.0.0.1", closed_port(), "/srv/lab"))
    with_release(setup, root)
    return Call(["deploy", "lab", "--env", "lab", "--profile", "one", "--release", "v1"], root)


def placement(setup: Setup) -> Call:
    root = setup.shop()
    stack = root / "chassis.toml"
    stack.write_text(stack.read_text().replace("cpu = 0.25", "cpu = 4096"))
    return Call(["plan", "shop", "--env", "dev", "--profile", "monolith", "--release", "v1"], root)


def admission(setup: Setup) -> Call:
    return Call(
        ["hardware", "validate", "--host", "dev-1", "--runtime", "cuda-large"], setup.example()
    )


def doctor(setup: Setup) -> Call:
    """The example's prod hosts name a key file that is not there."""
    return Call(["doctor", "--timeout", "2"], setup.example())


def deploy_failed(setup: Setup) -> Call:
    root = setup.shop()
    setup.in_ws(root, *DEPLOY, "--release", "v1")
    return Call([*DEPLOY, "--release", "v3"], root)


def evolution_gate_failed(setup: Setup) -> Call:
    root = setup.shop()
    setup.in_ws(root, *DEPLOY, "--release", "v1")
    gated = ["evolution", "proof", "shop", "--env", "dev", "--profile", "ternary-split-3"]
    return Call([*gated, "--candidate", "v2", "--require-consent"], root)


def reconcile_drift(setup: Setup) -> Call:
    root = setup.shop()
    setup.in_ws(root, *DEPLOY, "--release", "v1")
    rows = json.loads(setup.in_ws(root, "status", "shop", "--env", "dev", "--json"))
    api = next(r for r in rows if r["component"] == "api")
    DirectSupervisor(
        LocalConnector(api["host"]), str(root / ".chassis" / "hosts" / api["host"])
    ).stop("api")
    return Call(["reconcile", "shop", "--env", "dev"], root)


def export_undelivered(setup: Setup) -> Call:
    root = setup.example()
    setup.in_ws(root, "host", "inventory", "dev-1")  # something to export
    return Call(["receipts", "export", "--to", f"http://127.0.0.1:{closed_port()}/"], root)


INJECT = """
import chassis.cli.host.show as show

def injected(*args, **kwargs):
    raise {error}

show.get_host = injected
"""


def injected(setup: Setup, error: str) -> Call:
    """``host show`` in a process whose ``get_host`` raises ``error`` (a
    sitecustomize module on PYTHONPATH): what a bug looks like to a user."""
    hook = setup.tmp / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(INJECT.format(error=error))
    path = os.pathsep.join(filter(None, [str(hook), str(REPO), os.environ.get("PYTHONPATH")]))
    # sitecustomize is imported at interpreter start only: a new one
    return Call(["host", "show", "dev-1"], setup.example(), {"PYTHONPATH": path}, fresh=True)


def internal_error(setup: Setup) -> Call:
    return injected(setup, 'RuntimeError("injected bug")')


def interrupted(setup: Setup) -> Call:
    return injected(setup, "KeyboardInterrupt()")


@dataclass(frozen=True)
class Case:
    code: int
    name: str
    call: Callable[[Setup], Call] | None
    words: tuple[str, ...] = ()
    form: str = "error"
    notes: bool = False
    skip: str = ""


CASES = [
    Case(
        1,
        "internal error",
        internal_error,
        ("internal error: RuntimeError: injected bug", "--debug"),
    ),
    Case(2, "usage", usage, ("Missing option '--release'",), form="usage"),
    Case(3, "not a workspace", not_a_workspace, ("workspace",)),
    Case(3, "relative ssh root", relative_ssh_root, ("hosts[0].root", "absolute", "srv/lab")),
    Case(3, "health passes = 0", health_passes_zero, ("components.api.health.passes",)),
    Case(4, "storage", storage, ("not a SQLite database",)),
    Case(5, "key file", key_file, ("nobody",)),
    Case(6, "unauthorised", unauthorised, ("not trusted",)),
    Case(7, "conflict", conflict, ("lease",), notes=True),
    Case(8, "verification", verification, ("digest-mismatch",)),
    Case(9, "domain rule", domain_rule, ("declared",)),
    Case(10, "unknown host", unknown_host, ("nohost",)),
    Case(10, "host remove of an unknown host", unknown_host_removed, ("no host named 'nohost'",)),
    Case(
        10, "host inventory of an unknown host", unknown_host_inventory, ("no host named 'nohost'",)
    ),
    Case(
        10, "host trust-key of an unknown host", unknown_host_trust_key, ("no host named 'nohost'",)
    ),
    Case(
        10,
        "hardware validate of an unknown host",
        unknown_host_hardware,
        ("no host named 'nohost'",),
    ),
    Case(10, "history of an unknown environment", unknown_environment_history, ("nope",)),
    Case(10, "deploy of an unknown app", unknown_app, ("unknown app 'nope'",)),
    Case(10, "deploy of an unknown release", unknown_release, ("no release 'v9' of shop",)),
    Case(10, "rollback of what was never deployed", never_deployed, ("never been deployed",)),
    Case(
        11,
        "unreachable host",
        unreachable_first_deploy,
        ("host lab-1 (127.0.0.1:", "refused", "nothing was recorded"),
        notes=True,
    ),
    Case(12, "placement impossible", placement, ("cpu",), notes=True),
    Case(13, "admission rejected", admission, ("rejected", "no-gpu"), form="report", notes=True),
    Case(14, "doctor", doctor, ("FAIL",), form="report"),
    Case(
        15,
        "supervisor",
        None,
        skip=(
            "no command lets a supervisor error reach the CLI: deploy, rollback, retire, "
            "recover and repair record it as that host's failure and restore (16, 17); the "
            "supervisors' own tests check its code (tests/adapters/test_supervisors.py)"
        ),
    ),
    Case(16, "deploy failed", deploy_failed, ("deploy v3 failed", "restored"), notes=True),
    Case(
        17,
        "recover could not restore",
        None,
        skip=(
            "needs a crashed operation and a host that cannot be restored: "
            "tests/engine/test_recover.py::test_a_host_that_cannot_be_restored_keeps_the_lease"
        ),
    ),
    Case(18, "reconcile drift", reconcile_drift, ("drift",), notes=True),
    Case(19, "export undelivered", export_undelivered, ("still queued",), notes=True),
    Case(
        20,
        "evolution gate failed",
        evolution_gate_failed,
        ("v2 not promoted", "consent did not pass", "proof:"),
        notes=True,
    ),
    Case(130, "interrupted", interrupted, ("interrupted",)),
]


@pytest.fixture
def setup(run: Runner, tmp_path: Path) -> Iterator[Setup]:
    built = Setup(run, tmp_path)
    yield built
    for cleanup in built.cleanups:
        cleanup()


@pytest.mark.parametrize("case", CASES, ids=[f"{c.code}-{c.name}" for c in CASES])
def test_each_documented_error_exits_with_its_code_and_one_line(case: Case, setup: Setup) -> None:
    if case.call is None:
        pytest.skip(case.skip)
    call = case.call(setup)
    result = run_chassis(call, timeout=180)
    shown = f"exit {result.returncode}\nstderr:\n{result.stderr}\nstdout:\n{result.stdout}"
    assert result.returncode == case.code, shown
    assert TRACEBACK not in result.stderr, shown
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("chassis: error: ")]
    if case.form == "usage":
        assert lines[0].startswith("Usage: chassis ") and lines[-1].startswith("Error: "), shown
        said = lines[-1]
    elif case.form == "report":
        assert not errors, shown
        said = result.stdout
    else:
        assert len(errors) == 1, shown
        if not case.notes:
            assert lines == errors, shown
        said = errors[0]
    for words in case.words:
        assert words in said, shown


def test_the_cases_cover_every_code_in_the_guide() -> None:
    table = GUIDE.read_text().split("## Exit codes", 1)[1]
    documented = {int(code) for code in re.findall(r"^\| (\d+) \|", table, re.MULTILINE)}
    assert documented - {0} == {c.code for c in CASES}


def test_debug_shows_the_traceback_and_still_ends_with_the_line(setup: Setup) -> None:
    call = internal_error(setup)
    result = run_chassis(call, "--debug", timeout=60)
    assert result.returncode == 1
    assert TRACEBACK in result.stderr and "RuntimeError: injected bug" in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("chassis: error: internal error: RuntimeError: injected bug")
    assert "--debug" not in last


def test_a_silent_host_prints_no_library_traceback(
    setup: Setup, silent_listener: tuple[str, int]
) -> None:
    """paramiko logs a failed handshake with its traceback from its own
    thread; Python printed that once per host. Only --debug shows it now."""
    address, port = silent_listener
    hosts = "".join(
        f'  {{ name = "h{i}", connector = "ssh", address = "{address}", port = {port}, '
        'user = "root", root = "/srv/lab" },\n'
        for i in (1, 2)
    )
    root = setup.stack(f'[app]\nname = "lab"\n\n[environments.lab]\nhosts = [\n{hosts}]\n')
    args = ["host", "trust-key", "--all", "--yes", "--timeout", "1"]
    env = quiet_env()
    quiet, loud = (
        subprocess.run(
            [sys.executable, "-m", "chassis", *debug, *args],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        for debug in ([], ["--debug"])
    )
    assert quiet.returncode == loud.returncode == 11
    assert "Traceback" not in quiet.stderr and "Exception" not in quiet.stderr, quiet.stderr
    assert all(ln.startswith("chassis: error: host h") for ln in quiet.stderr.splitlines())
    assert "paramiko.transport: ERROR: Exception (client)" in loud.stderr
