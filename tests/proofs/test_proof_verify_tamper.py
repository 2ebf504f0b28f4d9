"""``chassis proof verify`` with a workspace verifies the ledger it reads.

Trust, the cited events and the replays all come from the workspace's
ledger, so a proof checked against a tampered ledger must fail closed, naming
the ``ledger`` check. And the target a proof states must be the one the
rollback's signed intent fixed, read from the ledger. Real workspaces on
SQLite and PostgreSQL, tampered with by direct SQL as an attacker with
database access (and no key) would.
"""

from __future__ import annotations

import base64
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ledger.keys import load_keypair
from ledger.records import parse_record, sealed_state
from proofs.dsse import PAYLOAD_TYPE_INTOTO, sign_envelope
from proofs.intoto import statement_bytes
from tests.conftest import POSTGRES_URL, Runner
from tests.engine.conftest import build_shop, stop_shop
from tests.engine.conftest import shop as example_shop  # noqa: F401  (a fixture: v1..v3)
from tests.rawstore import RawStore

DEPLOY = ("deploy", "shop", "--env", "dev", "--profile", "ternary-split-3")


@pytest.fixture
def store(ledger_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RawStore:
    """The raw store of the ``shop`` workspace (requested first: it picks the backend)."""
    if ledger_url.startswith("postgresql"):
        monkeypatch.setenv("CHASSIS_LEDGER", ledger_url)
        return RawStore(ledger_url)
    return RawStore(f"sqlite:///{tmp_path / 'shop' / '.chassis' / 'ledger.db'}")


@pytest.fixture
def proof(run: Runner, store: RawStore, tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    """A rollback (to v1, from v2) and its proof, with a second key trusted:
    for the tests that tamper with the ledger itself."""
    request.getfixturevalue("example_shop")  # after ``store`` has picked the backend
    return roll_back_and_prove(run, tmp_path)


def roll_back_and_prove(run: Runner, where: Path) -> Path:
    run.ok("key", "new", "ops2", "--roles", "operator")
    run.ok(*DEPLOY, "--release", "v1")
    run.ok(*DEPLOY, "--release", "v2")
    run.ok("rollback", "shop", "--env", "dev")
    path = where / "rollback.dsse.json"
    run.ok("proof", "rollback", "shop", "--env", "dev", "--out", str(path))
    return path


@dataclass(frozen=True)
class Built:
    """One workspace with a rollback and its proof, shared by the tests that
    only read its ledger (they forge proofs, never rows): building it is a
    deploy, a second deploy and a rollback on three hosts."""

    proof: Path
    keys: Path
    config: Path
    ledger: str | None


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def built(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Built]:
    base = tmp_path_factory.mktemp("built")
    with pytest.MonkeyPatch.context() as mp:
        for name in ("CHASSIS_LEDGER", "CHASSIS_KEY", "CHASSIS_WORKSPACE", "CHASSIS_SIGNING_KEY"):
            mp.delenv(name, raising=False)
        mp.setenv("CHASSIS_KEYS_DIR", str(base / "keys"))
        mp.setenv("XDG_CONFIG_HOME", str(base / "config"))
        mp.setenv("NO_COLOR", "1")
        ledger = None
        if request.param == "postgres":
            request.getfixturevalue("postgres_available")
            schema = f"t_{uuid.uuid4().hex[:12]}"
            ledger = f"{POSTGRES_URL}?schema={schema}"
            mp.setenv("CHASSIS_LEDGER", ledger)
        run = Runner()
        root = build_shop(run, base, mp)
        try:
            yield Built(roll_back_and_prove(run, base), base / "keys", base / "config", ledger)
        finally:
            stop_shop(root)
            if ledger is not None:
                import psycopg

                with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
                    conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


@pytest.fixture
def signed_proof(built: Built, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The shared workspace's proof, with its keys, config and ledger in effect."""
    monkeypatch.setenv("CHASSIS_KEYS_DIR", str(built.keys))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(built.config))
    if built.ledger is not None:
        monkeypatch.setenv("CHASSIS_LEDGER", built.ledger)
    monkeypatch.chdir(built.proof.parent / "shop")
    return built.proof


def failed_check(run: Runner, *args: str) -> tuple[str, str]:
    """(check, detail) of a verification that must fail with exit 8."""
    result = run("proof", "verify", *args, "--json")
    assert result.exit_code == 8, result.output
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    assert data["ok"] is False
    return str(data["check"]), str(data["detail"])


def resign(body: dict[str, Any], where: Path) -> Path:
    """``body`` signed again by the workspace's own (trusted) key, at ``where``."""
    key_file = next(
        p
        for p in Path(os.environ["CHASSIS_KEYS_DIR"]).iterdir()
        if p.suffix == ".key" and not p.name.startswith("ops2")
    )
    signed = sign_envelope(statement_bytes(body), PAYLOAD_TYPE_INTOTO, load_keypair(key_file))
    where.write_text(json.dumps(signed))
    return where


def zero_signature(store: RawStore, topic_prefix: str) -> int:
    """Replace the signature of the last row under ``topic_prefix`` by 64 zero bytes."""
    row = [r for r in store.rows() if r.topic.startswith(topic_prefix)][-1]
    record = parse_record(row.seq, row.originator_id, row.version, row.topic, row.state)
    store.set_state(row.seq, sealed_state(record.digest, record.body_bytes, bytes(64)))
    return row.seq


def test_an_untampered_ledger_verifies_first(run: Runner, signed_proof: Path) -> None:
    result = json.loads(run.ok("proof", "verify", str(signed_proof), "--json").stdout)
    names = [c["check"] for c in result["checks"]]
    assert names[0] == "ledger", "the ledger is verified before anything is read from it"
    assert {"signature", "cited-events", "intent", "outcome", "replay"} <= set(names)
    replay = next(c["detail"] for c in result["checks"] if c["check"] == "replay")
    assert "signature" in replay


def test_a_trust_row_with_a_zero_signature_fails_the_ledger_check(
    run: Runner, store: RawStore, proof: Path, tmp_path: Path
) -> None:
    run.ok("ledger", "verify")
    run.ok("proof", "verify", str(proof))
    seq = zero_signature(store, "chassis.trust.")
    assert run("ledger", "verify").exit_code == 8

    check, detail = failed_check(run, str(proof))
    assert check == "ledger" and f"seq {seq}" in detail
    human = run("proof", "verify", str(proof))
    assert human.exit_code == 8 and "proof check ledger failed" in human.stderr

    # Pinning the signer's key does not skip the workspace's ledger.
    keys = tmp_path / "trusted"
    keys.mkdir()
    public = next(Path(os.environ["CHASSIS_KEYS_DIR"]).glob("*.pub"))
    (keys / public.name).write_bytes(public.read_bytes())
    assert failed_check(run, str(proof), "--trusted-keys", str(keys), "--workspace")[0] == "ledger"
    # Offline, only the key and the statement are checked: no ledger, no claim about it.
    run.ok("proof", "verify", str(proof), "--trusted-keys", str(keys))


def test_an_installation_row_with_a_zero_signature_fails_the_ledger_check(
    run: Runner, store: RawStore, proof: Path
) -> None:
    zero_signature(store, "chassis.installation.rollback-targeted.")
    assert failed_check(run, str(proof))[0] == "ledger"


def test_the_target_must_be_the_one_the_signed_intent_fixed(
    run: Runner, signed_proof: Path, tmp_path: Path
) -> None:
    """A proof (signed by a trusted key) whose target is another version with
    the same state: consistent in itself, and replaying gives its digests,
    but the rollback's intent event targeted another version."""
    envelope = json.loads(signed_proof.read_text())
    body = json.loads(base64.b64decode(envelope["payload"]))
    target, rollback = body["predicate"]["target"], body["predicate"]["rollback"]
    assert target["state_digest"] == body["predicate"]["post_state_digest"]
    target["version"] = rollback["finished_version"]
    check, detail = failed_check(run, str(resign(body, tmp_path / "forged.dsse.json")))
    assert check == "intent" and "target_version" in detail


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("status", "failed"),
        ("description", "drill approved by the CISO"),
        ("revision", 2),
        ("op_id", "0" * 32),
        ("from_revision", 1),
    ],
)
def test_what_a_proof_says_of_the_rollback_is_what_its_events_recorded(
    run: Runner, signed_proof: Path, tmp_path: Path, field: str, value: object
) -> None:
    """A proof re-signed by a trusted key, claiming of the rollback what the
    ledger never recorded (another outcome, words, revision, operation or
    the revision it undid): its target and replays are untouched, so only
    comparing each claim with the signed events the proof cites catches it."""
    envelope = json.loads(signed_proof.read_text())
    body = json.loads(base64.b64decode(envelope["payload"]))
    assert body["predicate"]["rollback"][field] != value
    body["predicate"]["rollback"][field] = value
    check, detail = failed_check(run, str(resign(body, tmp_path / "forged.dsse.json")))
    assert check in ("intent", "outcome") and field in detail, (check, detail)


def test_a_proof_stating_the_status_the_rollback_had_later_still_verifies(
    run: Runner, signed_proof: Path, tmp_path: Path
) -> None:
    """Proofs issued before the ``outcome`` check stated the rollback's status
    as of issue ("superseded" once another deploy replaced it): a rollback
    recorded deployed may say so; one recorded failed may not."""
    envelope = json.loads(signed_proof.read_text())
    body = json.loads(base64.b64decode(envelope["payload"]))
    assert body["predicate"]["rollback"]["status"] == "deployed"
    for status in ("superseded", "rolled-back"):
        body["predicate"]["rollback"]["status"] = status
        run.ok("proof", "verify", str(resign(body, tmp_path / f"{status}.dsse.json")))


def other_release(body: dict[str, Any]) -> tuple[str, str]:
    """A release the target never ran: a made-up id under the label of the
    release the rollback left (v2; the target is v1)."""
    assert body["predicate"]["target"]["label"] == "v1"
    return "f" * 64, "v2"


@pytest.mark.parametrize(
    "forgery", ["host-runs-another-release", "subject-added", "subject-swapped", "target-release"]
)
def test_what_a_proof_says_the_target_runs_is_what_the_ledger_recorded(
    run: Runner, signed_proof: Path, tmp_path: Path, forgery: str
) -> None:
    """The subject (the release digests a consumer reads first), the target
    state the statement shows and the target's release were the statement's
    own words: re-signed by a trusted key with another release, the proof
    verified. Now the shown state must have the state digest, the subjects
    must be exactly the releases it runs, and the target's release is read
    from the replayed state."""
    envelope = json.loads(signed_proof.read_text())
    body = json.loads(base64.b64decode(envelope["payload"]))
    target = body["predicate"]["target"]
    release_id, label = other_release(body)
    name = f"shop/dev@{label}"
    expected_check = {
        "host-runs-another-release": "target-state",
        "subject-added": "subject",
        "subject-swapped": "subject",
        "target-release": "target-release",
    }[forgery]
    if forgery == "host-runs-another-release":
        host = sorted(target["state"]["hosts"])[0]
        target["state"]["hosts"][host]["release_id"] = release_id
        body["subject"].append({"name": name, "digest": {"sha256": release_id}})
    elif forgery == "subject-added":
        body["subject"].append({"name": name, "digest": {"sha256": release_id}})
    elif forgery == "subject-swapped":
        body["subject"][0]["name"] = name
    else:  # the target revision claimed to be another release, subjects to match
        target["release_id"], target["label"] = release_id, label
        body["subject"].append({"name": name, "digest": {"sha256": release_id}})
    check, detail = failed_check(run, str(resign(body, tmp_path / "forged.dsse.json")))
    assert check == expected_check, (check, detail)
    # Offline, with only the signer's key, the statement-level checks still hold.
    if expected_check != "target-release":
        keys = tmp_path / "trusted"
        keys.mkdir()
        for public in Path(os.environ["CHASSIS_KEYS_DIR"]).glob("*.pub"):
            (keys / public.name).write_bytes(public.read_bytes())
        offline = run(
            "proof",
            "verify",
            str(tmp_path / "forged.dsse.json"),
            "--trusted-keys",
            str(keys),
            "--json",
        )
        assert offline.exit_code == 8, offline.stdout
        assert json.loads(offline.stdout)["check"] == expected_check


@pytest.mark.parametrize(
    "mangle",
    [
        lambda p: p["events"].append({"seq": "x"}),
        lambda p: p["events"].append(["not", "an", "object"]),
        lambda p: p["events"][0].update(version=None),
        lambda p: p["rollback"].update(started_version="one"),
        lambda p: p["target"].update(version=[]),
        lambda p: p["installation"].update(id=None),
    ],
    ids=[
        "seq-text",
        "event-list",
        "version-null",
        "started-text",
        "target-version-list",
        "id-null",
    ],
)
def test_a_malformed_proof_fails_a_named_check_against_the_ledger(
    run: Runner, signed_proof: Path, tmp_path: Path, mangle: Any
) -> None:
    """Re-signed with fields of the wrong type, a proof fails one named
    check with exit 8 and one line: the verifier never crashes on it."""
    body = json.loads(base64.b64decode(json.loads(signed_proof.read_text())["payload"]))
    mangle(body["predicate"])
    check, detail = failed_check(run, str(resign(body, tmp_path / "mangled.dsse.json")))
    assert check and detail
