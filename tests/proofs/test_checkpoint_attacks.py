"""Checkpoints only over verified rows, judged by trust as of their tree.

Real workspaces on SQLite and PostgreSQL, attacked by direct SQL as someone
with write access to the database and no key would (issue 10): a forged row
must never be signed over nor proven, ``--fast`` must not take events after
the newest checkpoint on their digests alone, and checkpoint keys are judged
at the tree they sign, so a key rotation leaves old checkpoints valid while a
key trusted later or revoked earlier cannot vouch for an old tree.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from ledger.canonical import canonical_json, event_digest
from ledger.keys import KeyPair, load_keypair
from ledger.records import parse_record, sealed_state
from proofs.note import Checkpoint, sign_checkpoint
from tests.conftest import Runner
from tests.rawstore import RawStore

ORIGIN = "chassis.ledger/shop"


@pytest.fixture
def shop(
    run: Runner, tmp_path: Path, ledger_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Path, RawStore]]:
    """A workspace on each backend, with two hosts registered by the root key."""
    root = tmp_path / "shop"
    if ledger_url.startswith("postgresql"):
        monkeypatch.setenv("CHASSIS_LEDGER", ledger_url)
        store = RawStore(ledger_url)
    else:
        store = RawStore(f"sqlite:///{root / '.chassis' / 'ledger.db'}")
    run.ok("init", str(root), "--name", "shop")
    monkeypatch.chdir(root)
    for name in ("lab-1", "lab-2"):
        add_host(run, root, name)
    yield root, store


def add_host(run: Runner, root: Path, name: str, *key: str) -> None:
    prefix = ["--key", key[0]] if key else []
    run.ok(*prefix, "host", "add", name, "--connector", "local", "--root", str(root / name))


@contextmanager
def side(store: RawStore) -> Iterator[tuple[Any, str, str]]:
    """A cursor on the store's database, the prefix of Chassis's side tables
    and the parameter mark."""
    prefix, mark = "", "?"
    if store.config.kind != "sqlite":
        prefix, mark = parse_qs(urlsplit(store.url).query)["schema"][0] + ".", "%s"
    with store._cursor() as c:
        yield c, prefix, mark


def stored_sizes(store: RawStore) -> list[int]:
    with side(store) as (c, prefix, _):
        rows = c.execute(f"SELECT size FROM {prefix}chassis_checkpoints ORDER BY size").fetchall()
    return [int(r[0]) for r in rows]


def forge(store: RawStore, keyid: str) -> int:
    """Append a host registration for a new aggregate under ``keyid`` with an
    all-zero signature: well formed, canonical, the right digest; only the
    signature is wrong. Returns its sequence number."""
    template = next(r for r in store.rows() if r.topic == "chassis.host.registered.v1")
    record = parse_record(
        template.seq, template.originator_id, template.version, template.topic, template.state
    )
    body = json.loads(record.body_bytes)
    aggregate = uuid.uuid4()
    body["id"] = str(aggregate)
    body["keyid"] = keyid
    body["payload"]["name"] = "evil"
    body["payload"]["settings"]["root"] = "/srv/evil"
    raw = canonical_json(body)
    state = sealed_state(event_digest(raw), raw, bytes(64))
    with side(store) as (c, prefix, mark):
        table = "stored_events" if store.config.kind == "sqlite" else f"{prefix}ledger_events"
        key: Any = aggregate.hex if store.config.kind == "sqlite" else aggregate
        c.execute(
            f"INSERT INTO {table} (originator_id, originator_version, topic, state) "
            f"VALUES ({mark}, {mark}, {mark}, {mark})",
            (key, 1, template.topic, state),
        )
    return store.rows()[-1].seq


def verify(run: Runner, *args: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(run.ok("ledger", "verify", "--json", *args).stdout)
    return data


def failure(run: Runner, *args: str) -> dict[str, Any]:
    result = run("ledger", "verify", "--json", *args)
    assert result.exit_code == 8, result.stdout + result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    data: dict[str, Any] = json.loads(result.stdout)
    assert data["ok"] is False
    return data


def root_key(isolation: Path) -> KeyPair:
    return load_keypair(isolation / "shop-root.key")


def test_a_forged_row_is_never_signed_over_nor_proven(
    run: Runner, shop: tuple[Path, RawStore], isolation: Path
) -> None:
    root, store = shop
    signed = stored_sizes(store)[-1]
    seq = forge(store, root_key(isolation).keyid)
    named = f"bad-signature at seq {seq}"

    # A writing command appends its own events, but signs nothing over the forged row.
    result = run("host", "add", "lab-3", "--connector", "local", "--root", str(root / "lab-3"))
    assert named in result.stderr, result.stderr
    assert stored_sizes(store)[-1] == signed

    refused = run("ledger", "checkpoint")
    assert refused.exit_code == 8 and named in refused.stderr, refused.stderr
    assert stored_sizes(store)[-1] == signed

    proof = run("proof", "inclusion", str(seq))
    assert proof.exit_code == 8 and named in proof.stderr, proof.stdout + proof.stderr
    assert stored_sizes(store)[-1] == signed
    assert failure(run)["reason"] == "bad-signature"


def test_fast_refuses_a_forged_event_after_the_newest_checkpoint(
    run: Runner, shop: tuple[Path, RawStore], isolation: Path
) -> None:
    _, store = shop
    verify(run, "--fast")
    seq = forge(store, root_key(isolation).keyid)  # digest and link fine, signature zero
    failed = failure(run, "--fast")
    assert (failed["reason"], failed["seq"]) == ("bad-signature", seq)
    assert failure(run)["seq"] == seq


def test_fast_says_how_many_events_it_verified_in_full(
    run: Runner, shop: tuple[Path, RawStore]
) -> None:
    root, store = shop
    data = verify(run, "--fast")
    assert data["mode"] == "fast" and data["events"] == stored_sizes(store)[-1]
    assert (data["covered_by_checkpoint"], data["verified_in_full"]) == (data["events"], 0)

    run.ok("key", "new", "ops", "--roles", "operator")
    add_host(run, root, "lab-3", "ops")  # no checkpoint: ops lacks the role
    covered = stored_sizes(store)[-1]
    data = verify(run, "--fast")
    assert data["events"] == covered + 1
    assert (data["covered_by_checkpoint"], data["verified_in_full"]) == (covered, 1)
    assert data["signatures"] == 1
    human = run.ok("ledger", "verify", "--fast").stdout
    assert f"{covered} covered by checkpoint {covered}" in human
    assert "1 verified in full" in human
    full = verify(run)
    assert (full["covered_by_checkpoint"], full["verified_in_full"]) == (0, covered + 1)


def rotate(run: Runner, root: Path, tmp_path: Path) -> Path:
    """cp2 signs checkpoints, then is revoked (by an admin key that cannot
    sign checkpoints, so the latest stored one stays cp2's) and cp3 signs the
    next. Returns a kept copy of cp2's checkpoint."""
    run.ok("key", "new", "ops", "--roles", "operator")
    run.ok("key", "new", "adm", "--roles", "admin")
    run.ok("key", "new", "cp2", "--roles", "checkpoint")
    add_host(run, root, "lab-3", "ops")
    kept = tmp_path / "cp2.checkpoint"
    run.ok("--key", "cp2", "ledger", "checkpoint", "--out", str(kept))
    run.ok("--key", "adm", "key", "revoke", "cp2", "--reason", "rotated")
    return kept


def test_checkpoints_signed_before_a_key_rotation_still_hold(
    run: Runner, shop: tuple[Path, RawStore], tmp_path: Path
) -> None:
    root, store = shop
    kept = rotate(run, root, tmp_path)
    data = verify(run)  # the latest stored and last-seen checkpoints are cp2's
    assert {c["signer"] for c in data["checkpoints"]["checked"]} == {"cp2"}

    run.ok("--key", "adm", "key", "new", "cp3", "--roles", "checkpoint")
    add_host(run, root, "lab-4", "ops")
    run.ok("--key", "cp3", "ledger", "checkpoint")  # extends cp2's, judged as of its tree
    assert len(stored_sizes(store)) >= 2
    for mode in ((), ("--fast",)):
        data = verify(run, *mode, "--against", str(kept))
        signers = {c["kind"]: c["signer"] for c in data["checkpoints"]["checked"]}
        assert signers == {"latest-stored": "cp3", "last-seen": "cp3", "against": "cp2"}


def test_a_key_not_valid_at_the_tree_cannot_vouch_for_it(
    run: Runner, shop: tuple[Path, RawStore], tmp_path: Path, isolation: Path
) -> None:
    root, store = shop
    early = json.loads(run.ok("proof", "consistency", "1", "2", "--json").stdout)
    run.ok("key", "new", "cp2", "--roles", "checkpoint")
    cp2 = load_keypair(isolation / "cp2.key")

    # Not yet trusted: cp2 signs the tree of 2 events, before its trust record.
    before = tmp_path / "before.checkpoint"
    root_2 = base64.b64decode(early["new_root"])
    before.write_text(sign_checkpoint(Checkpoint(ORIGIN, 2, root_2), ORIGIN, cp2))
    data = failure(run, "--against", str(before))
    assert data["reason"] == "unknown-checkpoint-key", data
    assert "cp2" in data["detail"] and "trusted only at seq" in data["detail"]

    # Already revoked: cp2 signs today's tree, after its revocation (by an
    # admin key that signs no checkpoint itself).
    run.ok("key", "new", "adm", "--roles", "admin")
    run.ok("--key", "adm", "key", "revoke", "cp2", "--reason", "rotated")
    now = verify(run)["checkpoints"]
    after = sign_checkpoint(
        Checkpoint(ORIGIN, now["tree_size"], base64.b64decode(now["root"])), ORIGIN, cp2
    )
    (tmp_path / "after.checkpoint").write_text(after)
    data = failure(run, "--against", str(tmp_path / "after.checkpoint"))
    assert data["reason"] == "unknown-checkpoint-key" and "revoked at seq" in data["detail"]

    # Stored as the latest checkpoint, it is refused, and nothing extends it.
    with side(store) as (c, prefix, mark):
        c.execute(
            f"INSERT INTO {prefix}chassis_checkpoints (size, root, note, keyid, created) "
            f"VALUES ({mark}, {mark}, {mark}, {mark}, {mark})",
            (now["tree_size"], base64.b64decode(now["root"]), after, cp2.keyid, "2026"),
        )
    data = failure(run)
    assert data["reason"] == "unknown-checkpoint-key"
    assert data["checkpoint"] == "the latest stored checkpoint"
    add_host(run, root, "lab-3")
    refused = run("ledger", "checkpoint")
    assert refused.exit_code == 8 and "unknown-checkpoint-key" in refused.stderr
    assert stored_sizes(store)[-1] == now["tree_size"]
