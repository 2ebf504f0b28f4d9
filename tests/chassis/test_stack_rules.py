"""chassis.toml: numbers in range and paths every connector accepts, field by field.

What a host step would refuse half-way through a deploy (after its intent,
holding the lease: issue 12) is refused by ``stack validate`` instead, as one
line: the file, the key path, what was expected and what was found.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from chassis.stack.example import example_stack
from chassis.stack.spec import StackError, validate_stack
from tests.conftest import Runner

FILE = Path("/ws/chassis.toml")
Raw = dict[str, Any]


def example() -> Raw:
    return tomllib.loads(example_stack("shop"))


def health(raw: Raw) -> dict[str, Any]:
    found: dict[str, Any] = raw["components"]["api"]["health"]
    return found


def prod(raw: Raw, i: int = 0) -> dict[str, Any]:
    found: dict[str, Any] = raw["environments"]["prod"]["hosts"][i]
    return found


def set_in(getter: Callable[[Raw], dict[str, Any]], **values: Any) -> Callable[[Raw], None]:
    def change(raw: Raw) -> None:
        getter(raw).update(values)

    return change


API = "components.api"
H = f"{API}.health"
P0 = "environments.prod.hosts[0]"
RULES: list[tuple[str, Callable[[Raw], None], str]] = [
    # health gate: numbers in range, and a gate that can pass at all
    ("passes", set_in(health, passes=0), f"{H}.passes: expected 1 or more, found 0"),
    (
        "interval",
        set_in(health, interval_ms=0),
        f"{H}.interval_ms: expected 1 or more (ms), found 0",
    ),
    (
        "timeout",
        set_in(health, timeout_ms=-5),
        f"{H}.timeout_ms: expected 1 or more (ms), found -5",
    ),
    ("window", set_in(health, window_ms=0), f"{H}.window_ms: expected 1 or more (ms), found 0"),
    (
        "timeout-over-window",
        set_in(health, timeout_ms=9000),
        f"{H}.timeout_ms: expected at most window_ms (8000), found 9000",
    ),
    (
        "window-too-short",
        set_in(health, passes=5, interval_ms=2000),
        f"{H}.window_ms: expected more than 8000 (5 consecutive passes 2000 ms apart), "
        "found 8000: the gate could never pass",
    ),
    (
        "path",
        set_in(health, path="healthz"),
        f"{H}.path: expected a path starting with /, found 'healthz'",
    ),
    (
        "path-spaces",
        set_in(health, path="/health z"),
        f"{H}.path: expected printable ASCII without spaces (percent-encode anything else), "
        "found '/health z'",
    ),
    (
        "status",
        set_in(health, expect_status=700),
        f"{H}.expect_status: expected an HTTP status 100-599, found 700",
    ),
    ("port-number", set_in(health, port=0), f"{H}.port: expected a port number 1-65535, found 0"),
    (
        "empty-check-command",
        set_in(lambda raw: raw["components"]["worker"]["health"], command="  "),
        "components.worker.health.command: expected a command, found an empty string",
    ),
    # components
    (
        "port",
        set_in(lambda raw: raw["components"]["api"], ports={"http": 70000}),
        f"{API}.ports.http: expected a port number 1-65535, found 70000",
    ),
    (
        "port-name",
        set_in(lambda raw: raw["components"]["api"], ports={"h ttp": 8081}),
        f"{API}.ports['h ttp']: port name 'h ttp'",
    ),
    (
        "command",
        set_in(lambda raw: raw["components"]["api"], command=" "),
        f"{API}.command: expected a command, found an empty string",
    ),
    (
        "cpu-inf",
        set_in(lambda raw: raw["components"]["api"]["resources"], cpu=float("inf")),
        f"{API}.resources.cpu: expected a number of cores, found inf",
    ),
    (
        "memory",
        set_in(lambda raw: raw["components"]["api"]["resources"], memory=-1),
        f"{API}.resources.memory: a size cannot be negative",
    ),
    (
        "restart",
        set_in(lambda raw: raw["components"]["api"], restart="always"),
        f"{API}.restart: expected on-failure or never, found 'always'",
    ),
    (
        "restart-type",
        set_in(lambda raw: raw["components"]["api"], restart=False),
        f"{API}.restart: expected a string, found boolean false",
    ),
    # hosts
    (
        "ssh-root-relative",
        set_in(prod, root="srv/shop"),
        f"{P0}.root: expected an absolute path on the host (such as /srv/app), found 'srv/shop'",
    ),
    ("root-empty", set_in(prod, root=""), f"{P0}.root: expected a directory path, found ''"),
    (
        "systemd-root",
        set_in(prod, root="/srv/my shop"),
        f"{P0}.root: expected a path without whitespace, quotes or backslashes "
        "(systemd units name it), found '/srv/my shop'",
    ),
    (
        "key-relative",
        set_in(prod, key="keys/id"),
        f"{P0}.key: expected an absolute path or one under ~, found 'keys/id'",
    ),
    ("port-host", set_in(prod, port=0), f"{P0}.port: expected 1-65535, found 0"),
    # releases and runtimes
    (
        "sha256",
        set_in(lambda raw: raw["releases"]["v1"], sha256="abc"),
        "releases.v1.sha256: expected 64 lowercase hex digits, found 'abc'",
    ),
    (
        "artifact",
        set_in(lambda raw: raw["releases"]["v1"], artifact=""),
        "releases.v1.artifact: expected a file path, found an empty string",
    ),
    (
        "min-cores",
        set_in(lambda raw: raw["runtimes"]["small-cpu"], min_cores=-1),
        "runtimes.small-cpu.min_cores: expected 0 or more, found -1",
    ),
    (
        "compute-capability",
        set_in(lambda raw: raw["runtimes"]["small-cpu"], min_compute_capability="ampere"),
        "runtimes.small-cpu.min_compute_capability: expected a version such as 8.0, found 'ampere'",
    ),
    (
        "cuda-driver",
        set_in(lambda raw: raw["runtimes"]["small-cpu"], cuda_driver="12+"),
        "runtimes.small-cpu.cuda_driver: expected a version range such as >=12.0,<13, found '12+'",
    ),
]


@pytest.mark.parametrize(("change", "expected"), [r[1:] for r in RULES], ids=[r[0] for r in RULES])
def test_each_rule_names_the_key_and_what_was_expected(
    change: Callable[[Raw], None], expected: str
) -> None:
    raw = example()
    change(raw)
    with pytest.raises(StackError) as caught:
        validate_stack(raw, FILE)
    message = str(caught.value)
    assert "\n" not in message and caught.value.exit_code == 3
    assert message.removeprefix(f"{FILE}: ").startswith(expected), message


def test_local_roots_may_be_relative_to_the_workspace_and_defaults_pass() -> None:
    stack = validate_stack(example(), FILE)
    assert {h.root for h in stack.environment("dev").hosts} == {
        f".chassis/hosts/dev-{i}" for i in (1, 2, 3)
    }
    raw = example()
    health(raw).update(passes=1, interval_ms=1, timeout_ms=1, window_ms=1)
    validate_stack(raw, FILE)
    assert stack.components["api"].restart == "on-failure"
    raw["components"]["api"]["restart"] = "never"
    assert validate_stack(raw, FILE).components["api"].restart == "never"


def test_stack_validate_reports_it(run: Runner, tmp_path: Path) -> None:
    root = tmp_path / "shop"
    run.ok("init", str(root), "--name", "shop", "--example")
    stack = root / "chassis.toml"
    stack.write_text(stack.read_text().replace('root = "/srv/shop"', 'root = "srv/shop"', 1))
    result = run("--workspace", str(root), "stack", "validate")
    assert result.exit_code == 3
    assert result.stderr == (
        f"chassis: error: {stack}: environments.prod.hosts[0].root: expected an absolute path "
        "on the host (such as /srv/app), found 'srv/shop'\n"
    )
