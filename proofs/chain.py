"""Full verification of a ledger: every digest, link, key and signature.

Records are checked in global order (the order of the notification log), so
"trust as of this event" is simply the trust events seen so far. Checks per
record, in this order (the first failure is the one reported):

1. the row parses as a sealed record             → ``malformed-record``
2. the signed body names the row's aggregate/topic → ``record-mismatch``
3. the signed version is the row's version        → ``version-mismatch``
4. sha256(tag || body) equals the stored digest   → ``digest-mismatch``
5. the version follows the aggregate's last one   → ``missing-version``
6. ``prev`` equals the last digest (or genesis)   → ``broken-link``
7. the topic is one this verifier knows           → ``unknown-topic``
8. the key is trusted, not revoked, has the role  → ``unknown-key``,
   ``revoked-key``, ``role-not-allowed`` (and ``root-mismatch`` for a
   genesis that is not the pinned root)
9. the Ed25519 signature over the digest verifies → ``bad-signature``

Signatures (step 9) are verified in parallel threads (libsodium releases the
GIL); the report still names the lowest-numbered bad record. A truncated *tail* leaves every
remaining chain intact, so it cannot be seen here: checkpoints close that.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any
from uuid import UUID

from ledger.canonical import GENESIS, event_digest
from ledger.events import event_type_for_topic
from ledger.keys import keyid_for
from ledger.records import MalformedRecordError, SealedRecord, dashed_uuid, parse_record
from ledger.trust import Trust
from proofs._signatures import SignatureJob, failed_signatures

CHUNK = 512


class VerifyReason(StrEnum):
    MALFORMED_RECORD = "malformed-record"
    RECORD_MISMATCH = "record-mismatch"
    VERSION_MISMATCH = "version-mismatch"
    DIGEST_MISMATCH = "digest-mismatch"
    MISSING_VERSION = "missing-version"
    BROKEN_LINK = "broken-link"
    UNKNOWN_TOPIC = "unknown-topic"
    UNKNOWN_KEY = "unknown-key"
    REVOKED_KEY = "revoked-key"
    ROLE_NOT_ALLOWED = "role-not-allowed"
    ROOT_MISMATCH = "root-mismatch"
    BAD_SIGNATURE = "bad-signature"


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


@dataclass
class _Key:
    public: bytes
    roles: frozenset[str]
    revoked: bool = False


class _Failed(Exception):
    def __init__(self, reason: VerifyReason, detail: str) -> None:
        self.reason = reason
        self.detail = detail


class _ChainState:
    """Per-aggregate heads and trust, advanced one record at a time."""

    def __init__(self, pinned_root: str | None) -> None:
        self.pinned_root = pinned_root
        self.heads: dict[str, tuple[int, bytes]] = {}
        self.keys: dict[str, _Key] = {}
        self.root_keyid: str | None = None

    def check(self, record: SealedRecord) -> SignatureJob:
        body = record.body
        if body.id != record.originator_id or body.topic != record.topic:
            raise _Failed(
                VerifyReason.RECORD_MISMATCH, "stored columns differ from the signed event"
            )
        if body.version != record.version:
            raise _Failed(
                VerifyReason.VERSION_MISMATCH,
                f"stored as version {record.version} but signed as version {body.version}",
            )
        if event_digest(record.body_bytes) != record.digest:
            raise _Failed(
                VerifyReason.DIGEST_MISMATCH, "the event's bytes do not hash to its digest"
            )
        last_version, last_digest = self.heads.get(
            record.originator_id, (0, bytes.fromhex(GENESIS))
        )
        if record.version != last_version + 1:
            missing = "no earlier version" if last_version == 0 else f"version {last_version}"
            raise _Failed(
                VerifyReason.MISSING_VERSION,
                f"version {record.version} follows {missing}; expected {last_version + 1}",
            )
        if bytes.fromhex(body.prev) != last_digest:
            raise _Failed(
                VerifyReason.BROKEN_LINK, "prev is not the digest of the previous version"
            )
        event_type = event_type_for_topic(record.topic)
        if event_type is None:
            raise _Failed(VerifyReason.UNKNOWN_TOPIC, f"no event type has topic {record.topic!r}")
        public = self._authorise(record, event_type.ROLE)
        self.heads[record.originator_id] = (record.version, record.digest)
        self._apply_trust(record)
        return (record.seq, public, record.signature, record.digest)

    def _authorise(self, record: SealedRecord, role: str) -> bytes:
        keyid = record.body.keyid
        if record.topic == Trust.Established.TOPIC:
            if record.originator_id != str(Trust.ID) or self.root_keyid is not None:
                raise _Failed(VerifyReason.RECORD_MISMATCH, "a second root of trust")
            payload = record.payload()
            public = bytes.fromhex(payload["public_key"])
            if keyid_for(public) != keyid:
                raise _Failed(VerifyReason.UNKNOWN_KEY, "the root of trust is not self-signed")
            if self.pinned_root is not None and keyid != self.pinned_root:
                raise _Failed(
                    VerifyReason.ROOT_MISMATCH,
                    f"root key {keyid[:16]} is not the pinned root {self.pinned_root[:16]}",
                )
            return public
        key = self.keys.get(keyid)
        if key is None:
            raise _Failed(
                VerifyReason.UNKNOWN_KEY, f"key {keyid[:16]} was not trusted before this event"
            )
        if key.revoked:
            raise _Failed(
                VerifyReason.REVOKED_KEY, f"key {keyid[:16]} was revoked before this event"
            )
        if role not in key.roles:
            raise _Failed(
                VerifyReason.ROLE_NOT_ALLOWED,
                f"key {keyid[:16]} holds {', '.join(sorted(key.roles))}, not {role}",
            )
        return key.public

    def _apply_trust(self, record: SealedRecord) -> None:
        if not record.topic.startswith("chassis.trust."):
            return
        payload = record.payload()
        try:
            if record.topic == Trust.Established.TOPIC:
                public = bytes.fromhex(payload["public_key"])
                self.root_keyid = keyid_for(public)
                self.keys[self.root_keyid] = _Key(public, frozenset(payload["roles"]))
            elif record.topic == Trust.KeyTrusted.TOPIC:
                public = bytes.fromhex(payload["public_key"])
                if keyid_for(public) != payload["trusted_keyid"]:
                    raise _Failed(
                        VerifyReason.MALFORMED_RECORD,
                        "trusted key id does not match its public key",
                    )
                self.keys[payload["trusted_keyid"]] = _Key(public, frozenset(payload["roles"]))
            elif record.topic == Trust.KeyRevoked.TOPIC:
                revoked = self.keys.get(payload["revoked_keyid"])
                if revoked is None:
                    raise _Failed(
                        VerifyReason.MALFORMED_RECORD, "revokes a key that was never trusted"
                    )
                revoked.revoked = True
        except (KeyError, TypeError, ValueError) as e:
            raise _Failed(VerifyReason.MALFORMED_RECORD, f"trust payload: {e}") from None


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
) -> VerifiedLedger:
    """Verify every record of a ledger given in global order.

    Returns a summary when all checks pass; raises ``LedgerVerificationError``
    naming the first bad record otherwise.
    """
    workers = max(1, workers or os.cpu_count() or 1)
    state = _ChainState(pinned_root)
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
        keys=len(state.keys),
        workers=batch.used_workers,
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
