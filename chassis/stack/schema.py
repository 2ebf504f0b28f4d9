"""The shape of ``chassis.toml``: msgspec Structs, one per table.

Only structure lives here; cross-references (a profile naming a component,
duplicate host names, sizes) are checked by :mod:`chassis.stack.spec`.
"""

from __future__ import annotations

from typing import Literal

import msgspec


class _Table(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """A TOML table: unknown keys are errors, never silently ignored."""


class AppSpec(_Table, kw_only=True, frozen=True, forbid_unknown_fields=True):
    name: str
    description: str = ""


class HealthSpec(_Table, kw_only=True, frozen=True, forbid_unknown_fields=True):
    type: Literal["http", "tcp", "command"]
    port: str | int | None = None
    """A port name from the component's ``ports``, or a number."""
    path: str = "/"
    expect_status: int = 200
    body_contains: str | None = None
    command: str | None = None
    interval_ms: int = 500
    timeout_ms: int = 2000
    passes: int = 2
    """Consecutive passes required."""
    window_ms: int = 30000
    """Give up after this long."""


class ResourcesSpec(_Table, kw_only=True, frozen=True, forbid_unknown_fields=True):
    cpu: int | float = 0
    """Cores; fractions allowed (0.5 = 500 millicores)."""
    memory: int | str = 0
    """Bytes, or a size such as "512MiB"."""
    gpus: int = 0
    vram: int | str = 0
    """Per GPU: bytes, or a size such as "8GiB"."""


class SecretRefSpec(_Table, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """``{ from_env = "VAR" }``, ``{ from_file = "PATH" }`` or
    ``{ secret = "NAME" }``: a secret resolved on the machine running chassis
    at deploy time; only the reference is recorded, never the value. A
    ``secret`` is one of the workspace's secret store (``chassis secret set``):
    the plan pins the version current when it is made (``store:NAME@3``), so a
    rollback restores the version its revision ran."""

    from_env: str | None = None
    from_file: str | None = None
    secret: str | None = None


class ScoreSpec(_Table, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """The evolution scoring gate (``guides/evolution.md``): ``command`` runs on
    the host against the candidate's trial and against production, and prints
    a JSON object holding ``metric``; the candidate is blocked when it regresses
    past ``max_regression`` (a fraction of the baseline) or leaves ``min``/``max``."""

    command: str
    metric: str
    better: Literal["lower", "higher"] = "lower"
    max_regression: float | None = None
    min: float | None = None
    max: float | None = None
    timeout_ms: int = 30000


class ComponentSpec(_Table, kw_only=True, frozen=True, forbid_unknown_fields=True):
    command: str
    env: dict[str, str | SecretRefSpec] = {}
    ports: dict[str, int] = {}
    health: HealthSpec | None = None
    resources: ResourcesSpec = ResourcesSpec()
    restart: str = "on-failure"
    """``on-failure`` (restart it when it crashes) or ``never``; checked with the
    allowed values (``adapters.supervisors.base.RESTART_MODES``)."""
    score: ScoreSpec | None = None
    model: str | None = None
    """A recorded model's NAME (``chassis model add``): the plan gives the
    component ``CHASSIS_MODEL_DIR``, that model's newest manifest on its host
    (``guides/model_assets.md``)."""


class GroupSpec(_Table, kw_only=True, frozen=True, forbid_unknown_fields=True):
    components: list[str]
    labels: dict[str, str] = {}
    """Host labels this group requires."""


class ProfileSpec(_Table, kw_only=True, frozen=True, forbid_unknown_fields=True):
    description: str = ""
    groups: dict[str, GroupSpec]


class HostSpec(_Table, kw_only=True, frozen=True, forbid_unknown_fields=True):
    name: str
    connector: Literal["local", "ssh"]
    root: str
    address: str | None = None
    port: int = 22
    user: str | None = None
    key: str | None = None
    """Private key file for ssh (a path; its content never enters the ledger)."""
    supervisor: Literal["direct", "systemd"] = "direct"
    labels: dict[str, str] = {}
    ssh_timeout_ms: int | None = None
    """Overrides the environment's ``ssh_timeout_ms`` for this host."""


class EnvironmentSpec(_Table, kw_only=True, frozen=True, forbid_unknown_fields=True):
    description: str = ""
    hosts: list[HostSpec]
    profile: str | None = None
    """The profile a deploy to this environment uses when ``--profile`` is not given."""
    ssh_timeout_ms: int | None = None
    """How long an ssh host may stay silent before the step waiting on it fails:
    connecting (at most 10 s), a transfer making no progress, keepalives
    unanswered. Default 30000 (a frozen host fails within 40 s). Not recorded:
    it is how this workspace reaches its hosts, not what runs on them."""


class ReleaseSpec(_Table, kw_only=True, frozen=True, forbid_unknown_fields=True):
    artifact: str
    sha256: str | None = None
    config: dict[str, str] = {}


class RuntimeSpec(_Table, kw_only=True, frozen=True, forbid_unknown_fields=True):
    description: str = ""
    gpu: Literal["nvidia", "none"] = "none"
    min_gpus: int = 0
    min_vram: int | str = 0
    min_compute_capability: str | None = None
    cuda_driver: str | None = None
    """A version range such as ">=12.0,<13"."""
    min_cores: int = 0
    min_memory: int | str = 0


class DefaultsSpec(_Table, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """``[defaults]``: what a command uses when ``--env``/``--profile`` are left out."""

    env: str | None = None
    profile: str | None = None


class LedgerSpec(_Table, kw_only=True, frozen=True, forbid_unknown_fields=True):
    url: str | None = None


class ExportSpec(_Table, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Where receipts go for the tracing plane (``chassis receipts export``)."""

    format: str = "otlp-json"
    """One of ``proofs.export.FORMATS``; checked with the allowed names."""
    to: str | None = None
    """An http(s):// URL (OTLP: the collector base) or a file path (relative to the workspace)."""
    auto: bool = False
    """Export new receipts after every signing command."""
    timeout_ms: int = 2000

    @property
    def auto_destination(self) -> str | None:
        """Where receipts go after every signing command: ``to`` when ``auto``
        is on and names a destination, else None (nothing is exported)."""
        return self.to if self.auto and self.to else None
