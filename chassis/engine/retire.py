"""Retiring a host an operation's target no longer uses, and undoing that.

A deploy with another profile, or a rollback to a revision that placed fewer
hosts, leaves hosts that ran a component and must not any more: their
components are stopped and ``current`` is removed, recorded as the host
restored to nothing. Retiring happens before the other hosts start, since a
component moving to another host may need its port there. If the operation
fails, retired hosts get their release back.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from typing import Any

import msgspec

from chassis.connect import connector_for
from chassis.engine.operation import OperationRecorder, restored, supervisor_for
from chassis.engine.plan import Plan
from chassis.engine.restore import restore_host
from chassis.hosts import get_host
from chassis.workspace import Workspace
from ledger.application import Ledger
from ledger.installations import Installation
from ledger.releases import release_dir_name

RETIRED = "retired: the operation's target runs nothing here"


def recorded_plan(installation: Installation, entry: dict[str, Any]) -> Plan:
    """The plan ``entry``'s revision ran with (take it before retiring: once no
    host runs that revision, the installation may drop its plan)."""
    return msgspec.convert(installation.plan_of(int(entry["revision"])), Plan)


def retire_host(
    ledger: Ledger, ws: Workspace, plan: Plan, host: str, recorder: OperationRecorder
) -> str:
    """Stop what ``host`` runs under ``plan`` and unlink ``current``.
    Raises the connector's or supervisor's error (nothing recorded then)."""
    host_plan = next((h for h in plan.hosts if h.host == host), None)
    if host_plan is not None:
        with connector_for(get_host(ledger, host), ws) as connector:
            supervisor = supervisor_for(plan, host_plan, connector)
            for component in host_plan.components:
                supervisor.stop(component.name)
            root = host_plan.root.rstrip("/")
            connector.run(f"rm -f {shlex.quote(root + '/current')}", check=True, timeout=30)
    recorder(restored(recorder, host, None, True, RETIRED))
    return RETIRED


def evict_components(
    ledger: Ledger,
    ws: Workspace,
    plan: Plan,
    host: str,
    components: list[str],
    record: Callable[[str, bool, str, dict[str, Any]], None],
) -> None:
    """Stop ``components`` that the new placement moves off ``host`` before any
    host starts, so their ports are free wherever they go next."""
    host_plan = next((h for h in plan.hosts if h.host == host), None)
    if host_plan is None:
        return
    with connector_for(get_host(ledger, host), ws) as connector:
        supervisor = supervisor_for(plan, host_plan, connector)
        for component in components:
            supervisor.stop(component)
    record("evict", True, f"stopped {', '.join(components)}: moving to other hosts", {})


def unretire_host(
    ledger: Ledger,
    ws: Workspace,
    plan: Plan,
    host: str,
    entry: dict[str, Any],
    recorder: OperationRecorder,
) -> tuple[bool, str]:
    """Start ``entry``'s release (deployed with ``plan``) on a retired host again."""
    host_plan = next((h for h in plan.hosts if h.host == host), None)
    if host_plan is None:
        return False, f"revision {entry['revision']} recorded no plan for {host}"
    release = {**entry, "release_dir": release_dir_name(str(entry["release_id"]))}
    with connector_for(get_host(ledger, host), ws) as connector:
        supervisor = supervisor_for(plan, host_plan, connector)
        ok, detail, _ = restore_host(connector, supervisor, host_plan, host_plan, release)
    recorder(restored(recorder, host, entry, ok, detail))
    return ok, detail
