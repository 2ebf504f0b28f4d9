"""Compiling a profile onto an environment: which host runs each node group."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from chassis.hosts import HostLike
from chassis.placement import Assignment, GroupNeed, HostCapacity, PlacementError, place
from chassis.stack.spec import Demand, Stack


@dataclass(frozen=True)
class Topology:
    profile: str
    environment: str
    groups: list[tuple[str, list[str], Demand, Assignment]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "environment": self.environment,
            "groups": [
                {
                    "group": name,
                    "components": components,
                    "demand": {
                        "cpu_millis": demand.cpu_millis,
                        "memory_bytes": demand.memory_bytes,
                        "gpus": demand.gpus,
                        "vram_bytes": demand.vram_bytes,
                    },
                    "host": assignment.host,
                    "gpus": list(assignment.gpus),
                    "why": assignment.reason,
                }
                for name, components, demand, assignment in self.groups
            ],
        }


def capacity(host: HostLike) -> HostCapacity:
    facts = host.facts or {}
    return HostCapacity(
        name=host.name,
        cpu_millis=int(facts.get("cpu_logical", 0)) * 1000,
        memory_bytes=int(facts.get("memory_total_bytes", 0)),
        gpu_vram=tuple(int(g.get("memory_total_bytes", 0)) for g in facts.get("gpus") or []),
        labels=dict(host.settings.labels),
    )


def compile_topology(
    stack: Stack, hosts: Sequence[HostLike], profile: str, environment: str
) -> Topology:
    """Place every group of ``profile`` on ``environment``'s inventoried hosts.

    Raises ``PlacementError`` (nothing recorded) when a group cannot fit or a
    host has never been inventoried.
    """
    spec = stack.profile(profile)
    stack.environment(environment)
    missing = [h.name for h in hosts if h.facts is None]
    if missing:
        raise PlacementError(
            f"no inventory for host(s) {', '.join(missing)} (run 'chassis host inventory')"
        )
    needs = [
        GroupNeed(name, stack.group_demand(profile, name), dict(group.labels))
        for name, group in spec.groups.items()
    ]
    assignments = place(needs, [capacity(h) for h in hosts])
    return Topology(
        profile,
        environment,
        [
            (need.name, list(spec.groups[need.name].components), need.demand, assignment)
            for need, assignment in zip(needs, assignments, strict=True)
        ],
    )
