"""chassis.toml: the example validates; every mistake is one precise line."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from chassis.stack.example import example_stack
from chassis.stack.schema import ComponentSpec
from chassis.stack.spec import StackError, load_stack, parse_size, validate_stack

FILE = Path("/ws/chassis.toml")


def example() -> dict[str, Any]:
    return tomllib.loads(example_stack("shop"))


def error_for(raw: dict[str, Any]) -> str:
    with pytest.raises(StackError) as caught:
        validate_stack(raw, FILE)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{FILE}: ")
    return message.removeprefix(f"{FILE}: ")


def test_example_is_valid_and_complete() -> None:
    stack = validate_stack(example(), FILE)
    assert sorted(stack.components) == ["api", "gateway", "worker"]
    assert sorted(stack.profiles) == ["maximal-decoupled", "monolith", "ternary-split-3"]
    assert {h.connector for h in stack.environment("dev").hosts} == {"local"}
    assert {h.connector for h in stack.environment("prod").hosts} == {"ssh"}
    assert len({h.root for h in stack.environment("dev").hosts}) == 3
    demand = stack.group_demand("monolith", "all")
    assert demand.cpu_millis == 1250 and demand.memory_bytes == 1280 * 2**20


def test_wrong_type_names_the_key_path() -> None:
    raw = example()
    raw["environments"]["prod"]["hosts"][2]["port"] = "twenty-two"
    assert error_for(raw) == (
        "environments.prod.hosts[2].port: expected an integer, found string 'twenty-two'"
    )


def test_unknown_key() -> None:
    raw = example()
    raw["components"]["api"]["replicas"] = 3
    keys = ", ".join(ComponentSpec.__struct_fields__)  # command, env, ports, health, …
    assert error_for(raw) == f"components.api.replicas: unknown key; expected one of: {keys}"


def test_unknown_section_and_missing_key() -> None:
    raw = example()
    raw["deploy"] = {}
    assert error_for(raw).startswith("deploy: unknown section")
    raw = example()
    del raw["components"]["api"]["command"]
    assert error_for(raw) == "components.api.command: missing required key"


def test_wrong_type_inside_a_map() -> None:
    raw = example()
    raw["components"]["gateway"]["env"] = {"LOG_LEVEL": "info", "WORKERS": 4}
    assert error_for(raw) == (
        "components.gateway.env.WORKERS: expected a string or a table, found number 4"
    )


def test_profile_naming_a_missing_component() -> None:
    raw = example()
    raw["profiles"]["monolith"]["groups"]["all"]["components"].append("cache")
    assert error_for(raw) == (
        "profiles.monolith.groups.all.components[3]: no component 'cache' "
        "(components: gateway, api, worker)"
    )


def test_two_hosts_with_the_same_name() -> None:
    raw = example()
    raw["environments"]["prod"]["hosts"][1]["name"] = "dev-2"
    assert error_for(raw) == (
        "environments.prod.hosts[1].name: host 'dev-2' is already declared at "
        "environments.dev.hosts[1]"
    )


def test_ssh_host_needs_an_address_and_sizes_must_parse() -> None:
    raw = example()
    del raw["environments"]["prod"]["hosts"][0]["address"]
    assert error_for(raw) == "environments.prod.hosts[0].address: required for an ssh host"
    raw = example()
    raw["components"]["api"]["resources"]["memory"] = "lots"
    assert error_for(raw).startswith("components.api.resources.memory: 'lots' is not a size")


def test_health_port_must_be_declared() -> None:
    raw = example()
    raw["components"]["api"]["health"]["port"] = "admin"
    assert "components.api.health.port: expected one of this component's ports" in error_for(raw)


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "chassis.toml"
    bad.write_text("[app]\nname = \n")
    with pytest.raises(StackError, match=r"chassis\.toml: invalid TOML: .*line 2"):
        load_stack(bad)
    with pytest.raises(StackError, match="no stack file"):
        load_stack(tmp_path / "missing.toml")


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512MiB", 512 * 2**20),
        ("8GiB", 8 * 2**30),
        ("1.5GB", 1_500_000_000),
        ("100", 100),
        (64, 64),
    ],
)
def test_sizes(text: str | int, size: int) -> None:
    assert parse_size(text) == size
