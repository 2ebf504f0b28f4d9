"""Loading and validating ``chassis.toml`` into a :class:`Stack`.

Every error is one line: the file, the key path (``environments.prod.hosts[2].port``),
what was expected (the valid values or keys, where there is a list) and what
was found. Validation goes on past a problem and collects every one: a
:class:`StackError` says the first (its message, one line) and carries them
all (``problems``), which ``chassis stack validate`` prints.

Names are data (DESIGN.md §1 principle 10): the app, component, profile,
node group, environment, host, runtime and release names and label keys
follow :data:`adapters.connectors.base.NAME`; env and release config keys
follow :data:`adapters.connectors.base.ENV_NAME`; ssh addresses follow
:data:`adapters.connectors.base.ADDRESS`. A name outside its rule is refused
here, before it can reach a command line, a path, a unit name or an env file.
"""

from __future__ import annotations

import contextlib
import math
import posixpath
import re
import tomllib
import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import msgspec

from adapters.connectors.base import ADDRESS, ADDRESS_RULE, ENV_NAME, NAME, name_problem
from adapters.health.http_get import path_problem
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
    ScoreSpec,
    SecretRefSpec,
)
from chassis.stack.store_url import StoreURL, parse_store_url
from chassis.toml_files import load_toml
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
    """``chassis.toml`` is malformed or inconsistent.

    ``str()`` is the first problem, one line; ``problems`` holds every one
    (the first included): each table's types and keys first, then the
    references between tables and the values' ranges."""

    def __init__(self, message: str, problems: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.problems: list[str] = list(problems) or [message]

    def diagnostics(self) -> str:
        """The first problem, and how many more ``chassis stack validate`` lists."""
        more = len(self.problems) - 1
        if more < 1:
            return str(self)
        noun = "problem" if more == 1 else "problems"
        return f"{self} (and {more} more {noun}: run `chassis stack validate`)"


class _Problems:
    """Every problem of one stack file: each check runs in :meth:`each`,
    which records its ``StackError`` and lets the next check run."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, line: str) -> None:
        self.lines.append(line)

    @contextlib.contextmanager
    def each(self) -> Iterator[None]:
        try:
            yield
        except StackError as e:
            self.lines.extend(e.problems)

    def raise_any(self) -> None:
        if self.lines:
            raise StackError(self.lines[0], self.lines)


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
    release_store: StoreURL | None = None
    """``[releases] store``; None: the default for the ledger's kind."""

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
        raw = load_toml(path)
    except FileNotFoundError:
        raise StackError(f"{path}: no stack file (run 'chassis init --example')") from None
    except tomllib.TOMLDecodeError as e:
        raise StackError(f"{path}: invalid TOML: {e}") from None
    return validate_stack(raw, path)


def validate_stack(raw: dict[str, Any], path: Path) -> Stack:
    """The stack in ``raw``; else a ``StackError`` carrying every problem."""
    problems = _Problems()
    for key in raw:
        if key not in SECTIONS:
            problems.add(f"{path}: {key}: unknown section (expected one of {', '.join(SECTIONS)})")
    app = AppSpec(name="")  # never returned: a missing or bad [app] is a problem
    if "app" not in raw:
        problems.add(f'{path}: app: missing section [app] with name = "…"')
    else:
        with problems.each():
            app = _convert(raw["app"], AppSpec, "app", path)
            _check_name(path, "app.name", "app", app.name)
    raw, release_store = _release_store(raw, path, problems)
    stack = Stack(
        path=path,
        app=app,
        components=_table_of(raw, "components", ComponentSpec, path, problems),
        profiles=_table_of(raw, "profiles", ProfileSpec, path, problems),
        environments=_table_of(raw, "environments", EnvironmentSpec, path, problems),
        releases=_table_of(raw, "releases", ReleaseSpec, path, problems),
        runtimes=_table_of(raw, "runtimes", RuntimeSpec, path, problems),
        ledger=_convert_or(LedgerSpec(), raw.get("ledger", {}), "ledger", path, problems),
        export=_convert_or(ExportSpec(), raw.get("export", {}), "export", path, problems),
        defaults=_convert_or(DefaultsSpec(), raw.get("defaults", {}), "defaults", path, problems),
        release_store=release_store,
    )
    _check_references(stack, _Declared(raw), problems)
    problems.raise_any()
    return stack


def release_store(raw: dict[str, Any], path: Path) -> StoreURL | None:
    """``[releases] store`` of the raw stack file, parsed: a string, so never
    a release label (a table); ``StackError`` naming the key if it is bad."""
    releases = raw.get("releases")
    value = releases.get("store") if isinstance(releases, dict) else None
    if value is None or isinstance(value, dict):  # none, or a release labelled "store"
        return None
    if not isinstance(value, str):
        raise StackError(f"{path}: releases.store: expected a string, found {_describe(value)}")
    try:
        return parse_store_url(value)
    except ValueError as e:
        raise StackError(f"{path}: releases.store: {e}") from None


def _release_store(
    raw: dict[str, Any], path: Path, problems: _Problems
) -> tuple[dict[str, Any], StoreURL | None]:
    """:func:`release_store` (a problem if bad), and ``raw`` without it, for the labels."""
    releases = raw.get("releases")
    if not isinstance(releases, dict) or isinstance(releases.get("store", {}), dict):
        return raw, None
    rest = {**raw, "releases": {k: v for k, v in releases.items() if k != "store"}}
    try:
        return rest, release_store(raw, path)
    except StackError as e:
        problems.add(str(e))
        return rest, None


class _Declared:
    """The names each section of the file declares, converted or not: a
    reference to an entry that has its own problem is not another problem."""

    def __init__(self, raw: dict[str, Any]) -> None:
        self._raw = raw

    def names(self, section: str) -> list[str] | None:
        """None when the section itself is not a table (nothing to check against)."""
        table = self._raw.get(section, {})
        return [str(name) for name in table] if isinstance(table, dict) else None


def _table_of(
    raw: dict[str, Any], section: str, kind: type[T], path: Path, problems: _Problems
) -> dict[str, T]:
    """The entries of ``[section]`` that convert; each one that does not is a problem."""
    table = raw.get(section, {})
    if not isinstance(table, dict):
        problems.add(f"{path}: {section}: expected a table, found {_describe(table)}")
        return {}
    result: dict[str, T] = {}
    for name, value in table.items():
        with problems.each():
            _check_name(path, _key(section, name), _KINDS[section], name)
            result[name] = _convert(value, kind, f"{section}.{name}", path)
    return result


def _convert_or(default: T, value: Any, where: str, path: Path, problems: _Problems) -> T:
    """``value`` as the type of ``default``; ``default`` (and a problem) when it is not one."""
    try:
        return _convert(value, type(default), where, path)
    except StackError as e:
        problems.add(str(e))
        return default


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
        raise StackError(f"{path}: {_explain(str(e), value, where, kind)}") from None


def _explain(message: str, raw: Any, where: str, kind: Any = None) -> str:
    """Turn msgspec's ``Expected `int`, got `str` - at `$.hosts[2].port``` into
    ``environments.prod.hosts[2].port: expected an integer, found "x"``; where
    the schema (``kind``, followed along the path) has a list of valid values
    or keys, the line names them."""
    detail, _, at = message.partition(" - at `")
    segments = re.findall(r"\.([^.\[`]+)|\[(\d+|\.\.\.)\]", at.rstrip("`").removeprefix("$"))
    node: Any = raw
    schema: Any = kind
    parts: list[str] = [where]
    for key, index in segments:
        if key:
            parts.append(f".{key}")
            node = node.get(key) if isinstance(node, dict) else None
            schema = _schema_step(schema, key)
        elif index == "...":
            bad = _first_bad_key(node, detail)
            parts.append(f".{bad}" if bad is not None else "[…]")
            node = node.get(bad) if isinstance(node, dict) and bad is not None else None
            schema = _schema_step(schema, None)
        else:
            parts.append(f"[{index}]")
            node = node[int(index)] if isinstance(node, list) and int(index) < len(node) else None
            schema = _schema_step(schema, int(index))
    location = "".join(parts)
    unknown = re.match(r"Object contains unknown field `(.+)`", detail)
    if unknown:
        keys = _schema_keys(schema)
        valid = f"; expected one of: {', '.join(keys)}" if keys else ""
        return f"{location}.{unknown.group(1)}: unknown key{valid}"
    missing = re.match(r"Object missing required field `(.+)`", detail)
    if missing:
        return f"{location}.{missing.group(1)}: missing required key"
    values = _schema_values(schema)
    if values and detail.startswith("Invalid enum value"):
        return f"{location}: expected one of {', '.join(values)}, found {node!r}"
    expected = re.match(r"Expected `(.+?)`, got `(.+?)`", detail)
    if expected and values:
        return f"{location}: expected one of {', '.join(values)}, found {_describe(node)}"
    if expected:
        wanted = " or ".join(
            _TYPE_WORDS.get(t.strip(), t.strip()) for t in expected.group(1).split("|")
        )
        return f"{location}: expected {wanted}, found {_describe(node)}"
    return f"{location}: {detail[0].lower()}{detail[1:]}"


def _members(schema: Any) -> list[Any]:
    """The types of a union (``X | None`` without the None), or the one type."""
    if get_origin(schema) in (Union, types.UnionType):
        return [member for member in get_args(schema) if member is not type(None)]
    return [] if schema is None else [schema]


def _is_table(member: Any) -> bool:
    return isinstance(member, type) and issubclass(member, msgspec.Struct)


def _schema_step(schema: Any, step: str | int | None) -> Any:
    """The type one step down: a table's key (``str``), an array's item
    (``int``), a map's value (a key msgspec hides: ``None``); None when unknown."""
    for member in _members(schema):
        origin = get_origin(member)
        if isinstance(step, int):
            if origin is list:
                return get_args(member)[0]
        elif origin is dict:
            return get_args(member)[1]
        elif step is not None and _is_table(member) and step in member.__struct_fields__:
            return get_type_hints(member)[step]
    return None


def _schema_keys(schema: Any) -> list[str]:
    """The keys of the table the schema describes, in declaration order."""
    for member in _members(schema):
        if _is_table(member):
            return list(member.__struct_fields__)
    return []


def _schema_values(schema: Any) -> list[str]:
    """The values of a ``Literal`` field, in declaration order."""
    return [
        str(value)
        for member in _members(schema)
        if get_origin(member) is Literal
        for value in get_args(member)
    ]


def _first_bad_key(node: Any, detail: str) -> str | None:
    """msgspec hides dict keys as ``[...]``: find the entry the error is about."""
    if not isinstance(node, dict):
        return None
    unknown = re.search(r"unknown field `(.+?)`", detail)
    for key, value in node.items():
        if unknown and isinstance(value, dict) and unknown.group(1) in value:
            return str(key)
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


def _check_defaults(stack: Stack, declared: _Declared, problems: _Problems) -> None:
    """``[defaults]`` and each environment's ``profile`` name what the file declares."""
    path = stack.path
    environments, profiles = declared.names("environments"), declared.names("profiles")
    wanted = stack.defaults.env
    if environments is not None and wanted is not None and wanted not in environments:
        known = ", ".join(environments) or "none"
        problems.add(f"{path}: defaults.env: no environment {wanted!r} (environments: {known})")
    chosen = [("defaults.profile", stack.defaults.profile)] + [
        (f"environments.{name}.profile", env.profile) for name, env in stack.environments.items()
    ]
    for where, profile in chosen:
        if profiles is not None and profile is not None and profile not in profiles:
            known = ", ".join(profiles) or "none"
            problems.add(f"{path}: {where}: no profile {profile!r} (profiles: {known})")


def _check_ssh_timeout(path: Path, where: str, value: int | None) -> None:
    low, high = SSH_TIMEOUT_MS
    if value is not None and not low <= value <= high:
        raise StackError(f"{path}: {where}.ssh_timeout_ms: expected {low}-{high}, found {value}")


def _check_secret_ref(path: Path, where: str, ref: SecretRefSpec) -> None:
    given = [v for v in (ref.from_env, ref.from_file, ref.secret) if v is not None]
    if len(given) != 1:
        raise StackError(f"{path}: {where}: expected exactly one of from_env, from_file or secret")
    if ref.secret is not None:
        _check_name(path, f"{where}.secret", "secret", ref.secret)
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


def _check_references(stack: Stack, declared: _Declared, problems: _Problems) -> None:
    """Each check its own unit: one problem does not hide the next."""
    path = stack.path
    with problems.each():
        _check_export(stack)
    _check_defaults(stack, declared, problems)
    for name, component in stack.components.items():
        where = f"components.{name}"
        for key, value in component.env.items():
            with problems.each():
                _check_env(path, f"{where}.env", key, value)
        with problems.each():
            _check_resources(path, where, component)
        with problems.each():
            _check_component_values(path, where, component)
        if component.health is not None:
            with problems.each():
                _check_component_health(path, where, component, component.health)
    for name, profile in stack.profiles.items():
        _check_profile(path, name, profile, declared.names("components"), problems)
    seen: dict[str, str] = {}
    for env_name, env in stack.environments.items():
        with problems.each():
            _check_ssh_timeout(path, f"environments.{env_name}", env.ssh_timeout_ms)
        for i, host in enumerate(env.hosts):
            where = f"environments.{env_name}.hosts[{i}]"
            with problems.each():
                _check_host(path, where, host, seen)
            for label, value in host.labels.items():
                with problems.each():
                    _check_name(path, _key(f"{where}.labels", label), "label", label)
                    _refuse_secret_value(path, f"{where}.labels.{label}", value)
    for label_name, release in stack.releases.items():
        with problems.each():
            _check_release_values(path, f"releases.{label_name}", release)
        for key, value in release.config.items():
            with problems.each():
                # Release config becomes environment variables of every component.
                _check_name(path, _key(f"releases.{label_name}.config", key), "env", key)
                _check_value(path, f"releases.{label_name}.config.{key}", value)
                _refuse_secret_value(path, f"releases.{label_name}.config.{key}", value)
    for name, runtime in stack.runtimes.items():
        with problems.each():
            for size_key in ("min_vram", "min_memory"):
                try:
                    parse_size(getattr(runtime, size_key))
                except ValueError as e:
                    raise StackError(f"{path}: runtimes.{name}.{size_key}: {e}") from None
            _check_runtime_values(path, f"runtimes.{name}", runtime)


def _check_env(path: Path, where: str, key: str, value: str | SecretRefSpec) -> None:
    """One ``env`` entry of a component: its name, and a value or a reference."""
    _check_name(path, _key(where, key), "env", key)
    if isinstance(value, SecretRefSpec):
        _check_secret_ref(path, f"{where}.{key}", value)
        return
    _check_value(path, f"{where}.{key}", value)
    if SECRET_KEY.search(key):
        raise StackError(
            f"{path}: {where}.{key}: looks like a secret; chassis.toml is shared and "
            f'recorded, so give a reference instead: {key} = {{ from_env = "VAR" }} '
            'or { from_file = "PATH" }'
        )
    _refuse_secret_value(path, f"{where}.{key}", value)


def _check_resources(path: Path, where: str, component: ComponentSpec) -> None:
    for size_key in ("memory", "vram"):
        try:
            parse_size(getattr(component.resources, size_key))
        except ValueError as e:
            raise StackError(f"{path}: {where}.resources.{size_key}: {e}") from None
    if component.resources.cpu < 0 or component.resources.gpus < 0:
        raise StackError(f"{path}: {where}.resources: cpu and gpus cannot be negative")


def _check_component_health(
    path: Path, where: str, component: ComponentSpec, health: HealthSpec
) -> None:
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


def _check_profile(
    path: Path, name: str, profile: ProfileSpec, components: list[str] | None, problems: _Problems
) -> None:
    """Each group's name, members and labels. A member is checked against the
    components the file declares (``None``: the section is not a table)."""
    if not profile.groups:
        problems.add(f"{path}: profiles.{name}.groups: expected at least one group")
    placed: dict[str, str] = {}
    for group_name, group in profile.groups.items():
        with problems.each():
            _check_name(path, _key(f"profiles.{name}.groups", group_name), "group", group_name)
        for i, member in enumerate(group.components):
            where = f"profiles.{name}.groups.{group_name}.components[{i}]"
            if components is not None and member not in components:
                known = ", ".join(components) or "none"
                problems.add(f"{path}: {where}: no component {member!r} (components: {known})")
            elif member in placed:
                problems.add(f"{path}: {where}: {member!r} is already in group {placed[member]!r}")
            else:
                placed[member] = group_name
        for label, value in group.labels.items():
            labels = f"profiles.{name}.groups.{group_name}.labels"
            with problems.each():
                _check_name(path, _key(labels, label), "label", label)
                _refuse_secret_value(path, f"{labels}.{label}", value)


def _check_host(path: Path, where: str, host: HostSpec, seen: dict[str, str]) -> None:
    """One host: its name (unique across environments), connection and paths."""
    _check_ssh_timeout(path, where, host.ssh_timeout_ms)
    _check_name(path, f"{where}.name", "host", host.name)
    if host.name in seen:
        raise StackError(
            f"{path}: {where}.name: host {host.name!r} is already declared at {seen[host.name]}"
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
    if component.score is not None:
        _check_score(path, f"{where}.score", component.score)
    if component.model is not None:
        _check_name(path, f"{where}.model", "model", component.model)


def _check_score(path: Path, where: str, score: ScoreSpec) -> None:
    """The evolution scoring gate (guides/evolution.md): a command, a metric
    name, thresholds that are finite numbers, a timeout in range."""
    if not score.command.strip() or "\0" in score.command:
        raise StackError(f"{path}: {where}.command: expected a command, found {score.command!r}")
    if not score.metric.strip():
        raise StackError(f"{path}: {where}.metric: expected the name of a metric")
    for key in ("max_regression", "min", "max"):
        value = getattr(score, key)
        if value is not None and not math.isfinite(value):
            raise StackError(f"{path}: {where}.{key}: expected a finite number, found {value}")
    if score.max_regression is not None and score.max_regression < 0:
        raise StackError(
            f"{path}: {where}.max_regression: expected 0 or more (a fraction of the baseline), "
            f"found {score.max_regression}"
        )
    if not 1 <= score.timeout_ms <= 600_000:
        raise StackError(f"{path}: {where}.timeout_ms: expected 1-600000, found {score.timeout_ms}")


def _check_health(path: Path, where: str, health: HealthSpec) -> None:
    """The gate's settings in range and consistent: a gate that can never
    pass is a mistake in the file, not a failed deploy."""
    if isinstance(health.port, int):
        _check_port(path, f"{where}.port", health.port)
    problem = path_problem(health.path)
    if problem is not None:
        raise StackError(f"{path}: {where}.path: {problem}, found {health.path!r}")
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
