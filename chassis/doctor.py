"""Preflight checks: each reports pass, warn or fail with a one-line fix.

Read-only: doctor appends nothing to the ledger (declared hosts are checked
from the stack file, not registered).

A host whose address is a placeholder (an address reserved for documentation,
such as the ``chassis init --example`` stack's prod hosts at 192.0.2.x) is not
contacted: its check fails with what to do instead of a connect timeout.
"""

from __future__ import annotations

import ipaddress
import shlex
import stat
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from adapters.errors import ConnectorError
from chassis.audit import verify_workspace
from chassis.connect import connector_from_settings, recorded_pin
from chassis.errors import ChassisError
from chassis.hosts import all_hosts, settings_from_spec
from chassis.keyring import local_key_path
from chassis.stack.spec import load_stack
from chassis.views import StatusRow, age_text, status_rows
from chassis.workspace import Workspace, keys_dir
from ledger.errors import LedgerError
from ledger.hosts import HostSettings
from ledger.storage import open_ledger
from proofs.chain import LedgerVerificationError
from proofs.checkpoint_verify import CheckpointError

Status = Literal["pass", "warn", "fail"]
OUR_PACKAGES = ("chassis", "ledger", "projections", "adapters", "proofs")
DISTRIBUTION = "chassis-ledger"
LOW_DISK_BYTES = 1 << 30
DOCUMENTATION_NETWORKS = tuple(
    ipaddress.ip_network(net)
    for net in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")
)
"""Addresses reserved for documentation (RFC 5737, RFC 3849): never a real host."""
DOCUMENTATION_DOMAINS = ("example", "example.com", "example.net", "example.org", "invalid")
"""Names reserved for examples (RFC 2606), with every name under them."""


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_doctor(
    workspace_path: Path | None,
    key_ref: str | None,
    timeout: float,
    environment: str | None = None,
) -> list[Check]:
    """Every check; with ``environment``, only that environment's hosts."""
    checks = [check_python(), check_shadowing()]
    try:
        ws = Workspace.find(workspace_path)
    except ChassisError as e:
        return [
            *checks,
            Check("workspace", "fail", str(e), "run 'chassis init' or pass --workspace"),
        ]
    checks.append(Check("workspace", "pass", str(ws.root)))
    checks.append(check_ledger(ws))
    if checks[-1].status == "pass":  # a ledger that does not verify says nothing true
        checks.append(check_components(ws))
    checks.append(check_keys(ws, key_ref))
    checks.append(check_release_store(ws))
    checks.extend(check_hosts(ws, timeout, environment))
    return checks


def check_python() -> Check:
    # Older Pythons cannot even import Chassis; report what runs it.
    version = ".".join(map(str, sys.version_info[:3]))
    return Check("python", "pass", f"Python {version} at {sys.executable}")


def check_shadowing() -> Check:
    """Another distribution providing one of our top-level packages breaks imports."""
    owners = metadata.packages_distributions()
    clashes = sorted(
        f"{name} (from {dist})"
        for name in OUR_PACKAGES
        for dist in owners.get(name, [])
        if dist.lower().replace("_", "-") != DISTRIBUTION
    )
    if clashes:
        return Check(
            "package names",
            "warn",
            "also installed by another distribution: " + ", ".join(clashes),
            "install chassis in its own environment (pipx install chassis-ledger)",
        )
    return Check(
        "package names", "pass", "no other distribution shadows " + ", ".join(OUR_PACKAGES)
    )


def check_ledger(ws: Workspace) -> Check:
    try:
        ledger = open_ledger(ws.storage(), None)
        try:
            result = verify_workspace(ws, ledger, remember=False)  # doctor writes nothing
        finally:
            ledger.close()
    except (LedgerVerificationError, CheckpointError) as e:
        return Check("ledger", "fail", str(e), "investigate with 'chassis ledger verify --json'")
    except (LedgerError, ChassisError) as e:
        return Check("ledger", "fail", e.diagnostics(), "check CHASSIS_LEDGER / [ledger] url")
    return Check("ledger", "pass", f"{ws.storage().describe()}: {result.events} events verified")


def check_release_store(ws: Workspace) -> Check:
    """Where bundles are kept beside the ledger; an object store must answer
    for its bucket with the credentials this process has."""
    from chassis.release_store import configured_store

    name = "release store"
    try:
        location = configured_store(ws)
    except ChassisError as e:
        return Check(name, "fail", str(e), "fix [releases] store in chassis.toml")
    if location is None:
        kind = ws.storage().kind
        where = "the ledger's database" if kind == "postgresql" else "this workspace only"
        return Check(name, "pass", f"bundles are kept in {where} (the default)")
    if location.kind != "s3":
        return Check(name, "pass", f"bundles are kept in {location.describe()}")
    from chassis.s3_bundles import S3Bundles

    try:
        problem = S3Bundles(location).check()
    except ChassisError as e:
        problem = str(e).removeprefix(f"{location.describe()}: ")
    if problem is not None:
        return Check(
            name,
            "fail",
            f"{location.describe()}: {problem}",
            "create the bucket, or set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)",
        )
    return Check(name, "pass", f"{location.describe()}: the bucket answers")


def check_components(ws: Workspace) -> Check:
    """Every deployed component as last observed (``chassis status``): fail
    when one was seen or recorded down or unhealthy, warn when one has not
    been observed since a restore (or drift is recorded). Reads the view
    only: ``chassis status --live`` is what looks at the hosts and records."""
    try:
        ledger = open_ledger(ws.storage(), None)
        try:
            rows = status_rows(ledger, None, None)
        finally:
            ledger.close()
    except LedgerVerificationError as e:
        return Check("components", "fail", str(e), "'chassis ledger verify', then rebuild-views")
    except (LedgerError, ChassisError) as e:
        return Check("components", "fail", e.diagnostics(), "check CHASSIS_LEDGER / [ledger] url")
    if not rows:
        return Check("components", "pass", "nothing deployed yet")

    def name(r: StatusRow) -> str:
        return f"{r.app}/{r.environment} {r.host}/{r.component}"

    down = [r for r in rows if r.healthy is False]
    if down:
        what = "; ".join(f"{name(r)} {r.state}, {r.health} ({r.observed_text()})" for r in down)
        return Check(
            "components",
            "fail",
            f"{len(down)} of {len(rows)} component(s) seen or recorded down: {what}",
            "look now with 'chassis status --live'; repair with 'chassis reconcile APP "
            "--env ENV --repair'",
        )
    unknown = [r for r in rows if r.healthy is None]
    drifted = [r for r in rows if r.state == "drifted"]
    if unknown or drifted:
        what = "; ".join(
            [f"{name(r)}: {r.observed_text()}" for r in unknown]
            + [f"{name(r)}: drifted, {r.health}" for r in drifted]
        )
        return Check(
            "components",
            "warn",
            f"{len(unknown)} never observed, {len(drifted)} drifted: {what}",
            "'chassis status --live' looks now; 'chassis reconcile APP --env ENV' checks drift",
        )
    oldest = max(r.observed_age_s or 0 for r in rows)
    return Check(
        "components",
        "pass",
        f"{len(rows)} component(s) running and healthy as last observed "
        f"(oldest observation {age_text(oldest)}; 'chassis status --live' looks now)",
    )


def check_keys(ws: Workspace, key_ref: str | None) -> Check:
    from chassis.keyring import env_signing_key
    from ledger.errors import KeyFileError

    try:
        from_env = env_signing_key()
    except KeyFileError as e:
        return Check("keys", "fail", str(e), "set CHASSIS_SIGNING_KEY to the key, or unset it")
    if from_env is not None:
        return Check("keys", "pass", f"acting key from CHASSIS_SIGNING_KEY ({from_env.keyid[:16]})")
    directory = keys_dir()
    if not directory.is_dir():
        return Check("keys", "fail", f"{directory}: no key directory", "run 'chassis init'")
    mode = stat.S_IMODE(directory.stat().st_mode)
    ref = key_ref or ws.settings().default_key
    path = local_key_path(directory, ref)
    if path is None:
        return Check("keys", "fail", f"no private key {ref!r} in {directory}", "pass --key NAME")
    key_mode = stat.S_IMODE(path.stat().st_mode)
    if key_mode & 0o077:
        return Check("keys", "fail", f"{path} has mode {key_mode:o}", f"chmod 600 {path}")
    if mode & 0o077:
        return Check("keys", "warn", f"{directory} has mode {mode:o}", f"chmod 700 {directory}")
    return Check("keys", "pass", f"{path} (mode 600)")


def _hosts(ws: Workspace) -> list[tuple[str, HostSettings]]:
    found: dict[str, HostSettings] = {}
    if ws.stack_file.exists():
        stack = load_stack(ws.stack_file)
        for environment, spec in stack.hosts():
            found[spec.name] = settings_from_spec(environment, spec)
    try:
        ledger = open_ledger(ws.storage(), None)
        try:
            for host in all_hosts(ledger):
                found.setdefault(host.name, host.settings)
        finally:
            ledger.close()
    except LedgerError:
        pass  # reported by the ledger check
    return sorted(found.items())


def check_hosts(ws: Workspace, timeout: float, environment: str | None = None) -> list[Check]:
    hosts = _hosts(ws)
    if environment is not None:
        known = sorted({settings.environment for _, settings in hosts})
        hosts = [(name, found) for name, found in hosts if found.environment == environment]
        if not hosts:
            return [
                Check(
                    "hosts",
                    "fail",
                    f"no hosts in environment {environment!r}",
                    f"pass --env one of: {', '.join(known) or 'none'}",
                )
            ]
    if not hosts:
        return [
            Check(
                "hosts",
                "warn",
                "no hosts declared or registered",
                "add [environments] to chassis.toml",
            )
        ]
    with ThreadPoolExecutor(max_workers=min(16, len(hosts))) as pool:
        per_host = list(pool.map(lambda item: _check_host(ws, item[0], item[1], timeout), hosts))
    return [check for checks in per_host for check in checks]


def is_placeholder(address: str | None) -> bool:
    """An address reserved for documentation or examples: nothing answers there."""
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        name = address.lower().rstrip(".")
        return any(name == d or name.endswith(f".{d}") for d in DOCUMENTATION_DOMAINS)
    return any(ip in network for network in DOCUMENTATION_NETWORKS)


def placeholder_check(name: str, settings: HostSettings) -> Check:
    """What a placeholder host is and what to do, instead of a connect timeout."""
    return Check(
        f"host {name}: reachable",
        "fail",
        f"{name}: placeholder host ({settings.address}, an address reserved for examples, "
        "as `chassis init --example` writes): not contacted",
        f"replace its address in chassis.toml, or remove the environment "
        f"{settings.environment!r}; or check the others only: chassis doctor --env ENV",
    )


def _check_host(ws: Workspace, name: str, settings: HostSettings, timeout: float) -> list[Check]:
    label = f"host {name}"
    if settings.connector == "ssh" and is_placeholder(settings.address):
        return [placeholder_check(name, settings)]
    root = settings.root
    if settings.connector == "local" and not root.startswith("/"):
        root = str((ws.root / root).resolve())
    try:
        with connector_from_settings(
            name, settings, ws, connect_timeout=timeout, pin=recorded_pin(ws, name)
        ) as connector:
            connector.connect()
            checks = [Check(f"{label}: reachable", "pass", connector.where())]
            checks.append(
                _probe(
                    label,
                    "python3",
                    connector.run,
                    "command -v python3",
                    "install python3 on the host (the inventory probe needs it)",
                )
            )
            checks.append(_disk(label, connector.run, root))
            if settings.supervisor == "systemd":
                checks.append(
                    _probe(
                        label,
                        "systemd",
                        connector.run,
                        "command -v systemctl >/dev/null && test -d /run/systemd/system",
                        'use supervisor = "direct" or a host booted with systemd',
                    )
                )
            return checks
    except ConnectorError as e:
        fix = (
            "pin its key with 'chassis host trust-key " + name + "'"
            if "host key" in str(e)
            else ("check the address, port, user and key file")
        )
        return [Check(f"{label}: reachable", "fail", e.diagnostics(), fix)]


Runner = Callable[..., Any]


def _probe(label: str, what: str, run: Runner, command: str, fix: str) -> Check:
    result = run(command, timeout=30.0)
    if result.exit_code == 0:
        return Check(
            f"{label}: {what}", "pass", (result.stdout.strip() or "available").splitlines()[0]
        )
    return Check(f"{label}: {what}", "fail", f"not usable (exit {result.exit_code})", fix)


def _disk(label: str, run: Runner, root: str) -> Check:
    # The root may not exist before the first deploy: measure its nearest parent.
    script = 'p="$1"; while [ ! -e "$p" ]; do p=$(dirname "$p"); done; df -Pk "$p" | tail -n 1'
    result = run(f"sh -c {shlex.quote(script)} _ {shlex.quote(root)}", timeout=30.0)
    fields = result.stdout.split()
    if result.exit_code != 0 or len(fields) < 4 or not fields[3].isdigit():
        return Check(f"{label}: disk", "warn", f"could not measure free space under {root}")
    free = int(fields[3]) * 1024
    detail = f"{free / 2**30:.1f} GiB free under {root}"
    if free < LOW_DISK_BYTES:
        return Check(f"{label}: disk", "warn", detail, "free space: releases need room")
    return Check(f"{label}: disk", "pass", detail)
