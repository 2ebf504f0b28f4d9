"""The parallel run's order: slow tests spread over each worker's share.

``make test`` runs the suite with pytest-xdist's work stealing: each worker
first gets one contiguous slice of the collected tests (worker *i* the next
``left // (workers - i)``), and a worker that runs dry takes the second half
of the longest queue. What runs last is therefore the end of the slices.
Left in file order, that end held the slowest modules (evolution fixtures,
CI examples, the tutorial), and the run finished on one or two workers while
the others idled. The order is made for ``--dist worksteal`` (the
Makefile's).

This plugin deals the tests marked ``slow`` across the slices and spreads
them over the first three quarters of each, between the other tests (kept
in their own order), so the run ends on short tests. Tests that share a
module- or class-scoped fixture stay together (one setup). Without xdist
nothing moves.
"""

from __future__ import annotations

import os

import pytest

_SHARED_SCOPES = frozenset({"module", "class", "package"})


def _block_key(item: pytest.Item) -> tuple[str, object]:
    """Items that must run on one worker, in one stretch: those of a module
    that share a fixture set up once per module (or class)."""
    info = getattr(item, "_fixtureinfo", None)
    if info is not None:
        for definitions in info.name2fixturedefs.values():
            if any(d.scope in _SHARED_SCOPES for d in definitions):
                return ("shared", item.path)
    return ("item", item.nodeid)


def _slice_sizes(total: int, workers: int) -> list[int]:
    """The first hand-out of xdist's ``worksteal`` scheduler."""
    sizes = []
    for i in range(workers):
        size = total // (workers - i)
        sizes.append(size)
        total -= size
    return sizes


def _units(items: list[pytest.Item]) -> list[list[pytest.Item]]:
    """``items`` cut into runs that must not be split (a shared fixture's)."""
    units: list[list[pytest.Item]] = []
    last: tuple[str, object] | None = None
    for item in items:
        key = _block_key(item)
        if units and key == last and key[0] == "shared":
            units[-1].append(item)
        else:
            units.append([item])
        last = key
    return units


def _interleave(slow: list[list[pytest.Item]], rest: list[pytest.Item]) -> list[pytest.Item]:
    """The slow blocks spread evenly over the first ``_SLOW_SPAN`` of a slice's
    other tests, the rest of it after them."""
    units = _units(rest)
    span = len(units) * _SLOW_SPAN
    ordered: list[pytest.Item] = []
    placed = 0
    for n, unit in enumerate(units):
        while placed < len(slow) and placed * span <= n * len(slow):
            ordered += slow[placed]
            placed += 1
        ordered += unit
    for block in slow[placed:]:
        ordered += block
    return ordered


# Slow tests mostly wait (health windows, timeouts), the others mostly
# compute: mixed, the two cores stay busy; all slow ones first left them
# idle a sixth of the time while every worker waited at once. The last
# quarter of each slice holds no slow test, so the run still ends on short ones.
_SLOW_SPAN = 0.75


def spread_slow_tests(items: list[pytest.Item], workers: int) -> list[pytest.Item]:
    """``items`` reordered for ``workers`` work-stealing workers (see above)."""
    blocks: dict[tuple[str, object], list[pytest.Item]] = {}
    rest: list[pytest.Item] = []
    for item in items:
        if item.get_closest_marker("slow") is None:
            rest.append(item)
        else:
            blocks.setdefault(_block_key(item), []).append(item)
    if not blocks or workers < 2:
        return items
    slow: list[list[list[pytest.Item]]] = [[] for _ in range(workers)]
    # Largest blocks first, each to the slice with the fewest slow tests so far.
    for block in sorted(blocks.values(), key=len, reverse=True):
        min(slow, key=lambda blocks: sum(map(len, blocks))).append(block)
    ordered: list[pytest.Item] = []
    taken = 0
    for i, size in enumerate(_slice_sizes(len(items), workers)):
        count = sum(map(len, slow[i]))
        fill = len(rest) - taken if i == workers - 1 else max(0, size - count)
        ordered += _interleave(slow[i], rest[taken : taken + fill])
        taken += fill
    return ordered


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Workers collect, and xdist tells them only how many they are (their
    # --dist reads "no"); every worker computes the same order, as it must.
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 0)
    if workers > 1:
        items[:] = spread_slow_tests(items, workers)
