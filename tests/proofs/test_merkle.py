"""RFC 6962 hashing, the frontier, and proofs: published vectors and properties."""

from __future__ import annotations

import base64
import hashlib
import json
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proofs.merkle import (
    EMPTY_ROOT,
    CompactRange,
    LeafHashes,
    ProofError,
    ProofReason,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    perfect_subtree_root,
    range_root,
    tree_root,
    verify_consistency,
    verify_inclusion,
)

VECTORS = Path(__file__).parent / "vectors"
TD = VECTORS / "transparency-dev"
ROOTS = json.loads((VECTORS / "rfc6962-roots.json").read_text())
LEAF_INPUTS = [bytes.fromhex(x) for x in ROOTS["leaf_inputs_hex"]]
LEAVES = [leaf_hash(x) for x in LEAF_INPUTS]


def reference_root(leaves: list[bytes]) -> bytes:
    """MTH exactly as RFC 9162 §2.1.1 defines it, recursively."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return node_hash(reference_root(leaves[:k]), reference_root(leaves[k:]))


@cache
def many_leaves(count: int = 320) -> list[bytes]:
    return [leaf_hash(i.to_bytes(4, "big")) for i in range(count)]


# Published vectors.


def test_hashes_are_domain_separated() -> None:
    assert leaf_hash(b"") == hashlib.sha256(b"\x00").digest()
    assert (
        node_hash(b"a" * 32, b"b" * 32) == hashlib.sha256(b"\x01" + b"a" * 32 + b"b" * 32).digest()
    )
    assert EMPTY_ROOT.hex() == ROOTS["roots_by_size_hex"][0]


@pytest.mark.parametrize("size", range(9))
def test_roots_of_the_rfc6962_reference_leaves(size: int) -> None:
    want = bytes.fromhex(ROOTS["roots_by_size_hex"][size])
    frontier = CompactRange()
    frontier.extend(LEAVES[:size])
    assert frontier.root() == want
    assert tree_root(size, LeafHashes(LEAVES)) == want
    assert reference_root(LEAVES[:size]) == want


def test_perfect_subtree_hashes_of_the_reference_tree() -> None:
    source = LeafHashes(LEAVES)
    for level, hashes in enumerate(ROOTS["node_hashes_by_level_hex"]):
        width = 1 << level
        for index, want in enumerate(hashes):
            assert perfect_subtree_root(source, index * width, width).hex() == want


def _b64(value: str) -> bytes:
    return base64.b64decode(value) if value else b""


def _cases(kind: str) -> list[Any]:
    return [
        pytest.param(json.loads(path.read_text()), id=str(path.relative_to(TD / kind)))
        for path in sorted((TD / kind).rglob("*.json"))
    ]


@pytest.mark.parametrize("case", _cases("inclusion"))
def test_transparency_dev_inclusion_vectors(case: dict[str, Any]) -> None:
    proof = [_b64(p) for p in case["proof"] or []]
    args = (_b64(case["leafHash"]), case["leafIdx"], case["treeSize"], proof, _b64(case["root"]))
    if case["wantErr"]:
        with pytest.raises(ProofError):
            verify_inclusion(*args)
        return
    verify_inclusion(*args)
    # A happy path over the reference leaves is also what we generate.
    size = case["treeSize"]
    if size <= len(LEAVES) and _b64(case["root"]) == tree_root(size, LeafHashes(LEAVES)):
        assert inclusion_proof(case["leafIdx"], size, LeafHashes(LEAVES)) == proof


@pytest.mark.parametrize("case", _cases("consistency"))
def test_transparency_dev_consistency_vectors(case: dict[str, Any]) -> None:
    proof = [_b64(p) for p in case["proof"] or []]
    args = (case["size1"], case["size2"], _b64(case["root1"]), _b64(case["root2"]), proof)
    if case["wantErr"]:
        with pytest.raises(ProofError):
            verify_consistency(*args)
        return
    verify_consistency(*args)
    size2 = case["size2"]
    if size2 <= len(LEAVES) and _b64(case["root2"]) == tree_root(size2, LeafHashes(LEAVES)):
        assert consistency_proof(case["size1"], size2, LeafHashes(LEAVES)) == proof


def test_vectors_are_all_there() -> None:
    assert len(_cases("inclusion")) > 90
    assert len(_cases("consistency")) > 90


# Specific reasons.


def test_inclusion_failures_name_their_reason() -> None:
    source = LeafHashes(LEAVES)
    root = tree_root(7, source)
    proof = inclusion_proof(3, 7, source)
    verify_inclusion(LEAVES[3], 3, 7, proof, root)

    def reason(*args: Any) -> str:
        with pytest.raises(ProofError) as caught:
            verify_inclusion(*args)
        return caught.value.reason

    assert reason(LEAVES[3], 7, 7, proof, root) == ProofReason.INDEX_OUT_OF_RANGE
    assert reason(LEAVES[3], -1, 7, proof, root) == ProofReason.INDEX_OUT_OF_RANGE
    assert reason(LEAVES[3], 3, 7, proof[:-1], root) == ProofReason.WRONG_PROOF_SIZE
    assert reason(LEAVES[3], 3, 7, [*proof, proof[0]], root) == ProofReason.WRONG_PROOF_SIZE
    assert reason(LEAVES[3][:31], 3, 7, proof, root) == ProofReason.MALFORMED_HASH
    assert reason(LEAVES[3], 3, 7, [proof[0][:31], *proof[1:]], root) == ProofReason.MALFORMED_HASH
    assert reason(LEAVES[4], 3, 7, proof, root) == ProofReason.ROOT_MISMATCH
    assert reason(LEAVES[3], 3, -1, proof, root) == ProofReason.INVALID_SIZE
    with pytest.raises(ProofError, match="index-out-of-range"):
        inclusion_proof(7, 7, source)


def test_consistency_failures_name_their_reason() -> None:
    source = LeafHashes(LEAVES)
    r3, r7 = tree_root(3, source), tree_root(7, source)
    proof = consistency_proof(3, 7, source)
    verify_consistency(3, 7, r3, r7, proof)

    def reason(*args: Any) -> str:
        with pytest.raises(ProofError) as caught:
            verify_consistency(*args)
        return caught.value.reason

    assert reason(7, 3, r7, r3, proof) == ProofReason.SIZE_DECREASED
    assert reason(0, 7, EMPTY_ROOT, r7, []) == ProofReason.EMPTY_OLD_TREE
    assert reason(3, 7, r3, r7, proof[:-1]) == ProofReason.WRONG_PROOF_SIZE
    assert reason(3, 7, r7, r7, proof) == ProofReason.OLD_ROOT_MISMATCH
    assert reason(3, 7, r3, r3, proof) == ProofReason.NEW_ROOT_MISMATCH
    assert reason(7, 7, r7, r3, []) == ProofReason.NEW_ROOT_MISMATCH
    assert reason(7, 7, r7, r7, [r7]) == ProofReason.WRONG_PROOF_SIZE
    verify_consistency(7, 7, r7, r7, [])
    assert consistency_proof(7, 7, source) == []
    with pytest.raises(ProofError, match="size-decreased"):
        consistency_proof(8, 7, source)


# The frontier.


def test_frontier_state_round_trips_and_resumes() -> None:
    leaves = many_leaves()
    for cut in (0, 1, 2, 3, 7, 8, 100, 255, 256, 257):
        first = CompactRange()
        first.extend(leaves[:cut])
        state = first.to_bytes()
        assert len(state) == 8 + 32 * cut.bit_count()
        resumed = CompactRange.from_bytes(state)
        assert resumed == first
        resumed.extend(leaves[cut:300])
        assert resumed.size == 300
        assert resumed.root() == reference_root(leaves[:300])


def test_frontier_rejects_bad_state() -> None:
    with pytest.raises(ValueError, match="needs 2 hashes"):
        CompactRange.from_bytes((3).to_bytes(8, "big") + b"x" * 32)
    with pytest.raises(ValueError, match="shorter"):
        CompactRange.from_bytes(b"\x00")
    with pytest.raises(ValueError, match="subtree roots"):
        CompactRange(3, [b"x" * 32])
    with pytest.raises(ValueError, match="32 bytes"):
        CompactRange().append(b"short")


def test_appending_hashes_once_per_node() -> None:
    """After n appends exactly n - popcount(n) node hashes were made: each
    internal node of a completed subtree once, nothing rehashed."""
    frontier = CompactRange()
    merges = 0
    for n, leaf in enumerate(many_leaves()[:300], 1):
        before = len(frontier.hashes)
        frontier.append(leaf)
        merges += before + 1 - len(frontier.hashes)
        assert merges == n - n.bit_count()


def test_subtree_cache_gives_the_same_proofs() -> None:
    leaves = many_leaves()
    source = LeafHashes(leaves)
    store: dict[tuple[int, int], bytes] = {}
    for size in (256, 300, 320):
        for index in (0, 1, 255, size - 1):
            assert inclusion_proof(index, size, source, store) == inclusion_proof(
                index, size, source
            )
        assert consistency_proof(129, size, source, store) == consistency_proof(129, size, source)
    assert store  # big perfect subtrees were cached
    assert all(size & (size - 1) == 0 for _, size in store)
    assert range_root(source, 0, 300, store) == reference_root(leaves[:300])


class CountingSource:
    def __init__(self, leaves: list[bytes]) -> None:
        self.leaves = leaves
        self.read = 0

    def leaf_hashes(self, start: int, end: int) -> list[bytes]:
        self.read += end - start
        return self.leaves[start:end]


def test_cache_spares_reading_leaves_again() -> None:
    source = CountingSource(many_leaves())
    store: dict[tuple[int, int], bytes] = {}
    inclusion_proof(5, 320, source, store)
    first = source.read
    inclusion_proof(6, 320, source, store)
    assert source.read - first < 64  # subtrees of 64 and more come from the cache


# Properties over random trees.

sizes = st.integers(1, 300)


@settings(max_examples=60, deadline=None)
@given(size=st.integers(0, 300))
def test_frontier_root_equals_recursive_root(size: int) -> None:
    leaves = many_leaves()[:size]
    frontier = CompactRange()
    frontier.extend(leaves)
    assert frontier.root() == reference_root(leaves) == tree_root(size, LeafHashes(leaves))


@settings(max_examples=40, deadline=None)
@given(size=sizes)
def test_every_inclusion_proof_verifies(size: int) -> None:
    source = LeafHashes(many_leaves())
    store: dict[tuple[int, int], bytes] = {}
    root = tree_root(size, source, store)
    for index in range(size):
        proof = inclusion_proof(index, size, source, store)
        verify_inclusion(many_leaves()[index], index, size, proof, root)


@settings(max_examples=40, deadline=None)
@given(new_size=sizes)
def test_every_consistency_proof_verifies(new_size: int) -> None:
    source = LeafHashes(many_leaves())
    store: dict[tuple[int, int], bytes] = {}
    new_root = tree_root(new_size, source, store)
    for old_size in range(1, new_size + 1):
        proof = consistency_proof(old_size, new_size, source, store)
        verify_consistency(old_size, new_size, tree_root(old_size, source, store), new_root, proof)


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_tampered_inclusion_proofs_fail(data: st.DataObject) -> None:
    leaves = many_leaves()
    source = LeafHashes(leaves)
    size = data.draw(sizes, label="size")
    index = data.draw(st.integers(0, size - 1), label="index")
    root = tree_root(size, source)
    proof = inclusion_proof(index, size, source)
    leaf = leaves[index]
    if proof:
        at = data.draw(st.integers(0, len(proof) - 1), label="hash")
        bit = data.draw(st.integers(0, 255), label="bit")
        flipped = bytearray(proof[at])
        flipped[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(ProofError):
            verify_inclusion(
                leaf, index, size, [*proof[:at], bytes(flipped), *proof[at + 1 :]], root
            )
    other_index = data.draw(st.integers(0, 310).filter(lambda i: i != index), label="other index")
    with pytest.raises(ProofError):
        verify_inclusion(leaf, other_index, size, proof, root)
    other_size = data.draw(st.integers(0, 310).filter(lambda s: s != size), label="other size")
    with pytest.raises(ProofError):
        verify_inclusion(leaf, index, other_size, proof, tree_root(other_size, source))


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_tampered_consistency_proofs_fail(data: st.DataObject) -> None:
    source = LeafHashes(many_leaves())
    new_size = data.draw(st.integers(2, 300), label="new size")
    old_size = data.draw(st.integers(1, new_size - 1), label="old size")
    old_root, new_root = tree_root(old_size, source), tree_root(new_size, source)
    proof = consistency_proof(old_size, new_size, source)
    at = data.draw(st.integers(0, len(proof) - 1), label="hash")
    bit = data.draw(st.integers(0, 255), label="bit")
    flipped = bytearray(proof[at])
    flipped[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(ProofError):
        verify_consistency(
            old_size, new_size, old_root, new_root, [*proof[:at], bytes(flipped), *proof[at + 1 :]]
        )
    other_old = data.draw(st.integers(1, new_size).filter(lambda s: s != old_size), label="old'")
    with pytest.raises(ProofError):
        verify_consistency(other_old, new_size, tree_root(other_old, source), new_root, proof)
    other_new = data.draw(st.integers(old_size, 310).filter(lambda s: s != new_size), label="new'")
    with pytest.raises(ProofError):
        verify_consistency(old_size, other_new, old_root, tree_root(other_new, source), proof)
