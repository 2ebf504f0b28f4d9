"""Issue 10 at the command line: verify reads the file the application
writes, and a command refuses (exit 8, one line) to act on a ledger whose
records it cannot verify instead of acting on what it could read."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from tests.conftest import Runner


def test_verify_reads_the_ledger_of_a_workspace_whose_path_has_a_percent(
    run: Runner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``file:`` URIs decode ``%41`` as ``A``: verify used to open another
    file than the one the application writes (or none at all)."""
    root = tmp_path / "team%41ops"
    run.ok("init", str(root), "--name", "shop")
    monkeypatch.chdir(root)
    run.ok("key", "new", "ci-bot", "--roles", "operator")
    report = json.loads(run.ok("ledger", "verify", "--json").stdout)
    assert report["ok"] and report["events"] == 2
    decoy = tmp_path / "teamAops" / ".chassis"
    assert not decoy.exists()


def test_a_hidden_revocation_makes_key_list_fail_closed(
    run: Runner, workspace: Path, isolation: Path
) -> None:
    run.ok("key", "new", "mallory", "--roles", "operator")
    run.ok("key", "revoke", "mallory", "--reason", "stolen laptop")
    db = workspace / ".chassis" / "ledger.db"
    with sqlite3.connect(db) as conn:
        seq, originator = conn.execute(
            "SELECT rowid, originator_id FROM stored_events ORDER BY rowid DESC LIMIT 1"
        ).fetchone()
        conn.execute(
            "UPDATE stored_events SET originator_id=? WHERE rowid=?", (originator.upper(), seq)
        )
    listed = run("key", "list", "--json")
    assert listed.exit_code == 8, listed.stdout
    assert "record-mismatch" in listed.stderr
    assert len(listed.stderr.strip().splitlines()) == 1
    verified = run("ledger", "verify")
    assert verified.exit_code == 8
    assert "record-mismatch" in verified.stderr + verified.stdout


def test_a_key_signed_float_makes_host_show_fail_closed(
    run: Runner, workspace: Path, isolation: Path
) -> None:
    """A trusted key signed a host record holding a float (which the format
    forbids): 'host show' used to crash with a traceback on a ledger that
    verify called OK. Now both refuse it with bad-number, one line, exit 8."""
    from ledger.canonical import event_digest
    from ledger.keys import load_keypair
    from ledger.records import parse_record, sealed_state

    run.ok("host", "add", "lab-1", "--connector", "local", "--root", str(workspace / "lab-1"))
    db = workspace / ".chassis" / "ledger.db"
    with sqlite3.connect(db) as conn:
        seq, originator, version, topic, state = conn.execute(
            "SELECT rowid, originator_id, originator_version, topic, state FROM stored_events "
            "ORDER BY rowid DESC LIMIT 1"
        ).fetchone()
        record = parse_record(seq, originator, version, topic, state)
        body = json.loads(record.body_bytes)
        body["payload"]["settings"]["port"] = 22.5
        raw = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        key = load_keypair(next(isolation.glob("*.key")))
        digest = event_digest(raw)
        forged = sealed_state(digest, raw, key.sign(digest))
        conn.execute("UPDATE stored_events SET state=? WHERE rowid=?", (forged, seq))
    shown = run("host", "show", "lab-1")
    assert shown.exit_code == 8
    assert "bad-number" in shown.stderr and "Traceback" not in shown.stderr + shown.stdout
    assert len(shown.stderr.strip().splitlines()) == 1
    verified = run("ledger", "verify")
    assert verified.exit_code == 8 and "bad-number" in verified.stderr + verified.stdout
