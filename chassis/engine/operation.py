"""What every operation on an installation shares: the recorder that appends
its events (one writer at a time, under the lease), the supervisor a host's
plan names, and the plan a host's active release was deployed with."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import msgspec

from adapters.connectors.base import Connector
from adapters.supervisors.base import Supervisor
from adapters.supervisors.direct import DirectSupervisor
from adapters.supervisors.systemd import SystemdSupervisor
from chassis.engine.executor import scrubbed, scrubbed_data
from chassis.engine.plan import HostPlan, Plan
from chassis.views import histories
from ledger.application import Ledger
from ledger.errors import NotFoundError
from ledger.installations import Installation
from ledger.releases import release_dir_name


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
            command(self.installation)
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
