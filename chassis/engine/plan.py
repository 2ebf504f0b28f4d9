"""A plan is data: what each host will run, compiled before anything happens.

``chassis plan`` and ``deploy --dry-run`` print it; the executor runs it; the
ledger records its digest (``sha256("chassis.plan.v1" ‖ 0x00 ‖ canonical(plan))``).
Building a plan has no side effects beyond registering declared hosts and
releases (which record facts, not intents).

A recorded plan is executed again by rollback, recover and repair, and read
back from state that may come from a snapshot (a cache, plain JSON).
:func:`verified_plan` is the only way back from recorded data to a ``Plan``
that runs: it refuses one whose digest is not the one its signed
``operation-started`` event carries (DESIGN §1, principle 9).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

import msgspec

from chassis.errors import ChassisError
from chassis.hosts import HostLike, resolve_root
from chassis.secrets import reference
from chassis.stack.schema import HealthSpec, SecretRefSpec
from chassis.stack.spec import Stack
from chassis.topology import compile_topology
from chassis.workspace import Workspace
from ledger.application import Ledger
from ledger.canonical import canonical_json
from ledger.installations import Installation
from ledger.releases import release_dir_name

PLAN_TAG = b"chassis.plan.v1\x00"
STEPS = ("upload", "verify", "unpack", "configure", "stop-old", "start", "health", "swap", "prune")
MODEL_DIR_ENV = "CHASSIS_MODEL_DIR"
"""What a component with a ``model`` gets: that model's directory on its host."""


class ModelRef(msgspec.Struct, frozen=True, kw_only=True):
    """The model a component runs with, as the plan was made: its name and
    the manifest digest whose directory ``CHASSIS_MODEL_DIR`` names."""

    name: str
    digest: str
    swapped: bool | msgspec.UnsetType = msgspec.UNSET
    """True when ``chassis model swap`` chose it instead of the stack file's ``model``."""


def model_dir(root: str, digest: str) -> str:
    """Where manifest ``digest`` lives on a host whose root is ``root``."""
    return "/".join([root.rstrip("/"), "models", "sha256", digest])


class ComponentPlan(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    command: str
    env: dict[str, str]
    ports: dict[str, int]
    health: dict[str, Any] | None
    secrets: dict[str, str] = {}
    """env name → reference (``env:VAR``, ``file:/abs/path`` or
    ``store:NAME@VERSION``, pinned by ``chassis.engine.deploy.prepare``),
    never a value."""
    secret_fingerprints: dict[str, str] | msgspec.UnsetType = msgspec.UNSET
    """env name → ``KEYID:HMAC`` of each secret's value when the plan was made
    (``chassis.secrets.fingerprint``): a rotated secret changes the plan, and
    the revision says which reference changed, never the value. Left out
    (UNSET) when there are no secrets, or when they could not be read for a
    plan that records nothing."""
    restart: str | msgspec.UnsetType = msgspec.UNSET
    """The stack file's ``restart``, recorded only when it is not the default
    ``on-failure`` (UNSET fields are left out of the encoding): a plan that
    does not set it has the same bytes, and so the same digest, as before the
    field existed."""
    model: ModelRef | msgspec.UnsetType = msgspec.UNSET
    """The component's model (left out when it has none: the plan's bytes
    are then those of a plan made before models existed)."""

    @property
    def restart_mode(self) -> str:
        """``restart`` with its default: what the supervisor gets."""
        return "on-failure" if isinstance(self.restart, msgspec.UnsetType) else self.restart


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

    def models(self, host: str) -> dict[str, str]:
        """component → model digest of what this plan runs on ``host``."""
        return {
            c.name: c.model.digest
            for h in self.hosts
            if h.host == host
            for c in h.components
            if isinstance(c.model, ModelRef)
        }


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
    models: Mapping[str, ModelRef] | None = None,
) -> Plan:
    """Compile ``profile`` onto ``environment`` for ``release``. Pure: raises
    on any impossible placement; records nothing. ``models``: component →
    the model it runs with (resolved from the ledger by the caller), for
    every placed component whose stack entry names a ``model``."""
    models = models or {}
    topology = compile_topology(stack, hosts_in_env, profile, environment)
    hosts = {h.name: h for h in hosts_in_env}
    by_host: dict[str, list[str]] = {}
    for group, _, _, assignment in topology.groups:
        by_host.setdefault(assignment.host, []).append(group)
    plans: list[HostPlan] = []
    for host_name in sorted(by_host):
        host = hosts[host_name]
        root = resolve_root(host, ws.root)
        components: list[ComponentPlan] = []
        for group in by_host[host_name]:
            for name in stack.profile(profile).groups[group].components:
                spec = stack.components[name]
                model = models.get(name)
                if spec.model is not None and model is None:
                    raise ChassisError(f"component {name}: model {spec.model} was not resolved")
                env = {
                    k: v for k, v in {**release.config, **spec.env}.items() if isinstance(v, str)
                }
                if model is not None:
                    env[MODEL_DIR_ENV] = model_dir(root, model.digest)
                components.append(
                    ComponentPlan(
                        name=name,
                        command=spec.command,
                        env=env,
                        ports=dict(spec.ports),
                        health=health_dict(spec.health),
                        secrets={
                            k: reference(v.from_env, v.from_file, ws.root, secret=v.secret)
                            for k, v in spec.env.items()
                            if isinstance(v, SecretRefSpec)
                        },
                        restart=msgspec.UNSET if spec.restart == "on-failure" else spec.restart,
                        model=msgspec.UNSET if model is None else model,
                    )
                )
        plans.append(
            HostPlan(
                host=host_name,
                connector=host.settings.connector,
                address=host.settings.address or "127.0.0.1",
                root=root,
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


class PlanDigestMismatch(ChassisError):
    """A recorded plan is not the plan its signed intent named: running it
    would execute bytes nobody signed. Nothing was recorded or changed."""

    exit_code = 8


def check_plan(plan: Plan, recorded: str, *, installation: str, revision: int) -> Plan:
    """``plan`` if it hashes to ``recorded``; ``PlanDigestMismatch`` otherwise."""
    found = plan.digest()
    if found != recorded:
        raise PlanDigestMismatch(
            f"{installation}: the plan of revision {revision} has digest {found[:16]}… but its "
            f"intent recorded plan_digest {recorded[:16]}…: refusing to execute it "
            "(nothing was recorded or changed; run 'chassis ledger verify')"
        )
    return plan


def _data_digest(data: dict[str, Any]) -> str:
    return hashlib.sha256(PLAN_TAG + canonical_json(data)).hexdigest()


def recorded_form(plan: Plan) -> tuple[str, dict[str, Any]]:
    """The digest and the recorded data of exactly the plan about to run.

    The one place an intent's ``plan_digest`` and ``plan`` are computed: the
    data is read back and checked here, so what is signed is what
    :func:`verified_plan` will accept later (a lossy encoding would otherwise
    surface as a refused rollback of an honest ledger)."""
    digest = plan.digest()
    data: dict[str, Any] = msgspec.to_builtins(plan)
    if msgspec.convert(data, Plan).digest() != digest:
        raise RuntimeError(f"plan {digest[:16]}… does not survive being recorded (a bug)")
    return digest, data


def verified_plan(ledger: Ledger, installation: Installation, revision: int) -> Plan:
    """The plan ``revision`` recorded, as a ``Plan`` to execute, checked against
    the ``plan_digest`` of the revision's entry and of its signed
    ``operation-started`` event (read from the ledger, not from the state the
    plan came from: a snapshot could carry a changed plan and digest alike)."""
    name = f"{installation.app}/{installation.environment}"
    data = installation.plan_of(revision)
    try:
        plan = msgspec.convert(data, Plan)
    except msgspec.ValidationError as e:
        raise PlanDigestMismatch(
            f"{name}: the recorded plan of revision {revision} is not a plan ({e}): "
            "refusing to execute it (nothing was recorded or changed)"
        ) from None
    entry = installation.revision_entry(revision)
    for recorded in (str(entry["plan_digest"]), _signed_digest(ledger, installation, entry)):
        # A plan recorded before a defaulted field existed (``secrets``) hashes
        # without it: the data read is then exactly the bytes signed, and the
        # plan is converted from it.
        if _data_digest(data) != recorded:
            check_plan(plan, recorded, installation=name, revision=revision)
    return plan


def verified_plans(
    ledger: Ledger, installation: Installation, revisions: Iterable[int]
) -> dict[int, Plan]:
    """:func:`verified_plan` for each revision (each checked once)."""
    return {r: verified_plan(ledger, installation, r) for r in sorted(set(revisions))}


def hosts_revisions(installation: Installation) -> set[int]:
    """The revisions whose plans the hosts run now (what a restore would start)."""
    return {int(entry["revision"]) for entry in installation.hosts.values()}


def running_models(installation: Installation) -> dict[str, dict[str, str]]:
    """host → component → model digest of what each host runs now (the plan
    of its active revision); hosts whose components run no model are left out."""
    found: dict[str, dict[str, str]] = {}
    for host, entry in installation.hosts.items():
        plan = msgspec.convert(installation.plan_of(int(entry["revision"])), Plan)
        models = plan.models(host)
        if models:
            found[host] = models
    return found


def running_secrets(installation: Installation) -> dict[str, dict[str, dict[str, str]]]:
    """host → component → secret references of what each host runs now (the
    plan of its active revision; a store reference names its version):
    two revisions of one release that ran other secret versions differ."""
    found: dict[str, dict[str, dict[str, str]]] = {}
    for host, entry in installation.hosts.items():
        plan = msgspec.convert(installation.plan_of(int(entry["revision"])), Plan)
        secrets = {
            c.name: dict(c.secrets)
            for h in plan.hosts
            if h.host == host
            for c in h.components
            if c.secrets
        }
        if secrets:
            found[host] = secrets
    return found


def _signed_digest(ledger: Ledger, installation: Installation, entry: dict[str, Any]) -> str:
    revision = int(entry["revision"])
    version = int(entry.get("started_version", 0))
    if version >= 1:
        for _, event in ledger.verified_events(installation.id, gt=version - 1, lte=version):
            if isinstance(event, Installation.OperationStarted) and event.revision == revision:
                return event.plan_digest
    raise PlanDigestMismatch(
        f"{installation.app}/{installation.environment}: no signed intent of revision "
        f"{revision} at version {version}: refusing to execute its plan "
        "(nothing was recorded or changed; run 'chassis ledger verify')"
    )
