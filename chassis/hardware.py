"""``hardware validate``: judge a host against a runtime and record the verdict."""

from __future__ import annotations

from chassis.admission import Verdict, evaluate, resolve_runtime
from chassis.hosts import get_host, sync_declared
from chassis.inventory import ProbeFailed, inventory
from chassis.stack.spec import Stack
from chassis.workspace import Workspace
from ledger.application import Ledger
from ledger.hosts import Host


def validate_hardware(
    ledger: Ledger, ws: Workspace, stack: Stack, host_name: str, runtime_name: str
) -> Verdict:
    """Evaluate the host's latest facts (probing first if it has none) and
    append the verdict as ``Host.AdmissionEvaluated``."""
    runtime = resolve_runtime(runtime_name, stack.runtimes)
    sync_declared(ledger, stack, {host_name})
    host = get_host(ledger, host_name)
    if host.facts is None:
        (result,) = inventory(ledger, ws, [host])
        if result.error:
            raise ProbeFailed(result.error)
        host = get_host(ledger, host_name)
    assert host.facts is not None and ledger.signer is not None
    verdict = evaluate(runtime, host.facts)
    actor = ledger.signer.keyid

    def record(h: Host) -> None:
        h.record_admission(
            runtime.name,
            admitted=verdict.admitted,
            reasons=[code for code, _ in verdict.reasons],
            requirements=runtime.requirements(),
            actor=actor,
        )

    ledger.update(Host, host.id, record)
    return verdict
