"""``chassis demo``: the main job, end to end, on the embedded default.

A fresh workspace (temporary unless ``--workspace``) with a SQLite ledger,
the sample app's three HTTP services, the ``ternary-split-3`` profile over
three local hosts with separate roots: deploy v1, then v2, then a v3 whose
health check fails and is restored to v2 automatically. Last act: roll back
to v1 (replayed from its release snapshot), issue the rollback proof and
verify it; then promote v2 again only through every evolution gate (a trial
beside v1, the way back drilled, a second key's consent, a health-gated
swap) and verify that proof too. Status and history after each step; the
ledger is verified.
"""

from __future__ import annotations

import json
import re
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from adapters.connectors.local import LocalConnector
from adapters.supervisors.direct import DirectSupervisor
from chassis.aftermath import settle
from chassis.audit import verify_workspace
from chassis.engine.deploy import DeployOptions, deploy
from chassis.engine.releases import add_release
from chassis.engine.rollback import rollback
from chassis.hosts import environment_hosts, resolve_root
from chassis.keyring import load_acting_key, local_key_path
from chassis.rollback_proof import keys_from_trust, rollback_proof, verify_rollback_envelope
from chassis.sample_app import build_sample_release
from chassis.stack.spec import load_stack
from chassis.trust_admin import init_workspace, new_key, trust_public_key
from chassis.views import histories, status_rows
from chassis.workspace import Workspace, keys_dir
from ledger.application import Ledger
from ledger.storage import open_ledger

DEMO_KEY = "chassis-demo"
APPROVER_KEY = "chassis-demo-approver"
Say = Callable[[str], None]


@dataclass
class DemoReport:
    workspace: Path
    revisions: list[dict[str, object]] = field(default_factory=list)
    verified_events: int = 0
    kept_running: bool = False
    proof: Path | None = None
    proof_checks: list[str] = field(default_factory=list)
    evolution: str = ""
    evolution_proof: Path | None = None
    evolution_checks: list[str] = field(default_factory=list)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def run_demo(workspace: Path | None, keep: bool, say: Say) -> DemoReport:
    root = workspace or Path(tempfile.mkdtemp(prefix="chassis-demo-")) / "demo"
    keys = keys_dir()
    key_name = DEMO_KEY if local_key_path(keys, DEMO_KEY) else None
    say(f"== workspace {root}")
    # Reuse the demo key across runs; the first run creates it under that name.
    init_workspace(
        root, name="demo", key_name=key_name or DEMO_KEY, keys=keys, ledger_url=None, example=True
    )
    ws = Workspace(root)
    _free_ports(ws)
    stack = load_stack(ws.stack_file)
    ledger = open_ledger(ws.storage(), load_acting_key(keys, ws.settings().default_key))
    report = DemoReport(root)
    try:
        dist = root / "dist"
        for version, config in (("v1", {}), ("v2", {}), ("v3", {"FAIL_HEALTH": "1"})):
            bundle, _ = build_sample_release(dist, version)
            add_release(ledger, ws, stack.app.name, version, bundle, config)
        say("== releases v1, v2 and v3 (v3's health check fails on purpose)")
        for label in ("v1", "v2", "v3"):
            say(f"\n== deploy {label} (profile ternary-split-3, env dev: three local hosts)")
            result = deploy(
                ledger,
                ws,
                stack,
                app="demo",
                environment="dev",
                profile="ternary-split-3",
                label=label,
                options=DeployOptions(max_parallel=3),
                progress=lambda m: say("   " + m),
            )
            say(f"   revision {result.revision}: {result.status}: {result.description}")
            _show(ledger, say)
            _settle(ledger, ws, say)
        _last_act(ledger, ws, report, say)
        _evolution(ledger, ws, keys, report, say)
        report.revisions = histories(ledger, "demo", "dev")[0]["revisions"]
        verified = verify_workspace(ws, ledger)
        report.verified_events = verified.events
        say(f"\n== ledger verified: {verified.events} events, every signature checked")
    finally:
        if not keep:
            _stop_everything(ws, ledger, say)
        report.kept_running = keep
        ledger.close()
    say(f"\nEverything lives in {root}:")
    say("  chassis.toml, .chassis/ledger.db, .chassis/hosts/dev-{1,2,3}, dist/,")
    say("  rollback-proof.dsse.json, the signed proof of the rollback, and")
    say("  evolution-proof.dsse.json, the gated promotion of v2; check them with")
    say(f"    chassis --workspace {root} proof verify {root}/rollback-proof.dsse.json")
    say(f"    chassis --workspace {root} proof verify {root}/evolution-proof.dsse.json")
    say(f"  receipts: chassis --workspace {root} receipts list")
    say(f"  inspect: chassis --workspace {root} status | history demo --env dev | ledger log")
    return report


def _last_act(ledger: Ledger, ws: Workspace, report: DemoReport, say: Say) -> None:
    """Roll back to v1, then prove it and verify the proof as a stranger would."""
    say("\n== rollback to v1 (the state replayed from revision 1's release snapshot)")
    result = rollback(
        ledger,
        ws,
        app="demo",
        environment="dev",
        to="v1",
        max_parallel=3,
        progress=lambda m: say("   " + m),
    )
    same = "equals" if result.state_digest == result.plan.target.state_digest else "DIFFERS from"
    say(f"   revision {result.revision}: {result.status}: {result.description}")
    say(f"   state digest {result.state_digest[:16]}... {same} revision 1's")
    _show(ledger, say)
    _settle(ledger, ws, say)
    assert ledger.signer is not None
    envelope = rollback_proof(
        ledger, ws, ledger.signer, app="demo", environment="dev", revision=result.revision
    )
    report.proof = ws.root / "rollback-proof.dsse.json"
    report.proof.write_text(json.dumps(envelope, indent=2, sort_keys=True) + "\n")
    say(f"\n== rollback proof written to {report.proof.name} (DSSE, in-toto Statement v1)")
    keys, revoked = keys_from_trust(ledger.trust(), "operator")
    checked = verify_rollback_envelope(envelope, keys, revoked=revoked, ledger=ledger)
    report.proof_checks = [c.name for c in checked.checks]
    for check in checked.checks:
        say(f"   verified {check.name}: {check.detail}")


def _evolution(ledger: Ledger, ws: Workspace, keys: Path, report: DemoReport, say: Say) -> None:
    """Promote v2 again, this time only through every gate: a trial beside v1,
    the way back drilled, and an approver's consent (a second key); then
    prove it and verify the proof."""
    from chassis.consent import grant
    from chassis.evolution.proof import evolution_proof
    from chassis.evolution.run import EvolutionRequest, evolve
    from ledger.evolution import GATES

    say("\n== evolution proof of v2: trial, score, rollback drill, consent, health-gated swap")
    path = local_key_path(keys, APPROVER_KEY)
    if path is None:
        new_key(ledger, keys, name=APPROVER_KEY, roles=["approver"])
    else:
        trust_public_key(ledger, path.with_suffix(".pub"), name=APPROVER_KEY, roles=["approver"])
    approving = open_ledger(ws.storage(), load_acting_key(keys, APPROVER_KEY))
    try:
        consent = grant(
            approving,
            app="demo",
            environment="dev",
            label="v2",
            ttl=timedelta(hours=1),
            reason="demo: reviewed",
            at=datetime.now(UTC),
        )
    finally:
        approving.close()
    say(f"   consent {consent.short_id} granted by {APPROVER_KEY} (role approver)")
    request = EvolutionRequest(
        app="demo",
        environment="dev",
        profile="ternary-split-3",
        candidate="v2",
        required=frozenset(GATES),
    )
    result = evolve(ledger, ws, load_stack(ws.stack_file), request, lambda m: say("   " + m))
    report.evolution = result.outcome
    say(f"   {result.outcome}: v2 (revision {result.revision})")
    _show(ledger, say)
    _settle(ledger, ws, say)
    assert ledger.signer is not None
    envelope = evolution_proof(ledger, ws, ledger.signer, result)
    report.evolution_proof = ws.root / "evolution-proof.dsse.json"
    report.evolution_proof.write_text(json.dumps(envelope, indent=2, sort_keys=True) + "\n")
    say(f"\n== evolution proof written to {report.evolution_proof.name}")
    keys_now, revoked = keys_from_trust(ledger.trust(), "operator")
    checked = verify_rollback_envelope(envelope, keys_now, revoked=revoked, ledger=ledger)
    report.evolution_checks = [c.name for c in checked.checks]
    for check in checked.checks:
        say(f"   verified {check.name}: {check.detail}")


def _settle(ledger: Ledger, ws: Workspace, say: Say) -> None:
    """What every writing command does after it: sign a checkpoint of the
    Merkle log, then issue the receipts of the operations just completed."""
    assert ledger.signer is not None

    def warnings(message: str) -> None:  # what was signed and issued is said below
        if message.startswith("chassis:"):
            say(f"   {message}")

    settled = settle(ledger, ws, ledger.signer, warnings)
    assert settled.checkpoint is not None, "the demo key holds every role"
    say(
        f"   checkpoint: tree size {settled.checkpoint.size}, root "
        f"{settled.checkpoint.root.hex()[:16]}...; "
        f"receipts: {', '.join(r.operation for r in settled.receipts) or 'none'}"
    )


def _free_ports(ws: Workspace) -> None:
    """The example's fixed ports may be taken on this machine: pick free ones."""
    gateway, api = free_port(), free_port()
    # The evolution trial runs beside on each port + 10000.
    while api == gateway or max(gateway, api) > 55535:
        gateway, api = free_port(), free_port()
    text = re.sub(r"\b8080\b", str(gateway), ws.stack_file.read_text())
    ws.stack_file.write_text(re.sub(r"\b8081\b", str(api), text))


def _show(ledger: Ledger, say: Say) -> None:
    for row in status_rows(ledger, "demo", "dev"):
        say(
            f"   {row.host:6} {row.component:8} {row.label:3} rev {row.revision} "
            f"{row.state}, health {row.health}"
        )
    for entry in histories(ledger, "demo", "dev")[0]["revisions"]:
        say(
            f"   history: rev {entry['revision']} {entry['operation']} {entry['label']}: "
            f"{entry['status']}"
        )


def _stop_everything(ws: Workspace, ledger: Ledger, say: Say) -> None:
    stack = load_stack(ws.stack_file)
    for host in environment_hosts(ledger, "dev"):
        supervisor = DirectSupervisor(LocalConnector(host.name), resolve_root(host, ws.root))
        for component in stack.components:
            supervisor.stop(component)
    say("\n== stopped every demo process (use --keep to leave them running)")
