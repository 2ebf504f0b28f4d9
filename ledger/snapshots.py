"""Snapshots bound to the signed log.

A snapshot row is a cache anyone with write access to the database can edit,
so it is used only when a signed event vouches for it: when a batch of
events should end in a snapshot (a release became active, or the aggregate
crossed a multiple of ``SNAPSHOT_EVERY``), a binding event carrying the
digest of the aggregate's state is appended and signed with the batch, and
the snapshot is taken at that event's version. On load the snapshot must
match the (verified) binding event at its version: state digest, version,
chain head and time. Anything else is ignored and the state is replayed from
the signed events. ``guides/ledger-format.md`` §6.3 documents the digest.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from ledger.aggregate import LedgerAggregate, LedgerSnapshot
from ledger.canonical import canonical_json
from ledger.events import LedgerEvent

SNAPSHOT_STATE_TAG = b"chassis.snapshot.state.v1\x00"
ENVELOPE = frozenset({"version", "chain_head", "modified_on"})
"""Snapshot members that follow from the binding event itself, not the digest."""


class SnapshotBinding(LedgerEvent, frozen=True, kw_only=True):
    """Base of each aggregate's ``SnapshotBound`` event: no change of state,
    only the signed digest of the state it follows."""

    state_digest: str


def state_digest(aggregate: LedgerAggregate) -> str:
    """sha256(tag ‖ canonical JSON of the snapshot state minus its envelope)."""
    state = {k: v for k, v in aggregate.snapshot_state().items() if k not in ENVELOPE}
    return hashlib.sha256(SNAPSHOT_STATE_TAG + canonical_json(state)).hexdigest()


def bind_snapshots(aggregates: Sequence[LedgerAggregate], keyid: str) -> None:
    """Append a signed binding event to each aggregate whose pending events
    call for a snapshot (the snapshot itself is taken after the save)."""
    for aggregate in aggregates:
        binding: Any = getattr(type(aggregate), "SnapshotBound", None)
        pending = aggregate.pending_events
        if binding is None or not pending or isinstance(pending[-1], SnapshotBinding):
            continue
        every = aggregate.SNAPSHOT_EVERY
        before = pending[0].originator_version - 1
        crossed = bool(every) and aggregate.version // every > before // every  # type: ignore[operator]
        if crossed or any(aggregate.wants_snapshot(e) for e in pending):
            aggregate.trigger(binding, keyid=keyid, state_digest=state_digest(aggregate))


def restore_bound(
    snapshot: LedgerSnapshot, events: Sequence[LedgerEvent], version: int | None
) -> LedgerAggregate | None:
    """The aggregate from ``snapshot`` when it is bound, else None.

    ``events`` are the verified events at the snapshot's version and the one
    before it; with ``version`` one below the snapshot, the state is stepped
    back over the binding event (which changed nothing but the envelope)."""
    at = snapshot.originator_version
    binding = events[-1] if events else None
    if not isinstance(binding, SnapshotBinding) or binding.originator_version != at:
        return None
    try:
        aggregate = snapshot.mutate(None)
    except Exception:  # an unreadable cache is simply not used
        return None
    try:
        bound = (
            aggregate.id == binding.originator_id
            and aggregate.version == at
            and aggregate.chain_head == binding.digest().hex()
            and aggregate.modified_on == binding.timestamp
            and state_digest(aggregate) == binding.state_digest
        )
    except (AttributeError, TypeError, ValueError):
        return None
    if not bound:
        return None
    if version is None or version >= at:
        return aggregate
    before = events[0] if len(events) == 2 else None
    if version != at - 1 or before is None or binding.prev != before.digest().hex():
        return None
    aggregate.version = before.originator_version
    aggregate.chain_head = binding.prev
    aggregate.modified_on = before.timestamp
    return aggregate
