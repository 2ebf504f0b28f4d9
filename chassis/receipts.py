"""Receipts: a signed DSSE envelope for every completed operation.

Receipts are derived from the ledger, not written by each command: after a
command that appended events (and after the checkpoint it triggers), the
events since the last receipt position are scanned for the events that
complete an operation:

* ``operation-finished`` — deploy, rollback, recover (an operation that was
  resumed) or repair;
* ``lease-broken``;
* ``host.inventoried`` whose facts digest changed (an inventory change);
* ``host.admission-evaluated`` (hardware admission).

Each becomes an in-toto Statement (predicate ``RECEIPT_PREDICATE``), redacted,
signed by the acting key, stored in ``chassis_receipts`` with the export
record the tracing plane gets. A crashed command's operations get their
receipts from the next signing command, so none is lost.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import msgspec

from chassis.errors import ChassisError
from chassis.workspace import Workspace
from ledger.aggregate import LedgerAggregate
from ledger.application import Ledger, RawRow
from ledger.bulk import collector_paused
from ledger.canonical import canonical_json, format_timestamp
from ledger.events import LedgerEvent, registered_topics
from ledger.hosts import Host
from ledger.installations import Installation
from ledger.keys import KeyPair
from ledger.models import ModelAsset
from ledger.records import MalformedRecordError, parse_record
from ledger.tables import Cursor, SideTables
from ledger.vouched import VouchedDigests
from proofs.dsse import PAYLOAD_TYPE_INTOTO, envelope_digest, sign_envelope
from proofs.intoto import RECEIPT_PREDICATE, fresh_statement, subject
from proofs.redaction import Redactor
from proofs.vouch import CheckpointVouch

REDACTION_KEY_FILE = "redaction.key"

COMPLETING_TOPICS = (
    Installation.OperationFinished.TOPIC,
    Installation.LeaseBroken.TOPIC,
    Host.Inventoried.TOPIC,
    Host.AdmissionEvaluated.TOPIC,
    ModelAsset.Materialized.TOPIC,
)

Note = Callable[[str], None]
A = TypeVar("A", bound=LedgerAggregate)


class ReceiptNotFound(ChassisError):
    exit_code = 10


@dataclass(frozen=True)
class Position:
    """Where the event that completed an operation sits in the ledger."""

    seq: int
    digest: str
    tree_size: int | None
    root: str | None
    origin: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "event_digest": self.digest,
            "tree_size": self.tree_size,
            "root": self.root,
            "origin": self.origin,
        }


@dataclass(frozen=True)
class StoredReceipt:
    digest: str
    seq: int
    operation: str
    app: str
    environment: str
    created: str
    record: dict[str, Any]
    """The export record (``proofs.export``): envelope, statement and summary."""

    @property
    def envelope(self) -> dict[str, Any]:
        envelope: dict[str, Any] = self.record["envelope"]
        return envelope

    @property
    def statement(self) -> dict[str, Any]:
        body: dict[str, Any] = self.record["statement"]
        return body

    def summary(self) -> dict[str, Any]:
        return {
            "digest": self.digest,
            "seq": self.seq,
            "operation": self.operation,
            "status": self.record["status"],
            "app": self.app,
            "environment": self.environment,
            "revision": self.record.get("revision"),
            "label": self.record.get("label"),
            "created": self.created,
        }


class ReceiptStore:
    def __init__(self, ledger: Ledger) -> None:
        self.tables = SideTables(ledger)
        self.tables.create(
            "CREATE TABLE IF NOT EXISTS {chassis_receipts} (digest TEXT PRIMARY KEY, "
            "seq BIGINT UNIQUE, operation TEXT, app TEXT, environment TEXT, created TEXT, "
            "record {blob})",
            "CREATE TABLE IF NOT EXISTS {chassis_receipt_position} (name TEXT PRIMARY KEY, "
            "seq BIGINT)",
        )

    def position(self) -> int:
        with self.tables.transaction(commit=False) as c:
            c.execute("SELECT seq FROM {chassis_receipt_position} WHERE name = ?", ("receipts",))
            row = c.fetchone()
        return int(row[0]) if row else 0

    def add(self, receipts: list[StoredReceipt], position: int) -> None:
        """Store receipts and the new scan position together; a receipt already
        stored (another process got there first) is kept as it is."""
        with self.tables.transaction(commit=True) as c:
            c.execute("SELECT seq FROM {chassis_receipt_position} WHERE name = ?", ("receipts",))
            row = c.fetchone()
            if row is not None and int(row[0]) >= position:
                return
            stored = self._stored_seqs(c, [r.seq for r in receipts])
            c.executemany(
                "INSERT INTO {chassis_receipts} VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        r.digest,
                        r.seq,
                        r.operation,
                        r.app,
                        r.environment,
                        r.created,
                        canonical_json(r.record),
                    )
                    for r in receipts
                    if r.seq not in stored
                ],
            )
            if row is None:
                c.execute(
                    "INSERT INTO {chassis_receipt_position} VALUES (?, ?)", ("receipts", position)
                )
            else:
                c.execute(
                    "UPDATE {chassis_receipt_position} SET seq = ? WHERE name = ?",
                    (position, "receipts"),
                )

    @staticmethod
    def _stored_seqs(c: Cursor, seqs: list[int]) -> set[int]:
        """Which of ``seqs`` already have a receipt (one query per 500)."""
        found: set[int] = set()
        for start in range(0, len(seqs), 500):
            chunk = seqs[start : start + 500]
            marks = ", ".join("?" for _ in chunk)
            c.execute(f"SELECT seq FROM {{chassis_receipts}} WHERE seq IN ({marks})", chunk)  # noqa: S608
            found.update(int(row[0]) for row in c.fetchall())
        return found

    def all(self, *, since_seq: int = 0) -> list[StoredReceipt]:
        with self.tables.transaction(commit=False) as c:
            c.execute(
                "SELECT digest, seq, operation, app, environment, created, record "
                "FROM {chassis_receipts} WHERE seq > ? ORDER BY seq",
                (since_seq,),
            )
            rows = c.fetchall()
        return [_stored(r) for r in rows]

    def get(self, ref: str) -> StoredReceipt:
        """By digest (or a unique prefix of at least 8 hex digits) or ``seq:N``."""
        select = "SELECT digest, seq, operation, app, environment, created, record FROM "
        with self.tables.transaction(commit=False) as c:
            if ref.startswith("seq:") and ref[4:].isdigit():
                c.execute(select + "{chassis_receipts} WHERE seq = ?", (int(ref[4:]),))
            elif len(ref) >= 8 and all(ch in "0123456789abcdef" for ch in ref):
                c.execute(select + "{chassis_receipts} WHERE digest LIKE ?", (ref + "%",))
            else:
                raise ReceiptNotFound(
                    f"receipt {ref!r}: expected a digest (8+ hex digits) or seq:N"
                )
            rows = c.fetchall()
        if len(rows) != 1:
            why = "no receipt" if not rows else f"{len(rows)} receipts"
            raise ReceiptNotFound(f"{why} match {ref!r} (see chassis receipts list)")
        return _stored(rows[0])


def _stored(row: Any) -> StoredReceipt:
    return StoredReceipt(
        digest=str(row[0]),
        seq=int(row[1]),
        operation=str(row[2]),
        app=str(row[3]),
        environment=str(row[4]),
        created=str(row[5]),
        record=json.loads(bytes(row[6])),
    )


def redaction_key(ws: Workspace) -> bytes:
    """The workspace's HMAC key for redaction markers (created once, mode 600)."""
    path = ws.state_dir / REDACTION_KEY_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(secrets.token_bytes(32))
        try:
            os.link(tmp, path)  # first writer wins
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_bytes()


def redactor_for(ws: Workspace) -> Redactor:
    return Redactor(redaction_key(ws))


# Issuing.


@dataclass(frozen=True)
class LedgerPosition:
    """What the log says about the ledger right now (size, root, origin)."""

    tree_size: int | None
    root: str | None
    origin: str | None
    leaf_index: Callable[[int], int | None]
    leaf_indices: Callable[[Sequence[int]], dict[int, int]] | None = None
    """Many at once (``leaf_index`` of each, in one read), where the log can."""


PositionSource = Callable[[Ledger], LedgerPosition]


def issue_pending(
    ledger: Ledger,
    ws: Workspace,
    signer: KeyPair,
    note: Note,
    position: PositionSource | None = None,
) -> list[StoredReceipt]:
    """Receipts for every operation completed since the last scan."""
    with collector_paused():
        return _issue_pending(ledger, ws, signer, note, position)


def _issue_pending(
    ledger: Ledger,
    ws: Workspace,
    signer: KeyPair,
    note: Note,
    position: PositionSource | None,
) -> list[StoredReceipt]:
    store = ReceiptStore(ledger)
    start = store.position()
    last = ledger.max_seq()
    if last <= start:
        return []
    where = position(ledger) if position else LedgerPosition(None, None, None, lambda _: None)
    redactor = redactor_for(ws)
    issued: list[StoredReceipt] = []
    previous_facts: dict[str, str | None] = {}
    # A long backlog (a crashed command's, or one left by a key without role
    # ``checkpoint``) reads its events on the word of the checkpoint just
    # signed over them (``proofs.vouch``) instead of checking each signature.
    vouched = CheckpointVouch(ledger)(start, sorted(registered_topics()))
    history = _History(ledger, vouched)
    completing = list(_completing(ledger, start, last))
    leaves = (
        where.leaf_indices([row[0] for row in completing])
        if where.leaf_indices is not None
        else None
    )
    for seq, originator, version, topic, state in completing:
        try:
            record = parse_record(seq, originator, version, topic, state)
        except MalformedRecordError as e:
            note(f"warning: no receipt for event {seq}: {e}")
            continue
        aggregate_id = UUID(str(originator))
        digest = record.digest.hex()
        built = _build(history, topic, aggregate_id, version, previous_facts)
        if built is None:
            continue
        ledger_position = Position(seq, digest, where.tree_size, where.root, where.origin)
        leaf = leaves.get(seq) if leaves is not None else where.leaf_index(seq)
        issued.append(_sign(built, ledger_position, leaf, signer, redactor))
    store.add(issued, last)
    if issued:
        note(f"receipts: {len(issued)} issued ({', '.join(r.operation for r in issued)})")
    return issued


def _completing(ledger: Ledger, start: int, last: int) -> Iterator[RawRow]:
    """The rows of completing events after ``start`` up to ``last``, in order."""
    position = start
    while page := ledger.rows_after(position, limit=_PAGE, topics=COMPLETING_TOPICS):
        for row in page:
            if row[0] > last:
                return
            yield row
        position = page[-1][0]


_PAGE = 2000
READ_AHEAD = 256
"""Events of an aggregate read in one query when folding it forward."""


@dataclass
class _Built:
    operation: str
    status: str
    op_id: str
    app: str
    environment: str
    revision: int | None
    label: str | None
    release_id: str | None
    started: str
    finished: str
    subjects: list[dict[str, Any]]
    hosts: dict[str, dict[str, Any]]
    predicate: dict[str, Any]
    first: bool = False


def _build(
    history: _History,
    topic: str,
    aggregate_id: UUID,
    version: int,
    previous_facts: dict[str, str | None],
) -> _Built | None:
    if topic == Installation.OperationFinished.TOPIC:
        return _operation(history, aggregate_id, version)
    if topic == Installation.LeaseBroken.TOPIC:
        return _lease_break(history, aggregate_id, version)
    if topic == ModelAsset.Materialized.TOPIC:
        return _materialized(history, aggregate_id, version)
    return _host_event(history, topic, aggregate_id, version, previous_facts)


class _History:
    """The aggregates that receipts describe, folded forward through one
    issuing: each event is read once (through the mapper: verified, or
    vouched for by a verified checkpoint), and the state at a later version
    is the earlier state with the events between folded in, not a fresh
    load per receipt. Completing events come in global order, so each
    aggregate is asked for ever later versions; anything else is loaded.

    A state handed out is live: whatever a receipt needs from it is read
    before a later version of the same aggregate is asked for."""

    def __init__(self, ledger: Ledger, vouched: VouchedDigests | None) -> None:
        self.ledger = ledger
        self.vouched = vouched
        self._states: dict[UUID, LedgerAggregate] = {}
        self._ahead: dict[UUID, list[LedgerEvent]] = {}
        """Events read past the folded state and not folded yet, in order."""

    def read(self, aggregate_id: UUID, first: int, last: int) -> list[LedgerEvent]:
        """The aggregate's events from version ``first`` to ``last``."""
        state = self._states.get(aggregate_id)
        if state is not None and state.version < first:
            return [e for e in self.upcoming(aggregate_id, last) if e.originator_version >= first]
        return [
            event
            for _, event in self.ledger.verified_events(
                aggregate_id, gt=first - 1, lte=last, vouched=self.vouched
            )
        ]

    def upcoming(self, aggregate_id: UUID, version: int) -> list[LedgerEvent]:
        """The events after the folded state up to ``version`` (none without one)."""
        state = self._states.get(aggregate_id)
        if state is None or state.version >= version:
            return []
        ahead = self._ahead.setdefault(aggregate_id, [])
        have = ahead[-1].originator_version if ahead else state.version
        if have < version:
            # Read ahead: the next receipts of this aggregate fold those events next.
            found = self.ledger.verified_events(
                aggregate_id, gt=have, lte=max(version, have + READ_AHEAD), vouched=self.vouched
            )
            ahead.extend(event for _, event in found)
        return [e for e in ahead if e.originator_version <= version]

    def at(self, kind: type[A], aggregate_id: UUID, version: int) -> A:
        """The aggregate at ``version``: the folded state carried forward
        (each step checked by ``mutate``), else loaded from the ledger."""
        state = self._states.get(aggregate_id)
        if isinstance(state, kind) and state.version <= version:
            steps = self.upcoming(aggregate_id, version)
            if state.version + len(steps) == version:
                folded: Any = state
                for event in steps:
                    folded = event.mutate(folded)
                ahead = self._ahead.get(aggregate_id, [])
                self._ahead[aggregate_id] = ahead[len(steps) :]
                self._states[aggregate_id] = folded
                assert isinstance(folded, kind)
                return folded
        loaded = self.ledger.load(kind, aggregate_id, version=version)
        self._states[aggregate_id] = loaded
        self._ahead.pop(aggregate_id, None)
        return loaded


def _brief(entry: dict[str, Any] | None) -> dict[str, Any] | None:
    if entry is None:
        return None
    return {"label": entry["label"], "release_id": entry["release_id"]}


@dataclass(frozen=True)
class _Before:
    """What a receipt says about an installation before its operation."""

    hosts: dict[str, dict[str, Any] | None]
    """Host → the release that was active there (``_brief``)."""
    labels: list[str]
    last_successful: int | None

    @classmethod
    def of(cls, installation: Installation) -> _Before:
        return cls(
            {host: _brief(entry) for host, entry in installation.hosts.items()},
            sorted({str(e["label"]) for e in installation.hosts.values()}),
            installation.last_successful,
        )


def _entry(after: Installation, version: int) -> dict[str, Any]:
    """The revision entry of the operation that finished at ``version``."""
    entry = after.revisions[-1]
    for candidate in after.revisions:
        if candidate.get("version") == version:
            entry = candidate
    return entry


def _started(upcoming: list[LedgerEvent], version: int) -> int | None:
    """The version of the ``operation-started`` of the operation finished at
    ``version``, when it is among ``upcoming`` (else None)."""
    if not upcoming or upcoming[-1].originator_version != version:
        return None
    finished = upcoming[-1]
    if not isinstance(finished, Installation.OperationFinished):
        return None
    for event in reversed(upcoming):
        if isinstance(event, Installation.OperationStarted) and event.revision == finished.revision:
            return event.originator_version
    return None


def _operation(history: _History, aggregate_id: UUID, version: int) -> _Built:
    started = _started(history.upcoming(aggregate_id, version), version)
    if started is not None:
        # Folded forward: the state before the operation, then after it.
        events = history.read(aggregate_id, started, version)
        before = _Before.of(history.at(Installation, aggregate_id, started - 1))
        after = history.at(Installation, aggregate_id, version)
        entry = _entry(after, version)
        if int(entry["started_version"]) == started:
            return _operation_receipt(aggregate_id, after, entry, before, events)
    after = history.at(Installation, aggregate_id, version)
    entry = _entry(after, version)
    started_version = int(entry["started_version"])
    ledger = history.ledger
    before = _Before.of(ledger.load(Installation, aggregate_id, version=started_version - 1))
    events = history.read(aggregate_id, started_version, version)
    return _operation_receipt(aggregate_id, after, entry, before, events)


def _operation_receipt(
    aggregate_id: UUID,
    after: Installation,
    entry: dict[str, Any],
    before: _Before,
    events: list[LedgerEvent],
) -> _Built:
    finished = events[-1]
    assert isinstance(finished, Installation.OperationFinished)
    operation = str(entry["operation"])
    if any(isinstance(e, Installation.OperationResumed) for e in events):
        operation = "recover"
    hosts: dict[str, dict[str, Any]] = {}
    health: dict[str, Any] = {}
    last_seen: dict[str, datetime] = {}
    for event in events:
        host = getattr(event, "host", None)
        if not isinstance(host, str):
            continue
        outcome = hosts.get(host)
        if outcome is None:
            outcome = hosts[host] = {
                "status": "pending",
                "started": format_timestamp(event.timestamp),
                "before": before.hosts.get(host),
            }
        last_seen[host] = event.timestamp
        if isinstance(event, Installation.StepRecorded):
            if not event.ok:
                outcome["status"] = "failed"
                outcome["failed_step"] = event.step
            if event.step == "health":
                health[host] = {"ok": event.ok, "detail": event.detail, **event.data}
            # Expired secret copies removed (``expire-lease``): the step after the work.
            if (
                event.step == "expire-secret"
                and event.ok
                and event.data.get("phase") != "begin"
                and outcome["status"] in ("pending", "retired")
            ):
                outcome["status"] = "succeeded"
        elif isinstance(event, Installation.HostActivated):
            outcome["status"] = "succeeded"
        elif isinstance(event, Installation.HostRestored):
            outcome["status"] = "restored" if event.ok else "failed"
        elif isinstance(event, Installation.HostRetired):
            outcome["status"] = "retired"
    for host, outcome in hosts.items():
        outcome["finished"] = format_timestamp(last_seen[host])
        active = after.hosts.get(host)
        outcome["after"] = _brief(active)
        outcome["release_id"] = active["release_id"] if active else None
    status = "failed" if finished.status == "failed" else "succeeded"
    app, environment = after.app, after.environment
    subjects = [
        subject(f"{app}/{environment}/{host}", str(e["release_id"]))
        for host, e in sorted(after.hosts.items())
    ] or [subject(f"{app}/{environment}", str(entry["release_id"]))]
    releases_before = before.labels
    releases_after = sorted({str(e["label"]) for e in after.hosts.values()})
    predicate = {
        "operation": operation,
        "status": status,
        "outcome": finished.status,
        "description": finished.description,
        "installation": {"app": app, "environment": environment, "id": str(aggregate_id)},
        "revision": int(entry["revision"]),
        "op_id": finished.op_id,
        "plan_digest": entry["plan_digest"],
        "hosts": hosts,
        "releases": {"before": list(releases_before), "after": releases_after},
        "health": health,
        "state_digest": after.state_digest(),
        "actor": finished.keyid,
    }
    if operation == "rollback" and entry.get("rollback_to") is not None:
        predicate["rollback_to"] = entry["rollback_to"]
    return _Built(
        operation=operation,
        status=status,
        op_id=finished.op_id,
        app=app,
        environment=environment,
        revision=int(entry["revision"]),
        label=str(entry["label"]),
        release_id=str(entry["release_id"]),
        started=str(entry["started"]),
        finished=format_timestamp(finished.timestamp),
        subjects=subjects,
        hosts=hosts,
        predicate=predicate,
        first=operation == "deploy" and before.last_successful is None and status == "succeeded",
    )


def _lease_break(history: _History, aggregate_id: UUID, version: int) -> _Built:
    [event] = history.read(aggregate_id, version, version)
    assert isinstance(event, Installation.LeaseBroken)
    before = history.at(Installation, aggregate_id, version - 1)
    lease = before.lease or {}
    entry = next((e for e in before.revisions if e["op_id"] == event.op_id), None)
    release_id = str(entry["release_id"]) if entry else None
    at = format_timestamp(event.timestamp)
    app, environment = before.app, before.environment
    predicate = {
        "operation": "lease-break",
        "status": "succeeded",
        "installation": {"app": app, "environment": environment, "id": str(aggregate_id)},
        "broken": {
            "op_id": event.op_id,
            "holder": lease.get("holder"),
            "operation": lease.get("operation"),
            "revision": lease.get("revision"),
            "started": lease.get("started"),
        },
        "reason": event.reason,
        "forced": event.forced,
        "actor": event.keyid,
    }
    return _Built(
        operation="lease-break",
        status="succeeded",
        op_id=_derived_op_id(event),
        app=app,
        environment=environment,
        revision=int(lease["revision"]) if lease.get("revision") is not None else None,
        label=str(entry["label"]) if entry else None,
        release_id=release_id,
        started=at,
        finished=at,
        subjects=[subject(f"{app}/{environment}", release_id or _sha(event.op_id))],
        hosts={},
        predicate=predicate,
    )


def _host_event(
    history: _History,
    topic: str,
    aggregate_id: UUID,
    version: int,
    previous_facts: dict[str, str | None],
) -> _Built | None:
    [event] = history.read(aggregate_id, version, version)
    key = str(aggregate_id)
    if isinstance(event, Host.Inventoried) and key not in previous_facts:
        previous_facts[key] = history.at(Host, aggregate_id, version - 1).facts_digest
    host = history.at(Host, aggregate_id, version)
    at = format_timestamp(event.timestamp)
    environment = host.settings.environment
    if isinstance(event, Host.Inventoried):
        changed = previous_facts[key] != event.facts_digest
        previous_facts[key] = event.facts_digest
        if not changed:
            return None
        predicate: dict[str, Any] = {
            "operation": "inventory",
            "status": "succeeded",
            "host": host.name,
            "facts_digest": event.facts_digest,
            "previous_facts_digest": previous_facts.get(key),
            "actor": event.keyid,
        }
        operation, digest = "inventory", event.facts_digest
    elif isinstance(event, Host.AdmissionEvaluated):
        predicate = {
            "operation": "admission",
            "status": "succeeded" if event.admitted else "failed",
            "host": host.name,
            "runtime": event.runtime,
            "admitted": event.admitted,
            "reasons": list(event.reasons),
            "requirements": event.requirements,
            "facts_digest": event.facts_digest,
            "actor": event.keyid,
        }
        operation, digest = "admission", event.facts_digest
    else:
        return None
    return _Built(
        operation=operation,
        status=str(predicate["status"]),
        op_id=_derived_op_id(event),
        app="chassis",
        environment=environment,
        revision=None,
        label=None,
        release_id=None,
        started=at,
        finished=at,
        subjects=[subject(f"host/{host.name}", digest)],
        hosts={host.name: {"status": predicate["status"], "started": at, "finished": at}},
        predicate=predicate,
    )


def _materialized(history: _History, aggregate_id: UUID, version: int) -> _Built:
    """A model put on a host (``chassis model materialize``): what was sent
    and skipped, and the manifest digest the host now holds (or not)."""
    ledger = history.ledger
    [event] = history.read(aggregate_id, version, version)
    assert isinstance(event, ModelAsset.Materialized)
    model = history.at(ModelAsset, aggregate_id, version)
    started = finished = format_timestamp(event.timestamp)
    for _, earlier in ledger.verified_events(aggregate_id, lte=version, vouched=history.vouched):
        if (
            isinstance(earlier, ModelAsset.MaterializeStarted)
            and earlier.host == event.host
            and earlier.manifest_digest == event.manifest_digest
        ):
            started = format_timestamp(earlier.timestamp)
    status = "succeeded" if event.ok else "failed"
    environment = "chassis"
    host = ledger.find(Host, Host.id_for(event.host))
    if host is not None:
        environment = host.settings.environment
    predicate: dict[str, Any] = {
        "operation": "materialize",
        "status": status,
        "model": model.name,
        "host": event.host,
        "manifest_digest": event.manifest_digest,
        "bytes_sent": event.bytes_sent,
        "files_sent": event.files_sent,
        "files_skipped": event.files_skipped,
        "detail": event.detail,
        "actor": event.keyid,
    }
    return _Built(
        operation="materialize",
        status=status,
        op_id=_derived_op_id(event),
        app="chassis",
        environment=environment,
        revision=None,
        label=None,
        release_id=None,
        started=started,
        finished=finished,
        subjects=[subject(f"model/{model.name}", event.manifest_digest)],
        hosts={event.host: {"status": status, "started": started, "finished": finished}},
        predicate=predicate,
    )


def _derived_op_id(event: LedgerEvent) -> str:
    """A stable trace id for single-event operations: from the event's identity."""
    return _sha(f"{event.originator_id}/{event.originator_version}")[:32]


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _sign(
    built: _Built,
    position: Position,
    leaf: int | None,
    signer: KeyPair,
    redactor: Redactor,
) -> StoredReceipt:
    predicate = redactor.data({**built.predicate, "ledger": position.to_dict()})
    if leaf is not None:
        predicate["ledger"]["leaf_index"] = leaf
    # The predicate is the redactor's fresh copy: handed over, not copied.
    body, payload = fresh_statement(built.subjects, RECEIPT_PREDICATE, predicate)
    envelope = sign_envelope(payload, PAYLOAD_TYPE_INTOTO, signer)
    digest = envelope_digest(envelope)
    hosts = {
        name: {
            "status": str(outcome.get("status", "unknown")),
            "release_id": outcome.get("release_id"),
            "started": outcome.get("started", built.started),
            "finished": outcome.get("finished", built.finished),
        }
        for name, outcome in built.hosts.items()
    }
    # The envelope and statement were made from the redacted predicate: they
    # go in as signed (scanning again the envelope's base64, which always
    # looks like it might hold a secret, cost most of a receipt's time).
    record: dict[str, Any] = redactor.data(
        {
            "receipt_digest": digest,
            "envelope": None,
            "statement": None,
            "operation": built.operation,
            "status": built.status,
            "op_id": built.op_id,
            "app": built.app,
            "environment": built.environment,
            "revision": built.revision,
            "label": built.label,
            "release_id": built.release_id,
            "started": built.started,
            "finished": built.finished,
            "hosts": hosts,
            "first": built.first,
        }
    )
    record["envelope"], record["statement"] = envelope, body  # signed as redacted already
    return StoredReceipt(
        digest=digest,
        seq=position.seq,
        operation=built.operation,
        app=built.app,
        environment=built.environment,
        created=built.finished,
        record=msgspec.json.decode(msgspec.json.encode(record)),
    )


def receipt_file_name(receipt: StoredReceipt) -> Path:
    return Path(f"receipt-{receipt.seq}-{receipt.operation}-{receipt.digest[:12]}.dsse.json")
