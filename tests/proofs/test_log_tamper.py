"""What chains cannot show, checkpoints do: a cut tail, a rewritten past.

Real workspaces on SQLite and PostgreSQL, tampered with by direct SQL as an
attacker with database access (and, for the rewrite, the signing key) would.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from ledger.canonical import event_digest
from ledger.keys import KeyPair, generate_keypair, load_keypair
from ledger.records import dashed_uuid, parse_record, sealed_state
from proofs.note import Checkpoint, sign_checkpoint
from tests.conftest import Runner
from tests.rawstore import RawStore

SIDE_TABLES = ("chassis_merkle_leaves", "chassis_checkpoints")


@pytest.fixture
def shop(
    run: Runner, tmp_path: Path, ledger_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Path, RawStore]]:
    """A workspace on each backend, with four hosts registered by the root key."""
    root = tmp_path / "shop"
    if ledger_url.startswith("postgresql"):
        monkeypatch.setenv("CHASSIS_LEDGER", ledger_url)
        store = RawStore(ledger_url)
    else:
        store = RawStore(f"sqlite:///{root / '.chassis' / 'ledger.db'}")
    run.ok("init", str(root), "--name", "shop")
    monkeypatch.chdir(root)
    for name in ("lab-1", "lab-2", "lab-3", "lab-4"):
        run.ok("host", "add", name, "--connector", "local", "--root", str(root / name))
    yield root, store


@contextmanager
def side(store: RawStore) -> Iterator[tuple[Any, str]]:
    """A cursor on the store's database and the prefix of Chassis's side tables."""
    prefix = ""
    if store.config.kind != "sqlite":
        prefix = parse_qs(urlsplit(store.url).query)["schema"][0] + "."
    with store._cursor() as c:
        yield c, prefix


def failure(run: Runner, *args: str) -> dict[str, Any]:
    result = run("ledger", "verify", "--json", *args)
    assert result.exit_code == 8, result.stdout + result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    data: dict[str, Any] = json.loads(result.stdout)
    assert data["ok"] is False
    return data


def test_truncated_tail_is_caught_by_the_stored_checkpoint(
    run: Runner, shop: tuple[Path, RawStore]
) -> None:
    _, store = shop
    run.ok("ledger", "verify")
    for row in store.rows()[-2:]:
        store.delete(row.seq)
    data = failure(run)
    assert data["reason"] == "truncated" and data["checkpoint"] == "the latest stored checkpoint"
    assert "covers 5 events but the ledger now has 3" in data["detail"]
    assert failure(run, "--fast")["reason"] == "truncated"


def test_truncated_tail_and_stored_checkpoints_is_caught_by_the_last_seen_one(
    run: Runner, shop: tuple[Path, RawStore]
) -> None:
    root, store = shop
    for row in store.rows()[-2:]:
        store.delete(row.seq)
    with side(store) as (c, prefix):
        for table in SIDE_TABLES:
            c.execute(f"DELETE FROM {prefix}{table}")
        c.execute(f"DELETE FROM {prefix}chassis_merkle_state")
    data = failure(run)
    assert data["reason"] == "truncated"
    assert data["checkpoint"].startswith("the last-seen checkpoint")
    # An honest command now refuses to bless the shorter ledger with a checkpoint.
    result = run("host", "add", "lab-5", "--connector", "local", "--root", str(root / "lab-5"))
    assert result.exit_code == 0
    assert "chassis: warning: checkpoint after the command failed: truncated" in result.stderr
    assert failure(run)["reason"] == "truncated"


def reseal_all(store: RawStore, key: KeyPair, seq: int, change: dict[str, Any]) -> None:
    """Rewrite one event's payload and re-chain and re-sign everything after it:
    what an insider holding the key could do with database access."""
    new_heads: dict[str, str] = {}
    for row in store.rows():
        if row.seq < seq:
            continue
        record = parse_record(row.seq, row.originator_id, row.version, row.topic, row.state)
        body = json.loads(record.body_bytes)
        aggregate = dashed_uuid(row.originator_id)
        if row.seq == seq:
            body["payload"]["settings"].update(change)
        if aggregate in new_heads:
            body["prev"] = new_heads[aggregate]
        raw = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        digest = event_digest(raw)
        new_heads[aggregate] = digest.hex()
        store.set_state(row.seq, sealed_state(digest, raw, key.sign(digest)))


def test_rewritten_past_is_caught_against_an_old_checkpoint(
    run: Runner, shop: tuple[Path, RawStore], isolation: Path, tmp_path: Path
) -> None:
    root, store = shop
    old = tmp_path / "old.checkpoint"
    run.ok("ledger", "checkpoint", "--out", str(old))
    kept_last_seen = tmp_path / "last-seen.copy"
    shutil.copy(root / ".chassis" / "last-checkpoint", kept_last_seen)
    for name in ("lab-5", "lab-6"):
        run.ok("host", "add", name, "--connector", "local", "--root", str(root / name))

    key = load_keypair(isolation / "shop-root.key")
    target = next(r for r in store.rows() if r.topic == "chassis.host.registered.v1")
    reseal_all(store, key, target.seq, {"root": "/srv/evil"})
    with side(store) as (c, prefix):  # rebuild the Merkle tables from scratch
        for table in SIDE_TABLES:
            c.execute(f"DELETE FROM {prefix}{table}")
        c.execute(f"DELETE FROM {prefix}chassis_merkle_state")
    (root / ".chassis" / "last-checkpoint").unlink()  # a workspace that never saw the past
    run.ok("ledger", "checkpoint")

    verified = json.loads(run.ok("ledger", "verify", "--json").stdout)  # chains all fine
    assert verified["ok"] and verified["events"] == 7
    data = failure(run, "--against", str(old))
    assert data["reason"] == "inconsistent" and str(old) in data["checkpoint"]
    assert failure(run, "--fast", "--against", str(old))["reason"] == "inconsistent"
    # A workspace that had seen the old checkpoint notices by itself.
    shutil.copy(kept_last_seen, root / ".chassis" / "last-checkpoint")
    data = failure(run)
    assert data["reason"] == "inconsistent" and "last-seen" in data["checkpoint"]


def test_forged_or_foreign_checkpoints_are_named(
    run: Runner, shop: tuple[Path, RawStore], tmp_path: Path
) -> None:
    _, store = shop
    mark = "?" if store.config.kind == "sqlite" else "%s"
    with side(store) as (c, prefix):
        query = f"SELECT note FROM {prefix}chassis_checkpoints ORDER BY size DESC LIMIT 1"
        note = str(c.execute(query).fetchone()[0])
    body, _, signature = note.rpartition("\n\n")
    origin, size, _root = body.split("\n")
    forged = f"{origin}\n{size}\n{'A' * 43}=\n\n{signature}"
    with side(store) as (c, prefix):
        c.execute(f"UPDATE {prefix}chassis_checkpoints SET note = {mark}", (forged,))
    assert failure(run)["reason"] == "bad-checkpoint-signature"
    with side(store) as (c, prefix):
        c.execute(f"UPDATE {prefix}chassis_checkpoints SET note = {mark}", (note,))

    mallory = generate_keypair(tmp_path / "mallory-keys", "mallory")
    foreign = tmp_path / "foreign.checkpoint"
    foreign.write_text(sign_checkpoint(Checkpoint(origin, 1, bytes(32)), origin, mallory))
    assert failure(run, "--against", str(foreign))["reason"] == "unknown-checkpoint-key"


def test_changed_old_event_is_a_root_mismatch_for_fast_verify(
    run: Runner, shop: tuple[Path, RawStore], isolation: Path
) -> None:
    """Re-sealed and re-signed with the key, with the Merkle tables left alone:
    chains verify, the stored checkpoint's root no longer matches."""
    root, store = shop
    (root / ".chassis" / "last-checkpoint").unlink()
    key = load_keypair(isolation / "shop-root.key")
    target = next(r for r in store.rows() if r.topic == "chassis.host.registered.v1")
    reseal_all(store, key, target.seq, {"root": "/srv/evil"})
    assert failure(run, "--fast")["reason"] == "root-mismatch"
    assert failure(run)["reason"] == "root-mismatch"
