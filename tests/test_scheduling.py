"""The parallel run's order (tests/scheduling.py): each worker's first slice
starts with its share of the slow tests, tests sharing a module fixture stay
together, and every test is still there once."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest

from tests.scheduling import _slice_sizes, spread_slow_tests


@dataclass
class _Definition:
    scope: str


@dataclass
class _Info:
    name2fixturedefs: dict[str, list[_Definition]] = field(default_factory=dict)


@dataclass
class _Item:
    nodeid: str
    slow: bool = False
    shared: bool = False

    @property
    def path(self) -> Path:
        return Path(self.nodeid.split("::")[0])

    @property
    def _fixtureinfo(self) -> _Info:
        return _Info({"kept": [_Definition("module")]} if self.shared else {})

    def get_closest_marker(self, name: str) -> Any:
        return object() if name == "slow" and self.slow else None


def test_slow_tests_spread_over_each_slice_and_a_shared_fixture_stays_on_one_worker() -> None:
    items = [_Item(f"tests/a.py::t{i}") for i in range(40)]
    items += [_Item(f"tests/fixture.py::f{i}", shared=True) for i in range(5)]
    items += [_Item(f"tests/slow.py::s{i}", slow=True) for i in range(6)]
    items += [_Item(f"tests/kept.py::k{i}", slow=True, shared=True) for i in range(4)]
    items += [_Item(f"tests/z.py::t{i}") for i in range(45)]
    ordered = cast(list[_Item], spread_slow_tests(cast(list[pytest.Item], items), 3))

    assert sorted(i.nodeid for i in ordered) == sorted(i.nodeid for i in items)
    start = 0
    for size in _slice_sizes(len(ordered), 3):
        part = ordered[start : start + size]
        start += size
        slow = [n for n, i in enumerate(part) if i.slow]
        assert slow, "every worker gets slow tests"
        assert max(slow) < 0.8 * len(part), "none in the last quarter: the run ends on short ones"
        assert min(slow) < 0.2 * len(part), "and they start early"
    for name, count in (("kept.py", 4), ("fixture.py", 5)):
        at = [n for n, i in enumerate(ordered) if name in i.nodeid]
        assert at == list(range(at[0], at[0] + count)), f"{name}: one stretch, one setup"
    light = [i.nodeid for i in ordered if not i.slow]
    assert light == [i.nodeid for i in items if not i.slow], "the rest keep their order"


def test_one_worker_or_no_slow_test_changes_nothing() -> None:
    items = cast(list[pytest.Item], [_Item(f"tests/a.py::t{i}", slow=i % 2 == 0) for i in range(7)])
    assert spread_slow_tests(items, 1) == items
    plain = cast(list[pytest.Item], [_Item(f"tests/a.py::t{i}") for i in range(7)])
    assert spread_slow_tests(plain, 4) == plain


def test_the_collectors_halves_cover_every_test_module_once() -> None:
    from tests.precollect import TESTS, _size, halves

    first, second = halves()
    covered = [
        module
        for part in first + second
        for module in ([part] if part.is_file() else part.rglob("test_*.py"))
    ]
    assert sorted(covered) == sorted(TESTS.rglob("test_*.py"))
    assert len(set(covered)) == len(covered)
    sizes = sorted(sum(map(_size, group)) for group in (first, second))
    assert sizes[0] > 0.8 * sizes[1]  # about equal work
