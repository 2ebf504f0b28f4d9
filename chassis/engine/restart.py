"""``chassis restart``: stop, start and health-gate components where the
ledger records them, as a recorded operation per revision the hosts are on
(``chassis.engine.rerun``). A restart that fails its gate is restored like
a failed deploy (the host's release started again) and reported so."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from chassis.engine.operation import load_installation
from chassis.engine.rerun import rerun_revision
from chassis.errors import NotFound
from chassis.workspace import Workspace
from ledger.application import Ledger
from ledger.installations import Installation

RESTART_STEPS = ["stop-old", "start", "health"]


def restart(
    ledger: Ledger,
    ws: Workspace,
    *,
    app: str,
    environment: str,
    host: str | None = None,
    component: str | None = None,
    reason: str | None = None,
    progress: Callable[[str], None],
) -> dict[str, dict[str, Any]]:
    """Restart ``component`` (default: every component) on ``host`` (default:
    every host running it); returns host → {ok, detail, revision, steps}."""
    installation = load_installation(ledger, app, environment)
    chosen = {
        name: entry
        for name, entry in installation.hosts.items()
        if host in (None, name) and (component is None or component in entry["components"])
    }
    if not chosen:
        what = " ".join(
            part
            for part in (
                f"component {component!r}" if component else "",
                f"on host {host!r}" if host else "",
            )
            if part
        )
        raise NotFound(f"{app}/{environment} runs nothing to restart ({what or 'no hosts'})")
    by_revision: dict[int, list[str]] = {}
    for name, entry in chosen.items():
        by_revision.setdefault(int(entry["revision"]), []).append(name)
    outcomes: dict[str, dict[str, Any]] = {}
    for revision, names in sorted(by_revision.items()):
        current = ledger.load(Installation, installation.id)
        label = current.revision_entry(revision)["label"]
        description = f"restart {label} on {', '.join(sorted(names))}" + (
            f" ({component})" if component else ""
        )
        if reason:
            description += f": {reason}"
        outcomes.update(
            rerun_revision(
                ledger,
                ws,
                current,
                revision,
                {name: list(RESTART_STEPS) for name in names},
                operation="restart",
                description=description,
                verb="restart",
                progress=progress,
                only=frozenset({component}) if component else None,
            )
        )
    return outcomes
