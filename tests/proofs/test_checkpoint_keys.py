"""Checkpoint keys as of the tree, at the boundaries: pure, no database.

A checkpoint whose last record is at sequence number ``s`` may be signed by a
key trusted by a record at or before ``s`` and not revoked by one at or
before ``s`` (guides/proofs.md, "Keys as of the tree"). Sequence numbers have
gaps, so the tree is mapped to positions through its leaves.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ledger.keys import KeyPair, generate_keypair
from ledger.trust import TrustedKey, TrustState
from proofs.checkpoint_verify import (
    AGAINST,
    CheckpointError,
    ClaimedCheckpoint,
    position_after,
    verify_signature,
)
from proofs.note import Checkpoint, sign_checkpoint

ORIGIN = "chassis.ledger/shop"
POSITIONS = [1, 2, 3, 5, 8, 9, 10, 12]
"""Sequence numbers of the leaves: 4, 6, 7 and 11 are gaps."""


def key(pair: KeyPair, roles: list[str], trusted: int, revoked: int | None = None) -> TrustedKey:
    return TrustedKey(
        keyid=pair.keyid,
        name=pair.name,
        public_key=pair.public_key.hex(),
        roles=roles,
        trusted_at="2026-01-01T00:00:00.000000Z",
        revoked_at=None if revoked is None else "2026-01-02T00:00:00.000000Z",
        trusted_pos=trusted,
        revoked_pos=revoked,
    )


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, KeyPair]:
    return {name: generate_keypair(tmp_path, name) for name in ("root", "cp", "ops")}


@pytest.fixture
def trust(keys: dict[str, KeyPair]) -> TrustState:
    """root at seq 1; cp (checkpoint) trusted at 5 and revoked at 10; ops at 3."""
    state = TrustState()
    state.root_keyid, state.ledger_name = keys["root"].keyid, "shop"
    state.keys = {
        keys["root"].keyid: key(keys["root"], ["admin", "checkpoint", "operator"], 1),
        keys["cp"].keyid: key(keys["cp"], ["checkpoint"], 5, revoked=10),
        keys["ops"].keyid: key(keys["ops"], ["operator"], 3),
    }
    return state


def judge(trust: TrustState, signer: KeyPair, size: int) -> str:
    note = sign_checkpoint(Checkpoint(ORIGIN, size, bytes(32)), ORIGIN, signer)
    claim = ClaimedCheckpoint(AGAINST, "kept", note)
    try:
        _, name = verify_signature(claim, trust, position_after(POSITIONS, size))
    except CheckpointError as e:
        assert e.reason == "unknown-checkpoint-key"
        return e.detail
    return name


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        (3, "trusted only at seq 5, after this tree (its last event: seq 3)"),
        (4, "cp"),  # its last record (seq 5) is the one that trusted cp
        (6, "cp"),  # its last record is seq 9, just before the revocation
        (7, "revoked at seq 10, within this tree (its last event: seq 10)"),
        (8, "revoked at seq 10, within this tree (its last event: seq 12)"),
        (99, "revoked at seq 10"),  # larger than the records: judged at their end
    ],
)
def test_a_checkpoint_key_counts_from_its_trust_record_until_its_revocation(
    trust: TrustState, keys: dict[str, KeyPair], size: int, expected: str
) -> None:
    if expected == "cp":
        assert judge(trust, keys["cp"], size) == "cp"
    else:
        assert expected in judge(trust, keys["cp"], size)
    assert judge(trust, keys["root"], size) == "root"


def test_a_key_without_the_role_never_counts(trust: TrustState, keys: dict[str, KeyPair]) -> None:
    assert "does not hold role 'checkpoint'" in judge(trust, keys["ops"], 8)


def test_positions_of_a_tree() -> None:
    assert [position_after(POSITIONS, n) for n in (0, 1, 3, 4, 8, 9)] == [0, 2, 4, 6, 13, 13]
