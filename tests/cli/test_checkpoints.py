"""Checkpoints and Merkle proofs as an operator and a stranger use them."""

from __future__ import annotations

import base64
import json
import sqlite3
from pathlib import Path

import pytest

from ledger.keys import load_keypair
from proofs.merkle import leaf_hash, verify_consistency
from proofs.note import parse_vkey, verify_checkpoint
from tests.conftest import Runner
from tests.rawstore import RawStore


def events(workspace: Path) -> int:
    conn = sqlite3.connect(workspace / ".chassis" / "ledger.db")
    try:
        return int(conn.execute("SELECT COUNT(*) FROM stored_events").fetchone()[0])
    finally:
        conn.close()


def add_hosts(run: Runner, workspace: Path, *names: str, key: str | None = None) -> None:
    prefix = ["--key", key] if key else []
    for name in names:
        run.ok(
            *prefix, "host", "add", name, "--connector", "local", "--root", str(workspace / name)
        )


def latest(run: Runner) -> dict[str, object]:
    data: dict[str, object] = json.loads(run.ok("ledger", "checkpoint", "--json").stdout)
    return data


def test_commands_that_append_leave_a_checkpoint(
    run: Runner, workspace: Path, isolation: Path
) -> None:
    add_hosts(run, workspace, "lab-1", "lab-2")
    data = latest(run)
    assert data["size"] == events(workspace) == 3 and data["new"] is False
    assert data["origin"] == "chassis.ledger/shop"
    root = load_keypair(isolation / "shop-root.key")
    assert data["keyid"] == root.keyid
    verifier = parse_vkey(str(data["vkey"]))
    checkpoint = verify_checkpoint(str(data["note"]), [verifier], origin="chassis.ledger/shop")
    assert checkpoint.size == 3
    assert base64.b64encode(checkpoint.root).decode() == data["root"]
    assert checkpoint.root.hex() == data["root_hex"]
    assert (workspace / ".chassis" / "last-checkpoint").read_text() == data["note"]

    verified = json.loads(run.ok("ledger", "verify", "--json").stdout)
    section = verified["checkpoints"]
    assert section["tree_size"] == 3 and section["root"] == data["root"]
    kinds = {c["kind"]: c for c in section["checked"]}
    assert set(kinds) == {"latest-stored", "last-seen"}
    assert kinds["latest-stored"]["size"] == 3 and kinds["latest-stored"]["signer"] == "shop-root"
    assert "no truncation" in section["note"]
    human = run.ok("ledger", "verify").stdout
    assert "latest stored checkpoint: size 3, signed by shop-root" in human


def test_fresh_ledger_says_no_checkpoint_yet(run: Runner, workspace: Path) -> None:
    data = json.loads(run.ok("ledger", "verify", "--json").stdout)
    assert data["checkpoints"]["checked"] == []
    assert data["checkpoints"]["note"].startswith("no checkpoint yet")


def test_key_without_checkpoint_role_appends_and_gets_one_note(
    run: Runner, workspace: Path
) -> None:
    add_hosts(run, workspace, "lab-1")
    run.ok("key", "new", "ops", "--roles", "operator")
    before = latest(run)["size"]
    result = run("--key", "ops", "host", "add", "lab-2", "--connector", "local", "--root", "/x")
    assert result.exit_code == 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("chassis: note: no checkpoint signed")
    assert "ops" in lines[0] and "'checkpoint'" in lines[0]
    assert "Registered host lab-2" in result.stdout

    refused = run("--key", "ops", "ledger", "checkpoint")
    assert refused.exit_code == 6
    assert "ops" in refused.stderr and "checkpoint" in refused.stderr
    data = latest(run)  # the root key catches up
    assert data["new"] is True and data["size"] == events(workspace) > int(str(before))


def test_ledger_checkpoint_out_file(run: Runner, workspace: Path, tmp_path: Path) -> None:
    add_hosts(run, workspace, "lab-1")
    out = tmp_path / "kept.checkpoint"
    result = run.ok("ledger", "checkpoint", "--out", str(out))
    assert out.read_text() == result.stdout
    assert result.stdout.startswith("chassis.ledger/shop\n2\n")


def test_inclusion_proof_verifies_offline_with_either_key_form(
    run: Runner,
    workspace: Path,
    tmp_path: Path,
    isolation: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    add_hosts(run, workspace, "lab-1", "lab-2", "lab-3")
    vkey = tmp_path / "shop.vkey"
    vkey.write_text(str(latest(run)["vkey"]) + "\n")
    proof = tmp_path / "e3.tlog-proof"
    run.ok("proof", "inclusion", "3", "--out", str(proof))
    text = proof.read_text()
    assert text.startswith("c2sp.org/tlog-proof@v1\nextra ")
    log = json.loads(run.ok("ledger", "log", "--json").stdout)
    digest = next(e["digest"] for e in log if e["seq"] == 3)
    by_digest = json.loads(run.ok("proof", "inclusion", digest, "--json").stdout)
    assert by_digest["tlog_proof"] == text and by_digest["index"] == 2
    assert by_digest["leaf_hash"] == leaf_hash(bytes.fromhex(digest)).hex()

    empty = tmp_path / "stranger"
    empty.mkdir()
    monkeypatch.chdir(empty)  # no workspace, no ledger: the file and a key only
    elsewhere = Runner()
    for key in (vkey, isolation / "shop-root.pub"):
        result = elsewhere.ok("proof", "verify", str(proof), "--key", str(key), "--json")
        data = json.loads(result.stdout)
        assert (data["index"], data["tree_size"], data["digest"]) == (2, 4, digest)
    human = elsewhere.ok("proof", "verify", str(proof), "--key", str(vkey)).stdout
    assert f"OK: event {digest} is leaf 2 of chassis.ledger/shop at tree size 4" in human


def test_tampered_proof_or_wrong_key_fails_naming_the_check(
    run: Runner, workspace: Path, tmp_path: Path
) -> None:
    add_hosts(run, workspace, "lab-1", "lab-2")
    run.ok("key", "new", "other", "--roles", "operator")
    vkey = tmp_path / "shop.vkey"
    vkey.write_text(str(latest(run)["vkey"]))
    text = run.ok("proof", "inclusion", "2").stdout
    lines = text.split("\n")

    def fails(content: str, key: Path) -> tuple[str, str]:
        path = tmp_path / "x.tlog-proof"
        path.write_text(content)
        result = run("proof", "verify", str(path), "--key", str(key), "--json")
        assert result.exit_code == 8, result.stderr
        data = json.loads(result.stdout)
        assert not data["ok"] and len(result.stderr.strip().splitlines()) == 1
        return data["check"], data["reason"]

    hash_line = lines.index("index 1") + 1
    flipped = (
        lines[hash_line][:5] + ("A" if lines[hash_line][5] != "A" else "B") + lines[hash_line][6:]
    )
    assert fails("\n".join([*lines[:hash_line], flipped, *lines[hash_line + 1 :]]), vkey) == (
        "inclusion",
        "root-mismatch",
    )
    extra = lines[1]
    other_digest = "extra " + base64.b64encode(bytes(32)).decode()
    assert fails(text.replace(extra, other_digest), vkey)[0] == "inclusion"
    size_line = lines.index("chassis.ledger/shop") + 1
    grown = [*lines[:size_line], str(int(lines[size_line]) + 1), *lines[size_line + 1 :]]
    assert fails("\n".join(grown), vkey) == ("checkpoint-signature", "bad-signature")
    assert fails(text.replace("index 1", "index x"), vkey) == ("proof-format", "malformed-proof")
    other = workspace.parent / "keys" / "other.pub"
    assert fails(text, other) == ("checkpoint-signature", "unknown-key")

    missing = run("proof", "verify", str(tmp_path / "x.tlog-proof"))
    assert missing.exit_code == 2 and "--key" in missing.stderr


def test_consistency_proof_between_two_sizes(run: Runner, workspace: Path) -> None:
    add_hosts(run, workspace, "lab-1")
    old = latest(run)
    add_hosts(run, workspace, "lab-2", "lab-3")
    new = latest(run)
    data = json.loads(
        run.ok("proof", "consistency", str(old["size"]), str(new["size"]), "--json").stdout
    )
    assert data["old_root"] == old["root"] and data["new_root"] == new["root"]
    proof = [base64.b64decode(h) for h in data["proof"]]
    verify_consistency(
        2, 4, base64.b64decode(str(old["root"])), base64.b64decode(str(new["root"])), proof
    )
    assert run("proof", "consistency", "3", "2").exit_code == 3
    assert run("proof", "consistency", "1", "99").exit_code == 3


def test_bad_event_references(run: Runner, workspace: Path) -> None:
    add_hosts(run, workspace, "lab-1")
    for ref, code, words in (
        ("nope", 3, "expected a sequence number"),
        ("99", 10, "no event with sequence number 99"),
        ("ab" * 32, 10, "no event with digest"),
    ):
        result = run("proof", "inclusion", ref)
        assert result.exit_code == code and words in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_fast_verify_detects_a_changed_record(run: Runner, workspace: Path) -> None:
    add_hosts(run, workspace, "lab-1", "lab-2")
    assert json.loads(run.ok("ledger", "verify", "--fast", "--json").stdout)["mode"] == "fast"
    store = RawStore(f"sqlite:///{workspace / '.chassis' / 'ledger.db'}")
    row = store.rows()[1]
    store.set_state(row.seq, row.state.replace(b"lab-1", b"lab-9"))
    result = run("ledger", "verify", "--fast", "--json")
    assert result.exit_code == 8
    data = json.loads(result.stdout)
    assert data["reason"] == "digest-mismatch" and data["seq"] == row.seq
