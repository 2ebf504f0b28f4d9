"""Export of receipts to the tracing plane, through the outbox.

``export_receipts`` is what ``chassis receipts export`` runs: queue the
receipts not yet queued for a destination and format, then deliver what is
pending. ``export_after`` is the automatic form, run after every signing
command when ``[export] auto = true``: one short round bounded by
``timeout_ms`` whose failures leave items queued and never fail the command.
What leaves Chassis, in which shape, and how delivery behaves is described
in ``guides/boundary.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from chassis.errors import ChassisError
from chassis.export.delivery import (
    Destination,
    Progress,
    Round,
    deliver,
    describe_time,
    parse_destination,
)
from chassis.export.outbox import Counts, Outbox
from chassis.receipts import ReceiptStore
from chassis.workspace import Workspace
from ledger.application import Ledger
from proofs.export import render
from proofs.redaction import scrub_text

if TYPE_CHECKING:
    from chassis.stack.schema import ExportSpec

__all__ = [
    "Destination",
    "ExportResult",
    "ExportUndelivered",
    "export_after",
    "export_receipts",
    "parse_destination",
    "rendered",
]

CLI_DEADLINE_S = 600.0
"""One explicit export delivers for at most this long; the rest stays queued."""
AUTO_MAX_ITEMS = 200
"""An automatic round sends at most this many items (the rest go next time)."""

Note = Callable[[str], None]


class ExportUndelivered(ChassisError):
    """Items remain queued (or failed) after an export: they are not lost."""

    exit_code = 19


@dataclass(frozen=True)
class ExportResult:
    destination: str
    format: str
    enqueued: int
    round: Round
    counts: Counts

    @property
    def complete(self) -> bool:
        return self.counts.pending == 0 and self.counts.failed == 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "destination": self.destination,
            "format": self.format,
            "enqueued": self.enqueued,
            "attempted": self.round.attempted,
            "delivered_now": self.round.delivered,
            "delivered": self.counts.delivered,
            "pending": self.counts.pending,
            "failed": self.counts.failed,
            "next_attempt": self.counts.next_attempt if self.counts.pending else None,
            "last_error": self.counts.last_error if not self.complete else None,
            "errors": list(self.round.errors),
        }

    def lines(self) -> list[str]:
        """The human summary."""
        c = self.counts
        lines = [
            f"{self.destination}: {self.enqueued} item(s) queued now, "
            f"{self.round.delivered} delivered now ({c.delivered} in all), "
            f"{c.pending} pending, {c.failed} failed"
        ]
        if c.pending:
            lines.append(f"  next attempt: {describe_time(c.next_attempt)}")
        if not self.complete and c.last_error:
            lines.append(f"  last error: {c.last_error}")
        return lines


def export_receipts(
    ledger: Ledger,
    destination: Destination,
    format: str,
    *,
    since: int | None = None,
    retry_only: bool = False,
    timeout_s: float = 2.0,
    deadline_s: float = CLI_DEADLINE_S,
    progress: Progress | None = None,
) -> ExportResult:
    """Queue receipts after ``since`` (default: after those already queued
    for this destination and format), then deliver everything pending now,
    backoff or not: an explicit export is the operator asking for a retry.
    ``retry_only`` queues nothing and gives failed items another go."""
    outbox = Outbox(ledger)
    enqueued = 0
    if not retry_only:
        start = outbox.position(destination.key, format) if since is None else since
        receipts = ReceiptStore(ledger).all(since_seq=start)
        enqueued = outbox.enqueue(destination.key, format, receipts)
    result = deliver(
        outbox,
        destination,
        max_items=None,
        deadline_s=deadline_s,
        timeout_s=timeout_s,
        due_only=False,
        retry_failed=retry_only,
        progress=progress,
    )
    return ExportResult(destination.key, format, enqueued, result, outbox.counts(destination.key))


def rendered(ledger: Ledger, format: str, *, since: int = 0) -> list[tuple[str, bytes]]:
    """The items every receipt after ``since`` renders to, without queueing them."""
    return render(format, [r.record for r in ReceiptStore(ledger).all(since_seq=since)])


def export_after(ledger: Ledger, ws: Workspace, settings: ExportSpec | None, note: Note) -> None:
    """After a signing command: queue new receipts and try one short round.

    Never raises: the command already succeeded, and whatever is not
    delivered stays queued for the next command or ``chassis receipts export``.
    """
    to = settings.auto_destination if settings is not None else None
    if settings is None or to is None:
        return
    timeout_s = settings.timeout_ms / 1000
    key = to
    try:
        destination = parse_destination(to, ws.root)
        key = destination.key
        outbox = Outbox(ledger)
        start = outbox.position(key, settings.format)
        outbox.enqueue(key, settings.format, ReceiptStore(ledger).all(since_seq=start))
        result = deliver(
            outbox,
            destination,
            max_items=AUTO_MAX_ITEMS,
            deadline_s=timeout_s,
            timeout_s=timeout_s,
            due_only=True,
        )
        counts = outbox.counts(key)
    # Anything at all (an unreachable database included) must not turn a
    # completed, recorded operation into a failed command.
    except Exception as e:
        note(f"export: not exported to {scrub_text(key)}: {scrub_text(str(e))} (items stay queued)")
        return
    if counts.pending or counts.failed:
        why = result.stopped or counts.last_error or "not due yet"
        note(
            f"export: {result.delivered} delivered, {counts.pending} queued, "
            f"{counts.failed} failed for {key} ({why}); 'chassis receipts export' retries"
        )
    elif result.delivered:
        note(f"export: {result.delivered} item(s) delivered to {key}")
