"""The export outbox: rendered receipt items waiting for (or done with) delivery.

Items live in the ledger's own database (``chassis_outbox``) so nothing is
lost when a collector is down, a command crashes, or a shared PostgreSQL
ledger is exported from another machine. One row per (destination, format,
item id); the id comes from ``proofs.export.render`` and is stable, so
enqueueing the same receipt twice is a no-op and delivered rows are kept as
the record of what went where. ``chassis_export_position`` remembers, per
destination and format, the receipt seq enqueued up to, so an automatic
export only renders new receipts.

A delivery round *claims* the destination's pending rows for a while
(``claimed_until``), so two exporters at once do not both send the same item;
a crashed exporter's claim simply expires.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from chassis.receipts import StoredReceipt
from ledger.application import Ledger
from ledger.tables import SideTables
from proofs.export import render

_SELECT = (
    "SELECT destination, format, item_id, seq, part, body, created, attempts, next_attempt, "
    "last_error, delivered, failed FROM {chassis_outbox} "
)
_CLAIM = (
    "UPDATE {chassis_outbox} SET claim = ?, claimed_until = ? "
    "WHERE destination = ? AND delivered IS NULL AND failed IS NULL "
    "AND (claimed_until IS NULL OR claimed_until < ?)"
)


def now() -> datetime:
    return datetime.now(UTC)


def stamp(moment: datetime) -> str:
    """Fixed-width UTC text, so timestamps compare correctly as strings in SQL."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Item:
    destination: str
    format: str
    item_id: str
    seq: int
    part: int
    body: bytes
    created: str
    attempts: int
    next_attempt: str
    last_error: str | None
    delivered: str | None
    failed: str | None


@dataclass(frozen=True)
class Counts:
    """Where a destination's items stand."""

    delivered: int
    pending: int
    failed: int
    next_attempt: str | None
    """The earliest next attempt among pending items."""
    last_error: str | None
    """The most recent error of a pending or failed item."""


class Outbox:
    def __init__(self, ledger: Ledger) -> None:
        self.tables = SideTables(ledger)
        self.tables.create(
            "CREATE TABLE IF NOT EXISTS {chassis_outbox} ("
            "destination TEXT NOT NULL, format TEXT NOT NULL, item_id TEXT NOT NULL, "
            "seq BIGINT NOT NULL, part INTEGER NOT NULL, body {blob} NOT NULL, "
            "created TEXT NOT NULL, attempts INTEGER NOT NULL, next_attempt TEXT NOT NULL, "
            "last_error TEXT, delivered TEXT, failed TEXT, claim TEXT, claimed_until TEXT, "
            "PRIMARY KEY (destination, format, item_id))",
            "CREATE TABLE IF NOT EXISTS {chassis_export_position} ("
            "destination TEXT NOT NULL, format TEXT NOT NULL, seq BIGINT NOT NULL, "
            "PRIMARY KEY (destination, format))",
        )

    def position(self, destination: str, format: str) -> int:
        """The receipt seq this destination and format have been enqueued up to."""
        with self.tables.transaction(commit=False) as c:
            c.execute(
                "SELECT seq FROM {chassis_export_position} WHERE destination = ? AND format = ?",
                (destination, format),
            )
            row = c.fetchone()
        return int(row[0]) if row else 0

    def enqueue(self, destination: str, format: str, receipts: Iterable[StoredReceipt]) -> int:
        """Render and queue ``receipts``; items already queued are left as they are.

        Returns how many items were new. The position moves up to the last
        receipt given, in the same transaction.
        """
        rows: list[tuple[int, int, str, bytes]] = []
        last = 0
        for receipt in receipts:
            for part, (item_id, body) in enumerate(render(format, [receipt.record])):
                rows.append((receipt.seq, part, item_id, body))
            last = max(last, receipt.seq)
        if not rows:
            return 0
        created = stamp(now())
        added = 0
        with self.tables.transaction(commit=True) as c:
            for seq, part, item_id, body in rows:
                c.execute(
                    "SELECT 1 FROM {chassis_outbox} "
                    "WHERE destination = ? AND format = ? AND item_id = ?",
                    (destination, format, item_id),
                )
                if c.fetchone() is not None:
                    continue
                c.execute(
                    "INSERT INTO {chassis_outbox} (destination, format, item_id, seq, part, "
                    "body, created, attempts, next_attempt, last_error, delivered, failed) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, NULL, NULL, NULL) "
                    "ON CONFLICT DO NOTHING",
                    (destination, format, item_id, seq, part, body, created, created),
                )
                added += 1
            c.execute(
                "INSERT INTO {chassis_export_position} (destination, format, seq) "
                "VALUES (?, ?, 0) ON CONFLICT DO NOTHING",
                (destination, format),
            )
            c.execute(
                "UPDATE {chassis_export_position} SET seq = ? "
                "WHERE destination = ? AND format = ? AND seq < ?",
                (last, destination, format, last),
            )
        return added

    def claim(
        self, destination: str, *, lease_s: float, due_only: bool, retry_failed: bool = False
    ) -> tuple[str, list[Item]]:
        """Take this destination's pending items (due ones, or all) for ``lease_s``,
        in delivery order; items another exporter holds are left to it."""
        token = secrets.token_hex(8)
        moment = now()
        current, until = stamp(moment), stamp(moment + timedelta(seconds=lease_s))
        with self.tables.transaction(commit=True) as c:
            if retry_failed:
                c.execute(
                    "UPDATE {chassis_outbox} SET failed = NULL, next_attempt = ? "
                    "WHERE destination = ? AND delivered IS NULL AND failed IS NOT NULL",
                    (current, destination),
                )
            if due_only:
                c.execute(
                    _CLAIM + " AND next_attempt <= ?", (token, until, destination, current, current)
                )
            else:
                c.execute(_CLAIM, (token, until, destination, current))
            c.execute(
                _SELECT + "WHERE destination = ? AND claim = ? AND delivered IS NULL "
                "AND failed IS NULL ORDER BY seq, part",
                (destination, token),
            )
            rows = c.fetchall()
        return token, [_item(r) for r in rows]

    def postpone(self, destination: str, token: str, until: datetime) -> None:
        """Move the claimed items not yet due by ``until`` there: the endpoint is
        down, so automatic rounds leave the whole destination alone till then."""
        with self.tables.transaction(commit=True) as c:
            c.execute(
                "UPDATE {chassis_outbox} SET next_attempt = ? WHERE destination = ? "
                "AND claim = ? AND delivered IS NULL AND next_attempt < ?",
                (stamp(until), destination, token, stamp(until)),
            )

    def release(self, destination: str, token: str) -> None:
        """Hand back what a round claimed but did not get to."""
        with self.tables.transaction(commit=True) as c:
            c.execute(
                "UPDATE {chassis_outbox} SET claim = NULL, claimed_until = NULL "
                "WHERE destination = ? AND claim = ?",
                (destination, token),
            )

    def mark_delivered(self, item: Item) -> None:
        with self.tables.transaction(commit=True) as c:
            c.execute(
                "UPDATE {chassis_outbox} SET delivered = ?, attempts = attempts + 1, "
                "claim = NULL, claimed_until = NULL "
                "WHERE destination = ? AND format = ? AND item_id = ?",
                (stamp(now()), item.destination, item.format, item.item_id),
            )

    def mark_attempt(self, item: Item, error: str, *, retry_at: datetime | None) -> None:
        """Record a failed attempt: retry at ``retry_at``, or give up (``None``)."""
        moment = now()
        with self.tables.transaction(commit=True) as c:
            c.execute(
                "UPDATE {chassis_outbox} SET attempts = attempts + 1, last_error = ?, "
                "next_attempt = ?, failed = ?, claim = NULL, claimed_until = NULL "
                "WHERE destination = ? AND format = ? AND item_id = ?",
                (
                    error,
                    stamp(retry_at or moment),
                    None if retry_at else stamp(moment),
                    item.destination,
                    item.format,
                    item.item_id,
                ),
            )

    def counts(self, destination: str) -> Counts:
        with self.tables.transaction(commit=False) as c:
            c.execute(
                # Named columns: PostgreSQL rows come back as dicts.
                "SELECT delivered IS NOT NULL AS done, failed IS NOT NULL AS gave_up, "
                "COUNT(*) AS n, MIN(next_attempt) AS earliest "
                "FROM {chassis_outbox} WHERE destination = ? "
                "GROUP BY delivered IS NOT NULL, failed IS NOT NULL",
                (destination,),
            )
            groups = c.fetchall()
            c.execute(
                "SELECT last_error FROM {chassis_outbox} WHERE destination = ? "
                "AND delivered IS NULL AND last_error IS NOT NULL "
                "ORDER BY next_attempt DESC LIMIT 1",
                (destination,),
            )
            error = c.fetchone()
        delivered = pending = failed = 0
        next_attempt: str | None = None
        for done, gave_up, count, earliest in groups:
            if done:
                delivered += int(count)
            elif gave_up:
                failed += int(count)
            else:
                pending += int(count)
                next_attempt = str(earliest)
        return Counts(delivered, pending, failed, next_attempt, str(error[0]) if error else None)

    def items(self, destination: str | None = None) -> list[Item]:
        """Every row (for one destination), in delivery order."""
        with self.tables.transaction(commit=False) as c:
            if destination is None:
                c.execute(_SELECT + "ORDER BY destination, seq, part")
            else:
                c.execute(_SELECT + "WHERE destination = ? ORDER BY seq, part", (destination,))
            rows = c.fetchall()
        return [_item(r) for r in rows]


def _item(values: Sequence[Any]) -> Item:
    return Item(
        destination=str(values[0]),
        format=str(values[1]),
        item_id=str(values[2]),
        seq=int(values[3]),
        part=int(values[4]),
        body=bytes(values[5]),
        created=str(values[6]),
        attempts=int(values[7]),
        next_attempt=str(values[8]),
        last_error=None if values[9] is None else str(values[9]),
        delivered=None if values[10] is None else str(values[10]),
        failed=None if values[11] is None else str(values[11]),
    )


def line_of(item: Item) -> bytes:
    """The line a file destination holds for an item: its body, bare, as one
    line of compact JSON (the rendered bodies already are; anything else is
    re-encoded so a newline inside can never split it)."""
    body = item.body.strip()
    if b"\n" in body or b"\r" in body:
        body = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":")).encode()
    return body + b"\n"
