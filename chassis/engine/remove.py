"""``chassis remove``: retire an installation everywhere, recorded.

One operation through the lifecycle: its intent records a plan that places
nothing (the last successful plan without hosts), every host is retired (a
``retire`` step before anything stops, ``host-retired`` after), and a
failure restores every host, as a failed deploy would. Release directories
stay on the hosts, so ``chassis rollback`` brings the installation back.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import msgspec

from chassis.engine.deploy import DEFAULT_LEASE_TTL_S, DeployResult
from chassis.engine.executor import INTERRUPTED, scrubbed
from chassis.engine.lifecycle import Operation, befores, run_operation
from chassis.engine.operation import OperationRecorder, load_installation
from chassis.engine.plan import recorded_form, verified_plans
from chassis.errors import ChassisError, NotFound
from chassis.workspace import Workspace
from ledger.application import Ledger


def remove(
    ledger: Ledger,
    ws: Workspace,
    *,
    app: str,
    environment: str,
    reason: str,
    max_parallel: int = 4,
    progress: Callable[[str], None],
) -> DeployResult:
    if ledger.signer is None:
        raise ChassisError("removing needs a signing key")
    installation = load_installation(ledger, app, environment)
    if not installation.hosts:
        raise NotFound(f"nothing of {app} runs in {environment}: nothing to remove")
    revisions = {int(e["revision"]) for e in installation.hosts.values()}
    plans = verified_plans(ledger, installation, revisions)
    newest = plans[max(revisions)]
    nothing = msgspec.structs.replace(newest, hosts=[])
    before = befores(installation)
    op_id = uuid.uuid4().hex
    plan_digest, plan_data = recorded_form(nothing)
    installation.start_operation(
        actor=ledger.signer.keyid,
        op_id=op_id,
        operation="remove",
        label=nothing.label,
        release_id=nothing.release_id,
        profile=nothing.profile,
        placement={},
        host_components={},
        plan_digest=plan_digest,
        plan=plan_data,
        lease_ttl_s=DEFAULT_LEASE_TTL_S,
        description=scrubbed(f"remove {app} from {environment}: {reason}"),
        now=datetime.now(UTC),
    )
    ledger.append(installation)
    recorder = OperationRecorder(ledger, installation, op_id)
    result = DeployResult(app, environment, installation.revision, "pending", "", plan_digest)
    op = Operation(ledger, ws, recorder, before, progress)
    hosts = sorted(before)

    def work() -> None:
        with ThreadPoolExecutor(max_workers=max(1, min(max_parallel, len(hosts)))) as pool:
            retired = dict(zip(hosts, pool.map(op.retire, hosts), strict=True))
        failed = bool(op.failures) or op.interrupted.is_set()
        if failed:
            op.restore()
        for name in hosts:
            failure = op.failures.get(name)
            restore = op.restores.get(name)
            result.hosts[name] = {
                "ok": retired[name] and not failed,
                "step": failure.step if failure else None,
                "detail": failure.detail if failure else "retired",
                "restored": bool(restore and restore[0]),
            }
        if failed:
            first = sorted(op.failures)[0] if op.failures else None
            why = INTERRUPTED if first is None else f"{first}: {op.failures[first].detail}"
            status = "failed"
            description = f"remove {app} from {environment} failed ({why}); " + (
                op.restore_summary()
            )
        else:
            status, description = "deployed", f"remove {app} from {environment}: {reason}"
        op.finish(status, description)
        result.status, result.description = status, scrubbed(description)

    run_operation(op, work, what=f"remove revision {result.revision} of {app}/{environment}")
    return result
