"""Real OS processes appending to one aggregate at once, on every backend."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from ledger.application import Ledger
from ledger.keys import KeyPair
from proofs.chain import verify_ledger
from tests.notes import Notebook

REPO = Path(__file__).resolve().parents[2]


def spawn(args: list[str]) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.concurrent_writer", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def results(processes: list[subprocess.Popen[str]]) -> list[dict[str, int]]:
    out = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr
        out.append(json.loads(stdout))
    return out


def test_retrying_writers_all_land_in_one_valid_chain(
    ledger: Ledger, ledger_url: str, root_key: KeyPair, isolation: Path, tmp_path: Path
) -> None:
    ledger.append(Notebook.open("shared", keyid=root_key.keyid))
    writers, each = 4, 15
    processes = [
        spawn(
            [
                ledger_url,
                str(isolation / "root.key"),
                f"w{i}",
                str(each),
                "retry",
                str(tmp_path),
                str(writers),
            ]
        )
        for i in range(writers)
    ]
    assert sum(r["written"] for r in results(processes)) == writers * each

    book = ledger.load(Notebook, Notebook.id_for("shared"))
    # Every note, plus one signed snapshot binding each time the stream
    # crossed a multiple of SNAPSHOT_EVERY (the binding holds no note).
    events = [e for _, e in ledger.verified_events(book.id)]
    bindings = sum(isinstance(e, Notebook.SnapshotBound) for e in events)
    assert bindings == book.version // Notebook.SNAPSHOT_EVERY
    assert book.version == 1 + writers * each + bindings
    assert len(book.lines) == writers * each
    for i in range(writers):  # every writer's notes, each in its own order
        mine = [line for line in book.lines if line.startswith(f"w{i}:")]
        assert mine == [f"w{i}:{n}" for n in range(each)]
    assert verify_ledger(ledger.scan()).events == 2 + writers * each + bindings


def test_non_retryable_writers_one_wins_the_rest_get_a_conflict(
    ledger: Ledger, ledger_url: str, root_key: KeyPair, isolation: Path, tmp_path: Path
) -> None:
    ledger.append(Notebook.open("shared", keyid=root_key.keyid))
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    writers = 3
    processes = [
        spawn(
            [
                ledger_url,
                str(isolation / "root.key"),
                f"w{i}",
                "1",
                "once",
                str(barrier),
                str(writers),
            ]
        )
        for i in range(writers)
    ]
    outcome = results(processes)
    assert sorted(r["written"] for r in outcome) == [0, 0, 1]
    assert sum(r["conflicts"] for r in outcome) == writers - 1
    book = ledger.load(Notebook, Notebook.id_for("shared"))
    assert book.version == 2 and len(book.lines) == 1
    assert verify_ledger(ledger.scan()).events == 3


def test_concurrent_cli_key_creation(workspace: Path) -> None:
    """Four real 'chassis key new' processes against one SQLite workspace."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "chassis", "key", "new", f"k{i}", "--roles", "operator"],
            cwd=workspace,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    for process in processes:
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr
    listed = subprocess.run(
        [sys.executable, "-m", "chassis", "key", "list", "--json"],
        cwd=workspace,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    names = sorted(k["name"] for k in json.loads(listed.stdout))
    assert names == ["k0", "k1", "k2", "k3", "shop-root"]
    verified = subprocess.run(
        [sys.executable, "-m", "chassis", "ledger", "verify", "--json"],
        cwd=workspace,
        env=env,
        capture_output=True,
        text=True,
    )
    assert verified.returncode == 0, verified.stderr
    assert json.loads(verified.stdout)["events"] == 5
