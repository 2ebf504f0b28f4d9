"""A ledger and its checkpoints, verified in one read-only pass.

Full mode verifies every record (``proofs.chain``) and checks each checkpoint
against the tree recomputed from the same read. Fast mode checks digests,
links and the Merkle root (``proofs.fast``); a signed checkpoint that the
records give or extend then vouches for the records it covers, because
Chassis signs a checkpoint only over records it verified. Every record after
the newest such checkpoint is verified in full (``proofs.chain.verify_tail``):
no record is taken on its digest alone, and the report says how many were
covered each way.

Nothing is written: the caller keeps what it learned (the workspace's
last-seen checkpoint, ``chassis.checkpoints``).
"""

from __future__ import annotations

import base64
import hashlib
from binascii import unhexlify
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ledger.application import Ledger, RawRow
from ledger.checks import RecordRejected, VerifyReason
from ledger.errors import ChainBreakError
from ledger.trust import Trust, TrustState
from proofs.chain import (
    ChainFailure,
    LedgerVerificationError,
    VerifiedLedger,
    verify_ledger,
    verify_tail,
)
from proofs.checkpoint_verify import (
    CheckedCheckpoint,
    ClaimedCheckpoint,
    RecordTree,
    verify_checkpoints,
)
from proofs.fast import fast_verify
from proofs.merkle import LeafHashes, SubtreeCache, tree_root


@dataclass
class RowTap:
    """Watches the rows a verification reads, at little cost per row: keeps
    each stored digest (hex, at its fixed offset: a record has one spelling)
    and sequence number. Leaf hashes are computed in bulk afterwards, and
    only once the records verified."""

    hexes: list[bytes] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)
    _leaves: LeafHashes | None = None

    def rows(self, source: Iterator[RawRow]) -> Iterator[RawRow]:
        keep = self.hexes.append
        seq = self.seqs.append
        try:
            for row in source:
                keep(row[4][11:75])
                seq(row[0])
                yield row
        finally:
            close = getattr(source, "close", None)
            if callable(close):
                close()  # release the store's read snapshot now

    def leaves(self) -> LeafHashes:
        if self._leaves is None:
            sha256 = hashlib.sha256
            self._leaves = LeafHashes([sha256(b"\x00" + unhexlify(h)).digest() for h in self.hexes])
        return self._leaves


@dataclass(frozen=True)
class LedgerReport:
    """What a verification of the ledger and its checkpoints established."""

    mode: str
    events: int
    aggregates: int
    last_seq: int
    signatures: int
    root_keyid: str | None
    keys: int
    workers: int
    covered: int
    """Events vouched for by the newest checkpoint that holds and not verified
    again (fast mode; 0 in full mode)."""
    verified_in_full: int
    """Events whose every rule and signature was checked here."""
    size: int
    root: bytes
    checked: tuple[CheckedCheckpoint, ...]
    note: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "aggregates": self.aggregates,
            "signatures": self.signatures,
            "last_seq": self.last_seq,
            "root_keyid": self.root_keyid,
            "keys": self.keys,
            "workers": self.workers,
            "covered_by_checkpoint": self.covered,
            "verified_in_full": self.verified_in_full,
            "mode": self.mode,
            "checkpoints": {
                "tree_size": self.size,
                "root": base64.b64encode(self.root).decode(),
                "root_hex": self.root.hex(),
                "checked": [c.to_dict() for c in self.checked],
                "note": self.note,
            },
        }


def verified_trust(ledger: Ledger, pinned_root: str | None) -> TrustState:
    """The one trust fold, re-read and verified now, rooted in the pinned key."""
    try:
        trust = ledger.verified_trust()
    except (RecordRejected, ChainBreakError) as e:
        reason = e.reason if isinstance(e, RecordRejected) else VerifyReason.BROKEN_LINK
        detail = e.detail if isinstance(e, RecordRejected) else str(e)
        raise LedgerVerificationError(
            ChainFailure(reason, 0, str(Trust.ID), 0, "chassis.trust", detail)
        ) from None
    if not trust.established:
        raise LedgerVerificationError(
            ChainFailure(VerifyReason.UNKNOWN_KEY, 0, str(Trust.ID), 0, "", "no root of trust")
        )
    if pinned_root is not None and trust.root_keyid != pinned_root:
        raise LedgerVerificationError(
            ChainFailure(
                VerifyReason.ROOT_MISMATCH,
                trust.keys[trust.root_keyid].trusted_pos,
                str(Trust.ID),
                1,
                Trust.Established.TOPIC,
                f"root key {trust.root_keyid[:16]} is not the pinned root {pinned_root[:16]}",
            )
        )
    return trust


def verify_with_checkpoints(
    ledger: Ledger,
    claimed: Sequence[ClaimedCheckpoint],
    *,
    pinned_root: str | None,
    fast: bool = False,
    workers: int | None = None,
) -> LedgerReport:
    """Verify the records (every one in full, or with ``fast`` those after the
    newest checkpoint that holds) and, from the same read, each ``claimed``
    checkpoint.

    Raises ``LedgerVerificationError`` for a bad record and
    ``CheckpointError`` for a checkpoint that does not hold (exit 8).
    """
    for claim in claimed:
        claim.checkpoint()  # a malformed note fails before the long read
    tap = RowTap()
    rows = tap.rows(ledger.scan())
    full: VerifiedLedger | None = None
    root = b""
    if fast:
        quick = fast_verify(rows)
        root, aggregates = quick.root, quick.aggregates
    else:
        full = verify_ledger(rows, pinned_root=pinned_root, workers=workers)
        aggregates = full.aggregates
    size = len(tap.seqs)
    cache: SubtreeCache = {}
    if full is not None:
        root = tree_root(size, tap.leaves(), cache)
    tree = RecordTree(size, root, tap.seqs, tap.leaves, cache)
    trust = verified_trust(ledger, pinned_root)
    checked = verify_checkpoints(claimed, tree, trust)
    covered = 0
    if full is None:
        covered = max((c.size for c in checked), default=0)
        if covered < size:
            since = tap.seqs[covered - 1] + 1 if covered else 1
            full = verify_tail(ledger, since, pinned_root=pinned_root, workers=workers)
    in_full = full.events if full is not None else 0
    return LedgerReport(
        mode="fast" if fast else "full",
        events=size,
        aggregates=aggregates,
        last_seq=tap.seqs[-1] if tap.seqs else 0,
        signatures=in_full,
        root_keyid=trust.root_keyid or None,
        keys=len(trust.keys),
        workers=full.workers if full is not None else 1,
        covered=covered,
        verified_in_full=in_full,
        size=size,
        root=tree.root,
        checked=checked,
        note=_summary(checked, size),
    )


def _summary(checked: Sequence[CheckedCheckpoint], size: int) -> str:
    if not checked:
        return (
            "no checkpoint yet: a truncated tail cannot be detected until one is signed "
            "('chassis ledger checkpoint')"
        )
    return (
        f"{len(checked)} checkpoint(s) hold: the ledger of {size} events extends each; "
        "no truncation, rewrite or fork since they were signed"
    )
