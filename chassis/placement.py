"""Placement: node groups of a profile onto the hosts of an environment.

Capacity-aware against recorded host facts (cores, memory, GPUs with VRAM,
labels), deterministic (same input, same result), and never over-committing:
a host's committed CPU and memory stay within its capacity and each GPU is
given to at most one group. Groups are placed largest first; each goes to
the fitting host with the fewest groups so far (spreading), then the most
free memory, then by name. An impossible placement raises before anything is
recorded, naming the group, the short resource and the best host's figures.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from chassis.errors import ChassisError
from chassis.stack.spec import Demand


class PlacementError(ChassisError):
    exit_code = 12


@dataclass(frozen=True)
class HostCapacity:
    name: str
    cpu_millis: int
    memory_bytes: int
    gpu_vram: tuple[int, ...] = ()
    """VRAM of each GPU, by index."""
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class GroupNeed:
    name: str
    demand: Demand
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Assignment:
    group: str
    host: str
    gpus: tuple[int, ...]
    reason: str


@dataclass
class _Free:
    host: HostCapacity
    cpu: int
    memory: int
    gpus: dict[int, int]
    groups: int = 0


def place(groups: list[GroupNeed], hosts: list[HostCapacity]) -> list[Assignment]:
    """Assign every group to a host. Raises ``PlacementError``."""
    if not hosts:
        raise PlacementError("no hosts to place on")
    free = {
        h.name: _Free(h, h.cpu_millis, h.memory_bytes, dict(enumerate(h.gpu_vram)))
        for h in sorted(hosts, key=lambda h: h.name)
    }
    order = sorted(
        groups,
        key=lambda g: (
            -g.demand.gpus,
            -g.demand.vram_bytes,
            -g.demand.memory_bytes,
            -g.demand.cpu_millis,
            g.name,
        ),
    )
    placed: dict[str, Assignment] = {}
    for group in order:
        candidates = [f for f in free.values() if _shortfall(group, f) is None]
        if not candidates:
            raise PlacementError(_explain_failure(group, list(free.values())))
        best = min(candidates, key=lambda f: (f.groups, -f.memory, -f.cpu, f.host.name))
        gpus = _pick_gpus(group.demand, best)
        reason = _reason(group, best, len(candidates))
        best.cpu -= group.demand.cpu_millis
        best.memory -= group.demand.memory_bytes
        for index in gpus:
            del best.gpus[index]
        best.groups += 1
        placed[group.name] = Assignment(
            group=group.name,
            host=best.host.name,
            gpus=gpus,
            reason=reason,
        )
    return [placed[g.name] for g in groups]


def _pick_gpus(demand: Demand, free: _Free) -> tuple[int, ...]:
    fitting = sorted(
        (vram, index) for index, vram in free.gpus.items() if vram >= demand.vram_bytes
    )
    return tuple(sorted(index for _, index in fitting[: demand.gpus]))


def _shortfall(group: GroupNeed, free: _Free) -> str | None:
    """Why ``group`` does not fit on this host now, or None when it does."""
    demand = group.demand
    for key, value in group.labels.items():
        if free.host.labels.get(key) != value:
            return f"label {key}={value} (host has {free.host.labels.get(key, 'none')})"
    if demand.cpu_millis > free.cpu:
        return f"cpu: needs {demand.cpu_millis / 1000:g} cores, {free.cpu / 1000:g} free"
    if demand.memory_bytes > free.memory:
        return f"memory: needs {_gib(demand.memory_bytes)}, {_gib(free.memory)} free"
    if demand.gpus:
        fitting = [v for v in free.gpus.values() if v >= demand.vram_bytes]
        if len(fitting) < demand.gpus:
            return (
                f"gpus: needs {demand.gpus} GPU(s) with >= {_gib(demand.vram_bytes)} VRAM, "
                f"{len(fitting)} free"
            )
    return None


def _explain_failure(group: GroupNeed, free: list[_Free]) -> str:
    scored = sorted(free, key=lambda f: (-f.memory, -f.cpu, f.host.name))
    best = scored[0]
    short = _shortfall(group, best)
    gpu_text = ", ".join(_gib(v) for v in best.gpus.values()) or "none"
    return (
        f"cannot place group {group.name!r}: {short}; best host {best.host.name} has "
        f"{best.cpu / 1000:g} cores and {_gib(best.memory)} free, free GPUs: {gpu_text}"
    )


def _reason(group: GroupNeed, chosen: _Free, fitting: int) -> str:
    d = group.demand
    needs = f"needs {d.cpu_millis / 1000:g} cores, {_gib(d.memory_bytes)}"
    if d.gpus:
        needs += f", {d.gpus} GPU(s) >= {_gib(d.vram_bytes)}"
    return (
        f"{needs}; {fitting} host(s) fit, chose the one with fewest groups "
        f"({chosen.groups}) and most free memory"
    )


def _gib(value: int) -> str:
    if value < 2**30:
        return f"{value / 2**20:.0f} MiB"
    return f"{value / 2**30:.1f} GiB"
