"""The stored Merkle log: incremental = from scratch, proofs verify, races are safe."""

from __future__ import annotations

import hashlib
import random
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.application import Ledger
from ledger.keys import _keypair
from ledger.storage import StorageConfig, open_ledger
from ledger.tables import SideTables
from proofs.log import TransparencyLog
from proofs.merkle import (
    LeafHashes,
    leaf_hash,
    tree_root,
    verify_consistency,
    verify_inclusion,
)
from proofs.note import Checkpoint, parse_vkey, sign_checkpoint, verify_checkpoint
from proofs.tlog_proof import verify_proof


def digests(n: int, start: int = 0) -> list[tuple[int, bytes]]:
    """(seq, digest) pairs with gaps in seq, as PostgreSQL sequences may have."""
    return [(3 * i + 1, hashlib.sha256(str(i).encode()).digest()) for i in range(start, n)]


def scratch_root(n: int) -> bytes:
    return tree_root(n, LeafHashes([leaf_hash(d) for _, d in digests(n)]))


@pytest.fixture
def log(ledger: Ledger) -> TransparencyLog:
    return TransparencyLog(SideTables(ledger))


def test_incremental_extend_equals_a_from_scratch_root(log: TransparencyLog) -> None:
    rng = random.Random(6962)
    entries = digests(300)
    done = 0
    while done < len(entries):
        step = rng.choice([1, 1, 2, 3, 7, 16, 33])
        log.extend(entries[done : done + step])
        done = min(done + step, len(entries))
        assert log.size() == done
        assert log.root() == scratch_root(done)
    assert log.last_seq() == entries[-1][0]
    # Re-sending rows already in the log changes nothing.
    assert log.extend(entries[250:]) == 300
    assert log.root() == scratch_root(300)


def test_lookups_both_ways(log: TransparencyLog) -> None:
    log.extend(digests(10))
    assert log.leaf_index(1) == 0 and log.leaf_index(28) == 9
    assert log.seq_at(9) == 28 and log.seq_at(10) is None
    assert log.leaf_index(2) is None
    assert log.find_leaf(leaf_hash(digests(10)[4][1])) == (4, 13)
    with pytest.raises(IndexError):
        log.leaf_hashes(5, 11)


def test_proofs_from_the_store_verify(log: TransparencyLog) -> None:
    log.extend(digests(77))
    hashes = [leaf_hash(d) for _, d in digests(77)]
    for size in (1, 2, 5, 64, 77):
        root = scratch_root(size)
        for index in {0, size // 2, size - 1}:
            verify_inclusion(hashes[index], index, size, log.inclusion(index, size), root)
        for old in {1, size // 3 or 1, size}:
            verify_consistency(old, size, scratch_root(old), root, log.consistency(old, size))
    with pytest.raises(IndexError):
        log.inclusion(0, 78)


def test_checkpoints_one_per_size(log: TransparencyLog) -> None:
    assert log.latest_checkpoint() is None
    assert log.put_checkpoint(3, b"r" * 32, "note-3\n", "k", "t")
    assert not log.put_checkpoint(3, b"x" * 32, "other\n", "k", "t")  # first one wins
    assert log.put_checkpoint(5, b"s" * 32, "note-5\n", "k", "t")
    latest = log.latest_checkpoint()
    assert latest is not None and (latest.size, latest.note) == (5, "note-5\n")
    at3 = log.checkpoint_at(3)
    assert at3 is not None and at3.root == b"r" * 32
    assert log.checkpoint_at(4) is None


@pytest.fixture
def two_ledgers(ledger_url: str, ledger: Ledger) -> Iterator[tuple[Ledger, Ledger]]:
    other = open_ledger(StorageConfig.from_url(ledger_url), None)
    yield ledger, other
    other.close()


def test_concurrent_extend_from_two_ledgers_is_safe(
    two_ledgers: tuple[Ledger, Ledger],
) -> None:
    """Two writers on the same database race to add overlapping rows: every
    leaf lands once, at its index, and the root is the from-scratch one."""
    first, second = (TransparencyLog(SideTables(x)) for x in two_ledgers)
    entries = digests(400)
    errors: list[BaseException] = []

    def writer(log: TransparencyLog, seed: int) -> None:
        rng = random.Random(seed)
        try:
            done = 0
            while done < len(entries):
                done = min(len(entries), done + rng.randint(1, 40))
                log.extend(entries[:done])  # always from the start: overlaps on purpose
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [
        threading.Thread(target=writer, args=(log, n)) for n, log in enumerate((first, second))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert first.size() == second.size() == 400
    assert first.root() == second.root() == scratch_root(400)
    assert [first.seq_at(i) for i in (0, 199, 399)] == [1, 598, 1198]
    assert list(first.leaf_hashes(0, 400)) == [leaf_hash(d) for _, d in entries]


def test_the_proofs_guide_worked_example_recomputes() -> None:
    """guides/proofs.md's worked example is checked from its own text."""
    guide = (Path(__file__).resolve().parents[2] / "guides" / "proofs.md").read_text()
    example = guide[guide.index("### Worked example") : guide.index("## Verifying with")]
    blocks = re.findall(r"```text\n(.*?)```", example, re.DOTALL)
    values = dict(re.findall(r"^([^:\n]+?):\s+(\S+)$", blocks[0], re.MULTILINE))
    digest = bytes.fromhex(values["leaf 0 input (the digest)"])
    assert leaf_hash(digest).hex() == values["leaf 0 hash = root (size 1)"]
    verifier = parse_vkey(values["vkey"])
    assert verifier.key_id.hex() == values["note key id"]
    key = _keypair("example-root", Ed25519PrivateKey.from_private_bytes(bytes(range(32))))
    assert verifier.public_key == key.public_key
    origin = "chassis.ledger/example"
    note = blocks[1]
    assert note == sign_checkpoint(Checkpoint(origin, 1, leaf_hash(digest)), origin, key)
    assert verify_checkpoint(note, [verifier]).size == 1
    named = dict(re.findall(r"^(\w+(?:\(\d\))?) = .*?([0-9a-f]{64})$", blocks[2], re.MULTILINE))
    d1, d2 = (hashlib.sha256(f"example event {i}".encode()).digest() for i in (1, 2))
    assert (named["D1"], named["D2"]) == (d1.hex(), d2.hex())
    source = LeafHashes([leaf_hash(d) for d in (digest, d1, d2)])
    assert named["root(3)"] == tree_root(3, source).hex()
    checkpoint = verify_proof(blocks[3], leaf_hash(d1), [verifier])
    assert (checkpoint.size, checkpoint.root.hex()) == (3, named["root(3)"])
