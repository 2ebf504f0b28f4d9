"""Reading the ledger back: the event log and full verification."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

from chassis.checkpoints import LedgerReport, verify_checkpoints
from chassis.errors import WorkspaceError
from chassis.workspace import Workspace
from ledger.application import Ledger
from ledger.records import MalformedRecordError, parse_record
from ledger.trust import Trust
from proofs.chain import VerifiedLedger, verify_ledger

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


def verify_workspace_ledger(
    ws: Workspace, ledger: Ledger, *, workers: int | None
) -> VerifiedLedger:
    """Verify the whole ledger against the workspace's pinned root of trust."""
    return verify_ledger(ledger.scan(), pinned_root=ws.settings().root_keyid, workers=workers)


def verify_workspace(
    ws: Workspace,
    ledger: Ledger,
    *,
    workers: int | None,
    fast: bool = False,
    against: Sequence[Path] = (),
) -> LedgerReport:
    """``chassis ledger verify``: the records (every signature, or with ``fast``
    chains and Merkle root only) and, from the same read, every checkpoint
    that applies, so a truncated tail or a rewritten past is caught too."""
    return verify_checkpoints(ledger, ws, against=against, fast=fast, workers=workers)
