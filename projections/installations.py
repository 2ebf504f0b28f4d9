"""Spatial reality (what runs where) and release history per installation."""

from __future__ import annotations

from typing import Any

from ledger.installations import Installation
from projections.fold import FoldedView


def status_of(installation: Installation) -> list[dict[str, Any]]:
    """One row per component. On a host where ``chassis reconcile`` recorded
    drift, ``state`` is ``drifted`` and ``health`` names what differed there
    (the component's own differences and the host's), until an operation
    touches the host again."""
    rows = []
    for host, entry in sorted(installation.hosts.items()):
        drift = installation.drift.get(host)
        for component in entry["components"]:
            state, health = "running", "passed"
            if drift is not None:
                state, health = "drifted", _drift_health(drift["differences"], component)
            rows.append(
                {
                    "app": installation.app,
                    "environment": installation.environment,
                    "host": host,
                    "component": component,
                    "label": entry["label"],
                    "release_id": entry["release_id"],
                    "revision": int(entry["revision"]),
                    "state": state,
                    "health": health,
                    "since": entry["since"],
                }
            )
    return rows


def _drift_health(differences: list[dict[str, Any]], component: str) -> str:
    """``passed`` or ``failed``, then ``(drift: what, ...)`` for this component's
    differences and the host-wide ones (``current``, ``release-dir``)."""
    mine = [d for d in differences if d.get("component") in (None, component)]
    failed = any(d["what"] == "health" for d in mine if d.get("component") == component)
    whats = sorted({str(d["what"]) for d in mine})
    verdict = "failed" if failed else "passed"
    return f"{verdict} (drift: {', '.join(whats)})" if whats else verdict


def history_of(installation: Installation) -> dict[str, Any]:
    """History as the aggregate still holds it (its window of revisions)."""
    return {
        "app": installation.app,
        "environment": installation.environment,
        "last_successful": installation.last_successful,
        "lease": installation.lease,
        "revisions": list(installation.revisions),
    }


def _document(installation: Installation) -> dict[str, Any]:
    return {"status": status_of(installation), "history": history_of(installation)}


def _accumulate(previous: dict[str, Any] | None, installation: Installation) -> dict[str, Any]:
    """Keep every revision: revision numbers run 1, 2, 3… so revision N is at
    index N-1; the entries the aggregate still holds replace the kept ones."""
    revisions: list[dict[str, Any]] = previous["history"]["revisions"] if previous else []
    for entry in installation.revisions:
        index = int(entry["revision"]) - 1
        if index < len(revisions):
            revisions[index] = entry
        else:
            revisions.append(entry)
    history = {**history_of(installation), "revisions": revisions}
    return {"status": status_of(installation), "history": history}


INSTALLATIONS = FoldedView(
    name="installations",
    aggregate=Installation,
    topic_prefix="chassis.installation.",
    document=_document,
    accumulate=_accumulate,
)
