"""Named evolution scenarios (``chassis evolution fixture list|run``).

Each builds a scratch workspace with the demo stack on three local hosts and
fresh keys (``requester``, operator; ``approver``, approver), deploys a
baseline of the sample app, plants its scenario, and runs ``chassis
evolution proof`` with every gate required, through the real CLI in
subprocesses. Nothing is decided here: the outcome is whatever the gates
decide, then compared with what the fixture expects, and the proof is
verified with ``chassis proof verify``. Everything started is stopped.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from adapters.connectors.fork_server import run_python_module
from chassis.errors import ChassisError, NotFound
from chassis.sample_app import build_sample_release
from chassis.stack.example import example_stack
from ledger.evolution import GATES

Progress = Callable[[str], None]
BASELINE, CANDIDATE = "v1", "v2"


@dataclass(frozen=True)
class Fixture:
    name: str
    description: str
    expect: str
    """``promoted``, ``blocked:GATE`` (GATE failed, nothing promoted),
    ``failed:swap`` (the swap failed and was restored) or ``refused`` (the run
    did not start: exit 3)."""
    baseline_config: dict[str, str] = field(default_factory=dict)
    candidate_config: dict[str, str] = field(default_factory=dict)
    consent: str | None = "approver"
    """Who grants consent: ``approver``, ``requester`` (same key), ``expired``, or nobody."""
    plant: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "expect": self.expect}


FIXTURES = {
    f.name: f
    for f in (
        Fixture(
            "source_level_repair_001",
            "v1 answers 500 to every third API call (a planted fault); the candidate fixes it",
            "promoted",
            baseline_config={"PLANTED_FAULT": "1"},
        ),
        Fixture(
            "trial_health_failure",
            "the candidate's /healthz answers 503: its trial never becomes healthy",
            "blocked:trial",
            candidate_config={"FAIL_HEALTH": "1"},
        ),
        Fixture(
            "score_regression",
            "the candidate answers 500 to every third API call: its error rate regresses",
            "blocked:score",
            candidate_config={"PLANTED_FAULT": "1"},
        ),
        Fixture(
            "consent_missing", "nobody consented to the candidate", "blocked:consent", consent=None
        ),
        Fixture(
            "consent_same_key",
            "the key asking for promotion granted the consent itself",
            "blocked:consent",
            consent="requester",
        ),
        Fixture(
            "consent_expired",
            "the approver's consent lapsed before the run",
            "blocked:consent",
            consent="expired",
        ),
        Fixture(
            "corrupt_candidate_bundle",
            "the candidate's bundle in the store was altered after it was registered",
            "refused",
            plant="corrupt-candidate",
        ),
        Fixture(
            "swap_health_timeout",
            "the candidate is healthy in its trial but its health probe hangs in production: "
            "the swap times out and the baseline is restored",
            "failed:swap",
            candidate_config={"HANG_HEALTH_OUTSIDE_TRIAL": "1"},
        ),
        Fixture(
            "rollback_drill_failure",
            "the baseline's bundle is gone from the store: the way back cannot be staged",
            "blocked:rollback-drill",
            plant="drop-baseline-bundle",
        ),
    )
}


@dataclass
class FixtureReport:
    name: str
    expected: str
    outcome: str
    exit_code: int
    gates: list[dict[str, Any]]
    proof: str | None
    verified: str
    detail: str = ""

    @property
    def promoted(self) -> bool:
        return self.outcome == "promoted"

    @property
    def summary(self) -> str:
        if self.outcome == "refused":
            return f"refused (exit {self.exit_code}): {self.detail}"
        failed = [g["gate"] for g in self.gates if g["required"] and g["status"] == "FAIL"]
        return self.outcome + (f" at {', '.join(failed)}" if failed else "")

    @property
    def as_expected(self) -> bool:
        kind, _, gate = self.expected.partition(":")
        if kind in ("promoted", "refused"):
            return self.outcome == kind and (kind == "refused" or self.verified == "verified")
        failed = [g["gate"] for g in self.gates if g["required"] and g["status"] == "FAIL"]
        outcome_ok = self.outcome == ("failed" if kind == "failed" else "blocked")
        return outcome_ok and failed[:1] == [gate] and self.verified == "verified"

    def to_dict(self) -> dict[str, Any]:
        return {
            "fixture": self.name,
            "expected": self.expected,
            "outcome": self.outcome,
            "as_expected": self.as_expected,
            "exit_code": self.exit_code,
            "gates": self.gates,
            "proof": self.proof,
            "verified": self.verified,
            "detail": self.detail,
        }


EPHEMERAL_RANGE = "/proc/sys/net/ipv4/ip_local_port_range"
LOWEST_PORT = 10000
"""Fixture ports are picked at or above this (below it sit well-known services)."""


def _ephemeral_low() -> int:
    """The lowest port the kernel hands out to outgoing connections (Linux's
    default 32768 where the range cannot be read)."""
    try:
        with open(EPHEMERAL_RANGE, encoding="ascii") as f:  # noqa: PTH123
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_ports(count: int, offset: int | None = None) -> list[int]:
    """``count`` distinct ports free now, each with its trial port (``+ offset``,
    ``evolution proof``'s default) free too, all below the ephemeral range.

    A port the kernel picks (bind to 0) comes from the ephemeral range, which
    every outgoing connection on the machine draws from too: a health probe
    or a database client could hold it, or its trial port, by the time the
    component binds it ("address already in use"). Below that range only a
    listener can take a port."""
    from chassis.evolution.run import DEFAULT_PORT_OFFSET

    offset = DEFAULT_PORT_OFFSET if offset is None else offset
    top = min(_ephemeral_low(), 65536) - offset
    if top - LOWEST_PORT < 64 * count:  # an odd range: the kernel's pick, as before
        return _kernel_ports(count, offset)
    picker = random.SystemRandom()
    ports: list[int] = []
    for _ in range(1000):
        port = picker.randrange(LOWEST_PORT, top)
        if port not in ports and _bindable(port) and _bindable(port + offset):
            ports.append(port)
            if len(ports) == count:
                return ports
    raise FixtureSetupError(f"no {count} free ports below {top} (with +{offset} free too)")


def _kernel_ports(count: int, offset: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port not in ports and port + offset <= 65535:
            ports.append(port)
    return ports


def fixture_stack(app: str, environment: str, gateway: int, api: int) -> str:
    """The example stack, on these ports, with ENV as three local hosts and a
    score on the gateway (its error rate through to the api)."""
    text = example_stack(app)
    start = text.index("[environments.dev]")
    end = text.index("# ----", start)
    hosts = "".join(
        f'  {{ name = "{environment}-{i}", connector = "local", '
        f'root = ".chassis/hosts/{environment}-{i}" }},\n'
        for i in (1, 2, 3)
    )
    environments = f"[environments.{environment}]\nhosts = [\n{hosts}]\n\n"
    text = text[:start] + environments + text[end:]
    text = text.replace("8080", str(gateway)).replace("8081", str(api))
    text = text.replace("window_ms = 8000", "window_ms = 4000")
    score = (
        'score = { command = "python3 app/score.py --requests 30", metric = "error_rate", '
        "max_regression = 0.10 }\n"
    )
    gateway_table = text.index("[components.gateway]")
    end = text.index("\n\n", gateway_table)
    return text[: end + 1] + score + text[end + 1 :]


class _Scratch:
    """A scratch workspace driven through the real CLI."""

    def __init__(self, root: Path, progress: Progress) -> None:
        self.root = root
        self.ws = root / "ws"
        self.progress = progress
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("CHASSIS_") or k in ("CHASSIS_TEST_POSTGRES",)
        }
        self.env |= {
            "CHASSIS_KEYS_DIR": str(root / "keys"),
            "XDG_CONFIG_HOME": str(root / "config"),
            "NO_COLOR": "1",
        }

    def chassis(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        cwd = self.ws if self.ws.is_dir() else self.root
        done = run_cli(list(args), cwd, self.env)
        if ok and done.returncode != 0:
            said = done.stderr.strip()[-500:]
            raise FixtureSetupError(f"chassis {' '.join(args[:3])}: exit {done.returncode}: {said}")
        return done


# A fixture runs the CLI about ten times; each new interpreter would spend
# ~0.15 s of CPU importing it. Each command is a child of one interpreter
# that imported it already (a fork server), still a process of its own.
CLI_MODULES = (
    "chassis.cli",
    "chassis.cli.deploy_cmd",
    "chassis.engine.deploy",
    "chassis.evolution.run",
    "chassis.aftermath",
    "chassis.receipts",
    "chassis.checkpoints",
    "adapters.connectors.local",
    "ledger.postgres",
)


def run_cli(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``python -m chassis ARGS`` in ``cwd`` with exactly ``env``."""
    return run_python_module(
        "chassis", args, cwd=str(cwd), env=env, timeout=600, preload=CLI_MODULES
    )


class FixtureSetupError(ChassisError):
    """Building the scenario failed (not a gate's verdict): exit 1."""


def run_fixture(
    name: str,
    *,
    app: str | None = None,
    environment: str = "dev",
    profile: str = "ternary-split-3",
    required: frozenset[str] | None = None,
    directory: Path | None = None,
    out: Path | None = None,
    progress: Progress = lambda _: None,
) -> FixtureReport:
    """Build, plant, run and check fixture ``name``; always stops what it started."""
    fixture = FIXTURES.get(name)
    if fixture is None:
        raise NotFound(f"no fixture {name!r} (fixtures: {', '.join(FIXTURES)})")
    app = app or "shop"
    temporary = directory is None
    root = Path(tempfile.mkdtemp(prefix="chassis-fixture-")) if directory is None else directory
    root.mkdir(parents=True, exist_ok=True)
    scratch = _Scratch(root, progress)
    try:
        return _run(fixture, scratch, app, environment, profile, required, out)
    finally:
        if scratch.ws.is_dir():
            scratch.chassis(
                "remove", app, "--env", environment, "--yes", "--reason", "fixture done", ok=False
            )
        if temporary:
            shutil.rmtree(root, ignore_errors=True)


def _run(
    fixture: Fixture,
    scratch: _Scratch,
    app: str,
    environment: str,
    profile: str,
    required: frozenset[str] | None,
    out: Path | None,
) -> FixtureReport:
    say = scratch.progress
    say(f"fixture {fixture.name}: {fixture.description}")
    scratch.chassis("init", str(scratch.ws), "--name", app)
    gateway, api = _free_ports(2)
    (scratch.ws / "chassis.toml").write_text(fixture_stack(app, environment, gateway, api))
    dist = scratch.root / "dist"
    digests = {}
    for label, version, config in (
        (BASELINE, "1.0.0", fixture.baseline_config),
        (CANDIDATE, "2.0.0", fixture.candidate_config),
    ):
        bundle, digests[label] = build_sample_release(dist, version)
        settings = [f"{k}={v}" for k, v in sorted(config.items())]
        scratch.chassis(
            "release",
            "add",
            label,
            "--artifact",
            str(bundle),
            *[arg for s in settings for arg in ("--config", s)],
        )
    roles = "operator,approver" if fixture.consent == "requester" else "operator"
    scratch.chassis("key", "new", "requester", "--roles", roles)
    scratch.chassis("key", "new", "approver", "--roles", "approver")
    say(f"fixture {fixture.name}: deploying the baseline {BASELINE}")
    scratch.chassis(
        "deploy", app, "--env", environment, "--profile", profile, "--release", BASELINE
    )
    _plant(fixture, scratch, app, environment, digests)
    gates = sorted(required) if required is not None else list(GATES)
    flags = {
        "trial": "--require-trial",
        "score": "--require-score",
        "consent": "--require-consent",
        "swap": "--require-health-gated-swap",
        "rollback-drill": "--require-rollback-proof",
    }
    proof = out or scratch.root / f"{fixture.name}.dsse.json"
    say(f"fixture {fixture.name}: evolution proof of {CANDIDATE}")
    run = scratch.chassis(
        "--key",
        "requester",
        "evolution",
        "proof",
        app,
        "--env",
        environment,
        "--profile",
        profile,
        "--candidate",
        CANDIDATE,
        *[flags[g] for g in gates],
        "--out",
        str(proof),
        "--json",
        ok=False,
    )
    if run.returncode not in (0, 20):
        return FixtureReport(
            fixture.name,
            fixture.expect,
            "refused",
            run.returncode,
            [],
            None,
            "no proof",
            run.stderr.strip().splitlines()[-1] if run.stderr.strip() else "",
        )
    result = json.loads(run.stdout)
    verify = scratch.chassis("proof", "verify", str(proof), "--json", ok=False)
    verified = "verified" if verify.returncode == 0 else f"NOT verified: {verify.stderr.strip()}"
    return FixtureReport(
        fixture.name,
        fixture.expect,
        str(result["outcome"]),
        run.returncode,
        list(result["gates"]),
        str(proof),
        verified,
    )


def _plant(
    fixture: Fixture, scratch: _Scratch, app: str, environment: str, digests: dict[str, str]
) -> None:
    store = scratch.ws / ".chassis" / "bundles"
    if fixture.plant == "corrupt-candidate":
        bundle = store / f"{digests[CANDIDATE]}.tar.gz"
        data = bytearray(bundle.read_bytes())
        data[len(data) // 2] ^= 0xFF
        bundle.chmod(0o644)
        bundle.write_bytes(bytes(data))
    elif fixture.plant == "drop-baseline-bundle":
        (store / f"{digests[BASELINE]}.tar.gz").unlink()
    if fixture.consent in ("approver", "requester"):
        scratch.chassis(
            "--key",
            fixture.consent,
            "consent",
            "grant",
            app,
            "--env",
            environment,
            "--candidate",
            CANDIDATE,
            "--ttl",
            "1h",
            "--reason",
            f"fixture {fixture.name}",
        )
    elif fixture.consent == "expired":
        _grant_expired(scratch, app, environment)


def _grant_expired(scratch: _Scratch, app: str, environment: str) -> None:
    """A grant whose time has passed: written as the approver would have,
    an hour ago, with a ten-minute TTL (the CLI grants only from now)."""
    from chassis.consent import find_release
    from chassis.workspace import Workspace
    from ledger.aggregate import now
    from ledger.consents import Consent
    from ledger.keys import load_keypair
    from ledger.storage import open_ledger

    ws = Workspace.find(scratch.ws)
    approver = load_keypair(scratch.root / "keys" / "approver.key")
    ledger = open_ledger(ws.storage(), approver)
    try:
        release = find_release(ledger, app, CANDIDATE)
        ledger.append(
            Consent.grant(
                app=app,
                environment=environment,
                release_id=release.release_id,
                label=CANDIDATE,
                expires=now() - timedelta(minutes=50),
                reason="granted an hour ago for ten minutes",
                actor=approver.keyid,
            )
        )
    finally:
        ledger.close()
