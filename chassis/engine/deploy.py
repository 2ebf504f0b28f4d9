"""Deploying a release: intent and lease first, host steps next, outcome last.

1. Compile the plan (no events if that fails), and check the recorded plans
   of what the hosts run now (a failure restores them) against their signed
   digests.
2. Append ``OperationStarted`` (the signed intent, which takes the lease).
3. Run every host's steps in parallel, appending each step's outcome.
4. If more hosts fail than ``max_failures`` allows, restore every touched
   host to its previous release (each restore recorded); otherwise restore
   only the failed hosts.
5. Append ``OperationFinished`` (which releases the lease).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from adapters.connectors.base import Connector
from adapters.errors import ConnectorError
from chassis.engine import preflight
from chassis.engine.executor import INTERRUPTED, scrubbed
from chassis.engine.lifecycle import (
    RETIRED,
    Before,
    Operation,
    befores,
    run_operation,
)
from chassis.engine.operation import OperationRecorder, load_installation
from chassis.engine.plan import (
    ModelRef,
    Plan,
    build_plan,
    hosts_revisions,
    recorded_form,
    verified_plans,
)
from chassis.engine.preflight import (
    HostsUnreachable,
    check_bundle,
    check_plan,
    reach_hosts,
)
from chassis.engine.releases import (
    all_releases,
    bundle_path,
    peek_release,
    require_bundle,
    resolve_release,
)
from chassis.errors import ChassisError, NotFound
from chassis.hosts import HostView, declared_views, environment_hosts, sync_declared
from chassis.inventory import ProbeFailed, inventory, probe
from chassis.models.cache import require_models
from chassis.receipts import redaction_key
from chassis.secrets import (
    SecretUnavailable,
    changed_secrets,
    check_available,
    describe,
    fingerprints,
    pin_refs,
    store_ref,
)
from chassis.stack.spec import Stack
from chassis.workspace import Workspace
from ledger.application import Ledger
from ledger.hosts import Host, PinnedHostKey
from ledger.installations import Installation
from ledger.models import ModelAsset
from ledger.releases import Release

DEFAULT_LEASE_TTL_S = 120
"""Short, since the holder renews it every ttl/3 (``chassis.engine.lease``):
a crashed holder's lease expires two minutes after its last renewal."""

Progress = Callable[[str], None]


@dataclass(frozen=True)
class DeployOptions:
    max_parallel: int = 4
    max_failures: int = 0
    lease_ttl_s: int = DEFAULT_LEASE_TTL_S
    force: bool = False
    """Deploy (restart through the health gate) even if nothing changed."""
    reason: str | None = None
    """Why, in the revision's description (``--reason``)."""
    model_overrides: Mapping[str, str] = field(default_factory=dict)
    """component → model NAME run instead of the stack file's ``model``
    (``chassis model swap``): recorded in the plan (``ModelRef.swapped``)."""


@dataclass
class DeployResult:
    app: str
    environment: str
    revision: int
    status: str
    description: str
    plan_digest: str
    hosts: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "app": self.app,
            "environment": self.environment,
            "revision": self.revision,
            "status": self.status,
            "description": self.description,
            "plan_digest": self.plan_digest,
            "hosts": self.hosts,
        }


def prepare(
    ledger: Ledger,
    ws: Workspace,
    stack: Stack,
    *,
    app: str,
    environment: str,
    profile: str,
    label: str,
    progress: Progress,
    record: bool = True,
    also_reach: Iterable[str] = (),
    model_overrides: Mapping[str, str] | None = None,
    reached: dict[str, Connector] | None = None,
    settled: Callable[[Plan], bool] | None = None,
) -> tuple[Plan, Path]:
    """Check names, compile the plan and check it; raises before any intent is recorded.

    The plan is compiled first without writing anything: the release only
    looked at, hosts without facts probed live. Without ``record`` (``plan``,
    ``--dry-run``) that is all. With it (a real deploy) the pre-flight comes
    next, still writing nothing: the plan's values, its bundle's sha256, and
    every host of the plan (and ``also_reach``: hosts the deploy would retire
    or evict) reachable with its pinned key. Only then are declared hosts and
    the release registered and never-probed hosts inventoried, as on any
    first use.

    A component's ``model`` (or ``model_overrides``) is resolved to that
    model's newest manifest in the ledger; with ``record``, a model whose
    directory is not complete on its host fails the pre-flight.

    ``reached`` receives the pre-flight's open connectors (the caller closes
    them, or has its operation adopt them: one SSH session per host).
    ``settled(plan)`` true: every host already runs this plan, so nothing
    will run on any of them; the plan is returned before the pre-flight (a
    no-op redeploy reaches no host).
    """
    if app != stack.app.name:
        raise NotFound(f"unknown app {app!r} (this workspace deploys {stack.app.name!r})")
    stack.environment(environment)
    stack.profile(profile)
    if (
        label not in stack.releases
        and ledger.find(Release, Release.id_for(Release.key(app, label))) is None
    ):
        labels = sorted({*stack.releases, *(r.label for r in all_releases(ledger, app))})
        raise NotFound(f"no release {label!r} of {app} (releases: {', '.join(labels) or 'none'})")
    release, bundle = peek_release(ledger, ws, stack, label)
    views = declared_views(ledger, stack, environment)
    probed = {v.name for v in views if v.facts is None}
    models = model_refs(ledger, stack, profile, model_overrides or {})
    hosts = _with_live_facts(views, ws, progress)
    plan = build_plan(
        stack, hosts, ws, environment=environment, profile=profile, release=release, models=models
    )
    plan = fingerprinted(pinned(plan, ledger, strict=record), ws, strict=record)
    check_plan(plan)
    if not record or (settled is not None and settled(plan)):
        return plan, bundle
    stored = bundle_path(ws, release.bundle_sha256)
    if stored.is_file():
        check_bundle(stored, release.bundle_sha256, label)
    settings = {v.name: v.settings for v in views}
    for name in also_reach:
        if name not in settings:
            known = ledger.find(Host, Host.id_for(name))
            if known is not None:
                settings[name] = known.settings
    wanted = {h.host for h in plan.hosts} | set(also_reach)
    reach_hosts(
        [(name, settings[name]) for name in sorted(wanted - probed) if name in settings],
        ws,
        progress,
        pins=_pins(ledger, wanted),
        keep=reached,
    )
    require_models(ledger, ws, plan, settings, progress)
    recorded = resolve_release(ledger, ws, stack, label)
    sync_declared(ledger, stack)
    fresh = [h for h in environment_hosts(ledger, environment) if h.facts is None]
    if fresh:
        progress(f"inventorying {', '.join(h.name for h in fresh)}")
        failed = [r.error for r in inventory(ledger, ws, fresh) if r.error]
        if failed:
            raise HostsUnreachable("; ".join(failed))
    final = fingerprinted(
        pinned(
            build_plan(
                stack,
                environment_hosts(ledger, environment),
                ws,
                environment=environment,
                profile=profile,
                release=recorded,
                models=models,
            ),
            ledger,
            strict=True,
        ),
        ws,
        strict=True,
    )
    if final.digest() != plan.digest():  # facts changed in between: check what runs
        check_plan(final)
        require_models(ledger, ws, final, settings, progress)
        reach_hosts(
            [
                (h.host, settings[h.host])
                for h in final.hosts
                if h.host in settings and h.host not in wanted | probed
            ],
            ws,
            progress,
            pins=_pins(ledger, {h.host for h in final.hosts}),
            keep=reached,
        )
    return final, require_bundle(ws, recorded, ledger)


def _pins(ledger: Ledger, names: Iterable[str]) -> dict[str, PinnedHostKey | None]:
    """Each host's pinned SSH key, from the verified Host aggregates (None:
    the ledger does not know the host yet, or holds no pin for it)."""
    pins: dict[str, PinnedHostKey | None] = {}
    for name in names:
        host = ledger.find(Host, Host.id_for(name))
        pins[name] = host.key_pin() if host is not None else None
    return pins


def model_refs(
    ledger: Ledger, stack: Stack, profile: str, overrides: Mapping[str, str]
) -> dict[str, ModelRef]:
    """component → the model it runs with: its ``model`` (or its override),
    at that model's newest manifest. ``NotFound`` (exit 10) for an unknown
    component or a model the ledger does not hold."""
    placed = [c for g in stack.profile(profile).groups.values() for c in g.components]
    for component in sorted(overrides):
        if component not in placed:
            raise NotFound(
                f"no component {component!r} in profile {profile} of {stack.app.name} "
                f"(components: {', '.join(sorted(placed)) or 'none'})"
            )
    refs: dict[str, ModelRef] = {}
    for component in placed:
        name = overrides.get(component) or stack.components[component].model
        if name is None:
            continue
        asset = ledger.find(ModelAsset, ModelAsset.id_for(name))
        if asset is None:
            raise NotFound(
                f"component {component}: no model {name!r} is recorded "
                "(see 'chassis model list'; record it with 'chassis model add')"
            )
        swapped = (
            component in overrides and overrides[component] != stack.components[component].model
        )
        refs[component] = ModelRef(
            name=name, digest=str(asset.current["digest"]), swapped=swapped or msgspec.UNSET
        )
    return refs


def models_changed(plan: Plan, before: Mapping[str, Before]) -> list[str]:
    """``component: NAME DIGEST`` of each component whose model differs from
    what its host runs now (a swap, a new manifest, a changed ``model``)."""
    changed: list[str] = []
    for host in plan.hosts:
        running = before.get(host.host)
        was = running.plan.models(host.host) if running and running.plan else {}
        for component in host.components:
            model = component.model
            now = model.digest if isinstance(model, ModelRef) else None
            if now != was.get(component.name) and (now is not None or component.name in was):
                said = (
                    f"{model.name} {model.digest[:12]}" if isinstance(model, ModelRef) else "none"
                )
                changed.append(f"{component.name}: {said}")
    return sorted(set(changed))


def pinned(plan: Plan, ledger: Ledger, *, strict: bool) -> Plan:
    """``plan`` with every store reference pinned to its secret's current
    version (``store:NAME@3``): what the plan records, and what a rollback to
    it reveals again. ``strict``: an unknown secret raises (exit 10, before
    any intent); otherwise its reference stays unpinned."""
    if not any(store_ref(r) for h in plan.hosts for c in h.components for r in c.secrets.values()):
        return plan
    from chassis.secret_store import SecretStore

    store = SecretStore(ledger, None)
    hosts = []
    for host in plan.hosts:
        components = [
            msgspec.structs.replace(
                component,
                secrets=pin_refs(
                    component.secrets,
                    store.current_version,
                    component=component.name,
                    strict=strict,
                ),
            )
            for component in host.components
        ]
        hosts.append(msgspec.structs.replace(host, components=components))
    return msgspec.structs.replace(plan, hosts=hosts)


def fingerprinted(plan: Plan, ws: Workspace, *, strict: bool) -> Plan:
    """``plan`` with the fingerprint of every secret its components use
    (``chassis.secrets.fingerprint``), so a rotated value changes the plan.
    ``strict``: a secret that cannot be read raises (before any intent);
    otherwise (a plan that records nothing) its component is left without."""
    key = redaction_key(ws)
    hosts = []
    for host in plan.hosts:
        components = []
        for component in host.components:
            if component.secrets:
                try:
                    marks = fingerprints(component.secrets, component=component.name, key=key)
                except SecretUnavailable:
                    if strict:
                        raise
                else:
                    component = msgspec.structs.replace(component, secret_fingerprints=marks)
            components.append(component)
        hosts.append(msgspec.structs.replace(host, components=components))
    return msgspec.structs.replace(plan, hosts=hosts)


def secret_changes(plan: Plan, before: Mapping[str, Before]) -> tuple[list[str], list[str]]:
    """(changed, unknown) ``component.ENV`` secrets of ``plan`` against what
    each host runs now: changed values (or references new to a component);
    unknown where the running plan's fingerprints cannot be compared (none
    recorded, or recorded by another workspace's key). A changed store
    reference is told with its versions: ``api.DB_PASSWORD db_password@2 -> @3``
    (known from the references alone, so a dry-run that reveals nothing
    names it too)."""
    changed: set[str] = set()
    unknown: set[str] = set()
    for host in plan.hosts:
        running = before.get(host.host)
        old = (
            {c.name: c for c in running.host_plan.components}
            if running and (running.host_plan is not None)
            else {}
        )
        for component in host.components:
            if component.name not in old:
                continue
            told = _version_changes(component.secrets, old[component.name].secrets)
            changed.update(f"{component.name}.{n} {said}" for n, said in told.items())
            marks = component.secret_fingerprints
            if isinstance(marks, msgspec.UnsetType):
                continue
            marks = {n: m for n, m in marks.items() if n not in told}
            was = old[component.name].secret_fingerprints
            names = [f"{component.name}.{n}" for n in marks]
            if isinstance(was, msgspec.UnsetType):
                unknown.update(names)
                continue
            differ, other_key = changed_secrets(was, marks)
            changed.update(f"{component.name}.{n}" for n in differ)
            unknown.update(f"{component.name}.{n}" for n in other_key)
    return sorted(changed), sorted(unknown - changed)


def _version_changes(now: Mapping[str, str], was: Mapping[str, str]) -> dict[str, str]:
    """env name → ``NAME@2 -> @3`` (or ``OLD -> NEW``) of each secret whose
    reference changed to or from a store version."""
    told: dict[str, str] = {}
    for env, ref in sorted(now.items()):
        old = was.get(env)
        if old is None or old == ref or (store_ref(ref) is None and store_ref(old) is None):
            continue
        new_ref, old_ref = store_ref(ref), store_ref(old)
        if new_ref and old_ref and new_ref[0] == old_ref[0] and new_ref[1] is not None:
            told[env] = f"{describe(old)} -> @{new_ref[1]}"
        else:
            told[env] = f"{describe(old)} -> {describe(ref)}"
    return told


def _with_live_facts(views: list[HostView], ws: Workspace, progress: Progress) -> list[HostView]:
    """Fill in facts of never-inventoried hosts by probing them in parallel,
    recording nothing; ``HostsUnreachable`` (exit 11) names each that failed."""
    missing = [v for v in views if v.facts is None]
    if not missing:
        return views
    progress(f"probing {', '.join(v.name for v in missing)} (not recorded yet)")

    def one(view: HostView) -> tuple[HostView, str | None]:
        try:
            facts = msgspec.to_builtins(probe(view, ws, timeout=preflight.CONNECT_TIMEOUT_S))
        except (ConnectorError, ProbeFailed) as e:
            return view, e.diagnostics()
        return HostView(view.name, view.settings, facts), None

    with ThreadPoolExecutor(max_workers=min(16, len(missing))) as pool:
        found = {view.name: (view, error) for view, error in pool.map(one, missing)}
    problems = [(name, error) for name, (_, error) in found.items() if error is not None]
    if problems:
        raise preflight.unreachable(problems, len(views), progress)
    return [found[v.name][0] if v.name in found else v for v in views]


def redeploy(
    ledger: Ledger,
    ws: Workspace,
    stack: Stack,
    *,
    app: str,
    environment: str,
    options: DeployOptions,
    progress: Progress,
) -> DeployResult:
    """Deploy the release and profile of the last successful revision again,
    as a new revision: env references are resolved anew (a rotated secret is
    pushed) and every component restarts through the health gate."""
    installation = load_installation(ledger, app, environment)
    if installation.last_successful is None:
        raise NotFound(f"{app}/{environment} has no successful revision to redeploy")
    entry = installation.revision_entry(installation.last_successful)
    progress(
        f"redeploying {entry['label']} (revision {entry['revision']}, profile "
        f"{entry['profile']}) to {app}/{environment}"
    )
    return deploy(
        ledger,
        ws,
        stack,
        app=app,
        environment=environment,
        profile=str(entry["profile"]),
        label=str(entry["label"]),
        options=replace(options, force=True),
        progress=progress,
    )


def deploy(
    ledger: Ledger,
    ws: Workspace,
    stack: Stack,
    *,
    app: str,
    environment: str,
    profile: str,
    label: str,
    options: DeployOptions,
    progress: Progress,
) -> DeployResult:
    reached: dict[str, Connector] = {}
    try:
        return _deploy(
            ledger, ws, stack, app, environment, profile, label, options, progress, reached
        )
    finally:
        for connector in reached.values():  # those no operation adopted
            connector.close()


def _deploy(
    ledger: Ledger,
    ws: Workspace,
    stack: Stack,
    app: str,
    environment: str,
    profile: str,
    label: str,
    options: DeployOptions,
    progress: Progress,
    reached: dict[str, Connector],
) -> DeployResult:
    if ledger.signer is None:
        raise ChassisError("deploying needs a signing key")
    key = Installation.id_for(Installation.key(app, environment))
    installation = ledger.find(Installation, key)

    def settled(plan: Plan) -> bool:
        """The deploy will be a recorded no-op (decided again below, the same way)."""
        if installation is None or options.force:
            return False
        verified_plans(ledger, installation, hosts_revisions(installation))
        before = befores(installation)
        previous = {name: dict(entry) for name, entry in installation.hosts.items()}
        return (
            _is_noop(plan, previous)
            and not secret_changes(plan, before)[0]
            and not models_changed(plan, before)
        )

    plan, bundle = prepare(
        ledger,
        ws,
        stack,
        app=app,
        environment=environment,
        profile=profile,
        label=label,
        progress=progress,
        also_reach=sorted(installation.hosts) if installation is not None else (),
        model_overrides=options.model_overrides,
        reached=reached,
        settled=settled,
    )
    check_available((c.name, c.secrets) for h in plan.hosts for c in h.components)
    if installation is None:
        installation = Installation.open(app, environment, actor=ledger.signer.keyid)
    # The plans a failure would restore, retiring or evicting hosts would stop.
    verified_plans(ledger, installation, hosts_revisions(installation))
    before = befores(installation)
    previous_hosts = {name: dict(entry) for name, entry in installation.hosts.items()}
    op_id = uuid.uuid4().hex
    rotated, uncertain = secret_changes(plan, before)
    remodelled = models_changed(plan, before)
    noop = _is_noop(plan, previous_hosts) and not rotated and not remodelled and not options.force
    if noop and uncertain:
        progress(
            f"secrets {', '.join(uncertain)}: cannot tell whether they changed (their running "
            "fingerprints were recorded by another workspace, or before fingerprints were "
            "kept); run 'chassis redeploy' to push their current values"
        )
    # One digest, of exactly the plan executed below.
    plan_digest, plan_data = recorded_form(plan)
    what = "redeploy" if options.force and _is_noop(plan, previous_hosts) else "deploy"
    if options.model_overrides:
        what = "model swap"
    description = f"{what} {plan.label}" + (" (no change)" if noop else "")
    if rotated:
        description += f" (secrets changed: {', '.join(rotated)})"
    if remodelled:
        description += f" (models: {', '.join(remodelled)})"
    if options.reason:
        description += f": {options.reason}"
    installation.start_operation(
        actor=ledger.signer.keyid,
        op_id=op_id,
        operation="deploy",
        label=plan.label,
        release_id=plan.release_id,
        profile=profile,
        placement={group: h.host for h in plan.hosts for group in h.groups},
        host_components={h.host: [c.name for c in h.components] for h in plan.hosts},
        plan_digest=plan_digest,
        plan=plan_data,
        lease_ttl_s=options.lease_ttl_s,
        description=scrubbed(description),
        now=datetime.now(UTC),
    )
    ledger.append(installation)
    revision = installation.revision
    recorder = OperationRecorder(ledger, installation, op_id)
    result = DeployResult(app, environment, revision, "pending", "", plan_digest)
    if noop:
        recorder(
            lambda i: i.finish(
                actor=recorder.actor,
                op_id=op_id,
                status="noop",
                description=f"{plan.label} is already active on every host",
            )
        )
        recorder.close()
        result.status, result.description = "noop", f"{plan.label} is already active on every host"
        return result
    op = Operation(ledger, ws, recorder, before, progress)
    for name in list(reached):  # the pre-flight's sessions: no second handshake per host
        op.adopt(name, reached.pop(name))
    run_operation(
        op,
        lambda: _run(op, plan, bundle, options, result, scrubbed(description)),
        what=f"revision {revision} of {app}/{environment}",
    )
    return result


def _is_noop(plan: Plan, previous: dict[str, dict[str, Any]]) -> bool:
    wanted = {h.host: sorted(c.name for c in h.components) for h in plan.hosts}
    return set(wanted) == set(previous) and all(
        previous[h]["release_id"] == plan.release_id
        and sorted(previous[h]["components"]) == wanted[h]
        for h in wanted
    )


def _run(
    op: Operation,
    plan: Plan,
    bundle: Path,
    options: DeployOptions,
    result: DeployResult,
    title: str,
) -> None:
    """Evict, retire, deploy; on too many failures restore every touched host.
    ``title``: the intent's description, which the outcome's starts with."""
    before = op.before
    placed = {h.host: {c.name for c in h.components} for h in plan.hosts}
    # Hosts the new placement no longer uses are retired, and components it
    # moves are evicted, before any host starts: they may need their ports.
    for name, was in sorted(before.items()):
        moving = sorted(set(was.components) - placed.get(name, set()))
        if name in placed and moving:
            op.evict(name, moving)
    for name in sorted(set(before) - set(placed)):
        if op.retire(name):
            result.hosts[name] = {"ok": True, "step": None, "detail": RETIRED, "restored": False}
    if len(op.failures) <= options.max_failures:
        op.deploy_all(plan, plan.hosts, bundle, options.max_parallel)
    too_many = len(op.failures) > options.max_failures or op.interrupted.is_set()
    op.restore(None if too_many else list(op.failures))
    for name in sorted({*placed, *op.failures, *op.restores}):
        failure = op.failures.get(name)
        restore = op.restores.get(name)
        entry = result.hosts.get(name, {})
        result.hosts[name] = {
            "ok": failure is None and entry.get("ok", True),
            "step": failure.step if failure else None,
            "detail": failure.detail if failure else entry.get("detail", "deployed"),
            "restored": bool(restore and restore[0]),
        }
        if restore is not None:
            result.hosts[name]["restore"] = restore[1]
            if name not in op.failures and name not in placed:
                result.hosts[name]["detail"] = restore[1]
    if too_many:
        why = _first_failure(op)
        status, description = (
            "failed",
            f"deploy {plan.label} failed ({why}); " + (op.restore_summary()),
        )
    elif op.failures:
        status = "deployed"
        description = f"{title}; {len(op.failures)} host(s) failed: " + (op.restore_summary())
    else:
        status, description = "deployed", title
    op.finish(status, description)
    result.status, result.description = status, scrubbed(description)


def _first_failure(op: Operation) -> str:
    if op.interrupted.is_set():
        return INTERRUPTED
    first = sorted(op.failures)[0]
    failure = op.failures[first]
    return f"{first}: {failure.step}: {failure.detail}"
