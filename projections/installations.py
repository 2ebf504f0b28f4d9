"""Spatial reality (what runs where) and release history per installation."""

from __future__ import annotations

from typing import Any

from ledger.installations import Installation
from projections.fold import FoldedView


def status_of(installation: Installation) -> list[dict[str, Any]]:
    """One row per component, saying what was last *seen* there and when
    (``observed``, ``observed_by``), never an assumed "running": a host
    restored, or recorded before observations were kept, is ``unknown``.
    On a host where drift is recorded, ``state`` is ``drifted`` and
    ``health`` names what differed there (the component's own differences
    and the host's), until an operation or a clean look clears it.
    ``healthy`` sums it up for checks (``chassis doctor``): True when last
    seen running and passing, False when seen or recorded down, None when
    nothing has been seen. Ages are computed by readers (a view must not
    depend on when it was folded)."""
    rows = []
    for host, entry in sorted(installation.hosts.items()):
        drift = installation.drift.get(host)
        seen = getattr(installation, "observed", {}).get(host)
        for component in entry["components"]:
            row = {
                "app": installation.app,
                "environment": installation.environment,
                "host": host,
                "component": component,
                "label": entry["label"],
                "release_id": entry["release_id"],
                "revision": int(entry["revision"]),
                "since": entry["since"],
            }
            row.update(component_status(seen, drift, component, entry["since"]))
            rows.append(row)
    return rows


def component_status(
    seen: dict[str, Any] | None,
    drift: dict[str, Any] | None,
    component: str,
    since: str,
) -> dict[str, Any]:
    """``state``, ``health``, ``healthy``, ``observed``, ``observed_by``,
    ``restarts`` and ``detail`` of one component, from the host's recorded
    observation and drift (also used for what ``status --live`` just saw,
    so a live row and the row it records read the same)."""
    mine = (seen or {}).get("components", {}).get(component) if seen else None
    if seen is None or seen.get("at") is None or mine is None:
        after = f"{seen['by']} at {seen['since']}" if seen else f"activation at {since}"
        out: dict[str, Any] = {
            "state": "unknown",
            "health": "unknown",
            "healthy": None,
            "observed": None,
            "observed_by": None,
            "restarts": None,
            "detail": f"never observed since {after}",
        }
    else:
        state, health = str(mine["state"]), str(mine["health"])
        out = {
            "state": state,
            "health": health,
            "healthy": state == "running" and health in ("passed", "none"),
            "observed": seen["at"],
            "observed_by": seen["by"],
            "restarts": mine.get("restarts"),
            "detail": str(mine.get("detail", "")),
        }
    if drift is not None:
        differences = drift["differences"]
        out["state"], out["health"] = "drifted", _drift_health(differences, component)
        if any(
            d.get("component") == component and d["what"] in ("process", "health")
            for d in differences
        ):
            out["healthy"] = False
        if out["observed"] is None or str(drift["observed"]) > str(out["observed"]):
            out["observed"], out["observed_by"] = drift["observed"], "reconcile"
    return out


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


def _keep(revisions: list[dict[str, Any]], window: list[dict[str, Any]]) -> None:
    """Put the aggregate's ``window`` of revision entries into ``revisions``
    (every revision: revision N at index N-1), as the entries themselves."""
    for entry in window:
        index = int(entry["revision"]) - 1
        if index < len(revisions):
            revisions[index] = entry
        else:
            revisions.append(entry)


def _accumulate(previous: dict[str, Any] | None, installation: Installation) -> dict[str, Any]:
    """Keep every revision, each entry as the last value it had in the
    aggregate. The document holds the aggregate's own entry objects, which
    its events change in place (an entry is appended once and never
    replaced), so after each event only a new entry needs adding: checked on
    the newest one, in O(1). Status is left to :func:`_finish`, per page."""
    doc: dict[str, Any] = previous or {"status": [], "history": {"revisions": []}}
    revisions: list[dict[str, Any]] = doc["history"]["revisions"]
    window = installation.revisions
    if window:
        newest = window[-1]
        number = int(newest["revision"])
        if number > len(revisions) or revisions[number - 1] is not newest:
            _keep(revisions, window)
    return doc


def _finish(doc: dict[str, Any], installation: Installation) -> dict[str, Any]:
    revisions: list[dict[str, Any]] = doc["history"]["revisions"]
    _keep(revisions, installation.revisions)
    history = {**history_of(installation), "revisions": revisions}
    return {"status": status_of(installation), "history": history}


INSTALLATIONS = FoldedView(
    name="installations",
    aggregate=Installation,
    topic_prefix="chassis.installation.",
    document=_document,
    accumulate=_accumulate,
    finish=_finish,
)
