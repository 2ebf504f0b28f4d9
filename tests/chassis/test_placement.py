"""Placement: deterministic, never over-committing, and clear when impossible."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chassis.placement import GroupNeed, HostCapacity, PlacementError, place
from chassis.stack.spec import Demand

GIB = 2**30

hosts_strategy = st.lists(
    st.builds(
        HostCapacity,
        name=st.sampled_from([f"h{i}" for i in range(8)]),
        cpu_millis=st.integers(500, 16000),
        memory_bytes=st.integers(1, 64).map(lambda g: g * GIB),
        gpu_vram=st.lists(st.sampled_from([8 * GIB, 24 * GIB, 80 * GIB]), max_size=4).map(tuple),
        labels=st.sampled_from([{}, {"role": "batch"}]),
    ),
    min_size=1,
    max_size=6,
    unique_by=lambda h: h.name,
)
groups_strategy = st.lists(
    st.builds(
        GroupNeed,
        name=st.sampled_from([f"g{i}" for i in range(8)]),
        demand=st.builds(
            Demand,
            cpu_millis=st.integers(0, 8000),
            memory_bytes=st.integers(0, 32).map(lambda g: g * GIB),
            gpus=st.integers(0, 2),
            vram_bytes=st.sampled_from([0, 8 * GIB, 40 * GIB]),
        ),
        labels=st.sampled_from([{}, {}, {"role": "batch"}]),
    ),
    min_size=1,
    max_size=6,
    unique_by=lambda g: g.name,
)


@settings(max_examples=300, deadline=None)
@given(groups=groups_strategy, hosts=hosts_strategy)
def test_never_over_commits_and_is_deterministic(
    groups: list[GroupNeed], hosts: list[HostCapacity]
) -> None:
    try:
        first = place(groups, hosts)
    except PlacementError as e:
        assert "cannot place group" in str(e)
        with pytest.raises(PlacementError, match=str(e).split(":")[0]):
            place(groups, list(reversed(hosts)))
        return
    assert first == place(groups, list(reversed(hosts))) == place(groups, hosts)
    by_name = {h.name: h for h in hosts}
    need = {g.name: g for g in groups}
    for host in hosts:
        mine = [a for a in first if a.host == host.name]
        assert sum(need[a.group].demand.cpu_millis for a in mine) <= host.cpu_millis
        assert sum(need[a.group].demand.memory_bytes for a in mine) <= host.memory_bytes
        used = [i for a in mine for i in a.gpus]
        assert len(used) == len(set(used)), "a GPU given twice"
    for a in first:
        group = need[a.group]
        assert len(a.gpus) == group.demand.gpus
        assert all(by_name[a.host].gpu_vram[i] >= group.demand.vram_bytes for i in a.gpus)
        assert all(by_name[a.host].labels.get(k) == v for k, v in group.labels.items())


def test_spreads_groups_across_hosts() -> None:
    hosts = [HostCapacity(f"h{i}", 2000, 4 * GIB) for i in (1, 2, 3)]
    groups = [GroupNeed(n, Demand(500, GIB)) for n in ("edge", "core", "jobs")]
    assert sorted(a.host for a in place(groups, hosts)) == ["h1", "h2", "h3"]


def test_impossible_placement_names_group_resource_and_best_host() -> None:
    hosts = [HostCapacity("small", 2000, 4 * GIB), HostCapacity("big", 4000, 8 * GIB, (8 * GIB,))]
    with pytest.raises(PlacementError) as caught:
        place([GroupNeed("trainer", Demand(1000, GIB, gpus=1, vram_bytes=40 * GIB))], hosts)
    assert str(caught.value) == (
        "cannot place group 'trainer': gpus: needs 1 GPU(s) with >= 40.0 GiB VRAM, 0 free; "
        "best host big has 4 cores and 8.0 GiB free, free GPUs: 8.0 GiB"
    )
