"""A plan is data: what each host will run, compiled before anything happens.

``chassis plan`` and ``deploy --dry-run`` print it; the executor runs it; the
ledger records its digest (``sha256("chassis.plan.v1" ‖ 0x00 ‖ canonical(plan))``).
Building a plan has no side effects beyond registering declared hosts and
releases (which record facts, not intents).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, Protocol

import msgspec

from chassis.hosts import HostLike, resolve_root
from chassis.secrets import reference
from chassis.stack.schema import HealthSpec, SecretRefSpec
from chassis.stack.spec import Stack
from chassis.topology import compile_topology
from chassis.workspace import Workspace
from ledger.canonical import canonical_json
from ledger.releases import release_dir_name

PLAN_TAG = b"chassis.plan.v1\x00"
STEPS = ("upload", "verify", "unpack", "configure", "stop-old", "start", "health", "swap", "prune")


class ComponentPlan(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    command: str
    env: dict[str, str]
    ports: dict[str, int]
    health: dict[str, Any] | None
    secrets: dict[str, str] = {}
    """env name → reference (``env:VAR`` or ``file:/abs/path``), never a value."""


class HostPlan(msgspec.Struct, frozen=True, kw_only=True):
    host: str
    connector: str
    address: str
    root: str
    supervisor: str
    groups: list[str]
    components: list[ComponentPlan]
    steps: list[str]


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    app: str
    environment: str
    profile: str
    label: str
    release_id: str
    release_dir: str
    bundle_sha256: str
    bundle_size: int
    hosts: list[HostPlan]

    def digest(self) -> str:
        return hashlib.sha256(PLAN_TAG + canonical_json(self)).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = msgspec.to_builtins(self)
        data["digest"] = self.digest()
        return data

    def host(self, name: str) -> HostPlan:
        return next(h for h in self.hosts if h.host == name)


def health_dict(health: HealthSpec | None) -> dict[str, Any] | None:
    if health is None:
        return None
    result: dict[str, Any] = msgspec.to_builtins(health)
    return result


class ReleaseLike(Protocol):
    """A registered release, or one that planning only looked at."""

    @property
    def label(self) -> str: ...
    @property
    def release_id(self) -> str: ...
    @property
    def bundle_sha256(self) -> str: ...
    @property
    def bundle_size(self) -> int: ...
    @property
    def config(self) -> dict[str, str]: ...


def build_plan(
    stack: Stack,
    hosts_in_env: Sequence[HostLike],
    ws: Workspace,
    *,
    environment: str,
    profile: str,
    release: ReleaseLike,
) -> Plan:
    """Compile ``profile`` onto ``environment`` for ``release``. Pure: raises
    on any impossible placement; records nothing."""
    topology = compile_topology(stack, hosts_in_env, profile, environment)
    hosts = {h.name: h for h in hosts_in_env}
    by_host: dict[str, list[str]] = {}
    for group, _, _, assignment in topology.groups:
        by_host.setdefault(assignment.host, []).append(group)
    plans: list[HostPlan] = []
    for host_name in sorted(by_host):
        host = hosts[host_name]
        components: list[ComponentPlan] = []
        for group in by_host[host_name]:
            for name in stack.profile(profile).groups[group].components:
                spec = stack.components[name]
                components.append(
                    ComponentPlan(
                        name=name,
                        command=spec.command,
                        env={
                            k: v
                            for k, v in {**release.config, **spec.env}.items()
                            if isinstance(v, str)
                        },
                        ports=dict(spec.ports),
                        health=health_dict(spec.health),
                        secrets={
                            k: reference(v.from_env, v.from_file, ws.root)
                            for k, v in spec.env.items()
                            if isinstance(v, SecretRefSpec)
                        },
                    )
                )
        plans.append(
            HostPlan(
                host=host_name,
                connector=host.settings.connector,
                address=host.settings.address or "127.0.0.1",
                root=resolve_root(host, ws.root),
                supervisor=host.settings.supervisor,
                groups=by_host[host_name],
                components=components,
                steps=list(STEPS),
            )
        )
    return Plan(
        app=stack.app.name,
        environment=environment,
        profile=profile,
        label=release.label,
        release_id=release.release_id,
        release_dir=release_dir_name(release.release_id),
        bundle_sha256=release.bundle_sha256,
        bundle_size=release.bundle_size,
        hosts=plans,
    )
