"""What every operation on an installation shares: the recorder that appends
its events (one writer at a time, under the lease), the supervisor a host's
plan names, and the plan a host's active release was deployed with."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import msgspec

from adapters.connectors.base import Connector
from adapters.supervisors.base import Supervisor
from adapters.supervisors.direct import DirectSupervisor
from adapters.supervisors.systemd import SystemdSupervisor
from chassis.connect import connector_for
from chassis.engine.executor import HostDeployment, scrubbed, scrubbed_data
from chassis.engine.plan import HostPlan, Plan
from chassis.engine.restore import restore_host
from chassis.hosts import get_host
from chassis.views import histories
from chassis.workspace import Workspace
from ledger.application import Ledger
from ledger.errors import NotFoundError
from ledger.installations import Installation
from ledger.releases import release_dir_name
from proofs.redaction import scrub_values_data


class OperationRecorder:
    """Appends an operation's events, one writer at a time, to an aggregate
    it keeps in memory (the lease makes this process the only writer)."""

    def __init__(self, ledger: Ledger, installation: Installation, op_id: str) -> None:
        assert ledger.signer is not None
        self.ledger = ledger
        self.installation = installation
        self.op_id = op_id
        self.actor = ledger.signer.keyid
        self.lock = threading.Lock()

    def __call__(self, command: Callable[[Installation], None]) -> None:
        with self.lock:
            command(cast(Installation, _ValuesScrubbed(self.installation)))
            self.ledger.append(self.installation)

    def step(self, host: str) -> Callable[[str, bool, str, dict[str, Any]], None]:
        def record(step: str, ok: bool, detail: str, data: dict[str, Any]) -> None:
            self(
                lambda i: i.record_step(
                    actor=self.actor,
                    op_id=self.op_id,
                    host=host,
                    step=step,
                    ok=ok,
                    detail=scrubbed(detail),
                    data=scrubbed_data(data),
                )
            )

        return record


class _ValuesScrubbed:
    """The installation as a recorder's commands see it: each method (an event)
    is called with the secret values this command resolved scrubbed from every
    argument, so neither the signed event nor the state it folds into (and
    snapshots) ever holds one, whichever detail or description carried it.
    Only exact values are removed here: the patterns belong to the free text
    of step outcomes (``scrubbed``), not to names and ids."""

    def __init__(self, installation: Installation) -> None:
        self._installation = installation

    def __getattr__(self, name: str) -> Any:
        found = getattr(self._installation, name)
        if not callable(found):
            return found

        def call(*args: Any, **kwargs: Any) -> Any:
            return found(*scrub_values_data(args), **scrub_values_data(kwargs))

        return call


def supervisor_for(plan: Plan, host: HostPlan, connector: Connector) -> Supervisor:
    if host.supervisor == "systemd":
        return SystemdSupervisor(connector, host.root, unit_prefix=f"chassis-{plan.app}")
    return DirectSupervisor(connector, host.root)


def previous_plan(
    installation: Installation, entry: dict[str, Any] | None, host: str
) -> tuple[HostPlan | None, dict[str, Any] | None]:
    if entry is None:
        return None, None
    plan = msgspec.convert(installation.plan_of(int(entry["revision"])), Plan)
    for host_plan in plan.hosts:
        if host_plan.host == host:
            return host_plan, {**entry, "release_dir": release_dir_name(str(entry["release_id"]))}
    return None, None


def load_installation(ledger: Ledger, app: str, environment: str) -> Installation:
    """The installation of ``app`` in ``environment``; ``NotFoundError`` (exit 10)."""
    found = ledger.find(Installation, Installation.id_for(Installation.key(app, environment)))
    if found is None:
        raise NotFoundError(
            f"no installation of {app} in {environment} (it has never been deployed)"
        )
    return found


def full_history(ledger: Ledger, installation: Installation) -> list[dict[str, Any]]:
    """Every revision, from the installations view (the aggregate keeps a window)."""
    found = histories(ledger, installation.app, installation.environment)
    return list(found[0]["revisions"]) if found else list(installation.revisions)


def deploy_host(
    ledger: Ledger,
    ws: Workspace,
    plan: Plan,
    host_plan: HostPlan,
    bundle: Path,
    previous: tuple[HostPlan | None, dict[str, Any] | None],
    recorder: OperationRecorder,
    *,
    touched: bool,
    started: Callable[[HostDeployment], None],
    progress: Callable[[str], None],
) -> None:
    """Run ``plan`` on one host through every step and record it activated.

    ``previous`` is what the host ran (plan and active entry), so its
    components are stopped and its release kept. ``started`` receives the
    deployment before its first step (whoever may have to restore it needs
    it). Raises ``StepFailed`` (already recorded) or ``ConnectorError``;
    the caller closes the deployment's connector.
    """
    name = host_plan.host
    prev_plan, prev_entry = previous
    connector = connector_for(get_host(ledger, name), ws)
    deployment = HostDeployment(
        plan=plan,
        host=host_plan,
        connector=connector,
        supervisor=supervisor_for(plan, host_plan, connector),
        bundle=bundle,
        record=recorder.step(name),
        previous_components=[c.name for c in prev_plan.components] if prev_plan else [],
        keep_also=(str(prev_entry["release_dir"]),) if prev_entry else (),
        touched=touched,
    )
    started(deployment)
    deployment.run()
    recorder(
        lambda i: i.activate_host(
            actor=recorder.actor,
            op_id=recorder.op_id,
            host=name,
            release_id=plan.release_id,
            label=plan.label,
            components=[c.name for c in host_plan.components],
        )
    )
    progress(f"{name}: {plan.label} active and healthy")


def restored(
    recorder: OperationRecorder,
    host: str,
    previous: dict[str, Any] | None,
    ok: bool,
    detail: str,
) -> Callable[[Installation], None]:
    """The command recording ``host`` put back on ``previous`` (None: nothing)."""

    def command(installation: Installation) -> None:
        installation.restore_host(
            actor=recorder.actor,
            op_id=recorder.op_id,
            host=host,
            previous=previous,
            ok=ok,
            detail=scrubbed(detail),
        )

    return command


def restore_deployments(
    deployments: Mapping[str, HostDeployment],
    previous_plans: Mapping[str, tuple[HostPlan | None, dict[str, Any] | None]],
    previous_entries: Mapping[str, dict[str, Any] | None],
    recorder: OperationRecorder,
    progress: Callable[[str], None],
) -> dict[str, tuple[bool, str]]:
    """Put each host back on what it ran before the operation (its plan and
    active entry, or nothing), in parallel, each restore recorded."""
    outcomes: dict[str, tuple[bool, str]] = {}

    def one(name: str) -> None:
        deployment = deployments[name]
        prev_plan, prev_entry = previous_plans[name]
        ok, detail, _ = restore_host(
            deployment.connector, deployment.supervisor, deployment.host, prev_plan, prev_entry
        )
        recorder(restored(recorder, name, previous_entries.get(name), ok, detail))
        outcomes[name] = (ok, detail)
        progress(f"{name}: {scrubbed(detail)}")

    with ThreadPoolExecutor(max_workers=max(1, len(deployments))) as pool:
        list(pool.map(one, sorted(deployments)))
    return outcomes

