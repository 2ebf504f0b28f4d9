"""Loading and validating ``chassis.toml`` into a :class:`Stack`.

Every error is one line: the file, the key path (``environments.prod.hosts[2].port``),
what was expected and what was found.

Names are data (DESIGN.md §1 principle 10): the app, component, profile,
node group, environment, host, runtime and release names and label keys
follow :data:`adapters.connectors.base.NAME`; env and release config keys
follow :data:`adapters.connectors.base.ENV_NAME`; ssh addresses follow
:data:`adapters.connectors.base.ADDRESS`. A name outside its rule is refused
here, before it can reach a command line, a path, a unit name or an env file.
"""

from __future__ import annotations

import math
import posixpath
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from adapters.connectors.base import ADDRESS, ADDRESS_RULE, ENV_NAME, NAME, name_problem
from adapters.supervisors.base import RESTART_MODES
from adapters.supervisors.envfile import value_problem
from chassis.errors import WorkspaceError
from chassis.stack.schema import (
    AppSpec,
    ComponentSpec,
    DefaultsSpec,
    EnvironmentSpec,
    ExportSpec,
    HealthSpec,
    HostSpec,
    LedgerSpec,
    ProfileSpec,
    ReleaseSpec,
    RuntimeSpec,
    SecretRefSpec,
)
from proofs.export import FORMATS
from proofs.redaction import scrub_text

T = TypeVar("T")

SECTIONS = (
    "app",
    "defaults",
    "components",
    "profiles",
    "environments",
    "releases",
    "runtimes",
    "ledger",
    "export",
)
SECRET_KEY = re.compile(
    r"password|passwd|secret|token|private_key|api_key|authorization|cookie|credential|session",
    re.IGNORECASE,
)
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_TYPE_WORDS = {
    "int": "an integer",
    "str": "a string",
    "float": "a number",
    "bool": "true or false",
    "object": "a table",
    "array": "an array",
    "null": "nothing",
}


class StackError(WorkspaceError):
    """``chassis.toml`` is malformed or inconsistent."""


@dataclass(frozen=True)
class Demand:
    """What a component (or a node group, summed) needs from its host."""

    cpu_millis: int = 0
    memory_bytes: int = 0
    gpus: int = 0
    vram_bytes: int = 0
    """Per GPU."""

    def __add__(self, other: Demand) -> Demand:
        return Demand(
            self.cpu_millis + other.cpu_millis,
            self.memory_bytes + other.memory_bytes,
            self.gpus + other.gpus,
            max(self.vram_bytes, other.vram_bytes),
        )


@dataclass(frozen=True)
class Stack:
    path: Path
    app: AppSpec
    components: dict[str, ComponentSpec]
    profiles: dict[str, ProfileSpec]
    environments: dict[str, EnvironmentSpec]
    releases: dict[str, ReleaseSpec]
    runtimes: dict[str, RuntimeSpec]
    ledger: LedgerSpec
    export: ExportSpec = field(default_factory=ExportSpec)
    defaults: DefaultsSpec = field(default_factory=DefaultsSpec)

    def default_environment(self) -> str:
        """``[defaults] env``, or the only environment; else a StackError with the fix."""
        if self.defaults.env is not None:
            return self.defaults.env
        if len(self.environments) == 1:
            return next(iter(self.environments))
        known = ", ".join(self.environments) or "none"
        raise StackError(
            f"{self.path}: no --env given and no default: pass --env NAME or set "
            f'[defaults] env = "NAME" (environments: {known})'
        )

    def default_profile(self, environment: str) -> str:
        """The environment's ``profile``, then ``[defaults] profile``, then the
        only profile; else a StackError with the fix."""
        chosen = self.environment(environment).profile or self.defaults.profile
        if chosen is not None:
            return chosen
        if len(self.profiles) == 1:
            return next(iter(self.profiles))
        known = ", ".join(self.profiles) or "none"
        raise StackError(
            f"{self.path}: no --profile given and no default for {environment}: pass "
            f'--profile NAME, or set profile = "NAME" in [environments.{environment}] or '
            f"[defaults] (profiles: {known})"
        )

    def profile(self, name: str) -> ProfileSpec:
        if name not in self.profiles:
            raise StackError(
                f"{self.path}: no profile {name!r} (profiles: {', '.join(self.profiles) or 'none'})"
            )
        return self.profiles[name]

    def environment(self, name: str) -> EnvironmentSpec:
        if name not in self.environments:
            known = ", ".join(self.environments) or "none"
            raise StackError(f"{self.path}: no environment {name!r} (environments: {known})")
        return self.environments[name]

    def demand(self, component: str) -> Demand:
        resources = self.components[component].resources
        return Demand(
            cpu_millis=round(resources.cpu * 1000),
            memory_bytes=parse_size(resources.memory),
            gpus=resources.gpus,
            vram_bytes=parse_size(resources.vram),
        )

    def group_demand(self, profile: str, group: str) -> Demand:
        total = Demand()
        for component in self.profile(profile).groups[group].components:
            total = total + self.demand(component)
        return total

    def hosts(self) -> list[tuple[str, HostSpec]]:
        """Every declared host with its environment, in file order."""
        return [(env, host) for env, spec in self.environments.items() for host in spec.hosts]


def parse_size(value: int | str) -> int:
    """Bytes from an int or a string such as ``"512MiB"`` / ``"8GB"``. Raises ``ValueError``."""
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    match = _SIZE.match(value)
    if not match:
        raise ValueError(f"{value!r} is not a size like 512MiB or 8GB")
    number, unit = match.groups()
    return int(float(number) * _UNITS[(unit or "B").lower()])


def load_stack(path: Path) -> Stack:
    """Read and validate a stack file. Raises ``StackError`` with one clear line."""
    try:
        with path.open("rb") as handle:
            raw = tomllib.load(handle)
    except FileNotFoundError:
        raise StackError(f"{path}: no stack file (run 'chassis init --example')") from None
    except tomllib.TOMLDecodeError as e:
        raise StackError(f"{path}: invalid TOML: {e}") from None
    return validate_stack(raw, path)


def validate_stack(raw: dict[str, Any], path: Path) -> Stack:
    for key in raw:
        if key not in SECTIONS:
            raise StackError(
                f"{path}: {key}: unknown section (expected one of {', '.join(SECTIONS)})"
            )
    if "app" not in raw:
        raise StackError(f'{path}: app: missing section [app] with name = "…"')
    app = _convert(raw["app"], AppSpec, "app", path)
    _check_name(path, "app.name", "app", app.name)
    stack = Stack(
        path=path,
        app=app,
        components=_table_of(raw, "components", ComponentSpec, path),
        profiles=_table_of(raw, "profiles", ProfileSpec, path),
        environments=_table_of(raw, "environments", EnvironmentSpec, path),
        releases=_table_of(raw, "releases", ReleaseSpec, path),
        runtimes=_table_of(raw, "runtimes", RuntimeSpec, path),
        ledger=_convert(raw.get("ledger", {}), LedgerSpec, "ledger", path),
        export=_convert(raw.get("export", {}), ExportSpec, "export", path),
        defaults=_convert(raw.get("defaults", {}), DefaultsSpec, "defaults", path),
    )
    _check_references(stack)
    return stack


def _table_of(raw: dict[str, Any], section: str, kind: type[T], path: Path) -> dict[str, T]:
    table = raw.get(section, {})
    if not isinstance(table, dict):
        raise StackError(f"{path}: {section}: expected a table, found {_describe(table)}")
    result: dict[str, T] = {}
    for name, value in table.items():
        _check_name(path, _key(section, name), _KINDS[section], name)
        result[name] = _convert(value, kind, f"{section}.{name}", path)
    return result


def _check_value(path: Path, where: str, value: str) -> None:
    """An env value that no env file can carry unchanged (NUL, non-characters)."""
    problem = value_problem(value)
    if problem is not None:
        raise StackError(f"{path}: {where}: {problem}")


_KINDS = {
    "components": "component",
    "profiles": "profile",
    "environments": "environment",
    "releases": "release label",
    "runtimes": "runtime",
}


def _key(where: str, name: str) -> str:
    """``where.name``, or ``where['na me']`` when the name itself is the problem."""
    return f"{where}.{name}" if NAME.match(name) or ENV_NAME.match(name) else f"{where}[{name!r}]"


def _check_name(path: Path, where: str, kind: str, name: str) -> None:
    """One line naming the key path, the bad name and the rule; exit 3."""
    problem = name_problem(kind, name)
    if problem is not None:
        raise StackError(f"{path}: {where}: {problem}")


def _convert(value: Any, kind: type[T], where: str, path: Path) -> T:
    try:
        return msgspec.convert(value, kind)
    except msgspec.ValidationError as e:
        raise StackError(f"{path}: {_explain(str(e), value, where)}") from None


def _explain(message: str, raw: Any, where: str) -> str:
    """Turn msgspec's ``Expected `int`, got `str` - at `$.hosts[2].port``` into
    ``environments.prod.hosts[2].port: expected an integer, found "x"``."""
    detail, _, at = message.partition(" - at `")
    segments = re.findall(r"\.([^.\[`]+)|\[(\d+|\.\.\.)\]", at.rstrip("`").removeprefix("$"))
    node: Any = raw
    parts: list[str] = [where]
    for key, index in segments:
        if key:
            parts.append(f".{key}")
            node = node.get(key) if isinstance(node, dict) else None
        elif index == "...":
            bad = _first_bad_key(node, detail)
            parts.append(f".{bad}" if bad is not None else "[…]")
            node = node.get(bad) if isinstance(node, dict) and bad is not None else None
        else:
            parts.append(f"[{index}]")
            node = node[int(index)] if isinstance(node, list) and int(index) < len(node) else None
    location = "".join(parts)
    unknown = re.match(r"Object contains unknown field `(.+)`", detail)
    if unknown:
        return f"{location}.{unknown.group(1)}: unknown key"
    missing = re.match(r"Object missing required field `(.+)`", detail)
    if missing:
        return f"{location}.{missing.group(1)}: missing required key"
    expected = re.match(r"Expected `(.+?)`, got `(.+?)`", detail)
    if expected:
        wanted = " or ".join(
            _TYPE_WORDS.get(t.strip(), t.strip()) for t in expected.group(1).split("|")
        )
        return f"{location}: expected {wanted}, found {_describe(node)}"
    return f"{location}: {detail[0].lower()}{detail[1:]}"


def _first_bad_key(node: Any, detail: str) -> str | None:
    """msgspec hides dict keys as ``[...]``: find the entry the error is about."""
    if not isinstance(node, dict):
        return None
    got = re.search(r"got `(\w+)`", detail)
    kinds = {"str": str, "int": int, "float": float, "bool": bool, "object": dict, "array": list}
    wanted = kinds.get(got.group(1)) if got else None
    for key, value in node.items():
        if wanted is not None and isinstance(value, wanted):
            return str(key)
    return str(next(iter(node))) if len(node) == 1 else None


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, str):
        return f"string {value!r}"
    if isinstance(value, int | float):
        return f"number {value}"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return "nothing" if value is None else type(value).__name__


def _check_export(stack: Stack) -> None:
    path, export = stack.path, stack.export
    if export.format not in FORMATS:
        raise StackError(
            f"{path}: export.format: expected one of {', '.join(FORMATS)}, found {export.format!r}"
        )
    if export.to is not None:
        # Here, not at the top: reading a stack file need not import the exporters.
        from chassis.export.delivery import DestinationError, parse_destination

        try:
            parse_destination(export.to, path.parent)
        except DestinationError as e:
            raise StackError(f"{path}: export.to: {e}") from None
    elif export.auto:
        raise StackError(f"{path}: export.to: required when export.auto is true")
    if not 1 <= export.timeout_ms <= 60000:
        raise StackError(f"{path}: export.timeout_ms: expected 1-60000, found {export.timeout_ms}")


SSH_TIMEOUT_MS = (100, 600_000)
"""The range of ``ssh_timeout_ms``: a silent host must fail within minutes."""


def _check_defaults(stack: Stack) -> None:
    """``[defaults]`` and each environment's ``profile`` name what exists."""
    path, profiles = stack.path, ", ".join(stack.profiles) or "none"
    if stack.defaults.env is not None and stack.defaults.env not in stack.environments:
        known = ", ".join(stack.environments) or "none"
        raise StackError(
            f"{path}: defaults.env: no environment {stack.defaults.env!r} (environments: {known})"
        )
    chosen = [("defaults.profile", stack.defaults.profile)] + [
        (f"environments.{name}.profile", env.profile) for name, env in stack.environments.items()
    ]
    for where, profile in chosen:
        if profile is not None and profile not in stack.profiles:
            raise StackError(f"{path}: {where}: no profile {profile!r} (profiles: {profiles})")


def _check_ssh_timeout(path: Path, where: str, value: int | None) -> None:
    low, high = SSH_TIMEOUT_MS
    if value is not None and not low <= value <= high:
        raise StackError(f"{path}: {where}.ssh_timeout_ms: expected {low}-{high}, found {value}")


def _check_secret_ref(path: Path, where: str, ref: SecretRefSpec) -> None:
    if (ref.from_env is None) == (ref.from_file is None):
        raise StackError(f"{path}: {where}: expected exactly one of from_env or from_file")
    if ref.from_env is not None and not ENV_NAME.match(ref.from_env):
        raise StackError(
            f"{path}: {where}.from_env: expected an environment variable name, "
            f"found {ref.from_env!r}"
        )
    if ref.from_file is not None and not ref.from_file.strip():
        raise StackError(f"{path}: {where}.from_file: expected a file path")


def looks_secret(value: str) -> bool:
    """A PEM private key, a bearer token, a URL with a password, ``password=…``…"""
    return scrub_text(value) != value


def _refuse_secret_value(path: Path, where: str, value: str) -> None:
    if looks_secret(value):
        raise StackError(
            f"{path}: {where}: the value looks like a secret (a password, token or private "
            "key); chassis.toml is shared and recorded, so give a reference instead: "
            '{ from_env = "VAR" } or { from_file = "PATH" }'
        )


def _check_references(stack: Stack) -> None:
    path = stack.path
    _check_export(stack)
    _check_defaults(stack)
    for name, component in stack.components.items():
        where = f"components.{name}"
        for key, value in component.env.items():
            _check_name(path, _key(f"{where}.env", key), "env", key)
            if isinstance(value, SecretRefSpec):
                _check_secret_ref(path, f"{where}.env.{key}", value)
                continue
            _check_value(path, f"{where}.env.{key}", value)
            if SECRET_KEY.search(key):
                raise StackError(
                    f"{path}: {where}.env.{key}: looks like a secret; chassis.toml is shared and "
                    f'recorded, so give a reference instead: {key} = {{ from_env = "VAR" }} '
                    'or { from_file = "PATH" }'
                )
            _refuse_secret_value(path, f"{where}.env.{key}", value)
        for size_key in ("memory", "vram"):
            try:
                parse_size(getattr(component.resources, size_key))
            except ValueError as e:
                raise StackError(f"{path}: {where}.resources.{size_key}: {e}") from None
        if component.resources.cpu < 0 or component.resources.gpus < 0:
            raise StackError(f"{path}: {where}.resources: cpu and gpus cannot be negative")
        _check_component_values(path, where, component)
        health = component.health
        if health is not None:
            _check_health(path, f"{where}.health", health)
            if isinstance(health.port, str) and health.port not in component.ports:
                raise StackError(
                    f"{path}: {where}.health.port: expected one of this component's ports "
                    f"({', '.join(component.ports) or 'none declared'}), found {health.port!r}"
                )
            if health.type in ("http", "tcp") and health.port is None:
                raise StackError(f"{path}: {where}.health.port: required for a {health.type} check")
            if health.type == "command" and not health.command:
                raise StackError(f"{path}: {where}.health.command: required for a command check")
    for name, profile in stack.profiles.items():
        if not profile.groups:
            raise StackError(f"{path}: profiles.{name}.groups: expected at least one group")
        placed: dict[str, str] = {}
        for group_name, group in profile.groups.items():
            _check_name(path, _key(f"profiles.{name}.groups", group_name), "group", group_name)
            for i, member in enumerate(group.components):
                if member not in stack.components:
                    known = ", ".join(stack.components) or "none"
                    raise StackError(
                        f"{path}: profiles.{name}.groups.{group_name}.components[{i}]: "
                        f"no component {member!r} (components: {known})"
                    )
                if member in placed:
                    raise StackError(
                        f"{path}: profiles.{name}.groups.{group_name}.components[{i}]: "
                        f"{member!r} is already in group {placed[member]!r}"
                    )
                placed[member] = group_name
            for label, value in group.labels.items():
                labels = f"profiles.{name}.groups.{group_name}.labels"
                _check_name(path, _key(labels, label), "label", label)
                _refuse_secret_value(path, f"{labels}.{label}", value)
    seen: dict[str, str] = {}
    for env_name, env in stack.environments.items():
        _check_ssh_timeout(path, f"environments.{env_name}", env.ssh_timeout_ms)
        for i, host in enumerate(env.hosts):
            where = f"environments.{env_name}.hosts[{i}]"
            _check_ssh_timeout(path, where, host.ssh_timeout_ms)
            _check_name(path, f"{where}.name", "host", host.name)
            if host.name in seen:
                raise StackError(
                    f"{path}: {where}.name: host {host.name!r} is already declared "
                    f"at {seen[host.name]}"
                )
            seen[host.name] = where
            if host.connector == "ssh":
                for required in ("address", "user"):
                    if not getattr(host, required):
                        raise StackError(f"{path}: {where}.{required}: required for an ssh host")
            if host.address is not None and not ADDRESS.match(host.address):
                raise StackError(
                    f"{path}: {where}.address: expected {ADDRESS_RULE}, found {host.address!r}"
                )
            if not 1 <= host.port <= 65535:
                raise StackError(f"{path}: {where}.port: expected 1-65535, found {host.port}")
            _check_host_paths(path, where, host)
            for label, value in host.labels.items():
                _check_name(path, _key(f"{where}.labels", label), "label", label)
                _refuse_secret_value(path, f"{where}.labels.{label}", value)
    for label_name, release in stack.releases.items():
        _check_release_values(path, f"releases.{label_name}", release)
        for key, value in release.config.items():
            # Release config becomes environment variables of every component.
            _check_name(path, _key(f"releases.{label_name}.config", key), "env", key)
            _check_value(path, f"releases.{label_name}.config.{key}", value)
            _refuse_secret_value(path, f"releases.{label_name}.config.{key}", value)
    for name, runtime in stack.runtimes.items():
        for size_key in ("min_vram", "min_memory"):
            try:
                parse_size(getattr(runtime, size_key))
            except ValueError as e:
                raise StackError(f"{path}: runtimes.{name}.{size_key}: {e}") from None
        _check_runtime_values(path, f"runtimes.{name}", runtime)


# -- numbers in range, paths that every connector and supervisor accepts ------------
# What the host steps would refuse half-way through an operation (the health
# gate's timings, a supervisor's paths) is refused here, before anything.

_UNIT_UNSAFE = re.compile(r"[\s\x00-\x1f\x7f\\\"']")
"""What a systemd unit setting cannot carry in a path (``adapters.supervisors.systemd``)."""
_SHA256 = re.compile(r"[0-9a-f]{64}\Z")
_VERSION = re.compile(r"\d+(\.\d+)*\Z")
_RANGE_CLAUSE = re.compile(r"(>=|<=|==|>|<)\s*\d+(\.\d+)*\Z")


def _check_port(path: Path, where: str, port: int) -> None:
    if not 1 <= port <= 65535:
        raise StackError(f"{path}: {where}: expected a port number 1-65535, found {port}")


def _check_component_values(path: Path, where: str, component: ComponentSpec) -> None:
    if not component.command.strip():
        raise StackError(f"{path}: {where}.command: expected a command, found an empty string")
    if "\0" in component.command:
        raise StackError(f"{path}: {where}.command: expected a command without NUL characters")
    for name, port in component.ports.items():
        _check_name(path, _key(f"{where}.ports", name), "port", name)
        _check_port(path, f"{where}.ports.{name}", port)
    if component.restart not in RESTART_MODES:
        raise StackError(
            f"{path}: {where}.restart: expected {' or '.join(RESTART_MODES)}, "
            f"found {component.restart!r}"
        )
    cpu = component.resources.cpu
    if not math.isfinite(cpu):
        raise StackError(f"{path}: {where}.resources.cpu: expected a number of cores, found {cpu}")


def _check_health(path: Path, where: str, health: HealthSpec) -> None:
    """The gate's settings in range and consistent: a gate that can never
    pass is a mistake in the file, not a failed deploy."""
    if isinstance(health.port, int):
        _check_port(path, f"{where}.port", health.port)
    if not health.path.startswith("/"):
        raise StackError(
            f"{path}: {where}.path: expected a path starting with /, found {health.path!r}"
        )
    if not 100 <= health.expect_status <= 599:
        raise StackError(
            f"{path}: {where}.expect_status: expected an HTTP status 100-599, "
            f"found {health.expect_status}"
        )
    if health.command is not None and not health.command.strip():
        raise StackError(f"{path}: {where}.command: expected a command, found an empty string")
    if health.passes < 1:
        raise StackError(f"{path}: {where}.passes: expected 1 or more, found {health.passes}")
    for key in ("interval_ms", "timeout_ms", "window_ms"):
        value = getattr(health, key)
        if value < 1:
            raise StackError(f"{path}: {where}.{key}: expected 1 or more (ms), found {value}")
    if health.timeout_ms > health.window_ms:
        raise StackError(
            f"{path}: {where}.timeout_ms: expected at most window_ms ({health.window_ms}), "
            f"found {health.timeout_ms}"
        )
    needed = (health.passes - 1) * health.interval_ms
    if needed >= health.window_ms:
        raise StackError(
            f"{path}: {where}.window_ms: expected more than {needed} ({health.passes} consecutive "
            f"passes {health.interval_ms} ms apart), found {health.window_ms}: the gate could "
            "never pass"
        )


def _check_host_paths(path: Path, where: str, host: HostSpec) -> None:
    """Roots are absolute on the host (a local root may be relative to the
    workspace, which makes it absolute); key files never depend on the cwd."""
    root = host.root
    if not root.strip() or "\0" in root or "\n" in root or "\r" in root:
        raise StackError(f"{path}: {where}.root: expected a directory path, found {root!r}")
    if host.connector == "ssh" and not posixpath.isabs(root):
        raise StackError(
            f"{path}: {where}.root: expected an absolute path on the host (such as /srv/app), "
            f"found {root!r}"
        )
    if host.supervisor == "systemd" and _UNIT_UNSAFE.search(root):
        raise StackError(
            f"{path}: {where}.root: expected a path without whitespace, quotes or backslashes "
            f"(systemd units name it), found {root!r}"
        )
    if host.key is not None and not (host.key.startswith("~") or posixpath.isabs(host.key)):
        raise StackError(
            f"{path}: {where}.key: expected an absolute path or one under ~, found {host.key!r}"
        )


def _check_release_values(path: Path, where: str, release: ReleaseSpec) -> None:
    if not release.artifact.strip():
        raise StackError(f"{path}: {where}.artifact: expected a file path, found an empty string")
    if release.sha256 is not None and not _SHA256.match(release.sha256):
        raise StackError(
            f"{path}: {where}.sha256: expected 64 lowercase hex digits, found {release.sha256!r}"
        )


def _check_runtime_values(path: Path, where: str, runtime: RuntimeSpec) -> None:
    for key in ("min_gpus", "min_cores"):
        value = getattr(runtime, key)
        if value < 0:
            raise StackError(f"{path}: {where}.{key}: expected 0 or more, found {value}")
    wanted = runtime.min_compute_capability
    if wanted is not None and not _VERSION.match(wanted):
        raise StackError(
            f"{path}: {where}.min_compute_capability: expected a version such as 8.0, "
            f"found {wanted!r}"
        )
    if runtime.cuda_driver is not None:
        clauses = [c.strip() for c in runtime.cuda_driver.split(",")]
        if not any(clauses) or not all(_RANGE_CLAUSE.match(c) for c in clauses if c):
            raise StackError(
                f"{path}: {where}.cuda_driver: expected a version range such as >=12.0,<13, "
                f"found {runtime.cuda_driver!r}"
            )
