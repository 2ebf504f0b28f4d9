"""Full verification of a ledger: every record, link, key and signature.

Records are checked in global order (the order of the notification log), so
"trust as of this event" is the trust fold of the records seen so far. Each
record goes through the same rules the application's mapper applies on every
read (``ledger.checks.decode_event``: stored columns, numbers, timestamp,
field forms, topic, payload schema, canonical form, digest), then:

- the version follows the aggregate's last one   → ``missing-version``
- ``prev`` equals the last digest (or genesis)   → ``broken-link``
- the topic belongs to the aggregate's kind       → ``wrong-aggregate``
- the signer is trusted at this position, not revoked, with the topic's role
  (``no-genesis``, ``second-genesis``, ``root-mismatch``, ``unknown-key``,
  ``revoked-key``, ``role-not-allowed``), and trust records obey the trust
  rules (``bad-trust-payload``, ``unknown-role``, ``key-retrusted``)
- the Ed25519 signature over the digest verifies → ``bad-signature``

The first failure in global order is the one reported. Signatures are
verified in parallel threads (libsodium releases the GIL); the report still
names the lowest-numbered bad record. A truncated *tail* leaves every
remaining chain intact, so it cannot be seen here: checkpoints close that.
``guides/ledger-format.md`` §8 is the reference.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any
from uuid import UUID

from ledger.application import Ledger
from ledger.canonical import GENESIS
from ledger.checks import RecordRejected, VerifyReason, decode_event
from ledger.errors import ChainBreakError
from ledger.events import event_type_for_topic
from ledger.records import MalformedRecordError, SealedRecord, dashed_uuid, parse_record
from ledger.trust import Trust, TrustState
from proofs._signatures import SignatureJob, failed_signatures

CHUNK = 512

__all__ = [
    "ChainFailure",
    "LedgerVerificationError",
    "VerifiedLedger",
    "VerifyReason",
    "verify_ledger",
    "verify_tail",
]


@dataclass(frozen=True)
class ChainFailure:
    reason: VerifyReason
    seq: int
    aggregate: str
    version: int
    topic: str
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "reason": self.reason.value}


class LedgerVerificationError(Exception):
    """Verification failed; ``failure`` says where and why."""

    exit_code = 8

    def __init__(self, failure: ChainFailure) -> None:
        super().__init__(
            f"{failure.reason.value} at seq {failure.seq} "
            f"(aggregate {failure.aggregate} version {failure.version}, {failure.topic}): "
            f"{failure.detail}"
        )
        self.failure = failure

    def diagnostics(self) -> str:
        return str(self)


@dataclass(frozen=True)
class VerifiedLedger:
    events: int
    aggregates: int
    signatures: int
    last_seq: int
    root_keyid: str | None
    keys: int
    workers: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


StoredRow = tuple[int, UUID | str, int, str, bytes]
"""(seq, originator_id, originator_version, topic, state): one stored row."""


class _Failed(Exception):
    def __init__(self, reason: VerifyReason, detail: str) -> None:
        self.reason = reason
        self.detail = detail


Predecessor = Callable[[str, int], tuple[int, bytes]]
"""(aggregate id, version) → (position, digest) of that verified record."""


def _kind_of(topic: str) -> str:
    event_type = event_type_for_topic(topic)
    return event_type.OWNER_KIND if event_type is not None else ""


class _ChainState:
    """Per-aggregate heads and the trust fold, advanced one record at a time.

    With ``trust`` given (the ledger's verified fold over *all* positions) the
    trust records met here are judged by it and not folded again; with
    ``predecessor``, an aggregate first met after its version 1 is linked to
    its verified earlier record (verifying only the tail of a ledger)."""

    def __init__(
        self,
        pinned_root: str | None,
        trust: TrustState | None = None,
        predecessor: Predecessor | None = None,
    ) -> None:
        self.pinned_root = pinned_root
        self.heads: dict[str, tuple[int, bytes, str]] = {}
        self.trust = trust if trust is not None else TrustState()
        self.fold_trust = trust is None
        self.predecessor = predecessor

    @property
    def root_keyid(self) -> str | None:
        return self.trust.root_keyid or None

    def _head(self, record: SealedRecord) -> tuple[int, bytes, str]:
        head = self.heads.get(record.originator_id)
        if head is not None:
            return head
        if self.predecessor is None or record.version == 1:
            return (0, bytes.fromhex(GENESIS), "")
        position, digest = self.predecessor(record.originator_id, record.version - 1)
        if position >= record.seq:
            raise _Failed(VerifyReason.MISSING_VERSION, "the previous version is stored later")
        return (record.version - 1, digest, _kind_of(record.topic))

    def check(self, record: SealedRecord) -> SignatureJob:
        try:
            event = decode_event(record)
        except RecordRejected as e:
            raise _Failed(e.reason, e.detail) from None
        last_version, last_digest, kind = self._head(record)
        if record.version != last_version + 1:
            missing = "no earlier version" if last_version == 0 else f"version {last_version}"
            raise _Failed(
                VerifyReason.MISSING_VERSION,
                f"version {record.version} follows {missing}; expected {last_version + 1}",
            )
        if bytes.fromhex(record.body.prev) != last_digest:
            raise _Failed(
                VerifyReason.BROKEN_LINK, "prev is not the digest of the previous version"
            )
        topic_kind = event.OWNER_KIND
        if (record.version == 1) != event.CREATES or (kind and topic_kind != kind):
            raise _Failed(
                VerifyReason.WRONG_AGGREGATE,
                f"{record.topic} cannot be version {record.version} of a {kind or 'new'} aggregate",
            )
        try:
            public = self.trust.signer(event, record.seq)
            if (
                isinstance(event, Trust.Established)
                and self.pinned_root is not None
                and event.keyid != self.pinned_root
            ):
                raise _Failed(
                    VerifyReason.ROOT_MISMATCH,
                    f"root key {event.keyid[:16]} is not the pinned root {self.pinned_root[:16]}",
                )
            if self.fold_trust:
                self.trust.apply(event, record.seq)
        except RecordRejected as e:
            raise _Failed(e.reason, e.detail) from None
        self.heads[record.originator_id] = (record.version, record.digest, topic_kind)
        return (record.seq, public, record.signature, record.digest)


def _parsed(
    rows: Iterable[StoredRow],
) -> Iterator[tuple[StoredRow, SealedRecord | MalformedRecordError]]:
    for row in rows:
        try:
            yield row, parse_record(*row)
        except MalformedRecordError as e:
            yield row, e


def verify_ledger(
    rows: Iterable[StoredRow],
    *,
    pinned_root: str | None = None,
    workers: int | None = None,
    trust: TrustState | None = None,
    predecessor: Predecessor | None = None,
) -> VerifiedLedger:
    """Verify every record of a ledger given in global order (or, with
    ``trust`` and ``predecessor``, a tail of it: see ``_ChainState``).

    Returns a summary when all checks pass; raises ``LedgerVerificationError``
    naming the first bad record otherwise.
    """
    workers = max(1, workers or os.cpu_count() or 1)
    state = _ChainState(pinned_root, trust, predecessor)
    failure: ChainFailure | None = None
    batch = _SignatureBatches(workers)
    count = last_seq = 0
    try:
        for row, parsed in _parsed(rows):
            location = (dashed_uuid(row[1]), row[2], row[3])
            try:
                if isinstance(parsed, MalformedRecordError):
                    raise _Failed(VerifyReason.MALFORMED_RECORD, str(parsed))
                batch.add(state.check(parsed), location)
            except _Failed as f:
                failure = ChainFailure(f.reason, row[0], *location, f.detail)
                break
            count += 1
            last_seq = row[0]
        bad = batch.finish()
    finally:
        batch.close()
        close = getattr(rows, "close", None)
        if callable(close):
            close()  # release the store's read snapshot now, not at garbage collection
    if bad is not None and (failure is None or bad[0] < failure.seq):
        seq, (aggregate, version, topic) = bad
        failure = ChainFailure(
            VerifyReason.BAD_SIGNATURE,
            seq,
            aggregate,
            version,
            topic,
            "the signature does not verify with the signing key",
        )
    if failure is not None:
        raise LedgerVerificationError(failure)
    return VerifiedLedger(
        events=count,
        aggregates=len(state.heads),
        signatures=count,
        last_seq=last_seq,
        root_keyid=state.root_keyid,
        keys=len(state.trust.keys),
        workers=batch.used_workers,
    )


def verify_tail(
    ledger: Ledger, since: int, *, pinned_root: str | None = None, workers: int | None = None
) -> VerifiedLedger:
    """Verify the records from position ``since`` on as full verification
    would, without re-reading what came before: trust is the ledger's
    verified fold (judged at each record's position) and each aggregate's
    first record here is linked to its verified predecessor. Used to verify
    only what a new checkpoint adds to the last verified one."""
    if since <= 1:
        return verify_ledger(ledger.scan(), pinned_root=pinned_root, workers=workers)
    try:
        trust = ledger.verified_trust()
    except RecordRejected as e:
        raise LedgerVerificationError(
            ChainFailure(e.reason, 0, str(Trust.ID), 0, "chassis.trust", e.detail)
        ) from None

    def predecessor(aggregate_id: str, version: int) -> tuple[int, bytes]:
        try:
            found = ledger.verified_events(UUID(aggregate_id), gt=version - 1, lte=version)
        except (RecordRejected, ChainBreakError) as e:
            raise _Failed(getattr(e, "reason", VerifyReason.BROKEN_LINK), str(e)) from None
        if not found:
            raise _Failed(VerifyReason.MISSING_VERSION, f"version {version} is not stored")
        position, event = found[0]
        return position, event.digest()

    return verify_ledger(
        ledger.scan(since=since),
        pinned_root=pinned_root,
        workers=workers,
        trust=trust,
        predecessor=predecessor,
    )


Location = tuple[str, int, str]


class _SignatureBatches:
    """Chunks of signature checks: inline for a ledger of one chunk, else
    verified by a thread pool while the main thread goes on parsing."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.jobs: list[SignatureJob] = []
        self.locations: dict[int, Location] = {}
        self.done: list[tuple[list[int], dict[int, Location]]] = []
        self.pending: list[tuple[Future[list[int]], dict[int, Location]]] = []
        self.pool: ThreadPoolExecutor | None = None

    @property
    def used_workers(self) -> int:
        return self.workers if self.pool is not None else 1

    def add(self, job: SignatureJob, location: Location) -> None:
        self.jobs.append(job)
        self.locations[job[0]] = location
        if len(self.jobs) >= CHUNK:
            self._flush()

    def _flush(self) -> None:
        jobs, locations = self.jobs, self.locations
        self.jobs, self.locations = [], {}
        if not jobs:
            return
        if self.pool is None and self.workers > 1 and len(jobs) >= CHUNK:
            self.pool = ThreadPoolExecutor(self.workers, thread_name_prefix="verify")
        if self.pool is None:
            self.done.append((failed_signatures(jobs), locations))
        else:
            self.pending.append((self.pool.submit(failed_signatures, jobs), locations))

    def finish(self) -> tuple[int, Location] | None:
        """The lowest bad seq with its location, or None when all verify."""
        self._flush()
        results = self.done + [(future.result(), locations) for future, locations in self.pending]
        bad = [(seq, locations[seq]) for seqs, locations in results for seq in seqs]
        return min(bad) if bad else None

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)
