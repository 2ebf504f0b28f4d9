"""RFC 6962 / RFC 9162 Merkle tree hashing, proofs and their verification.

The ledger's global order is a Merkle log: leaf ``i`` is the ``i``-th record
(0-based, in ascending sequence number), and its leaf input is the record's
32-byte event digest. Hashing is domain-separated exactly as RFC 9162 §2.1.1:
``leaf = sha256(0x00 || input)``, ``node = sha256(0x01 || left || right)``,
and the empty tree hashes to ``sha256("")``.

Three kinds of thing live here:

- :class:`CompactRange`, the O(log n) frontier of perfect-subtree roots, so a
  writer can append leaves and read the root without ever rehashing the tree,
  and can persist that state between runs;
- proof *generation* over any :class:`NodeSource` (the leaf hashes by index),
  with an optional cache of perfect-subtree hashes (RFC 9162 §2.1.3.1 PATH,
  §2.1.4.1 SUBPROOF);
- proof *verification* (RFC 9162 §2.1.3.2, §2.1.4.2), which returns nothing
  and raises :class:`ProofError` with a specific reason otherwise (fail closed).

Pure: no storage, no Chassis types; sizes and indices are plain ints.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, MutableMapping, Sequence
from enum import StrEnum
from typing import Protocol

HASH_SIZE = 32
LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
EMPTY_ROOT = hashlib.sha256(b"").digest()
"""Root of the empty tree (RFC 9162 §2.1.1): sha256 of the empty string."""

_sha256 = hashlib.sha256


def leaf_hash(data: bytes) -> bytes:
    """``sha256(0x00 || data)``: the 0x00 prefix keeps leaves from posing as nodes."""
    return _sha256(LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``sha256(0x01 || left || right)``."""
    return _sha256(NODE_PREFIX + left + right).digest()


class ProofReason(StrEnum):
    INVALID_SIZE = "invalid-size"
    INDEX_OUT_OF_RANGE = "index-out-of-range"
    EMPTY_OLD_TREE = "empty-old-tree"
    SIZE_DECREASED = "size-decreased"
    WRONG_PROOF_SIZE = "wrong-proof-size"
    MALFORMED_HASH = "malformed-hash"
    ROOT_MISMATCH = "root-mismatch"
    OLD_ROOT_MISMATCH = "old-root-mismatch"
    NEW_ROOT_MISMATCH = "new-root-mismatch"


class ProofError(Exception):
    """A proof (or a signed statement around one) did not verify.

    ``reason`` is a stable, machine-readable code (a ``StrEnum`` member);
    ``detail`` is the human sentence. Subclasses add their own reason enums.
    """

    exit_code = 8

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _check_hash(value: bytes, what: str) -> None:
    if len(value) != HASH_SIZE:
        raise ProofError(
            ProofReason.MALFORMED_HASH, f"{what} is {len(value)} bytes, expected {HASH_SIZE}"
        )


def _split(n: int) -> int:
    """The largest power of two strictly less than ``n`` (``n >= 2``): RFC 9162's ``k``."""
    return 1 << ((n - 1).bit_length() - 1)


# The frontier.


class CompactRange:
    """The roots of the perfect subtrees covering leaves ``[0, size)``.

    One hash per set bit of ``size``, largest (leftmost) subtree first: an
    append costs one leaf-to-frontier merge per trailing one bit of ``size``
    (amortised one node hash), and the root folds O(log n) hashes.
    """

    __slots__ = ("_hashes", "_size")

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()) -> None:
        if size < 0:
            raise ValueError("a tree size is never negative")
        if len(hashes) != size.bit_count():
            raise ValueError(
                f"a range of {size} leaves has {size.bit_count()} subtree roots, not {len(hashes)}"
            )
        for h in hashes:
            if len(h) != HASH_SIZE:
                raise ValueError("every subtree root is 32 bytes")
        self._size = size
        self._hashes = [bytes(h) for h in hashes]

    @property
    def size(self) -> int:
        return self._size

    @property
    def hashes(self) -> tuple[bytes, ...]:
        """The perfect-subtree roots, largest first."""
        return tuple(self._hashes)

    def append(self, leaf: bytes) -> None:
        """Add one leaf *hash* (not leaf input: see :func:`leaf_hash`)."""
        if len(leaf) != HASH_SIZE:
            raise ValueError("a leaf hash is 32 bytes")
        hashes = self._hashes
        size = self._size
        h = leaf
        while size & 1:
            h = _sha256(NODE_PREFIX + hashes.pop() + h).digest()
            size >>= 1
        hashes.append(h)
        self._size += 1

    def extend(self, leaves: Iterable[bytes]) -> None:
        """Append many leaf hashes in order."""
        for leaf in leaves:
            self.append(leaf)

    def root(self) -> bytes:
        """The RFC 6962 root of the ``size`` leaves appended so far."""
        hashes = self._hashes
        if not hashes:
            return EMPTY_ROOT
        h = hashes[-1]
        for left in reversed(hashes[:-1]):
            h = _sha256(NODE_PREFIX + left + h).digest()
        return h

    def copy(self) -> CompactRange:
        return CompactRange(self._size, self._hashes)

    def to_bytes(self) -> bytes:
        """``size`` as 8 bytes big-endian, then each subtree root: resumable state."""
        return self._size.to_bytes(8, "big") + b"".join(self._hashes)

    @classmethod
    def from_bytes(cls, data: bytes) -> CompactRange:
        """Inverse of :meth:`to_bytes`; raises ``ValueError`` on any other length."""
        if len(data) < 8:
            raise ValueError("compact range state is shorter than its size field")
        size = int.from_bytes(data[:8], "big")
        body = data[8:]
        if len(body) != HASH_SIZE * size.bit_count():
            raise ValueError(
                f"compact range of size {size} needs {size.bit_count()} hashes, "
                f"found {len(body)} bytes"
            )
        return cls(size, [body[i : i + HASH_SIZE] for i in range(0, len(body), HASH_SIZE)])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CompactRange):
            return NotImplemented
        return self._size == other._size and self._hashes == other._hashes

    def __hash__(self) -> int:
        return hash((self._size, tuple(self._hashes)))

    def __repr__(self) -> str:
        return f"CompactRange(size={self._size}, root={self.root().hex()[:16]}…)"


# Proof generation.


class NodeSource(Protocol):
    """Where proof generation reads leaves: the leaf *hashes* ``[start, end)``."""

    def leaf_hashes(self, start: int, end: int) -> Sequence[bytes]: ...


class LeafHashes:
    """A :class:`NodeSource` over leaf hashes held in memory (tests, small logs)."""

    def __init__(self, hashes: Sequence[bytes]) -> None:
        self.hashes = hashes

    def leaf_hashes(self, start: int, end: int) -> Sequence[bytes]:
        if not 0 <= start <= end <= len(self.hashes):
            raise IndexError(f"leaves [{start}, {end}) of a log of {len(self.hashes)}")
        return self.hashes[start:end]


SubtreeCache = MutableMapping[tuple[int, int], bytes]
"""``(start, size) -> root`` of perfect subtrees. In an append-only log such a
hash never changes once all its leaves exist, so the cache needs no invalidation."""

LEAF_BATCH = 1024
"""Perfect subtrees up to this many leaves are read in one ``leaf_hashes`` call."""

CACHE_MIN = 64
"""Only subtrees of at least this many leaves are cached: smaller ones are cheap."""


def _reduce(level: list[bytes]) -> bytes:
    """Root of a perfect subtree given all its leaf hashes (a power-of-two count)."""
    while len(level) > 1:
        level = [
            _sha256(NODE_PREFIX + level[i] + level[i + 1]).digest() for i in range(0, len(level), 2)
        ]
    return level[0]


def perfect_subtree_root(
    source: NodeSource, start: int, size: int, cache: SubtreeCache | None = None
) -> bytes:
    """Root of leaves ``[start, start + size)``, ``size`` a power of two."""
    if size <= 0 or size & (size - 1):
        raise ValueError(f"{size} leaves do not form a perfect subtree")
    if cache is not None and size >= CACHE_MIN:
        cached = cache.get((start, size))
        if cached is not None:
            return cached
    if size <= LEAF_BATCH:
        leaves = list(source.leaf_hashes(start, start + size))
        if len(leaves) != size:
            raise ValueError(f"node source returned {len(leaves)} leaves, expected {size}")
        root = _reduce(leaves)
    else:
        half = size >> 1
        root = node_hash(
            perfect_subtree_root(source, start, half, cache),
            perfect_subtree_root(source, start + half, half, cache),
        )
    if cache is not None and size >= CACHE_MIN:
        cache[(start, size)] = root
    return root


def range_root(
    source: NodeSource, start: int, end: int, cache: SubtreeCache | None = None
) -> bytes:
    """MTH of leaves ``[start, end)`` (RFC 9162 §2.1.1 over that sub-list)."""
    n = end - start
    if n < 0:
        raise ValueError(f"empty or reversed range [{start}, {end})")
    if n == 0:
        return EMPTY_ROOT
    # Peel perfect subtrees off the left (RFC 9162's k split), then fold right to left.
    parts: list[bytes] = []
    while n & (n - 1):
        k = _split(n)
        parts.append(perfect_subtree_root(source, start, k, cache))
        start += k
        n -= k
    h = perfect_subtree_root(source, start, n, cache)
    for left in reversed(parts):
        h = node_hash(left, h)
    return h


def tree_root(size: int, source: NodeSource, cache: SubtreeCache | None = None) -> bytes:
    """Root of the first ``size`` leaves of ``source``."""
    if size < 0:
        raise ValueError("a tree size is never negative")
    return range_root(source, 0, size, cache)


def _inclusion_steps(index: int, size: int) -> list[tuple[int, int]]:
    """The ranges whose roots form PATH(index, D[0:size]), root level first."""
    steps: list[tuple[int, int]] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            steps.append((lo + k, hi))
            hi = lo + k
        else:
            steps.append((lo, lo + k))
            lo += k
    return steps


def _consistency_steps(old_size: int, new_size: int) -> list[tuple[int, int]]:
    """The ranges whose roots form PROOF(old_size, D[0:new_size]), root level first."""
    steps: list[tuple[int, int]] = []
    if old_size <= 0 or old_size >= new_size:
        return steps
    lo, hi, m, whole = 0, new_size, old_size, True
    while m != hi - lo:
        k = _split(hi - lo)
        if m <= k:
            steps.append((lo + k, hi))
            hi = lo + k
        else:
            steps.append((lo, lo + k))
            lo += k
            m -= k
            whole = False
    if not whole:
        steps.append((lo, hi))  # the old tree's last subtree, not a prefix of the new one
    return steps


def _check_sizes(size: int) -> None:
    if size < 0:
        raise ProofError(ProofReason.INVALID_SIZE, f"tree size {size} is negative")


def inclusion_proof(
    index: int, size: int, source: NodeSource, cache: SubtreeCache | None = None
) -> list[bytes]:
    """The audit path of leaf ``index`` in the tree of ``size`` leaves, leaf's
    sibling first (RFC 9162 §2.1.3.1)."""
    _check_sizes(size)
    if not 0 <= index < size:
        raise ProofError(ProofReason.INDEX_OUT_OF_RANGE, f"leaf {index} is not in a tree of {size}")
    steps = _inclusion_steps(index, size)
    return [range_root(source, lo, hi, cache) for lo, hi in reversed(steps)]


def consistency_proof(
    old_size: int, new_size: int, source: NodeSource, cache: SubtreeCache | None = None
) -> list[bytes]:
    """Proof that the tree of ``new_size`` leaves extends that of ``old_size``
    (RFC 9162 §2.1.4.1). Empty when the sizes are equal."""
    _check_sizes(old_size)
    if old_size > new_size:
        raise ProofError(
            ProofReason.SIZE_DECREASED, f"old size {old_size} exceeds new size {new_size}"
        )
    if old_size == 0:
        raise ProofError(
            ProofReason.EMPTY_OLD_TREE, "every tree extends the empty tree: nothing to prove"
        )
    steps = _consistency_steps(old_size, new_size)
    return [range_root(source, lo, hi, cache) for lo, hi in reversed(steps)]


# Verification.


def inclusion_proof_size(index: int, size: int) -> int:
    """How many hashes the inclusion proof of ``index`` in ``size`` leaves has."""
    return len(_inclusion_steps(index, size))


def consistency_proof_size(old_size: int, new_size: int) -> int:
    """How many hashes the consistency proof from ``old_size`` to ``new_size`` has."""
    return len(_consistency_steps(old_size, new_size))


def root_from_inclusion_proof(leaf: bytes, index: int, size: int, proof: Sequence[bytes]) -> bytes:
    """The root that ``proof`` implies for leaf hash ``leaf`` (RFC 9162 §2.1.3.2)."""
    _check_sizes(size)
    if not 0 <= index < size:
        raise ProofError(ProofReason.INDEX_OUT_OF_RANGE, f"leaf {index} is not in a tree of {size}")
    _check_hash(leaf, "the leaf hash")
    want = inclusion_proof_size(index, size)
    if len(proof) != want:
        raise ProofError(
            ProofReason.WRONG_PROOF_SIZE,
            f"{len(proof)} hashes for leaf {index} of {size}; expected {want}",
        )
    fn, sn, r = index, size - 1, leaf
    for position, p in enumerate(proof):
        _check_hash(p, f"proof hash {position}")
        if sn == 0:  # unreachable after the size check; kept as RFC 9162 states it
            raise ProofError(ProofReason.WRONG_PROOF_SIZE, "proof is longer than the path")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(ProofReason.WRONG_PROOF_SIZE, "proof is shorter than the path")
    return r


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Raise :class:`ProofError` unless ``proof`` puts leaf hash ``leaf`` at
    ``index`` of the tree of ``size`` leaves whose root is ``root``."""
    calculated = root_from_inclusion_proof(leaf, index, size, proof)
    if calculated != root:
        raise ProofError(
            ProofReason.ROOT_MISMATCH,
            f"the proof leads to root {calculated.hex()[:16]}…, not {root.hex()[:16]}…",
        )


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Raise :class:`ProofError` unless ``proof`` shows that the tree
    (``new_size``, ``new_root``) extends (``old_size``, ``old_root``)
    (RFC 9162 §2.1.4.2).

    A proof from the empty tree is refused (``empty-old-tree``), as in the
    transparency-dev test vectors: it proves nothing, and a caller that has
    seen no earlier tree has nothing to check.
    """
    _check_sizes(old_size)
    if old_size > new_size:
        raise ProofError(
            ProofReason.SIZE_DECREASED,
            f"the tree shrank from {old_size} to {new_size} leaves",
        )
    if old_size == 0:
        raise ProofError(ProofReason.EMPTY_OLD_TREE, "a proof from the empty tree proves nothing")
    if old_size == new_size:
        if proof:
            raise ProofError(
                ProofReason.WRONG_PROOF_SIZE, "equal sizes need an empty consistency proof"
            )
        if old_root != new_root:
            raise ProofError(
                ProofReason.NEW_ROOT_MISMATCH, f"two different roots for size {new_size}"
            )
        return
    want = consistency_proof_size(old_size, new_size)
    if len(proof) != want:
        raise ProofError(
            ProofReason.WRONG_PROOF_SIZE,
            f"{len(proof)} hashes from {old_size} to {new_size}; expected {want}",
        )
    for position, p in enumerate(proof):
        _check_hash(p, f"proof hash {position}")
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)  # the old tree is itself a perfect subtree of the new
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError(ProofReason.WRONG_PROOF_SIZE, "proof is longer than the path")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(ProofReason.WRONG_PROOF_SIZE, "proof is shorter than the path")
    if fr != old_root:
        raise ProofError(
            ProofReason.OLD_ROOT_MISMATCH,
            f"the proof does not lead to the old root at size {old_size}",
        )
    if sr != new_root:
        raise ProofError(
            ProofReason.NEW_ROOT_MISMATCH,
            f"the proof does not lead to the new root at size {new_size}",
        )
