"""``chassis stack validate`` lists every problem of a stack file, with the
valid values; ``chassis doctor`` explains the example's placeholder hosts
(issue 13, item 7)."""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from chassis.doctor import is_placeholder
from chassis.stack.example import example_stack
from chassis.stack.schema import ComponentSpec, HealthSpec, HostSpec
from chassis.stack.spec import StackError, validate_stack
from tests.conftest import Runner

GUIDE = Path(__file__).resolve().parents[2] / "guides" / "deployment.md"
Raw = dict[str, Any]


def keys(table: type[msgspec.Struct]) -> str:
    """The keys a table of chassis.toml may have, in the order the schema declares them."""
    return ", ".join(table.__struct_fields__)


def example_raw() -> Raw:
    return tomllib.loads(example_stack("shop"))


def problems_of(raw: Raw, path: Path) -> list[str]:
    with pytest.raises(StackError) as caught:
        validate_stack(raw, path)
    error = caught.value
    assert str(error) == error.problems[0] and "\n" not in str(error)
    return [line.removeprefix(f"{path}: ") for line in error.problems]


@pytest.fixture
def shop(run: Runner, tmp_path: Path) -> Path:
    root = tmp_path / "shop"
    run.ok("init", str(root), "--name", "shop", "--example")
    return root


def edit(root: Path, *changes: tuple[str, str]) -> Path:
    stack = root / "chassis.toml"
    text = stack.read_text()
    for old, new in changes:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    stack.write_text(text)
    return stack


BROKEN = (
    # components: an enum, in a health check
    ('type = "command"', 'type = "comand"'),
    # profiles: a member nobody declares
    ('"gateway", "api", "worker"]', '"gateway", "api", "worker", "cache"]'),
    # environments: two enums, in two environments
    ('name = "dev-1", connector = "local"', 'name = "dev-1", connector = "lokal"'),
    ('supervisor = "systemd", labels', 'supervisor = "upstart", labels'),
    # releases, runtimes, defaults, and a section that does not exist
    (
        'artifact = "dist/sample-app-v1.tar.gz"\n',
        'artifact = "dist/sample-app-v1.tar.gz"\nsha256 = "abc"\n',
    ),
    ("min_cores = 2", "min_cores = -1"),
    ('# [defaults]\n# env = "dev"', '[defaults]\nenv = "staging"'),
    ("# [ledger]\n", "[deploy]\nstrategy = 'rolling'\n\n# [ledger]\n"),
)
EXPECTED = [
    "deploy: unknown section (expected one of app, defaults, components, profiles, "
    "environments, releases, runtimes, ledger, export)",
    "components.worker.health.type: expected one of http, tcp, command, found 'comand'",
    "environments.dev.hosts[0].connector: expected one of local, ssh, found 'lokal'",
    "environments.prod.hosts[2].supervisor: expected one of direct, systemd, found 'upstart'",
    "defaults.env: no environment 'staging' (environments: dev, prod)",
    "profiles.monolith.groups.all.components[3]: no component 'cache' "
    "(components: gateway, api, worker)",
    "releases.v1.sha256: expected 64 lowercase hex digits, found 'abc'",
    "runtimes.small-cpu.min_cores: expected 0 or more, found -1",
]


def test_stack_validate_lists_every_problem_one_line_each(run: Runner, shop: Path) -> None:
    stack = edit(shop, *BROKEN)
    result = run("--workspace", str(shop), "stack", "validate")
    assert result.exit_code == 3
    assert result.stdout == ""
    assert result.stderr.splitlines() == [f"chassis: error: {stack}: {line}" for line in EXPECTED]


def test_stack_validate_json_lists_every_problem(run: Runner, shop: Path) -> None:
    stack = edit(shop, *BROKEN)
    result = run("--workspace", str(shop), "stack", "validate", "--json")
    assert result.exit_code == 3
    assert json.loads(result.stdout) == {
        "file": str(stack),
        "valid": False,
        "problems": [f"{stack}: {line}" for line in EXPECTED],
    }


def test_other_commands_say_the_first_problem_and_how_many_more(run: Runner, shop: Path) -> None:
    original = (shop / "chassis.toml").read_text()
    stack = edit(shop, *BROKEN)
    result = run("--workspace", str(shop), "host", "list")
    assert result.exit_code == 3
    assert result.stderr == (
        f"chassis: error: {stack}: {EXPECTED[0]} (and {len(EXPECTED) - 1} more problems: "
        "run `chassis stack validate`)\n"
    )
    # One problem left: exactly the one line, from every command.
    stack.write_text(original)
    edit(shop, ("min_cores = 2", "min_cores = -1"))
    for args in (("stack", "validate"), ("host", "list")):
        result = run("--workspace", str(shop), *args)
        assert result.exit_code == 3
        assert result.stderr == f"chassis: error: {stack}: {EXPECTED[-1]}\n"


def test_a_broken_entry_is_not_also_a_missing_one(run: Runner, shop: Path) -> None:
    """The worker, the monolith profile and the dev environment each fail to
    convert; the profiles naming the worker, [defaults] naming dev and
    monolith, are not problems as well."""
    stack = edit(
        shop,
        ('command = "python3 app/worker.py"', 'command = "python3 app/worker.py"\nreplicas = 2'),
        ('description = "everything on one host"', "description = 5"),
        ('name = "dev-2", connector = "local"', 'name = "dev-2", connector = "lokal"'),
        ('# [defaults]\n# env = "dev"', '[defaults]\nenv = "dev"\nprofile = "monolith"'),
    )
    result = run("--workspace", str(shop), "stack", "validate")
    assert result.exit_code == 3
    assert result.stderr.splitlines() == [
        f"chassis: error: {stack}: components.worker.replicas: unknown key; "
        f"expected one of: {keys(ComponentSpec)}",
        f"chassis: error: {stack}: profiles.monolith.description: expected a string, "
        "found number 5",
        f"chassis: error: {stack}: environments.dev.hosts[1].connector: expected one of "
        "local, ssh, found 'lokal'",
    ]


def components(raw: Raw) -> dict[str, Any]:
    found: dict[str, Any] = raw["components"]
    return found


def prod_host(raw: Raw) -> dict[str, Any]:
    found: dict[str, Any] = raw["environments"]["prod"]["hosts"][0]
    return found


ENUMS: list[tuple[str, Callable[[Raw], None], str]] = [
    (
        "health.type",
        lambda raw: components(raw)["gateway"]["health"].update(type="htp"),
        "components.gateway.health.type: expected one of http, tcp, command, found 'htp'",
    ),
    (
        "health.type-not-a-string",
        lambda raw: components(raw)["gateway"]["health"].update(type=5),
        "components.gateway.health.type: expected one of http, tcp, command, found number 5",
    ),
    (
        "connector",
        lambda raw: prod_host(raw).update(connector="ssh2"),
        "environments.prod.hosts[0].connector: expected one of local, ssh, found 'ssh2'",
    ),
    (
        "supervisor",
        lambda raw: prod_host(raw).update(supervisor="runit"),
        "environments.prod.hosts[0].supervisor: expected one of direct, systemd, found 'runit'",
    ),
    (
        "gpu",
        lambda raw: raw["runtimes"]["small-cpu"].update(gpu="amd"),
        "runtimes.small-cpu.gpu: expected one of nvidia, none, found 'amd'",
    ),
    (
        "unknown-key-in-health",
        lambda raw: components(raw)["api"]["health"].update(retries=3),
        f"components.api.health.retries: unknown key; expected one of: {keys(HealthSpec)}",
    ),
    (
        "unknown-key-in-a-secret-reference",
        lambda raw: components(raw)["gateway"]["env"].update(TOKEN_FILE={"from_path": "/x"}),
        "components.gateway.env.TOKEN_FILE.from_path: unknown key; "
        "expected one of: from_env, from_file, secret",
    ),
    (
        "unknown-key-in-a-host",
        lambda raw: prod_host(raw).update(hostname="a"),
        f"environments.prod.hosts[0].hostname: unknown key; expected one of: {keys(HostSpec)}",
    ),
]


@pytest.mark.parametrize(("change", "expected"), [e[1:] for e in ENUMS], ids=[e[0] for e in ENUMS])
def test_enum_and_key_errors_name_the_valid_values(
    change: Callable[[Raw], None], expected: str
) -> None:
    raw = example_raw()
    change(raw)
    assert problems_of(raw, Path("/ws/chassis.toml")) == [expected]


def test_the_guides_lines_are_what_stack_validate_prints() -> None:
    guide = GUIDE.read_text()
    section = guide[guide.index("## The stack file") : guide.index("### Sections")]
    block = re.findall(r"```\n(.*?)```", section, re.DOTALL)[0]
    raw = example_raw()
    components(raw)["gateway"]["health"]["type"] = "htp"
    raw["app"]["version"] = "1"
    raw["profiles"]["monolith"]["groups"]["all"]["components"].append("cache")
    raw["environments"]["prod"]["hosts"][2]["port"] = "twenty-two"
    path = Path("/srv/shop/chassis.toml")
    lines = [f"chassis: error: {path}: {line}" for line in problems_of(raw, path)]
    assert block.splitlines() == lines
    with pytest.raises(StackError) as caught:
        validate_stack(raw, path)
    more = "(and 3 more problems: run `chassis stack validate`)"
    assert caught.value.diagnostics() == f"{lines[0].removeprefix('chassis: error: ')} {more}"
    assert f"app.version: unknown key; expected one of: name, description {more}" in " ".join(
        section.split()
    )


# -- doctor and the example's placeholder hosts -----------------------------------------


def test_doctor_explains_the_examples_placeholder_hosts(run: Runner, shop: Path) -> None:
    result = run("--workspace", str(shop), "doctor", "--json", "--timeout", "2")
    assert result.exit_code == 14, result.stdout
    checks = {c["name"]: c for c in json.loads(result.stdout)}
    for i in (1, 2, 3):
        check = checks[f"host prod-{i}: reachable"]
        assert check["status"] == "fail"
        assert check["detail"].startswith(f"prod-{i}: placeholder host (192.0.2.1{i}, ")
        assert "chassis init --example" in check["detail"]
        assert check["fix"].startswith("replace its address in chassis.toml")
        assert "'prod'" in check["fix"] and "chassis doctor --env ENV" in check["fix"]
        assert f"host prod-{i}: python3" not in checks, "a placeholder is not contacted"
    failing = {name for name, c in checks.items() if c["status"] == "fail"}
    assert failing == {f"host prod-{i}: reachable" for i in (1, 2, 3)}
    human = run("--workspace", str(shop), "doctor", "--timeout", "2")
    assert human.exit_code == 14
    assert "placeholder host (192.0.2.11" in human.stdout


def test_doctor_env_checks_only_that_environments_hosts(run: Runner, shop: Path) -> None:
    result = run("--workspace", str(shop), "doctor", "--env", "dev", "--json")
    assert result.exit_code == 0, result.stdout
    names = [c["name"] for c in json.loads(result.stdout)]
    assert "host dev-1: reachable" in names
    assert not [name for name in names if "prod-" in name]
    unknown = run("--workspace", str(shop), "doctor", "--env", "staging", "--json")
    assert unknown.exit_code == 14
    hosts = next(c for c in json.loads(unknown.stdout) if c["name"] == "hosts")
    assert hosts["status"] == "fail" and hosts["detail"] == "no hosts in environment 'staging'"
    assert hosts["fix"] == "pass --env one of: dev, prod"


@pytest.mark.parametrize(
    ("address", "placeholder"),
    [
        ("192.0.2.11", True),
        ("198.51.100.7", True),
        ("203.0.113.250", True),
        ("2001:db8::1", True),
        ("example.com", True),
        ("prod-1.internal.example", True),
        ("db.example.org", True),
        ("host.invalid", True),
        ("10.0.0.1", False),
        ("192.0.3.1", False),
        ("127.0.0.11", False),
        ("prod-1.example-corp.com", False),
        ("myexample.com", False),
        (None, False),
    ],
)
def test_placeholder_addresses(address: str | None, placeholder: bool) -> None:
    assert is_placeholder(address) is placeholder
