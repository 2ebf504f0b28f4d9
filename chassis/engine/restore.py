"""Putting a host back on the release it ran before an operation."""

from __future__ import annotations

import shlex
from typing import Any

from adapters.connectors.base import Connector
from adapters.errors import ConnectorError
from adapters.supervisors.base import ProcessSpec, Supervisor, SupervisorError
from chassis.engine.executor import gate_evidence, run_gate
from chassis.engine.plan import ComponentPlan, HostPlan


def restore_host(
    connector: Connector,
    supervisor: Supervisor,
    current: HostPlan,
    previous: HostPlan | None,
    previous_release: dict[str, Any] | None,
) -> tuple[bool, str, dict[str, Any]]:
    """Stop what the failed operation started; start the previous release's
    components again and point ``current`` back at it. Returns (ok, detail, evidence).

    One host on its own; an operation restoring several hosts stops them all
    first (``stop_for_restore``), then starts them (``start_previous``), so a
    component moving back never finds its port still held on another host."""
    stopped = stop_for_restore(supervisor, current, previous)
    if stopped is not None:
        return False, stopped, {}
    return start_previous(connector, supervisor, current.root, previous, previous_release)


def stop_for_restore(
    supervisor: Supervisor, current: HostPlan, previous: HostPlan | None
) -> str | None:
    """Stop every component the operation or the previous release runs on the
    host; returns why that failed, or None."""
    try:
        for name in sorted({*(c.name for c in current.components), *_names(previous)}):
            supervisor.stop(name)
    except (ConnectorError, SupervisorError) as e:
        return f"restore failed: {e.diagnostics()}"
    return None


def start_previous(
    connector: Connector,
    supervisor: Supervisor,
    root: str,
    previous: HostPlan | None,
    previous_release: dict[str, Any] | None,
) -> tuple[bool, str, dict[str, Any]]:
    """Start the previous release's components (their processes must pass
    the health gate: only our restarted process's answer counts) and point
    ``current`` back at it; with no previous release, unlink ``current``."""
    root = root.rstrip("/")
    try:
        if previous is None or previous_release is None:
            connector.run(f"rm -f {shlex.quote(root + '/current')}", check=True, timeout=30)
            return True, "stopped; the host ran nothing of this installation before", {}
        release_dir = str(previous_release["release_dir"])
        workdir = f"{root}/releases/{release_dir}"
        if not connector.exists(f"{workdir}/.chassis-release"):
            return False, f"releases/{release_dir} is gone from the host; cannot restore", {}
        gates: dict[str, Any] = {}
        for component in previous.components:
            supervisor.start(_spec(component, previous_release, workdir, root))
        for component in previous.components:
            result = run_gate(
                component, previous.address, connector, workdir, supervisor=supervisor
            )
            if result is not None:
                gates[component.name] = gate_evidence(result)
                if not result.passed:
                    return False, f"restored {component.name} is unhealthy: {result.reason}", gates
        connector.symlink_swap(f"releases/{release_dir}", f"{root}/current")
        return (
            True,
            f"restored release {previous_release['label']} and it is healthy",
            {"gates": gates},
        )
    except (ConnectorError, SupervisorError) as e:
        return False, f"restore failed: {e.diagnostics()}", {}


def _names(plan: HostPlan | None) -> list[str]:
    return [c.name for c in plan.components] if plan else []


def _spec(
    component: ComponentPlan, release: dict[str, Any], workdir: str, root: str
) -> ProcessSpec:
    return ProcessSpec(
        component=component.name,
        release_id=str(release["release_id"]),
        command=component.command,
        workdir=workdir,
        env={},
        env_file=f"{workdir}/.env.{component.name}",
        root=root,
        restart=component.restart_mode,
        health_gated=component.health is not None,
    )
