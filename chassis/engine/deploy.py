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

import threading
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from adapters.errors import ConnectorError
from adapters.supervisors.base import SupervisorError
from chassis.engine import preflight
from chassis.engine.executor import (
    HostDeployment,
    StepFailed,
    crash_point,
    scrubbed,
)
from chassis.engine.operation import (
    OperationRecorder,
    deploy_host,
    ledger_outage,
    previous_plan,
    restore_deployments,
)
from chassis.engine.plan import (
    HostPlan,
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
    worker_failure,
)
from chassis.engine.releases import (
    all_releases,
    bundle_path,
    peek_release,
    require_bundle,
    resolve_release,
)
from chassis.engine.retire import (
    evict_components,
    recorded_plan,
    retire_host,
    unretire_host,
)
from chassis.errors import ChassisError, NotFound
from chassis.hosts import HostView, declared_views, environment_hosts, sync_declared
from chassis.inventory import ProbeFailed, inventory, probe
from chassis.secrets import check_available
from chassis.stack.spec import Stack
from chassis.workspace import Workspace
from ledger.application import Ledger
from ledger.errors import LedgerError, StorageError
from ledger.hosts import Host
from ledger.installations import Installation
from ledger.releases import Release

DEFAULT_LEASE_TTL_S = 120
"""Short, since the holder renews it every ttl/3 (``chassis.engine.lease``):
a crashed holder's lease expires two minutes after its last renewal."""

Progress = Callable[[str], None]


class DeployInterrupted(ChassisError):
    exit_code = 130


@dataclass(frozen=True)
class DeployOptions:
    max_parallel: int = 4
    max_failures: int = 0
    lease_ttl_s: int = DEFAULT_LEASE_TTL_S


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
    hosts = _with_live_facts(views, ws, progress)
    plan = build_plan(stack, hosts, ws, environment=environment, profile=profile, release=release)
    check_plan(plan)
    if not record:
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
    )
    recorded = resolve_release(ledger, ws, stack, label)
    sync_declared(ledger, stack)
    fresh = [h for h in environment_hosts(ledger, environment) if h.facts is None]
    if fresh:
        progress(f"inventorying {', '.join(h.name for h in fresh)}")
        failed = [r.error for r in inventory(ledger, ws, fresh) if r.error]
        if failed:
            raise HostsUnreachable("; ".join(failed))
    final = build_plan(
        stack,
        environment_hosts(ledger, environment),
        ws,
        environment=environment,
        profile=profile,
        release=recorded,
    )
    if final.digest() != plan.digest():  # facts changed in between: check what runs
        check_plan(final)
        reach_hosts(
            [
                (h.host, settings[h.host])
                for h in final.hosts
                if h.host in settings and h.host not in wanted | probed
            ],
            ws,
            progress,
        )
    return final, require_bundle(ws, recorded)


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
    if ledger.signer is None:
        raise ChassisError("deploying needs a signing key")
    key = Installation.id_for(Installation.key(app, environment))
    installation = ledger.find(Installation, key)
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
    )
    check_available((c.name, c.secrets) for h in plan.hosts for c in h.components)
    if installation is None:
        installation = Installation.open(app, environment, actor=ledger.signer.keyid)
    # The plans a failure would restore, retiring or evicting hosts would stop.
    verified_plans(ledger, installation, hosts_revisions(installation))
    previous_hosts = {name: dict(entry) for name, entry in installation.hosts.items()}
    op_id = uuid.uuid4().hex
    noop = _is_noop(plan, previous_hosts)
    # One digest, of exactly the plan executed below.
    plan_digest, plan_data = recorded_form(plan)
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
        description=f"deploy {plan.label}" + (" (no change)" if noop else ""),
        now=datetime.now(UTC),
    )
    ledger.append(installation)
    crash_point("*", "intent")
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
        result.status, result.description = "noop", f"{plan.label} is already active on every host"
        return result
    try:
        _run(
            ledger,
            ws,
            plan,
            bundle,
            installation,
            previous_hosts,
            recorder,
            options,
            progress,
            result,
        )
    except KeyboardInterrupt:
        raise DeployInterrupted(
            f"interrupted: revision {revision} of {app}/{environment} is unfinished and its lease "
            f"is still held; hosts may be mid-deploy. Run 'chassis recover {app} --env "
            f"{environment}' to complete it or restore the previous release"
        ) from None
    except StorageError as e:  # the ledger went away: hosts as last recorded, then recover
        raise ledger_outage(e, recorder, progress) from None
    finally:
        recorder.close()
    return result


def _is_noop(plan: Plan, previous: dict[str, dict[str, Any]]) -> bool:
    wanted = {h.host: sorted(c.name for c in h.components) for h in plan.hosts}
    return set(wanted) == set(previous) and all(
        previous[h]["release_id"] == plan.release_id
        and sorted(previous[h]["components"]) == wanted[h]
        for h in wanted
    )


def _run(
    ledger: Ledger,
    ws: Workspace,
    plan: Plan,
    bundle: Path,
    installation: Installation,
    previous_hosts: dict[str, dict[str, Any]],
    recorder: OperationRecorder,
    options: DeployOptions,
    progress: Progress,
    result: DeployResult,
) -> None:
    previous_plans = {
        h.host: previous_plan(installation, previous_hosts.get(h.host), h.host) for h in plan.hosts
    }
    deployments: dict[str, HostDeployment] = {}
    failures: dict[str, StepFailed | str] = {}
    lock = threading.Lock()

    def started(deployment: HostDeployment) -> None:
        with lock:
            deployments[deployment.host.host] = deployment

    def one(host_plan: HostPlan) -> None:
        name = host_plan.host
        progress(f"{name}: deploying {plan.label}")
        try:
            deploy_host(
                ledger,
                ws,
                plan,
                host_plan,
                bundle,
                previous_plans[name],
                recorder,
                touched=name in evicted,
                started=started,
                progress=progress,
            )
        except StepFailed as failed:
            with lock:
                failures[name] = failed
            progress(f"{name}: failed at {failed.step}: {failed.detail}")
        except ConnectorError as e:
            with lock:
                failures[name] = e.diagnostics()
            recorder.step(name)("connect", False, e.diagnostics(), {})
            progress(f"{name}: {e.diagnostics()}")
        except LedgerError:
            raise  # the record itself failed: nothing more can be recorded here
        except Exception as e:  # a bug must not strand the operation: record it, restore
            broken = worker_failure(e, host_plan.steps)
            with lock:
                failures[name] = broken
            recorder.step(name)(broken.step, False, broken.detail, broken.data)
            progress(f"{name}: failed at {broken.step}: {broken.detail}")

    # Hosts the new placement no longer uses are retired first: a component
    # moving to another host may need its port there.
    wanted = {h.host for h in plan.hosts}
    leaving = {
        name: (recorded_plan(installation, entry), entry)
        for name, entry in sorted(previous_hosts.items())
        if name not in wanted
    }
    retired: list[str] = []
    evicted: set[str] = set()
    placed = {h.host: {c.name for c in h.components} for h in plan.hosts}
    for name, entry in sorted(previous_hosts.items()):
        moving = sorted(set(entry["components"]) - placed.get(name, set()))
        if name not in placed or not moving:
            continue
        try:
            host_was = recorded_plan(installation, entry)
            evict_components(ledger, ws, host_was, name, moving, recorder.step(name))
        except (ConnectorError, SupervisorError) as e:
            failures[name] = e.diagnostics()
            continue
        evicted.add(name)
    for name, (host_was, _) in leaving.items():
        try:
            detail = retire_host(ledger, ws, host_was, name, recorder)
        except (ConnectorError, SupervisorError) as e:
            failures[name] = e.diagnostics()
            continue
        retired.append(name)
        result.hosts[name] = {"ok": True, "step": None, "detail": detail, "restored": False}
        progress(f"{name}: {detail}")
    try:
        if len(failures) <= options.max_failures:
            with ThreadPoolExecutor(max_workers=max(1, options.max_parallel)) as pool:
                list(pool.map(one, plan.hosts))
        if len(failures) > options.max_failures:
            for name in retired:  # the deploy is undone: they run their release again
                host_was, entry = leaving[name]
                ok, detail = unretire_host(ledger, ws, host_was, name, entry, recorder)
                result.hosts[name] = {"ok": ok, "step": None, "detail": detail, "restored": ok}
        _settle(
            plan,
            deployments,
            failures,
            previous_plans,
            previous_hosts,
            recorder,
            options,
            progress,
            result,
        )
    finally:
        for deployment in deployments.values():
            deployment.connector.close()


def _settle(
    plan: Plan,
    deployments: dict[str, HostDeployment],
    failures: dict[str, StepFailed | str],
    previous_plans: dict[str, tuple[HostPlan | None, dict[str, Any] | None]],
    previous_hosts: dict[str, dict[str, Any]],
    recorder: OperationRecorder,
    options: DeployOptions,
    progress: Progress,
    result: DeployResult,
) -> None:
    """Restore what must be restored, then record the operation's outcome."""
    too_many = len(failures) > options.max_failures
    to_restore = [
        name for name, d in deployments.items() if d.touched and (too_many or name in failures)
    ]
    if to_restore:
        progress(f"restoring {', '.join(sorted(to_restore))}")
        restoring = {name: deployments[name] for name in to_restore}
        restore_deployments(restoring, previous_plans, previous_hosts, recorder, progress)
    for host_plan in plan.hosts:
        name = host_plan.host
        failure = failures.get(name)
        result.hosts[name] = {
            "ok": failure is None,
            "step": failure.step if isinstance(failure, StepFailed) else None,
            "detail": (failure.detail if isinstance(failure, StepFailed) else failure)
            or "deployed",
            "restored": name in to_restore,
        }
    if too_many:
        first = sorted(failures)[0]
        failure = failures[first]
        why = scrubbed(  # process output, on its way into the signed outcome
            f"{first}: {failure.step}: {failure.detail}"
            if isinstance(failure, StepFailed)
            else f"{first}: {failure}"
        )
        status, description = (
            "failed",
            f"deploy {plan.label} failed ({why}); previous release restored",
        )
    elif failures:
        status = "deployed"
        description = f"deploy {plan.label}; {len(failures)} host(s) failed and were restored"
    else:
        status, description = "deployed", f"deploy {plan.label}"
    recorder(
        lambda i: i.finish(
            actor=recorder.actor, op_id=recorder.op_id, status=status, description=description
        )
    )
    result.status, result.description = status, description
