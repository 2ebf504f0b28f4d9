"""Removing old release directories from hosts (``chassis prune``).

Hosts keep ``releases/<release-dir>/`` and its ``.tar.gz`` for every release
unpacked there; the deploy's own prune step keeps a few by mtime. This one
decides from the ledger. On each host of the installation it keeps:

- the newest ``keep`` releases present there, newest by the ledger's revision
  order (a release ranks by the newest revision that names it, whatever that
  revision's status), never by mtime;
- whatever the rollback might need, whatever ``keep`` says (``--keep 0``
  keeps just these): the release active on that host; the last successful
  revision's release; the release that host runs in the default rollback
  target's state (the newest revision before the last successful one, with
  status ``deployed`` or ``superseded``, whose replayed spatial state differs
  from the current one, as ``chassis rollback`` chooses it); and any release
  a process on the host still runs.

Entries the ledger never knew (a directory someone made, an interrupted
``.unpack``) are left alone and reported. Pruning takes no lease and records
nothing (a host's release directories are not ledger state), but it refuses
while an operation holds the lease (exit 7), since that operation may be
unpacking a release right now.
"""

from __future__ import annotations

import shlex
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from adapters.errors import ConnectorError
from adapters.supervisors.base import SupervisorError
from chassis.connect import connector_for
from chassis.engine.executor import KEEP_RELEASES
from chassis.engine.operation import (
    full_history,
    load_installation,
    previous_plan,
    signed_revision_state,
    supervisor_for,
)
from chassis.engine.reconcile import HostsUnchecked, plan_data, recorded_plan
from chassis.errors import ChassisError
from chassis.hosts import get_host
from chassis.workspace import Workspace
from ledger.application import Ledger
from ledger.installations import Installation
from ledger.releases import release_dir_name

ROLLBACK_STATUSES = ("deployed", "superseded")
BUNDLE_SUFFIX = ".tar.gz"

Progress = Callable[[str], None]

__all__ = ["KEEP_RELEASES", "HostsUnchecked", "PruneResult", "prune"]


@dataclass
class Known:
    """A release the ledger knows, by its directory name on hosts."""

    release_id: str
    label: str
    rank: int
    """The newest revision naming it: a higher rank is newer."""


@dataclass
class PruneResult:
    app: str
    environment: str
    keep: int
    dry_run: bool
    hosts: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def unreachable(self) -> dict[str, str]:
        return {h: r["error"] for h, r in sorted(self.hosts.items()) if r["error"]}

    def to_dict(self) -> dict[str, Any]:
        return {
            "app": self.app,
            "environment": self.environment,
            "keep": self.keep,
            "dry_run": self.dry_run,
            "hosts": self.hosts,
        }


def prune(
    ledger: Ledger,
    ws: Workspace,
    *,
    app: str,
    environment: str,
    keep: int = KEEP_RELEASES,
    dry_run: bool = False,
    progress: Progress,
) -> PruneResult:
    if keep < 0:
        raise ChassisError(f"--keep must be 0 or more, not {keep}")
    installation = load_installation(ledger, app, environment)
    installation.check_lease_free(datetime.now(UTC))
    revisions = full_history(ledger, installation)
    known = known_releases(revisions)
    protected = protected_everywhere(ledger, installation, revisions)
    result = PruneResult(app, environment, keep, dry_run)
    lock = threading.Lock()

    def one(item: tuple[str, dict[str, Any]]) -> None:
        host, entry = item
        outcome = _prune_host(
            ledger, ws, installation, host, entry, known, protected, keep, dry_run
        )
        with lock:
            result.hosts[host] = outcome
        if outcome["error"]:
            progress(f"{host}: not pruned: {outcome['error']}")
        else:
            verb = "would remove" if dry_run else "removed"
            progress(f"{host}: {verb} {len(outcome['removed'])}, kept {len(outcome['kept'])}")

    entries = sorted(installation.hosts.items())
    with ThreadPoolExecutor(max_workers=max(1, len(entries))) as pool:
        list(pool.map(one, entries))
    result.hosts = dict(sorted(result.hosts.items()))
    return result


def known_releases(revisions: list[dict[str, Any]]) -> dict[str, Known]:
    known: dict[str, Known] = {}
    for entry in sorted(revisions, key=lambda e: int(e["revision"])):
        release_id = str(entry["release_id"])
        known[release_dir_name(release_id)] = Known(
            release_id, str(entry["label"]), int(entry["revision"])
        )
    return known


def protected_everywhere(
    ledger: Ledger, installation: Installation, revisions: list[dict[str, Any]]
) -> dict[str, Any]:
    """What every host keeps: the last successful release, and the default
    rollback target (its release, and per host what the host runs in its state)."""
    current = installation.last_successful
    if current is None:
        return {"last_successful": None, "target": None}
    ordered = sorted(revisions, key=lambda e: int(e["revision"]))
    last = next(e for e in ordered if e["revision"] == current)
    digest = installation.state_digest()
    for entry in reversed(ordered):
        if entry["revision"] >= current or entry["status"] not in ROLLBACK_STATUSES:
            continue
        if "version" not in entry:
            continue
        # The version comes from the view: pointed at another state, it would
        # protect that state's releases and leave the real target's to prune.
        state = signed_revision_state(ledger, installation, entry, "prune")
        if state.state_digest() != digest:
            return {
                "last_successful": last,
                "target": {
                    "revision": int(entry["revision"]),
                    "release_id": str(entry["release_id"]),
                    "hosts": {h: str(e["release_id"]) for h, e in state.hosts.items()},
                },
            }
    return {"last_successful": last, "target": None}


def _reasons(
    host: str, entry: dict[str, Any], protected: dict[str, Any], running: dict[str, str]
) -> dict[str, list[str]]:
    """Release dir → why it must stay on ``host`` (whatever ``keep`` says)."""
    why: dict[str, list[str]] = {}

    def add(release_id: str, reason: str) -> None:
        why.setdefault(release_dir_name(release_id), []).append(reason)

    add(str(entry["release_id"]), "active on this host")
    last = protected["last_successful"]
    if last is not None:
        add(str(last["release_id"]), f"last successful revision {last['revision']}")
    target = protected["target"]
    if target is not None:
        reason = f"rollback target (revision {target['revision']})"
        add(target["release_id"], reason)
        if host in target["hosts"]:
            add(target["hosts"][host], reason)
    for component, release_id in sorted(running.items()):
        add(release_id, f"{component} runs it")
    return {d: sorted(set(r), key=r.index) for d, r in why.items()}


def _prune_host(
    ledger: Ledger,
    ws: Workspace,
    installation: Installation,
    host: str,
    entry: dict[str, Any],
    known: dict[str, Known],
    protected: dict[str, Any],
    keep: int,
    dry_run: bool,
) -> dict[str, Any]:
    outcome: dict[str, Any] = {"removed": [], "kept": [], "unknown": [], "error": None}
    host_plan, _ = previous_plan(installation, entry, host)
    if host_plan is None:
        outcome["error"] = f"revision {entry['revision']} records no plan for {host}"
        return outcome
    plan = recorded_plan(installation, int(entry["revision"]))
    releases = host_plan.root.rstrip("/") + "/releases"
    try:
        connector = connector_for(get_host(ledger, host), ws)
    except ChassisError as e:
        outcome["error"] = e.diagnostics()
        return outcome
    try:
        supervisor = supervisor_for(plan, host_plan, connector)
        names = _components_on(installation, host)
        running: dict[str, str] = {}
        for name in names:
            state = supervisor.state(name)
            if state.running and state.release_id:
                running[name] = state.release_id
        listing = connector.run(f"ls -1A -- {shlex.quote(releases)}", timeout=30)
        present = sorted(set(listing.stdout.splitlines())) if listing.ok else []
        dirs = sorted({n.removesuffix(BUNDLE_SUFFIX) for n in present})
        outcome["unknown"] = [d for d in dirs if d not in known]
        ours = sorted((d for d in dirs if d in known), key=lambda d: -known[d].rank)
        must = _reasons(host, entry, protected, running)
        for position, name in enumerate(ours):
            release = known[name]
            reasons = list(must.get(name, []))
            if position < keep:
                reasons.append(f"among the newest {keep}")
            row = {"dir": name, "label": release.label, "release_id": release.release_id}
            if reasons:
                outcome["kept"].append({**row, "reasons": reasons})
                continue
            files = [f for f in (name, name + BUNDLE_SUFFIX) if f in present]
            if not dry_run:
                try:
                    for component in names:
                        supervisor.forget(component, release.release_id)
                except SupervisorError as e:
                    outcome["kept"].append({**row, "reasons": [f"in use: {e}"]})
                    continue
                targets = " ".join(shlex.quote(f"{releases}/{f}") for f in files)
                connector.run(f"rm -rf -- {targets}", check=True, timeout=120)
            outcome["removed"].append({**row, "files": files})
    except (ConnectorError, SupervisorError) as e:
        outcome["error"] = e.diagnostics()
    finally:
        connector.close()
    return outcome


def _components_on(installation: Installation, host: str) -> list[str]:
    """Every component a plan the installation still holds places on ``host``
    (for supervisors that keep something per release, such as systemd units)."""
    names: set[str] = set()
    for revision in sorted({int(e["revision"]) for e in installation.hosts.values()}):
        for host_plan in plan_data(installation, revision).get("hosts", []):
            if host_plan["host"] == host:
                names.update(c["name"] for c in host_plan["components"])
    return sorted(names)
