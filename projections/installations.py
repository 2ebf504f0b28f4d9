"""Spatial reality (what runs where) and release history per installation."""

from __future__ import annotations

from typing import Any

from ledger.installations import Installation
from projections.fold import FoldedView


def status_of(installation: Installation) -> list[dict[str, Any]]:
    rows = []
    for host, entry in sorted(installation.hosts.items()):
        for component in entry["components"]:
            rows.append(
                {
                    "app": installation.app,
                    "environment": installation.environment,
                    "host": host,
                    "component": component,
                    "label": entry["label"],
                    "release_id": entry["release_id"],
                    "revision": int(entry["revision"]),
                    "state": "running",
                    "health": "passed",
                    "since": entry["since"],
                }
            )
    return rows


def history_of(installation: Installation) -> dict[str, Any]:
    return {
        "app": installation.app,
        "environment": installation.environment,
        "last_successful": installation.last_successful,
        "lease": installation.lease,
        "revisions": [{k: v for k, v in e.items() if k != "plan"} for e in installation.revisions],
    }


INSTALLATIONS = FoldedView(
    name="installations",
    aggregate=Installation,
    topic_prefix="chassis.installation.",
    document=lambda i: {"status": status_of(i), "history": history_of(i)},
)
