"""The rollback proof: an in-toto Statement, in a DSSE envelope, that a
rollback restored exactly the state its target revision had.

Checks here need only the statement (and, where given, a way to look up
stored records): someone who does not trust the operator runs them with the
operator's public key and, optionally, a copy of the ledger.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ledger.canonical import canonical_json
from ledger.installations import STATE_TAG, Installation
from ledger.records import SealedRecord
from proofs.intoto import ROLLBACK_PROOF_PREDICATE, STATEMENT_TYPE

HEX64 = re.compile(r"[0-9a-f]{64}")
ROLLBACK_TARGETED = Installation.RollbackTargeted.TOPIC
OPERATION_STARTED = Installation.OperationStarted.TOPIC
OPERATION_FINISHED = Installation.OperationFinished.TOPIC
LATER_STATUSES = frozenset({"superseded", "rolled-back"})
"""What a deployed revision becomes once another replaces or undoes it.
Proofs issued before the ``outcome`` check stated the status the revision
had when issued; those verify against a recorded ``deployed``."""


# The predicate's typed fields: checked before anything reads them, so a
# malformed proof fails "predicate" and no later check meets a wrong type.
FIELD_TYPES: dict[tuple[str, str], tuple[type, ...]] = {
    ("installation", "id"): (str,),
    ("installation", "app"): (str,),
    ("installation", "environment"): (str,),
    ("rollback", "revision"): (int,),
    ("rollback", "op_id"): (str,),
    ("rollback", "status"): (str,),
    ("rollback", "description"): (str,),
    ("rollback", "from_revision"): (int, type(None)),
    ("rollback", "started_version"): (int,),
    ("rollback", "finished_version"): (int,),
    ("target", "revision"): (int,),
    ("target", "version"): (int,),
    ("target", "label"): (str,),
    ("target", "release_id"): (str,),
    ("target", "state_digest"): (str,),
    ("target", "recorded_state_digest"): (str,),
}
EVENT_FIELD_TYPES: dict[str, type] = {
    "seq": int,
    "version": int,
    "originator_id": str,
    "topic": str,
    "digest": str,
}


def check_field_types(predicate: Mapping[str, Any]) -> None:
    """Every field a check reads has its type (``bool`` is no integer here)."""

    def typed(value: Any, types: tuple[type, ...]) -> bool:
        return isinstance(value, types) and not isinstance(value, bool)

    for (section, name), types in FIELD_TYPES.items():
        part = predicate.get(section)
        value = part.get(name, ...) if isinstance(part, Mapping) else ...
        if not typed(value, types):
            expected = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise ProofCheckError("predicate", f"{section}.{name} must be {expected}")
    events = predicate.get("events")
    if not isinstance(events, list) or not events:
        raise ProofCheckError("events", "the proof cites no ledger events")
    for i, event in enumerate(events):
        for name, kind in EVENT_FIELD_TYPES.items():
            if not isinstance(event, Mapping) or not typed(event.get(name), (kind,)):
                raise ProofCheckError("predicate", f"events[{i}].{name} must be {kind.__name__}")


class ProofCheckError(Exception):
    """A named check of a proof failed."""

    exit_code = 8

    def __init__(self, check: str, detail: str) -> None:
        super().__init__(f"proof check {check} failed: {detail}")
        self.check = check
        self.detail = detail

    def diagnostics(self) -> str:
        return str(self)


@dataclass(frozen=True)
class Check:
    name: str
    detail: str

    def to_dict(self) -> dict[str, str]:
        return {"check": self.name, "detail": self.detail}


def check_rollback_statement(statement: Mapping[str, Any]) -> list[Check]:
    """Structure and internal consistency; raises ``ProofCheckError``."""
    if statement.get("_type") != STATEMENT_TYPE:
        raise ProofCheckError("statement-type", f"expected _type {STATEMENT_TYPE}")
    if statement.get("predicateType") != ROLLBACK_PROOF_PREDICATE:
        raise ProofCheckError(
            "predicate-type",
            f"expected {ROLLBACK_PROOF_PREDICATE}, found {statement.get('predicateType')!r}",
        )
    predicate = statement.get("predicate")
    if not isinstance(predicate, Mapping):
        raise ProofCheckError("predicate", "missing predicate object")
    try:
        target = predicate["target"]
        post = str(predicate["post_state_digest"])
        claimed = bool(predicate["restored_exactly"])
        verified = predicate["ledger"]["verified"]
        subjects = statement["subject"]
    except (KeyError, TypeError) as e:
        raise ProofCheckError("predicate", f"missing field {e}") from None
    if verified is not True:
        raise ProofCheckError("ledger-verified", "the ledger did not verify when issued")
    check_field_types(predicate)
    replayed = str(target.get("state_digest"))
    if not HEX64.fullmatch(replayed) or not HEX64.fullmatch(post):
        raise ProofCheckError("state-digests", "state digests must be 64 hex digits")
    # Both digests are the statement's own: this is consistency only. Whether
    # the intent really recorded that state is check_intent's, against the ledger.
    if replayed != target.get("recorded_state_digest"):
        raise ProofCheckError(
            "replay-digest",
            "the statement's replayed target state differs from the intent digest it quotes",
        )
    if claimed != (replayed == post):
        raise ProofCheckError(
            "restored-exactly", f"claims restored_exactly={claimed} but the digests say otherwise"
        )
    check_target_state(target)
    check_subjects(predicate, subjects)
    return [
        Check("statement", "in-toto Statement v1 with the rollback-proof predicate"),
        Check(
            "replay-digest",
            f"replayed target state {replayed[:16]}… equals the intent digest the statement "
            "quotes (the statement's own claim until checked against the ledger)",
        ),
        Check(
            "restored-exactly",
            f"post-rollback state {post[:16]}… "
            + ("equals" if claimed else "differs from")
            + " the target state",
        ),
        Check("target-state", "the target state shown has the target state digest"),
        Check("subject", f"the subjects are the {len(subjects)} release(s) the target runs"),
    ]


def check_target_state(target: Mapping[str, Any]) -> None:
    """The spatial state the statement shows is the one its digest names
    (ledger-format.md §6.2): what a reader sees is what was replayed."""
    state = target.get("state")
    try:
        if not isinstance(state, Mapping):
            raise TypeError("not an object")
        shown = hashlib.sha256(STATE_TAG + canonical_json(dict(state))).hexdigest()
    except (TypeError, ValueError) as e:
        raise ProofCheckError(
            "target-state", f"the target state is not a state document: {e}"
        ) from None
    if shown != target.get("state_digest"):
        raise ProofCheckError(
            "target-state",
            f"the target state shown has digest {shown[:16]}…, not the target state digest",
        )


def check_subjects(predicate: Mapping[str, Any], subjects: Any) -> None:
    """The subjects are exactly the releases the target state runs (and the
    target revision's release), each named ``APP/ENV@LABEL`` with a label
    it runs under: the release digests a consumer reads first are the ones
    the replayed state holds. Run after :func:`check_target_state`."""
    target = predicate["target"]
    try:
        where = f"{predicate['installation']['app']}/{predicate['installation']['environment']}"
    except (KeyError, TypeError):
        raise ProofCheckError("predicate", "missing installation app or environment") from None
    try:
        hosts = list(target["state"]["hosts"].values())
        runs = [(h["release_id"], h["label"]) for h in hosts]
        runs.append((target["release_id"], target["label"]))
    except (AttributeError, KeyError, TypeError):
        raise ProofCheckError("subject", "the target state's hosts are not host entries") from None
    if not all(isinstance(value, str) for run in runs for value in run):
        raise ProofCheckError("subject", "release ids and labels must be strings")
    allowed = {(f"{where}@{label}", release_id) for release_id, label in runs}
    named = []
    for entry in subjects if isinstance(subjects, list) else [None]:
        fields = entry if isinstance(entry, Mapping) else {}
        digest = fields.get("digest")
        sha256 = digest.get("sha256") if isinstance(digest, Mapping) else None
        name = fields.get("name")
        if not isinstance(sha256, str) or not isinstance(name, str):
            raise ProofCheckError("subject", "each subject needs a name and a sha256 digest")
        named.append((name, sha256))
    for name, sha256 in named:
        if (name, sha256) not in allowed:
            raise ProofCheckError(
                "subject",
                f"subject {name!r} ({sha256[:16]}…) is not a release the target runs",
            )
    missing = {release_id for release_id, _ in runs} - {sha256 for _, sha256 in named}
    if missing:
        raise ProofCheckError(
            "subject",
            f"the subject does not name release {sorted(missing)[0][:16]}…, which the target runs",
        )


def check_cited_events(
    statement: Mapping[str, Any], lookup: Callable[[int], SealedRecord | None]
) -> Check:
    """Every cited event exists at its sequence number with its digest."""
    events = statement["predicate"]["events"]
    for cited in events:
        seq = int(cited["seq"])
        record = lookup(seq)
        if record is None:
            raise ProofCheckError("event-missing", f"the ledger has no event at seq {seq}")
        if record.digest.hex() != cited["digest"]:
            raise ProofCheckError(
                "event-digest",
                f"event {seq} has digest {record.digest.hex()[:16]}…, the proof cites "
                f"{str(cited['digest'])[:16]}…",
            )
        same_place = (
            record.originator_id.replace("-", "") == str(cited["originator_id"]).replace("-", "")
            and record.version == int(cited["version"])
            and record.topic == cited["topic"]
        )
        if not same_place:
            raise ProofCheckError("event-position", f"event {seq} is not the one the proof cites")
    return Check("cited-events", f"{len(events)} cited events exist with those digests")


def cited_record(
    predicate: Mapping[str, Any],
    lookup: Callable[[int], SealedRecord | None],
    topic: str,
    check: str,
    version: int | None = None,
) -> SealedRecord:
    """The one event of ``topic`` (at ``version``, if given) the proof cites,
    read from the ledger by its position: an event of this installation with
    that topic, else ``check`` fails. Fields are typed by
    :func:`check_field_types` already."""
    installation = str(predicate["installation"]["id"]).replace("-", "")
    cited = [
        e
        for e in predicate["events"]
        if e["topic"] == topic and (version is None or e["version"] == version)
    ]
    where = f" at version {version}" if version is not None else ""
    if len(cited) != 1:
        raise ProofCheckError(
            check, f"the proof cites {len(cited)} {topic} events{where}, expected one"
        )
    seq = cited[0]["seq"]
    record = lookup(seq)
    if (
        record is None
        or record.topic != topic
        or record.originator_id.replace("-", "") != installation
        or (version is not None and record.version != version)
    ):
        raise ProofCheckError(check, f"the ledger has no {topic} event{where} at seq {seq}")
    return record


def check_intent(
    statement: Mapping[str, Any], lookup: Callable[[int], SealedRecord | None]
) -> Check:
    """The target the proof replays is the one the rollback's intent fixed: the
    ``rollback-targeted`` event the proof cites, read from the ledger by its
    position (not the statement's copy of it), names the same operation,
    target revision, version and state digest, and the revision it undid.
    Run after ``check_cited_events`` (same digests) on a verified ledger."""
    predicate = statement["predicate"]
    rollback, target = predicate["rollback"], predicate["target"]
    record = cited_record(predicate, lookup, ROLLBACK_TARGETED, "intent")
    seq = record.seq
    started, finished = rollback["started_version"], rollback["finished_version"]
    if not started <= record.version <= finished:
        raise ProofCheckError(
            "intent",
            f"event {seq} is not an event of this rollback (versions {started}..{finished})",
        )
    intent = record.payload()
    claimed = {
        "op_id": rollback["op_id"],
        "target_revision": target["revision"],
        "target_version": target["version"],
        "target_state_digest": target["state_digest"],
        "from_revision": rollback["from_revision"],
    }
    for name, value in claimed.items():
        if intent.get(name) != value:
            found = str(intent.get(name))[:16]
            raise ProofCheckError(
                "intent",
                f"the rollback's intent (event {seq}) recorded {name} {found}, "
                f"the proof states {str(value)[:16]}",
            )
    return Check(
        "intent",
        f"the rollback's intent (event {seq}) fixed revision {target['revision']} at version "
        f"{target['version']} with state {str(target['state_digest'])[:16]}…, the state replayed",
    )


def check_outcome(
    statement: Mapping[str, Any], lookup: Callable[[int], SealedRecord | None]
) -> Check:
    """What the proof says of the rollback itself is what its signed events
    recorded: its ``operation-started`` at ``started_version`` (a rollback,
    with that op id and revision) and its ``operation-finished`` at
    ``finished_version`` (that op id, revision, status and description), each
    read from the ledger by the position the proof cites, never from the
    statement's copy. Run after ``check_cited_events`` on a verified ledger."""
    predicate = statement["predicate"]
    rollback = predicate["rollback"]
    started = cited_record(
        predicate, lookup, OPERATION_STARTED, "outcome", rollback["started_version"]
    )
    finished = cited_record(
        predicate, lookup, OPERATION_FINISHED, "outcome", rollback["finished_version"]
    )
    expected = [
        (
            started,
            {"operation": "rollback", "op_id": rollback["op_id"], "revision": rollback["revision"]},
        ),
        (finished, {k: rollback[k] for k in ("op_id", "revision", "status", "description")}),
    ]
    for record, wanted in expected:
        payload = record.payload()
        for name, value in wanted.items():
            if name == "status" and value in LATER_STATUSES and payload.get(name) == "deployed":
                continue  # a proof issued before: the status the revision had by then
            if payload.get(name) != value:
                raise ProofCheckError(
                    "outcome",
                    f"event {record.seq} recorded the rollback's {name} as "
                    f"{str(payload.get(name))[:40]!r}, the proof states {str(value)[:40]!r}",
                )
    return Check(
        "outcome",
        f"rollback revision {rollback['revision']} ({rollback['op_id'][:12]}…) finished "
        f"{rollback['status']} at version {rollback['finished_version']}, as events "
        f"{started.seq} and {finished.seq} recorded",
    )
