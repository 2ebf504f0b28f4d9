"""Receipts: one signed, redacted in-toto statement per completed operation,
issued after the checkpoint that covers it, with an inclusion proof."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import pytest

from ledger.keys import load_public_key
from proofs.dsse import verify_envelope
from proofs.tlog_proof import parse_proof
from tests.conftest import Runner

# Long (deploys, health windows, many processes): the parallel run starts
# these first (tests/scheduling.py).
pytestmark = pytest.mark.slow


DEPLOY = ("deploy", "shop", "--env", "dev", "--profile", "ternary-split-3")


def receipts(run: Runner) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = json.loads(run.ok("receipts", "list", "--json").stdout)
    return listed


def statement(run: Runner, digest: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(
        run.ok("receipts", "show", digest, "--statement").stdout
    )
    return body


def test_every_operation_gets_a_receipt_with_its_ledger_position(
    run: Runner, shop: Path, tmp_path: Path
) -> None:
    run.ok(*DEPLOY, "--release", "v1")
    first = receipts(run)
    assert [r["operation"] for r in first] == ["inventory"] * 3 + ["deploy"]
    deploy = first[-1]
    assert deploy["status"] == "succeeded" and deploy["label"] == "v1"

    st = statement(run, deploy["digest"])
    assert st["_type"] == "https://in-toto.io/Statement/v1"
    assert st["predicateType"] == "https://chassis.dev/receipt/v1"
    predicate = st["predicate"]
    assert predicate["operation"] == "deploy" and predicate["revision"] == 1
    assert set(predicate["hosts"]) == {"dev-1", "dev-2", "dev-3"}
    assert all(h["before"] is None for h in predicate["hosts"].values())
    assert {h["after"]["label"] for h in predicate["hosts"].values()} == {"v1"}
    assert predicate["releases"] == {"before": [], "after": ["v1"]}
    assert set(predicate["health"]) == {"dev-1", "dev-2", "dev-3"}
    release_ids = {s["digest"]["sha256"] for s in st["subject"]}
    assert release_ids == {h["after"]["release_id"] for h in predicate["hosts"].values()}
    position = predicate["ledger"]
    checkpoint = json.loads(run.ok("ledger", "checkpoint", "--json").stdout)
    assert position["tree_size"] == checkpoint["size"]
    assert position["seq"] == deploy["seq"]

    # The envelope verifies against the acting key; its inclusion proof
    # against the checkpoint names this very event.
    envelope = json.loads(run.ok("receipts", "show", deploy["digest"]).stdout)
    public = next(Path(os.environ["CHASSIS_KEYS_DIR"]).glob("*.pub"))
    key = load_public_key(public)
    verified = verify_envelope(envelope, {predicate["actor"]: key})
    assert verified.statement == st
    proof_text = run.ok("receipts", "show", deploy["digest"], "--proof").stdout
    proof = parse_proof(proof_text)
    assert proof.extra is not None and proof.extra.hex() == position["event_digest"]
    assert proof.index == position["leaf_index"]
    proof_file = tmp_path / "deploy.tlog-proof"
    proof_file.write_text(proof_text)
    run.ok("proof", "verify", str(proof_file), "--key", str(public))

    # A failed deploy, a rollback and a lease break each get theirs.
    run.ok(*DEPLOY, "--release", "v2")
    assert run(*DEPLOY, "--release", "v3").exit_code == 16
    run.ok("rollback", "shop", "--env", "dev")
    ops = [(r["operation"], r["status"], r["label"]) for r in receipts(run)[len(first) :]]
    assert ops == [
        ("deploy", "succeeded", "v2"),
        ("deploy", "failed", "v3"),
        ("rollback", "succeeded", "v1"),
    ]
    failed = statement(run, receipts(run)[-2]["digest"])["predicate"]
    assert {h["status"] for h in failed["hosts"].values()} == {"restored"}
    assert failed["releases"] == {"before": ["v2"], "after": ["v2"]}
    rolled = statement(run, receipts(run)[-1]["digest"])["predicate"]
    assert rolled["rollback_to"] == 1
    assert rolled["releases"] == {"before": ["v2"], "after": ["v1"]}
    assert json.loads(run.ok("receipts", "list", "--app", "nope", "--json").stdout) == []
    missing = run("receipts", "show", "deadbeefdeadbeef")
    assert missing.exit_code == 10


def test_receipts_carry_no_secret_from_process_output(run: Runner, shop: Path) -> None:
    """A process that prints a credential as it fails its health gate: the
    log tail reaches step records and receipts only redacted."""
    secret = "hunter2-s3cr3t"
    planted = f"postgres://app:{secret}@db.internal/shop and Authorization: Bearer {secret}"
    dist = shop.parent / "dist-secret"
    from chassis.sample_app import build_sample_release

    bundle, _ = build_sample_release(dist, "v9")
    run.ok("release", "add", "v9", "--artifact", str(bundle), "--config", "FAIL_HEALTH=1")
    run.ok(*DEPLOY, "--release", "v1")
    for host in (shop / ".chassis" / "hosts").iterdir():
        logs = host / "logs"
        logs.mkdir(exist_ok=True)
        for component in ("gateway", "api", "worker"):
            with (logs / f"{component}.log").open("a") as out:
                out.write(f"connecting to {planted}\n")
    result = run(*DEPLOY, "--release", "v9", "--json")
    assert result.exit_code == 16
    everything = [result.stdout, result.stderr, run.ok("ledger", "log", "--json").stdout]
    for r in receipts(run):
        everything.append(run.ok("receipts", "show", r["digest"], "--statement").stdout)
        envelope = json.loads(run.ok("receipts", "show", r["digest"]).stdout)
        everything.append(base64.b64decode(envelope["payload"]).decode())
    everything.append(run.ok("history", "shop", "--env", "dev", "--json").stdout)
    ledger_bytes = (shop / ".chassis" / "ledger.db").read_bytes()
    assert secret.encode() not in ledger_bytes
    for text in everything:
        assert secret not in text
    failed = statement(run, receipts(run)[-1]["digest"])["predicate"]
    assert "[redacted]" in json.dumps(failed["health"]), "the planted line was in the log tail"
