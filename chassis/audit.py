"""Reading the ledger back: the event log, and the one verification of a
workspace's ledger with its checkpoints."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

from chassis import checkpoints
from chassis.errors import WorkspaceError
from chassis.workspace import Workspace
from ledger.application import Ledger
from ledger.records import MalformedRecordError, parse_record
from ledger.trust import Trust
from proofs.checkpoint_verify import (
    AGAINST,
    LAST_SEEN,
    LATEST,
    CheckpointError,
    CheckpointReason,
    ClaimedCheckpoint,
    describe,
)
from proofs.ledger_verify import LedgerReport, verify_with_checkpoints

ALIASES = {"trust": Trust.ID}


@dataclass(frozen=True)
class LogEntry:
    seq: int
    time: str
    topic: str
    aggregate: str
    version: int
    keyid: str
    digest: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_aggregate(ref: str) -> UUID:
    """An aggregate id from a UUID or a well-known alias (``trust``)."""
    if ref in ALIASES:
        return ALIASES[ref]
    try:
        return UUID(ref)
    except ValueError:
        raise WorkspaceError(
            f"--aggregate {ref!r}: expected a UUID or one of {', '.join(ALIASES)}"
        ) from None


def ledger_log(
    ledger: Ledger, *, aggregate: UUID | None, since: int, limit: int | None
) -> list[LogEntry]:
    entries: list[LogEntry] = []
    for row in ledger.records(since=since):
        if aggregate is not None and UUID(str(row.originator_id)) != aggregate:
            continue
        try:
            record = parse_record(
                row.id, row.originator_id, row.originator_version, row.topic, row.state
            )
            time, keyid, digest = record.body.timestamp, record.body.keyid, record.digest.hex()
        except MalformedRecordError:
            time = keyid = digest = "?"
        entries.append(
            LogEntry(
                row.id,
                time,
                row.topic,
                str(row.originator_id),
                row.originator_version,
                keyid,
                digest,
            )
        )
        if limit is not None and len(entries) >= limit:
            break
    return entries


def claimed_checkpoints(
    ws: Workspace, ledger: Ledger, against: Sequence[Path] = ()
) -> list[ClaimedCheckpoint]:
    """Every checkpoint that applies: the latest stored one, the workspace's
    last-seen one and each ``against`` file (unreadable: malformed)."""
    claimed: list[ClaimedCheckpoint] = []
    latest = checkpoints.open_log(ledger).latest_checkpoint()
    if latest is not None:
        claimed.append(ClaimedCheckpoint(LATEST, None, latest.note))
    seen = checkpoints.read_last_seen(ws)
    if seen is not None:
        claimed.append(ClaimedCheckpoint(LAST_SEEN, str(checkpoints.last_seen_path(ws)), seen))
    for path in against:
        try:
            claimed.append(ClaimedCheckpoint(AGAINST, str(path), path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError) as e:
            raise CheckpointError(
                CheckpointReason.MALFORMED, describe(AGAINST, str(path)), f"cannot read it ({e})"
            ) from None
    return claimed


def verify_workspace(
    ws: Workspace,
    ledger: Ledger,
    *,
    workers: int | None = None,
    fast: bool = False,
    against: Sequence[Path] = (),
    remember: bool = True,
) -> LedgerReport:
    """The one verification of a workspace's ledger (``chassis ledger
    verify``, doctor, the demo, rollback proofs): every record against the
    pinned root of trust (with ``fast``, in full only those after the newest
    checkpoint that holds) and, from the same read, every checkpoint that
    applies, so a truncated tail or a rewritten past is caught too.

    Verification itself writes nothing (``proofs.ledger_verify``); with
    ``remember`` the latest stored checkpoint, now verified, becomes the
    workspace's last-seen one.
    """
    claimed = claimed_checkpoints(ws, ledger, against)
    report = verify_with_checkpoints(
        ledger, claimed, pinned_root=ws.settings().root_keyid, fast=fast, workers=workers
    )
    latest = next((c.note for c in claimed if c.kind == LATEST), None)
    if remember and latest is not None:
        checkpoints.remember(ws, latest)
    return report
