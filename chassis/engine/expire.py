"""Expired secret leases: found by ``chassis reconcile``, removed by
``chassis reconcile --repair`` (``guides/secrets.md``, "Leases").

A secret version is materialized on a host while the plan the host runs
references it (``store:NAME@VERSION``): the component's env file in the
active release. Its lease ends ``ttl`` after the version was set
(``chassis.secret_leases``). The executor's prune also leaves env files in
the rollback target (the release the host ran before), and a failed deploy
leaves its own in a release directory it never swapped to: such a retained
file may hold a version whose lease has expired too.

Finding them:

- **active** copies come from the verified ledger alone: the component runs
  a plan whose secret reference names an expired version;
- **retained** copies: for a version that has expired, every signed plan of
  the installation that placed a component with that reference on a host
  names the release directory whose env file it wrote; such a file other
  than the active release's is looked for on the host, and reported when
  it exists (it *may* hold the expired version: the ledger does not record
  which plan wrote a file last, and a file written by a later plan is
  deleted as well, which costs nothing: a release started again gets its
  env files written by its ``configure`` step first).

Removing them is an ``expire-lease`` operation per revision the hosts are on
(intent, lease, step outcomes, finish; ``Operation.expire_secrets``): the
component holding an active copy is stopped and recorded stopped
(``components-stopped``; a host left running nothing is retired), and its
env files in every release directory are deleted, as are the retained
files found. The revision's plan no longer places the stopped components on
those hosts, so reconcile does not see them as drift, restart does not
start them and ``secret leases`` no longer lists them; a redeploy (after a
rotation, unless a newer version is valid) puts them back. Nothing is
restored on failure: that would write the expired value again.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

import msgspec

from adapters.errors import ConnectorError
from chassis.connect import connector_for
from chassis.engine.lifecycle import run_operation
from chassis.engine.plan import Plan, verified_plan
from chassis.engine.rerun import begin
from chassis.errors import ChassisError
from chassis.hosts import get_host
from chassis.secret_leases import (
    Secrets,
    advice,
    installation_leases,
    lease_end,
    repair_command,
    store_ref,
    version_lease,
)
from chassis.workspace import Workspace
from ledger.application import Ledger
from ledger.canonical import format_timestamp, parse_timestamp
from ledger.errors import NotFoundError
from ledger.installations import Installation
from ledger.releases import release_dir_name
from ledger.secrets import Secret

Progress = Callable[[str], None]
OPERATION = "expire-lease"
_RELEASE_DIR = re.compile(r"[0-9a-f]{16}\Z")
_COMPONENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")
"""What a release directory and a component name look like before either
becomes part of a path deleted on a host (principle 10)."""


@dataclass(frozen=True)
class ExpiredCopy:
    """One copy of an expired secret version on a host."""

    secret: str
    version: int
    expired_at: str
    host: str
    component: str
    release_dir: str
    active: bool
    """True: the running component's env file (the component is stopped to
    remove it); False: a retained release's env file that may hold it."""
    advice: str
    """What replaces it: ``rotate and redeploy`` or ``redeploy to take version N``."""
    repair: str
    envs: tuple[str, ...] = ()
    """The variables holding it (active copies)."""

    @property
    def path(self) -> str:
        """The env file, relative to the host's root."""
        return f"releases/{self.release_dir}/.env.{self.component}"

    def line(self) -> str:
        where = f"secret {self.secret}@{self.version} lease expired at {self.expired_at} on "
        if self.active:
            return (
                f"{where}{self.host} (component {self.component}): {self.advice}, "
                f"or run '{self.repair}' to remove it"
            )
        return (
            f"{where}{self.host}: a copy may remain in {self.path} (component "
            f"{self.component}, a retained release): run '{self.repair}' to remove it"
        )

    def record(self) -> dict[str, Any]:
        """What the ``expire-secret`` steps record of it (never a value)."""
        return {
            "secret": self.secret,
            "version": self.version,
            "expired_at": self.expired_at,
            "component": self.component,
            "file": self.path,
            "active": self.active,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.record(),
            "host": self.host,
            "envs": list(self.envs),
            "advice": self.advice,
            "line": self.line(),
        }


@dataclass
class Findings:
    copies: list[ExpiredCopy] = field(default_factory=list)
    unchecked: dict[str, str] = field(default_factory=dict)
    """host → why its retained env files could not be looked at."""


def expired_copies(
    ledger: Ledger, ws: Workspace, installation: Installation, at: datetime
) -> Findings:
    """Every copy of an expired secret version the installation's hosts hold
    as of ``at``: active ones from the ledger, retained ones looked for on
    the hosts (only when some version has expired)."""
    secrets = Secrets(ledger)
    repair = repair_command(installation)
    found = Findings()
    grouped: dict[tuple[str, str, str, int], list[str]] = {}
    leases: dict[tuple[str, int], dict[str, Any]] = {}
    for row in installation_leases(installation, secrets, at):
        if not row["expired"] or row["version"] is None:
            continue
        key = (row["host"], row["component"], row["secret"], int(row["version"]))
        grouped.setdefault(key, []).append(str(row["env"]))
        leases[(row["secret"], int(row["version"]))] = row
    for (host, component, name, version), envs in sorted(grouped.items()):
        lease = leases[(name, version)]
        found.copies.append(
            ExpiredCopy(
                secret=name,
                version=version,
                expired_at=str(lease["expires"]),
                host=host,
                component=component,
                release_dir=release_dir_name(str(installation.hosts[host]["release_id"])),
                active=True,
                advice=advice(name, lease),
                repair=repair,
                envs=tuple(sorted(envs)),
            )
        )
    _retained(ledger, ws, installation, secrets, at, found)
    return found


def _retained(
    ledger: Ledger,
    ws: Workspace,
    installation: Installation,
    secrets: Secrets,
    at: datetime,
    found: Findings,
) -> None:
    """Add the retained env files that may hold an expired version."""
    if not _anything_expired(ledger, at):
        return
    candidates: dict[str, dict[str, dict[str, Any]]] = {}
    """host → path → {component, release_dir, versions: {(name, version)}}."""
    expired: dict[tuple[str, int], str] = {}
    plans: list[dict[str, Any]] = []
    for _, event in ledger.verified_events(installation.id):
        if isinstance(event, Installation.OperationStarted):
            plans.append(event.plan)
    for data in plans:
        for host_plan in data.get("hosts", ()):
            host = str(host_plan.get("host"))
            entry = installation.hosts.get(host)
            if entry is None:
                continue  # retired: nothing of the installation is known to be there
            release_dir = str(data.get("release_dir"))
            if release_dir == release_dir_name(str(entry["release_id"])):
                continue  # the active release's files hold what the active plan says
            if not _RELEASE_DIR.match(release_dir):
                continue  # not a directory Chassis writes: never a path to delete
            for component in host_plan.get("components", ()):
                if not _COMPONENT.match(str(component.get("name", ""))):
                    continue
                for ref in (component.get("secrets") or {}).values():
                    parsed = store_ref(str(ref))
                    if parsed is None or parsed[1] is None:
                        continue
                    ends = _ends(secrets, parsed[0], parsed[1], at)
                    if ends is None:
                        continue
                    expired[(parsed[0], parsed[1])] = ends
                    path = f"releases/{release_dir}/.env.{component['name']}"
                    slot = candidates.setdefault(host, {}).setdefault(
                        path,
                        {
                            "component": str(component["name"]),
                            "release_dir": release_dir,
                            "versions": set(),
                        },
                    )
                    slot["versions"].add((parsed[0], parsed[1]))
    repair = repair_command(installation)
    for host, paths in sorted(candidates.items()):
        try:
            present = _present(ledger, ws, installation, host, sorted(paths))
        except (ChassisError, ConnectorError) as e:
            found.unchecked[host] = e.diagnostics()
            continue
        for path in present:
            slot = paths[path]
            for name, version in sorted(slot["versions"]):
                lease = _lease(secrets, name, version, at)
                found.copies.append(
                    ExpiredCopy(
                        secret=name,
                        version=version,
                        expired_at=expired[(name, version)],
                        host=host,
                        component=slot["component"],
                        release_dir=slot["release_dir"],
                        active=False,
                        advice=advice(name, lease),
                        repair=repair,
                    )
                )


def _ends(secrets: Secrets, name: str, version: int, at: datetime) -> str | None:
    """When version ``version`` of ``name`` expired, if it has by ``at``."""
    secret = secrets.get(name)
    entry = secret.at(version) if secret is not None else None
    if entry is None:
        return None
    ends = lease_end(entry.set_at, entry.ttl_s)
    if ends is None or at < parse_timestamp(ends):
        return None
    return ends


def _lease(secrets: Secrets, name: str, version: int, at: datetime) -> dict[str, Any]:
    return version_lease(secrets.get(name), version, at)


def _anything_expired(ledger: Ledger, at: datetime) -> bool:
    """Whether any version of any secret has expired by ``at`` (if none, no
    retained file can hold one, and the hosts need not be asked)."""
    for row in ledger.recorder.select_notifications(
        start=None, limit=1_000_000, topics=[Secret.Set.TOPIC]
    ):
        try:
            secret = ledger.load(Secret, UUID(str(row.originator_id)))
        except NotFoundError:
            continue
        for entry in secret.versions:
            ends = lease_end(entry.set_at, entry.ttl_s)
            if ends is not None and at >= parse_timestamp(ends):
                return True
    return False


def _present(
    ledger: Ledger, ws: Workspace, installation: Installation, host: str, paths: list[str]
) -> list[str]:
    """Which of ``paths`` (relative to the host's root) exist on ``host``."""
    entry = installation.hosts[host]
    plan = msgspec.convert(installation.plan_of(int(entry["revision"])), Plan)
    root = plan.host(host).root.rstrip("/")
    connector = connector_for(get_host(ledger, host), ws)
    try:
        words = " ".join(shlex.quote(f"{root}/{p}") for p in paths)
        listing = connector.run(
            f'for f in {words}; do [ -f "$f" ] && printf \'%s\\n\' "$f"; done; true',
            check=True,
            timeout=30,
        )
    finally:
        connector.close()
    there = set(listing.stdout.splitlines())
    return [p for p in paths if f"{root}/{p}" in there]


# Removing.


def expire(
    ledger: Ledger,
    ws: Workspace,
    installation: Installation,
    copies: list[ExpiredCopy],
    *,
    at: datetime,
    progress: Progress,
) -> dict[str, dict[str, Any]]:
    """One ``expire-lease`` operation per revision the hosts holding
    ``copies`` are on; returns host → {ok, detail, revision, stopped, removed}."""
    by_revision: dict[int, list[ExpiredCopy]] = {}
    for copy in copies:
        entry = installation.hosts.get(copy.host)
        if entry is not None:
            by_revision.setdefault(int(entry["revision"]), []).append(copy)
    outcomes: dict[str, dict[str, Any]] = {}
    for revision, group in sorted(by_revision.items()):
        current = ledger.load(Installation, installation.id)
        outcomes.update(_expire_revision(ledger, ws, current, revision, group, at, progress))
    return outcomes


def _expire_revision(
    ledger: Ledger,
    ws: Workspace,
    installation: Installation,
    revision: int,
    copies: list[ExpiredCopy],
    at: datetime,
    progress: Progress,
) -> dict[str, dict[str, Any]]:
    assert ledger.signer is not None
    plan = verified_plan(ledger, installation, revision)
    stop: dict[str, list[str]] = {}
    for copy in copies:
        if copy.active:
            stop.setdefault(copy.host, [])
            if copy.component not in stop[copy.host]:
                stop[copy.host].append(copy.component)
    hosts = []
    for host_plan in plan.hosts:
        gone = set(stop.get(host_plan.host, ()))
        kept = [c for c in host_plan.components if c.name not in gone]
        if kept:
            hosts.append(msgspec.structs.replace(host_plan, components=kept))
    reduced = msgspec.structs.replace(plan, hosts=hosts)
    names = sorted({c.host for c in copies})
    versions = ", ".join(sorted({f"{c.secret}@{c.version}" for c in copies}))
    stopped = "; ".join(f"{h}: {', '.join(sorted(cs))} stopped" for h, cs in sorted(stop.items()))
    description = (
        f"expire-lease: {versions} expired (as of {format_timestamp(at)}); copies removed "
        f"on {', '.join(names)}" + (f" ({stopped})" if stopped else "")
    )
    op = begin(ledger, ws, installation, reduced, OPERATION, description, progress)
    outcomes: dict[str, dict[str, Any]] = {}

    def one(name: str) -> None:
        mine = [c for c in copies if c.host == name]
        retained = sorted({c.path for c in mine if not c.active})
        progress(f"{name}: removing expired {', '.join(sorted({_v(c) for c in mine}))}")
        op.expire_secrets(name, sorted(stop.get(name, [])), retained, [c.record() for c in mine])
        failure = op.failures.get(name)
        outcomes[name] = {
            "ok": failure is None,
            "revision": installation.revision,
            "stopped": sorted(stop.get(name, [])),
            "copies": [c.record() for c in mine],
            "detail": (
                "expired copies removed"
                if failure is None
                else f"expire-lease failed at {failure.step}: {failure.detail}"
            ),
        }

    def work() -> None:
        with ThreadPoolExecutor(max_workers=max(1, len(names))) as pool:
            list(pool.map(one, names))
        failed = sorted(op.failures)
        status = "failed" if len(failed) == len(names) or op.interrupted.is_set() else "deployed"
        op.finish(status, description + (f"; {', '.join(failed)} failed" if failed else ""))

    run_operation(
        op,
        work,
        what=f"{OPERATION} revision {installation.revision} of {plan.app}/{plan.environment}",
    )
    return outcomes


def _v(copy: ExpiredCopy) -> str:
    return f"{copy.secret}@{copy.version}"
