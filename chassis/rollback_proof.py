"""Issuing and verifying rollback proofs (format: guides/proofs.md).

Issuing verifies the whole ledger first, replays the target state again,
and cites the stored positions of every event of the rollback operation and
of the event that made the target revision deployed.

Verifying with a ledger at hand verifies that ledger first, the same way
(DESIGN §1, principle 9): trust, the cited events and the replays all come
from it, so a proof is never judged by rows nobody checked.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from chassis.audit import verify_workspace
from chassis.engine.operation import full_history, load_installation, signed_revision_state
from chassis.errors import ChassisError, WorkspaceError
from chassis.replay import positions, replay_from_events
from chassis.workspace import Workspace
from ledger.aggregate import now
from ledger.application import Ledger
from ledger.canonical import format_timestamp
from ledger.errors import DomainRuleError, LedgerError
from ledger.installations import Installation
from ledger.keys import KeyPair, keyid_for, load_public_key
from ledger.records import MalformedRecordError, SealedRecord, parse_record
from ledger.trust import TrustedKey
from proofs.chain import LedgerVerificationError, VerifiedLedger, verify_ledger
from proofs.dsse import PAYLOAD_TYPE_INTOTO, EnvelopeError, sign_envelope, verify_envelope
from proofs.evolution import check_evolution_evidence, check_evolution_statement
from proofs.intoto import (
    EVOLUTION_PROOF_PREDICATE,
    ROLLBACK_PROOF_PREDICATE,
    statement,
    statement_bytes,
    subject,
)
from proofs.ledger_verify import LedgerReport
from proofs.rollback import (
    Check,
    ProofCheckError,
    check_cited_events,
    check_intent,
    check_outcome,
    check_rollback_statement,
)


class ProofError(ChassisError):
    exit_code = 10


def rollback_proof(
    ledger: Ledger,
    ws: Workspace,
    signer: KeyPair,
    *,
    app: str,
    environment: str,
    revision: int | None,
) -> dict[str, Any]:
    """The signed DSSE envelope proving rollback ``revision`` (default: the newest)."""
    installation = load_installation(ledger, app, environment)
    entry = _rollback_entry(ledger, installation, revision)
    verified = verify_workspace(ws, ledger)
    started, finished = int(entry["started_version"]), int(entry["version"])
    events = [e for _, e in ledger.verified_events(installation.id, gt=started - 1, lte=finished)]
    targeted = next(e for e in events if isinstance(e, Installation.RollbackTargeted))
    # Evidence is folded from the signed events alone, never from snapshots.
    target_state = replay_from_events(ledger, installation.id, targeted.target_version)
    replayed = target_state.state_digest()
    post = replay_from_events(ledger, installation.id, finished).state_digest()
    health: dict[str, Any] = {}
    for event in events:
        if isinstance(event, Installation.StepRecorded) and event.step == "health":
            health[event.host] = {"ok": event.ok, "detail": event.detail, **event.data}
    cited = positions(
        ledger, installation.id, {targeted.target_version, *range(started, finished + 1)}
    )
    target_entry = target_state.revision_entry(targeted.target_revision)
    releases = {e["release_id"]: e["label"] for e in target_state.hosts.values()}
    releases.setdefault(str(target_entry["release_id"]), str(target_entry["label"]))
    trust = ledger.trust()
    predicate = {
        "ledger": {
            "name": trust.ledger_name if trust else "",
            "verified": True,
            "events": verified.events,
            "last_seq": verified.last_seq,
            "root_keyid": verified.root_keyid,
            "signatures": verified.signatures,
        },
        "installation": {"app": app, "environment": environment, "id": str(installation.id)},
        "rollback": {
            "revision": int(entry["revision"]),
            "op_id": entry["op_id"],
            "status": entry["status"],
            "description": entry["description"],
            "from_revision": targeted.from_revision,
            "started_version": started,
            "finished_version": finished,
        },
        "target": {
            "revision": targeted.target_revision,
            "version": targeted.target_version,
            "label": str(target_entry["label"]),
            "release_id": str(target_entry["release_id"]),
            "state_digest": replayed,
            "recorded_state_digest": targeted.target_state_digest,
            "state": target_state.spatial_state(),
        },
        "post_state_digest": post,
        "restored_exactly": replayed == post,
        "health": health,
        "events": [p.to_dict() for p in cited],
        "issued": format_timestamp(now()),
        "issuer": signer.keyid,
    }
    subjects = [
        subject(f"{app}/{environment}@{label}", release_id)
        for release_id, label in sorted(releases.items())
    ]
    body = statement(subjects, ROLLBACK_PROOF_PREDICATE, predicate)
    check_rollback_statement(body)  # never sign a statement our own verifier refuses
    return sign_envelope(statement_bytes(body), PAYLOAD_TYPE_INTOTO, signer)


def _rollback_entry(
    ledger: Ledger, installation: Installation, revision: int | None
) -> dict[str, Any]:
    """Rollback ``revision``'s entry as the signed state where it finished
    records it. The view only says where to look: every word the proof
    signs comes from the signed state (:func:`signed_revision_state`)."""
    name = f"{installation.app}/{installation.environment}"
    rollbacks = [
        e
        for e in full_history(ledger, installation)
        if e["operation"] == "rollback" and "version" in e
    ]
    if revision is not None:
        rollbacks = [e for e in rollbacks if e["revision"] == revision]
        if not rollbacks:
            raise ProofError(f"revision {revision} of {name} is not a finished rollback")
    if not rollbacks:
        raise ProofError(f"{name} has no finished rollback to prove")
    state = signed_revision_state(
        ledger, installation, rollbacks[-1], "sign a proof of it", operation="rollback"
    )
    return state.revision_entry(int(rollbacks[-1]["revision"]))


# Verifying.


@dataclass
class ProofReport:
    kind: str
    keyid: str
    checks: list[Check] = field(default_factory=list)
    statement: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": True,
            "kind": self.kind,
            "keyid": self.keyid,
            "checks": [c.to_dict() for c in self.checks],
        }


def keys_from_dir(directory: Path) -> dict[str, bytes]:
    """Trusted public keys: every ``*.pub`` file in ``directory``."""
    if not directory.is_dir():
        raise WorkspaceError(f"--trusted-keys {directory}: not a directory")
    keys = {}
    for path in sorted(directory.glob("*.pub")):
        public = load_public_key(path)
        keys[keyid_for(public)] = public
    if not keys:
        raise WorkspaceError(f"--trusted-keys {directory}: no *.pub public key files")
    return keys


class TrustKeys(Protocol):
    """Whatever holds the trust fold's keys (the trust state or aggregate)."""

    @property
    def keys(self) -> Mapping[str, TrustedKey]: ...


def keys_from_trust(trust: TrustKeys | None, role: str) -> tuple[dict[str, bytes], dict[str, str]]:
    """Active keys holding ``role``; and revoked key ids with their reason."""
    if trust is None:
        raise WorkspaceError("this ledger has no root of trust (run 'chassis init')")
    active = {
        k.keyid: bytes.fromhex(k.public_key)
        for k in trust.keys.values()
        if k.active and (role in k.roles or "admin" in k.roles)
    }
    revoked = {
        k.keyid: f"revoked at {k.revoked_at}: {k.revoked_reason}"
        for k in trust.keys.values()
        if not k.active
    }
    return active, revoked


@contextmanager
def failing_as(check: str) -> Iterator[None]:
    """A verification failure of the ledger (exit 8), raised while ``check``
    reads it, fails that check: closed, and named."""
    try:
        yield
    except LedgerVerificationError as e:
        raise ProofCheckError(check, e.diagnostics()) from None
    except LedgerError as e:
        if e.exit_code != LedgerVerificationError.exit_code:
            raise
        raise ProofCheckError(check, e.diagnostics()) from None


def check_ledger(ledger: Ledger, ws: Workspace | None) -> Check:
    """The whole ledger verified as ``chassis ledger verify`` does: every
    record's digest, link and signature by a key trusted as of it, against
    the workspace's pinned root (without a workspace, the ledger's own root)."""
    with failing_as("ledger"):
        verified: VerifiedLedger | LedgerReport = (
            verify_workspace(ws, ledger)
            if ws is not None
            else verify_ledger(ledger.scan(), pinned_root=None)
        )
    pinned = "pinned" if ws is not None else "its own (no workspace pins it)"
    return Check(
        "ledger",
        f"{verified.events} events verified, {verified.signatures} signatures, root of trust "
        f"{(verified.root_keyid or '')[:16]} ({pinned})",
    )


def verify_in_workspace(
    envelope: Mapping[str, Any],
    ws: Workspace,
    ledger: Ledger,
    *,
    trusted_keys: Mapping[str, bytes] | None = None,
) -> ProofReport:
    """The ledger first, then its trust (or ``trusted_keys``, less the keys it
    revoked), then every check of :func:`verify_rollback_envelope`."""
    verified = check_ledger(ledger, ws)
    with failing_as("ledger"):
        keys, revoked = keys_from_trust(ledger.trust(), "operator")
    if trusted_keys is not None:
        keys = {k: v for k, v in trusted_keys.items() if k not in revoked}
    return _verify(envelope, keys, revoked, ledger, verified)


def verify_rollback_envelope(
    envelope: Mapping[str, Any],
    keys: Mapping[str, bytes],
    *,
    revoked: Mapping[str, str] | None = None,
    ledger: Ledger | None = None,
    ws: Workspace | None = None,
) -> ProofReport:
    """With a ledger: the ledger verified, then signature, statement, the
    intent and cited events, the replays. Without one: signature and
    statement only (offline)."""
    verified = check_ledger(ledger, ws) if ledger is not None else None
    return _verify(envelope, keys, revoked, ledger, verified)


def _verify(
    envelope: Mapping[str, Any],
    keys: Mapping[str, bytes],
    revoked: Mapping[str, str] | None,
    ledger: Ledger | None,
    verified_ledger: Check | None,
) -> ProofReport:
    signed_by = [str(s.get("keyid", "")) for s in envelope.get("signatures", []) or []]
    for keyid in signed_by:
        if revoked and keyid in revoked:
            raise ProofCheckError("signature", f"signed by key {keyid[:16]}, {revoked[keyid]}")
    try:
        verified = verify_envelope(envelope, keys)
    except EnvelopeError as e:
        raise ProofCheckError("signature", e.diagnostics()) from None
    body = verified.statement
    if body is None:
        raise ProofCheckError("statement", "the envelope holds no in-toto statement")
    evolution = body.get("predicateType") == EVOLUTION_PROOF_PREDICATE
    kind = "evolution-proof" if evolution else "rollback-proof"
    report = ProofReport(kind, verified.keyid, statement=body)
    if verified_ledger is not None:
        report.checks.append(verified_ledger)
    report.checks.append(Check("signature", f"DSSE signature by trusted key {verified.keyid[:16]}"))
    if evolution:
        report.checks.extend(check_evolution_statement(body))
        if ledger is not None:
            with failing_as("evidence"):
                lookup = lambda seq: _record_at(ledger, seq)  # noqa: E731
                report.checks.extend(check_evolution_evidence(body, lookup))
        return report
    report.checks.extend(check_rollback_statement(body))
    if ledger is not None:
        with failing_as("cited-events"):
            report.checks.append(check_cited_events(body, lambda seq: _record_at(ledger, seq)))
        with failing_as("intent"):
            report.checks.append(check_intent(body, lambda seq: _record_at(ledger, seq)))
        with failing_as("outcome"):
            report.checks.append(check_outcome(body, lambda seq: _record_at(ledger, seq)))
        with failing_as("replay"):
            report.checks.append(_check_replay(ledger, body))
    return report


def _record_at(ledger: Ledger, seq: int) -> SealedRecord | None:
    for row in ledger.records(since=seq, limit=1):
        if row.id != seq:
            return None
        try:
            return parse_record(
                row.id, row.originator_id, row.originator_version, row.topic, row.state
            )
        except MalformedRecordError:
            return None
    return None


def _check_replay(ledger: Ledger, body: Mapping[str, Any]) -> Check:
    """Replay the installation again, from its verified events alone
    (snapshots are a cache, not evidence), at both versions the proof names."""
    predicate = body["predicate"]
    named = predicate["installation"]
    key = Installation.id_for(Installation.key(str(named["app"]), str(named["environment"])))
    if str(key) != str(named["id"]):
        raise ProofCheckError("replay", f"installation id {named['id']} is not {key}")
    target_version = int(predicate["target"]["version"])
    replayed = replay_from_events(ledger, key, target_version)
    if replayed.state_digest() != predicate["target"]["state_digest"]:
        raise ProofCheckError("replay", "replaying the ledger gives another target state")
    claimed = predicate["target"]
    try:
        entry = replayed.revision_entry(int(claimed["revision"]))
    except DomainRuleError:
        entry = {}
    for name in ("release_id", "label"):
        if entry.get(name) != claimed.get(name):
            raise ProofCheckError(
                "target-release",
                f"the ledger recorded revision {claimed['revision']}'s {name} as "
                f"{str(entry.get(name))[:16]!r}, the proof states {str(claimed.get(name))[:16]!r}",
            )
    finished_version = int(predicate["rollback"]["finished_version"])
    post = replay_from_events(ledger, key, finished_version).state_digest()
    if post != predicate["post_state_digest"]:
        raise ProofCheckError("replay", "replaying the ledger gives another post-rollback state")
    return Check(
        "replay",
        "folding the installation's events, each verified (canonical form, digest, link, "
        "signature by a key trusted then), gives both state digests and the target "
        "revision's release",
    )


def load_envelope(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_bytes())
    except OSError as e:
        raise WorkspaceError(f"{path}: {e.strerror}") from None
    except ValueError as e:
        raise ProofCheckError("format", f"{path}: not JSON ({e})") from None
    if not isinstance(data, dict) or "payloadType" not in data:
        raise ProofCheckError("format", f"{path}: not a DSSE envelope (no payloadType)")
    return data
