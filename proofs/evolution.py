"""The evolution proof: an in-toto Statement, in a DSSE envelope, that a
candidate release was promoted only after every required gate passed (or
was not promoted, and which gate stopped it). Format: guides/evolution.md.

:func:`check_evolution_statement` needs the statement alone (offline);
:func:`check_evolution_evidence` reads the cited records from a verified
ledger copy (``lookup(seq)``): each verdict is the one the signed
``gate-evaluated`` event recorded, the run's intent and end are its own
events, and a passing consent was signed by another key than the one that
asked for promotion, for this candidate, and had not lapsed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from ledger.canonical import parse_timestamp
from ledger.consents import Consent
from ledger.evolution import GATES, EvolutionRun
from ledger.records import SealedRecord
from proofs.intoto import EVOLUTION_PROOF_PREDICATE, STATEMENT_TYPE
from proofs.rollback import Check, ProofCheckError

STATUSES = ("PASS", "FAIL", "SKIPPED")
HEX64 = re.compile(r"[0-9a-f]{64}")
STARTED = EvolutionRun.Started.TOPIC
GATE_EVALUATED = EvolutionRun.GateEvaluated.TOPIC
FINISHED = EvolutionRun.Finished.TOPIC
CONSENT_GRANTED = Consent.Granted.TOPIC

Lookup = Callable[[int], SealedRecord | None]


def promotion_allowed(gates: Sequence[Mapping[str, Any]]) -> bool:
    """The rule: promoted only if the swap passed and every required gate passed."""
    by_name = {g["gate"]: g for g in gates}
    required_ok = all(g["status"] == "PASS" for g in gates if g["required"])
    return required_ok and by_name.get("swap", {}).get("status") == "PASS"


def check_evolution_statement(statement: Mapping[str, Any]) -> list[Check]:
    """Structure and the promotion rule; raises ``ProofCheckError``."""
    if statement.get("_type") != STATEMENT_TYPE:
        raise ProofCheckError("statement-type", f"expected _type {STATEMENT_TYPE}")
    if statement.get("predicateType") != EVOLUTION_PROOF_PREDICATE:
        raise ProofCheckError(
            "predicate-type",
            f"expected {EVOLUTION_PROOF_PREDICATE}, found {statement.get('predicateType')!r}",
        )
    predicate = statement.get("predicate")
    if not isinstance(predicate, Mapping):
        raise ProofCheckError("predicate", "missing predicate object")
    try:
        run = predicate["run"]
        gates = list(predicate["gates"])
        promoted = predicate["promoted"]
        candidate = run["candidate"]["release_id"]
        named = f"{run['app']}/{run['environment']}@{run['candidate']['label']}"
        subjects = statement["subject"]
        verified = predicate["ledger"]["verified"]
    except (KeyError, TypeError) as e:
        raise ProofCheckError("predicate", f"missing field {e}") from None
    if verified is not True:
        raise ProofCheckError("ledger-verified", "the ledger did not verify when issued")
    if not all(isinstance(g, Mapping) for g in gates):
        raise ProofCheckError("gates", "each gate must be an object")
    names = [g.get("gate") for g in gates]
    if sorted(map(str, names)) != sorted(GATES):
        raise ProofCheckError("gates", f"expected each of {', '.join(GATES)} once, found {names}")
    for gate in gates:
        if gate.get("status") not in STATUSES:
            raise ProofCheckError("gates", f"gate {gate['gate']}: status must be one of {STATUSES}")
        if not isinstance(gate.get("required"), bool):
            raise ProofCheckError("gates", f"gate {gate['gate']}: required must be true or false")
        if not isinstance(gate.get("verdict"), Mapping):
            raise ProofCheckError("gates", f"gate {gate['gate']}: no verdict event cited")
    if not isinstance(promoted, bool) or promoted != promotion_allowed(gates):
        raise ProofCheckError(
            "promotion-rule",
            f"promoted={promoted} but the gates say "
            f"{'promote' if promotion_allowed(gates) else 'do not promote'}",
        )
    if not HEX64.fullmatch(str(candidate)):
        raise ProofCheckError("candidate", "the candidate release id is not 64 hex digits")
    # Exactly the candidate (the run's signed intent fixes it; check_evolution_evidence
    # reads that): a consumer reads the subject first.
    only = subjects[0] if isinstance(subjects, list) and len(subjects) == 1 else None
    fields = only if isinstance(only, Mapping) else {}
    digest = fields.get("digest")
    stated = (fields.get("name"), digest.get("sha256") if isinstance(digest, Mapping) else None)
    if stated != (named, candidate):
        raise ProofCheckError(
            "subject", f"the subject must be exactly the candidate release, named {named!r}"
        )
    failed = [g["gate"] for g in gates if g["required"] and g["status"] != "PASS"]
    return [
        Check("statement", "in-toto Statement v1 with the evolution-proof predicate"),
        Check(
            "promotion-rule",
            "promoted: every required gate and the swap passed"
            if promoted
            else f"not promoted: {', '.join(failed) or 'swap'} did not pass",
        ),
    ]


def _record(lookup: Lookup, cited: Any, topic: str, what: str) -> SealedRecord:
    """The record a cited position names; ``what`` fails when the citation is
    malformed or the ledger holds another event there."""
    seq = cited.get("seq") if isinstance(cited, Mapping) else None
    if not isinstance(seq, int) or isinstance(seq, bool):
        raise ProofCheckError(what, f"a cited {topic} event has no integer seq")
    record = lookup(seq)
    if record is None or record.topic != topic or record.digest.hex() != cited.get("digest"):
        raise ProofCheckError(what, f"the ledger has no {topic} event at seq {seq}")
    return record


def check_evolution_evidence(statement: Mapping[str, Any], lookup: Lookup) -> list[Check]:
    """Each claim against the signed records it cites (a verified ledger)."""
    predicate = statement["predicate"]
    run = predicate["run"]
    run_id = str(run["id"]).replace("-", "")
    started = _record(lookup, run["started"], STARTED, "run")
    if started.originator_id.replace("-", "") != run_id:
        raise ProofCheckError("run", "the cited run-started event is another run's")
    intent = started.payload()
    requester = started.body.keyid
    if (
        intent.get("candidate") != run["candidate"]
        or intent.get("required") != run["required"]
        or requester != run["requested_by"]
    ):
        raise ProofCheckError("run", "the run's signed intent differs from the statement")
    for gate in predicate["gates"]:
        record = _record(lookup, gate["verdict"], GATE_EVALUATED, "verdict")
        payload = record.payload()
        if record.originator_id.replace("-", "") != run_id or payload.get("gate") != gate["gate"]:
            raise ProofCheckError("verdict", f"gate {gate['gate']}: cites another verdict")
        if payload.get("passed") != (gate["status"] == "PASS"):
            raise ProofCheckError(
                "verdict",
                f"gate {gate['gate']}: the ledger recorded passed={payload.get('passed')}, "
                f"the statement says {gate['status']}",
            )
        if (gate["gate"] in intent.get("required", [])) != gate["required"]:
            raise ProofCheckError("verdict", f"gate {gate['gate']}: required differs from intent")
        if gate["gate"] == "consent" and gate["status"] == "PASS":
            _check_consent(lookup, gate, run, requester, record)
    finished = _record(lookup, run["finished"], FINISHED, "run")
    outcome = finished.payload().get("outcome")
    if finished.originator_id.replace("-", "") != run_id or (outcome == "promoted") != bool(
        predicate["promoted"]
    ):
        raise ProofCheckError("run", f"the run's signed outcome is {outcome!r}")
    return [
        Check("run", f"the run's intent and outcome ({outcome}) are its signed events"),
        Check(
            "verdicts",
            f"{len(predicate['gates'])} gate verdicts are the signed gate-evaluated events",
        ),
    ]


def _check_consent(
    lookup: Lookup,
    gate: Mapping[str, Any],
    run: Mapping[str, Any],
    requester: str,
    verdict: SealedRecord,
) -> None:
    evidence = gate.get("evidence", [])
    granted = [
        e
        for e in (evidence if isinstance(evidence, list) else [])
        if isinstance(e, Mapping) and e.get("topic") == CONSENT_GRANTED
    ]
    if len(granted) != 1:
        raise ProofCheckError("consent", "a passing consent gate must cite one consent grant")
    record = _record(lookup, granted[0], CONSENT_GRANTED, "consent")
    grant = record.payload()
    if record.body.keyid == requester:
        raise ProofCheckError(
            "consent", "consent was signed by the key that requested promotion (same key)"
        )
    if grant.get("release_id") != run["candidate"]["release_id"] or (
        grant.get("app"),
        grant.get("environment"),
    ) != (run["app"], run["environment"]):
        raise ProofCheckError("consent", "the consent grant names another candidate")
    at: datetime = parse_timestamp(verdict.body.timestamp)
    if parse_timestamp(str(grant.get("expires"))) <= at:
        raise ProofCheckError("consent", f"the consent had expired ({grant.get('expires')})")
    if record.seq >= verdict.seq:
        raise ProofCheckError("consent", "the consent was granted after the verdict")
