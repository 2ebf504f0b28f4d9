"""Signed checkpoints of the ledger's Merkle log, and checking them.

Chains alone cannot show that the tail of the ledger was cut off or that its
past was rewritten by someone holding a key: a checkpoint (a signed note of
tree size and root, guides/proofs.md) commits to every event up to its size,
and a later ledger must extend it. Three places keep checkpoints:

- the ledger's own ``chassis_checkpoints`` table (the latest is checked
  against the records);
- ``.chassis/last-checkpoint``: the newest checkpoint this workspace signed or
  verified, which a ledger rewritten behind its back must still be consistent
  with;
- files the operator kept (``chassis ledger verify --against FILE``).
"""

from __future__ import annotations

import base64
import hashlib
import re
from binascii import unhexlify
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from chassis.errors import ChassisError, WorkspaceError
from chassis.workspace import Workspace
from ledger.aggregate import now
from ledger.application import Ledger, RawRow
from ledger.canonical import format_timestamp
from ledger.errors import KeyFileError, NotAuthorisedError, NotFoundError
from ledger.keys import KeyPair, keyid_for, load_public_key
from ledger.records import MalformedRecordError, dashed_uuid, parse_record
from ledger.tables import SideTables
from ledger.trust import Role, Trust
from proofs.chain import (
    ChainFailure,
    LedgerVerificationError,
    VerifiedLedger,
    VerifyReason,
    verify_ledger,
)
from proofs.fast import FastVerified, fast_verify
from proofs.log import StoredCheckpoint, TransparencyLog
from proofs.merkle import (
    HASH_SIZE,
    LeafHashes,
    ProofError,
    SubtreeCache,
    consistency_proof,
    leaf_hash,
    tree_root,
    verify_consistency,
    verify_inclusion,
)
from proofs.note import (
    Checkpoint,
    NoteError,
    NoteReason,
    NoteVerifier,
    origin_for,
    parse_checkpoint,
    parse_note,
    parse_vkey,
    sign_checkpoint,
    verify_checkpoint,
)
from proofs.tlog_proof import format_proof, parse_proof

LAST_SEEN = "last-checkpoint"
LATEST, LAST_SEEN_KIND, AGAINST = "latest-stored", "last-seen", "against"


class CheckpointReason(StrEnum):
    TRUNCATED = "truncated"
    ROOT_MISMATCH = "root-mismatch"
    INCONSISTENT = "inconsistent"
    BAD_SIGNATURE = "bad-checkpoint-signature"
    UNKNOWN_KEY = "unknown-checkpoint-key"
    MALFORMED = "malformed-checkpoint"
    WRONG_ORIGIN = "wrong-origin"


class CheckpointError(ProofError):
    """A checkpoint does not hold for this ledger; ``source`` says which one."""

    def __init__(self, reason: CheckpointReason, source: str, detail: str) -> None:
        super().__init__(reason, f"{source}: {detail}")
        self.source = source

    def to_dict(self) -> dict[str, Any]:
        return {"reason": str(self.reason), "checkpoint": self.source, "detail": self.detail}


# The log and signing.


def open_log(ledger: Ledger) -> TransparencyLog:
    return TransparencyLog(SideTables(ledger))


def _malformed(row: RawRow, error: MalformedRecordError) -> LedgerVerificationError:
    seq, originator, version, topic, _ = row
    return LedgerVerificationError(
        ChainFailure(
            VerifyReason.MALFORMED_RECORD, seq, dashed_uuid(originator), version, topic, str(error)
        )
    )


def sync_log(ledger: Ledger, log: TransparencyLog) -> tuple[int, str | None]:
    """Append the records not yet in the log; returns the log size and the key
    id that signed the newest record (None for an empty ledger)."""
    size, last, _ = log.state()
    entries: list[tuple[int, bytes]] = []
    newest_keyid: str | None = None
    for row in ledger.scan(since=max(1, last)):
        try:
            record = parse_record(*row)
        except MalformedRecordError as e:
            raise _malformed(row, e) from None
        if not entries and size:
            _check_last_leaf(log, size, last, record.seq, record.digest)
        entries.append((record.seq, record.digest))
        newest_keyid = record.body.keyid
    if not entries and size:
        _check_last_leaf(log, size, last, None, None)
    size = log.extend(entries) if entries and entries[-1][0] > last else log.size()
    return size, newest_keyid


def _check_last_leaf(
    log: TransparencyLog, size: int, last: int, seq: int | None, digest: bytes | None
) -> None:
    """The last logged event must still be there, unchanged: otherwise the log
    would go on from records that no longer exist, and a checkpoint of it
    would bless (or hide) a cut or rewritten ledger."""
    source = "the stored Merkle log"
    if seq != last or digest is None:
        raise CheckpointError(
            CheckpointReason.TRUNCATED,
            source,
            f"its last event (seq {last}, leaf {size - 1}) is no longer in the ledger; "
            "not extending it ('chassis ledger verify' says more)",
        )
    if leaf_hash(digest) != log.leaf_hashes(size - 1, size)[0]:
        raise CheckpointError(
            CheckpointReason.ROOT_MISMATCH,
            source,
            f"its last event (seq {last}, leaf {size - 1}) has changed; "
            "not extending it ('chassis ledger verify' says more)",
        )


def checkpoint_origin(ledger: Ledger) -> str:
    trust = ledger.trust()
    if trust is None:
        raise NotAuthorisedError(
            "this ledger has no root of trust yet (run 'chassis init')", reason="unknown-key"
        )
    return origin_for(trust.ledger_name)


def _require_role(ledger: Ledger, signer: KeyPair) -> None:
    trust = ledger.trust()
    if trust is None:
        raise NotAuthorisedError("this ledger has no root of trust yet", reason="unknown-key")
    try:
        trust.authorise(signer.keyid, Role.CHECKPOINT)
    except NotAuthorisedError as e:
        raise NotAuthorisedError(
            f"key {signer.name} ({signer.keyid[:16]}) cannot sign checkpoints: {e}",
            reason=e.reason,
        ) from None


def can_sign(ledger: Ledger, signer: KeyPair) -> bool:
    try:
        _require_role(ledger, signer)
    except NotAuthorisedError:
        return False
    return True


@dataclass(frozen=True)
class Checkpointed:
    checkpoint: StoredCheckpoint
    new: bool
    """False when nothing was appended since: the latest checkpoint is returned."""


def checkpoint_now(ledger: Ledger, ws: Workspace, signer: KeyPair) -> Checkpointed:
    """Bring the log up to date and sign a checkpoint of it (exit 6 without
    role ``checkpoint``). Refuses to sign a tree smaller than one already
    signed or seen: that would bless a truncated ledger."""
    _require_role(ledger, signer)
    origin = checkpoint_origin(ledger)
    log = open_log(ledger)
    sync_log(ledger, log)
    for attempt in range(2):
        # One state read gives a size and root that belong together, even
        # while another process extends the log.
        _, _, frontier = log.state()
        size, root = frontier.size, frontier.root()
        latest = log.latest_checkpoint()
        if latest is not None and latest.size == size:
            return Checkpointed(latest, new=False)
        try:
            _refuse_smaller(size, latest, read_last_seen(ws))
            break
        except CheckpointError:
            if attempt:
                raise
            sync_log(ledger, log)  # another writer may have signed a larger tree meanwhile
    note = sign_checkpoint(Checkpoint(origin, size, root), origin, signer)
    created = format_timestamp(now())
    log.put_checkpoint(size, root, note, signer.keyid, created)
    stored = log.checkpoint_at(size)
    assert stored is not None
    remember(ws, stored.note)
    return Checkpointed(stored, new=stored.note == note)


def _refuse_smaller(size: int, latest: StoredCheckpoint | None, seen: str | None) -> None:
    if latest is not None and latest.size > size:
        raise CheckpointError(
            CheckpointReason.TRUNCATED,
            _describe(LATEST, None),
            f"it covers {latest.size} events but the ledger has {size}; not signing",
        )
    if seen is not None:
        seen_size = _unverified(seen).size
        if seen_size > size:
            raise CheckpointError(
                CheckpointReason.TRUNCATED,
                _describe(LAST_SEEN_KIND, "workspace"),
                f"it covers {seen_size} events but the ledger has {size}; not signing",
            )


def checkpoint_after(
    ledger: Ledger, ws: Workspace, signer: KeyPair, note: Callable[[str], None]
) -> StoredCheckpoint | None:
    """After a command: checkpoint whatever it appended, if the key may.

    Never fails the command for lack of a role; says so in one line when the
    acting key signed the newest, uncovered event.
    """
    log = open_log(ledger)
    size, newest_keyid = sync_log(ledger, log)
    latest = log.latest_checkpoint()
    if size == 0 or (latest is not None and latest.size >= size):
        return None
    if not can_sign(ledger, signer):
        if newest_keyid == signer.keyid:
            waiting = size - (latest.size if latest else 0)
            note(
                f"chassis: note: no checkpoint signed: key {signer.name} "
                f"({signer.keyid[:16]}) does not hold role 'checkpoint'; {waiting} event(s) "
                "await one ('chassis --key KEY ledger checkpoint' with a key that does)"
            )
        return None
    return checkpoint_now(ledger, ws, signer).checkpoint


# The workspace's last-seen checkpoint.


def last_seen_path(ws: Workspace) -> Path:
    return ws.state_dir / LAST_SEEN


def read_last_seen(ws: Workspace) -> str | None:
    path = last_seen_path(ws)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


def remember(ws: Workspace, note: str) -> None:
    """Make ``note`` the last-seen checkpoint unless a larger one is remembered."""
    seen = read_last_seen(ws)
    if seen is not None:
        try:
            if _unverified(seen).size > _unverified(note).size:
                return
        except NoteError:
            pass  # an unreadable file is replaced
    path = last_seen_path(ws)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(note, encoding="utf-8")
    tmp.replace(path)


def _unverified(note: str) -> Checkpoint:
    """The checkpoint in a note, signatures not checked (for sizes only)."""
    text, _ = parse_note(note)
    return parse_checkpoint(text)


# Verification.


@dataclass
class _Tap:
    """Watches the rows a verification reads, at little cost per row: keeps
    each stored digest (hex, at its fixed offset: a record has one spelling)
    and the trust records. Leaf hashes are computed in bulk afterwards, and
    only once the records verified."""

    hexes: list[bytes] = field(default_factory=list)
    trust_rows: list[RawRow] = field(default_factory=list)

    def rows(self, source: Iterator[RawRow]) -> Iterator[RawRow]:
        keep = self.hexes.append
        trust = self.trust_rows.append
        try:
            for row in source:
                keep(row[4][11:75])
                if row[3].startswith("chassis.trust."):
                    trust(row)
                yield row
        finally:
            close = getattr(source, "close", None)
            if callable(close):
                close()  # release the store's read snapshot now

    def leaves(self) -> LeafHashes:
        sha256 = hashlib.sha256
        return LeafHashes([sha256(b"\x00" + unhexlify(h)).digest() for h in self.hexes])


@dataclass(frozen=True)
class CheckedCheckpoint:
    kind: str
    """``latest-stored``, ``last-seen`` or ``against``."""
    file: str | None
    size: int
    root: bytes
    signer: str
    check: str

    @property
    def source(self) -> str:
        return _describe(self.kind, self.file)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "file": self.file,
            "size": self.size,
            "root": base64.b64encode(self.root).decode(),
            "signer": self.signer,
            "check": self.check,
        }


@dataclass(frozen=True)
class LedgerReport:
    """What ``chassis ledger verify`` established."""

    mode: str
    chain: dict[str, Any]
    size: int
    root: bytes
    checked: tuple[CheckedCheckpoint, ...]
    note: str

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.chain,
            "mode": self.mode,
            "checkpoints": {
                "tree_size": self.size,
                "root": base64.b64encode(self.root).decode(),
                "root_hex": self.root.hex(),
                "checked": [c.to_dict() for c in self.checked],
                "note": self.note,
            },
        }


def _checkpoint_keys(trust_rows: list[RawRow]) -> dict[str, tuple[str, bytes]]:
    """Active keys holding ``checkpoint`` after these (verified) trust records:
    key id → (name, public key)."""
    keys: dict[str, tuple[str, bytes, frozenset[str]]] = {}
    for row in trust_rows:
        record = parse_record(*row)
        payload = record.payload()
        if record.topic in (Trust.Established.TOPIC, Trust.KeyTrusted.TOPIC):
            public = bytes.fromhex(payload["public_key"])
            keys[keyid_for(public)] = (payload["name"], public, frozenset(payload["roles"]))
        elif record.topic == Trust.KeyRevoked.TOPIC:
            keys.pop(payload["revoked_keyid"], None)
    return {
        k: (name, public) for k, (name, public, roles) in keys.items() if Role.CHECKPOINT in roles
    }


def verify_checkpoints(
    ledger: Ledger,
    ws: Workspace,
    *,
    against: Sequence[Path] = (),
    fast: bool = False,
    workers: int | None = None,
) -> LedgerReport:
    """Verify the ledger (every signature, or with ``fast`` chains and root
    only) and, from the same scan, every checkpoint that applies: the latest
    stored one, the workspace's last-seen one and each ``against`` file.

    Raises ``LedgerVerificationError`` for a bad record and
    :class:`CheckpointError` for a checkpoint that does not hold (exit 8).
    """
    pinned = ws.settings().root_keyid
    log = open_log(ledger)
    sources: list[tuple[str, str | None, str]] = []
    latest = log.latest_checkpoint()
    if latest is not None:
        sources.append((LATEST, None, latest.note))
    seen = read_last_seen(ws)
    if seen is not None:
        sources.append((LAST_SEEN_KIND, str(last_seen_path(ws)), seen))
    for path in against:
        try:
            sources.append((AGAINST, str(path), path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError) as e:
            raise CheckpointError(
                CheckpointReason.MALFORMED, _describe(AGAINST, str(path)), f"cannot read it ({e})"
            ) from None
    parsed: list[tuple[str, str | None, str, Checkpoint]] = []
    for kind, file, note in sources:
        try:
            parsed.append((kind, file, note, _unverified(note)))
        except NoteError as e:
            raise CheckpointError(
                CheckpointReason.MALFORMED, _describe(kind, file), e.detail
            ) from None

    tap = _Tap()
    chain: dict[str, Any]
    rows = tap.rows(ledger.scan())
    if fast:
        result: FastVerified | VerifiedLedger = fast_verify(rows)
        assert isinstance(result, FastVerified)
        chain = {
            "events": result.size,
            "aggregates": result.aggregates,
            "last_seq": result.last_seq,
            "signatures": 0,
        }
        # Fast mode skips event signatures, but the keys that may sign
        # checkpoints must still descend from the pinned root.
        verify_ledger(iter(tap.trust_rows), pinned_root=pinned, workers=1)
    else:
        result = verify_ledger(rows, pinned_root=pinned, workers=workers)
        assert isinstance(result, VerifiedLedger)
        chain = result.to_dict()
    size = len(tap.hexes)
    cache: SubtreeCache = {}  # shared: roots at several sizes reuse their subtrees
    hashed: list[LeafHashes] = []

    def leaves() -> LeafHashes:
        """Leaf hashes, computed only when a checkpoint is older than the tree."""
        if not hashed:
            hashed.append(tap.leaves())
        return hashed[0]

    root = result.root if isinstance(result, FastVerified) else tree_root(size, leaves(), cache)

    def root_at(n: int) -> bytes:
        return root if n == size else tree_root(n, leaves(), cache)

    origin = origin_for(_ledger_name(tap.trust_rows))
    keys = _checkpoint_keys(tap.trust_rows)
    verifiers = [NoteVerifier(origin, public) for _, public in keys.values()]
    names = {NoteVerifier(origin, public).key_id: name for name, public in keys.values()}
    checked: list[CheckedCheckpoint] = []
    for kind, file, note, _claimed in parsed:
        source = _describe(kind, file)
        checkpoint = _verify_signature(source, note, verifiers, origin)
        signer = _signer_name(note, names)
        if checkpoint.size > size:
            raise CheckpointError(
                CheckpointReason.TRUNCATED,
                source,
                f"it covers {checkpoint.size} events but the ledger now has {size}: "
                "events were removed from the end",
            )
        if kind == LATEST:
            if root_at(checkpoint.size) != checkpoint.root:
                raise CheckpointError(
                    CheckpointReason.ROOT_MISMATCH,
                    source,
                    f"its root for {checkpoint.size} events is not the root recomputed from "
                    "the records: events up to it were changed",
                )
            checked.append(
                CheckedCheckpoint(
                    kind,
                    file,
                    checkpoint.size,
                    checkpoint.root,
                    signer,
                    "signature, root recomputed",
                )
            )
            continue
        if checkpoint.size == 0:
            checked.append(CheckedCheckpoint(kind, file, 0, checkpoint.root, signer, "empty tree"))
            continue
        proof = (
            []
            if checkpoint.size == size
            else consistency_proof(checkpoint.size, size, leaves(), cache)
        )
        try:
            verify_consistency(checkpoint.size, size, checkpoint.root, root, proof)
        except ProofError as e:
            raise CheckpointError(
                CheckpointReason.INCONSISTENT,
                source,
                f"the ledger does not extend it ({e.reason}): its first {checkpoint.size} "
                "events were rewritten or the ledger forked",
            ) from None
        checked.append(
            CheckedCheckpoint(
                kind,
                file,
                checkpoint.size,
                checkpoint.root,
                signer,
                f"signature, consistency proof {checkpoint.size}->{size} ({len(proof)} hashes)",
            )
        )
    if latest is not None:
        remember(ws, latest.note)
    if not checked:
        summary = (
            "no checkpoint yet: a truncated tail cannot be detected until one is signed "
            "('chassis ledger checkpoint')"
        )
    else:
        summary = (
            f"{len(checked)} checkpoint(s) hold: the ledger of {size} events extends each; "
            "no truncation, rewrite or fork since they were signed"
        )
    return LedgerReport(
        mode="fast" if fast else "full",
        chain=chain,
        size=size,
        root=root,
        checked=tuple(checked),
        note=summary,
    )


def _describe(kind: str, file: str | None) -> str:
    if kind == LATEST:
        return "the latest stored checkpoint"
    if kind == LAST_SEEN_KIND:
        return f"the last-seen checkpoint ({file})"
    return f"the checkpoint in {file}"


def _ledger_name(trust_rows: list[RawRow]) -> str:
    for row in trust_rows:
        if row[3] == Trust.Established.TOPIC:
            name = parse_record(*row).payload()["ledger_name"]
            if isinstance(name, str):
                return name
    raise LedgerVerificationError(
        ChainFailure(VerifyReason.UNKNOWN_KEY, 0, str(Trust.ID), 0, "", "no root of trust")
    )


def _verify_signature(
    source: str, note: str, verifiers: list[NoteVerifier], origin: str
) -> Checkpoint:
    try:
        return verify_checkpoint(note, verifiers, origin=origin)
    except NoteError as e:
        reason = {
            NoteReason.UNKNOWN_KEY: CheckpointReason.UNKNOWN_KEY,
            NoteReason.BAD_SIGNATURE: CheckpointReason.BAD_SIGNATURE,
            NoteReason.AMBIGUOUS_KEY: CheckpointReason.BAD_SIGNATURE,
            NoteReason.WRONG_ORIGIN: CheckpointReason.WRONG_ORIGIN,
        }.get(NoteReason(e.reason), CheckpointReason.MALFORMED)
        raise CheckpointError(reason, source, e.detail) from None


def _signer_name(note: str, names: dict[bytes, str]) -> str:
    _, signatures = parse_note(note)
    for signature in signatures:
        if signature.key_id in names:
            return names[signature.key_id]
    return "?"


def checkpoint_json(stored: StoredCheckpoint, ledger: Ledger) -> dict[str, Any]:
    """``ledger checkpoint --json``: everything a stranger needs to check it."""
    checkpoint = _unverified(stored.note)
    vkey = None
    trust = ledger.trust()
    if trust is not None and stored.keyid in trust.keys:
        public = bytes.fromhex(trust.keys[stored.keyid].public_key)
        vkey = NoteVerifier(checkpoint.origin, public).vkey()
    return {
        "origin": checkpoint.origin,
        "size": checkpoint.size,
        "root": base64.b64encode(checkpoint.root).decode(),
        "root_hex": checkpoint.root.hex(),
        "note": stored.note,
        "keyid": stored.keyid,
        "vkey": vkey,
        "created": stored.created,
    }


# Proofs for strangers.


class NoCheckpointError(ChassisError):
    """Nothing signed covers what was asked for yet."""

    exit_code = 10


@dataclass(frozen=True)
class Inclusion:
    seq: int
    index: int
    digest: bytes
    proof: tuple[bytes, ...]
    checkpoint: StoredCheckpoint

    def text(self) -> str:
        """The ``.tlog-proof`` file: ``extra`` is the event digest (the leaf input)."""
        return format_proof(self.index, self.proof, self.checkpoint.note, extra=self.digest)

    def to_dict(self) -> dict[str, Any]:
        checkpoint = _unverified(self.checkpoint.note)
        return {
            "seq": self.seq,
            "index": self.index,
            "digest": self.digest.hex(),
            "leaf_hash": leaf_hash(self.digest).hex(),
            "tree_size": checkpoint.size,
            "root": base64.b64encode(checkpoint.root).decode(),
            "proof": [base64.b64encode(h).decode() for h in self.proof],
            "checkpoint": self.checkpoint.note,
            "tlog_proof": self.text(),
        }


def _find_event(ledger: Ledger, log: TransparencyLog, ref: str) -> tuple[int, int, bytes]:
    """``(seq, leaf index, digest)`` of the event named by a sequence number or hex digest."""
    if re.fullmatch(r"[0-9]{1,19}", ref):
        seq = int(ref)
        index = log.leaf_index(seq)
    elif re.fullmatch(r"[0-9a-fA-F]{64}", ref):
        found = log.find_leaf(leaf_hash(bytes.fromhex(ref)))
        if found is None:
            raise NotFoundError(f"no event with digest {ref.lower()} in the ledger")
        index, seq = found
    else:
        raise WorkspaceError(f"{ref!r}: expected a sequence number or a 64-hex-digit event digest")
    if index is None:
        raise NotFoundError(f"no event with sequence number {seq} in the ledger")
    row = next(ledger.scan(since=seq), None)
    if row is None or row[0] != seq:
        raise NotFoundError(f"no event with sequence number {seq} in the ledger")
    try:
        record = parse_record(*row)
    except MalformedRecordError as e:
        raise _malformed(row, e) from None
    return seq, index, record.digest


def inclusion_for(ledger: Ledger, ws: Workspace, signer: KeyPair | None, ref: str) -> Inclusion:
    """An inclusion proof of one event against the latest checkpoint, signing
    a new checkpoint first when the key may and the event is not yet covered.
    The proof is checked before it is handed out."""
    log = open_log(ledger)
    sync_log(ledger, log)
    seq, index, digest = _find_event(ledger, log, ref)
    latest = log.latest_checkpoint()
    if (latest is None or latest.size <= index) and signer is not None and can_sign(ledger, signer):
        latest = checkpoint_now(ledger, ws, signer).checkpoint
    if latest is None or latest.size <= index:
        covered = "no checkpoint yet" if latest is None else f"the latest covers {latest.size}"
        raise NoCheckpointError(
            f"event {seq} (leaf {index}) is not covered by a checkpoint ({covered}); "
            "sign one with a key holding 'checkpoint' ('chassis ledger checkpoint')"
        )
    proof = log.inclusion(index, latest.size)
    checkpoint = _unverified(latest.note)
    try:
        verify_inclusion(leaf_hash(digest), index, checkpoint.size, proof, checkpoint.root)
    except ProofError as e:
        raise CheckpointError(
            CheckpointReason.ROOT_MISMATCH,
            _describe(LATEST, None),
            f"the stored Merkle log does not lead to its root ({e.detail}); "
            "run 'chassis ledger verify'",
        ) from None
    return Inclusion(seq, index, digest, tuple(proof), latest)


@dataclass(frozen=True)
class Consistency:
    old_size: int
    new_size: int
    old_root: bytes
    new_root: bytes
    proof: tuple[bytes, ...]

    def to_dict(self) -> dict[str, Any]:
        def b64(h: bytes) -> str:
            return base64.b64encode(h).decode()

        return {
            "old_size": self.old_size,
            "new_size": self.new_size,
            "old_root": b64(self.old_root),
            "new_root": b64(self.new_root),
            "old_root_hex": self.old_root.hex(),
            "new_root_hex": self.new_root.hex(),
            "proof": [b64(h) for h in self.proof],
        }


def consistency_for(ledger: Ledger, old_size: int, new_size: int) -> Consistency:
    """The RFC 9162 consistency proof between two sizes of the log, and both
    roots, computed from the stored leaves and checked before it is returned."""
    log = open_log(ledger)
    size, _ = sync_log(ledger, log)
    if not 1 <= old_size <= new_size <= size:
        raise WorkspaceError(
            f"sizes {old_size} and {new_size}: need 1 <= OLD_SIZE <= NEW_SIZE <= {size} "
            "(the number of events)"
        )
    cache: SubtreeCache = {}
    old_root = tree_root(old_size, log, cache)
    new_root = tree_root(new_size, log, cache)
    proof = consistency_proof(old_size, new_size, log, cache)
    verify_consistency(old_size, new_size, old_root, new_root, proof)
    return Consistency(old_size, new_size, old_root, new_root, tuple(proof))


# Offline verification of a proof file.


class TlogCheckError(ProofError):
    """A ``.tlog-proof`` check failed; ``check`` names which."""

    def __init__(self, check: str, error: ProofError) -> None:
        super().__init__(error.reason, error.detail)
        self.check = check

    def diagnostics(self) -> str:
        return f"{self.check} check failed ({self.reason}): {self.detail}"


@dataclass(frozen=True)
class ProvenInclusion:
    origin: str
    index: int
    tree_size: int
    root: bytes
    digest: bytes
    key: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": True,
            "origin": self.origin,
            "index": self.index,
            "tree_size": self.tree_size,
            "root": base64.b64encode(self.root).decode(),
            "root_hex": self.root.hex(),
            "digest": self.digest.hex(),
            "leaf_hash": leaf_hash(self.digest).hex(),
            "key": self.key,
            "checks": ["proof-format", "checkpoint-signature", "inclusion"],
        }


def load_verifier(key_file: Path, origin: str) -> NoteVerifier:
    """``key_file`` holds a signed-note verifier key (``name+id+key``) or a
    Chassis ``.pub`` key, which is then named after the checkpoint's origin."""
    try:
        text = key_file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise KeyFileError(f"{key_file}: cannot read the key ({e})") from None
    if "+" in text and "BEGIN" not in text:
        try:
            return parse_vkey(text)
        except NoteError as e:
            raise KeyFileError(f"{key_file}: not a verifier key: {e.detail}") from None
    return NoteVerifier(origin, load_public_key(key_file))


def verify_tlog_file(text: str, key_file: Path) -> ProvenInclusion:
    """Check a proof file with one key and nothing else: its layout, the
    checkpoint's signature, then that the event digest it carries is the leaf
    at its index under the checkpoint's root."""
    try:
        parsed = parse_proof(text)
        claimed = _unverified(parsed.checkpoint)
    except ProofError as e:
        raise TlogCheckError("proof-format", e) from None
    if parsed.extra is None or len(parsed.extra) != HASH_SIZE:
        raise TlogCheckError(
            "proof-format",
            ProofError("malformed-proof", "no 32-byte event digest on the 'extra' line"),
        )
    verifier = load_verifier(key_file, claimed.origin)
    try:
        checkpoint = verify_checkpoint(parsed.checkpoint, [verifier])
    except NoteError as e:
        raise TlogCheckError("checkpoint-signature", e) from None
    try:
        verify_inclusion(
            leaf_hash(parsed.extra), parsed.index, checkpoint.size, parsed.hashes, checkpoint.root
        )
    except ProofError as e:
        raise TlogCheckError("inclusion", e) from None
    return ProvenInclusion(
        checkpoint.origin,
        parsed.index,
        checkpoint.size,
        checkpoint.root,
        parsed.extra,
        verifier.vkey(),
    )
