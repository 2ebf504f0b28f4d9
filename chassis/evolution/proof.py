"""Issuing the evolution proof (format: guides/evolution.md; checks:
:mod:`proofs.evolution`). The ledger is verified first, as for every proof:
a proof never cites rows nobody checked."""

from __future__ import annotations

from typing import Any

from chassis.audit import verify_workspace
from chassis.evolution.run import EvolutionResult, cite
from chassis.workspace import Workspace
from ledger.aggregate import now
from ledger.application import Ledger
from ledger.canonical import format_timestamp
from ledger.evolution import GATES
from ledger.keys import KeyPair
from proofs.dsse import PAYLOAD_TYPE_INTOTO, sign_envelope
from proofs.evolution import check_evolution_statement
from proofs.intoto import EVOLUTION_PROOF_PREDICATE, statement, statement_bytes, subject


def evolution_statement(ledger: Ledger, ws: Workspace, result: EvolutionResult) -> dict[str, Any]:
    run = result.run
    verified = verify_workspace(ws, ledger)
    started, finished = cite(ledger, run.id, {1, run.version})
    trust = ledger.trust()
    gates = [result.gates[g].to_dict() for g in GATES]
    for gate in gates:  # the proof carries the verdicts, not bulky data (in the ledger)
        gate.pop("data", None)
    predicate = {
        "ledger": {
            "name": trust.ledger_name if trust else "",
            "verified": True,
            "events": verified.events,
            "last_seq": verified.last_seq,
            "root_keyid": verified.root_keyid,
            "signatures": verified.signatures,
        },
        "run": {
            "id": str(run.id),
            "app": run.app,
            "environment": run.environment,
            "slot": run.slot,
            "fixture": run.fixture,
            "requested_by": run.requested_by,
            "candidate": run.candidate,
            "baseline": run.baseline,
            "required": run.required,
            "started": started,
            "finished": finished,
        },
        "gates": gates,
        "promoted": result.promoted,
        "outcome": result.outcome,
        "revision": result.revision,
        "issued": format_timestamp(now()),
    }
    candidate = result.candidate
    subjects = [
        subject(f"{run.app}/{run.environment}@{candidate['label']}", candidate["release_id"])
    ]
    body = statement(subjects, EVOLUTION_PROOF_PREDICATE, predicate)
    check_evolution_statement(body)  # never sign a statement our own verifier refuses
    return body


def evolution_proof(
    ledger: Ledger, ws: Workspace, signer: KeyPair, result: EvolutionResult
) -> dict[str, Any]:
    """The signed DSSE envelope over :func:`evolution_statement`."""
    body = evolution_statement(ledger, ws, result)
    return sign_envelope(statement_bytes(body), PAYLOAD_TYPE_INTOTO, signer)
