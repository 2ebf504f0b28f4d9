"""Rollback by replay on local hosts: real processes, real files, real HTTP."""

from __future__ import annotations

import base64
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Runner
from tests.engine.test_deploy_local import get, port_of, status

# Long (deploys, health windows, many processes): the parallel run starts
# these first (tests/scheduling.py).
pytestmark = pytest.mark.slow

DEPLOY = ("deploy", "shop", "--env", "dev", "--profile", "ternary-split-3")
ROLLBACK = ("rollback", "shop", "--env", "dev")


def host_snapshot(shop: Path) -> dict[str, Any]:
    """Per host: where ``current`` points and every file under it (config included)."""
    result: dict[str, Any] = {}
    for host in sorted((shop / ".chassis" / "hosts").iterdir()):
        current = host / "current"
        if not current.exists():
            continue
        files = {
            str(p.relative_to(current.resolve())): p.read_bytes()
            for p in sorted(current.resolve().rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts
        }
        result[host.name] = {"target": current.readlink().as_posix(), "files": files}
    return result


def history(run: Runner) -> list[dict[str, Any]]:
    data = json.loads(run.ok("history", "shop", "--env", "dev", "--json").stdout)
    revisions: list[dict[str, Any]] = data["revisions"]
    return revisions


def test_rollback_skips_failed_restores_exactly_and_can_be_rolled_back(
    run: Runner, shop: Path
) -> None:
    api = port_of(shop, "api")
    run.ok(*DEPLOY, "--release", "v1")
    v1_hosts = host_snapshot(shop)
    assert run(*DEPLOY, "--release", "v3").exit_code == 16  # fails its health gate
    run.ok(*DEPLOY, "--release", "v2")
    v2_hosts = host_snapshot(shop)
    assert "v2" in get(api, "/healthz")[1]

    dry = json.loads(run.ok(*ROLLBACK, "--dry-run", "--json").stdout)
    assert dry["target_revision"] == 1 and dry["from_revision"] == 3
    assert [s["revision"] for s in dry["skipped"]] == [2], "the failed revision is skipped"
    assert {h["action"] for h in dry["hosts"]} == {"deploy"}
    assert host_snapshot(shop) == v2_hosts, "--dry-run changes nothing"

    done = run(*ROLLBACK, "--json")
    assert done.exit_code == 0, done.output
    result = json.loads(done.stdout)
    assert result["revision"] == 4 and result["status"] == "deployed"
    assert result["restored_exactly"] is True
    assert result["state_digest"] == result["target_state_digest"]
    assert "skipped revision 2" in done.stderr
    assert host_snapshot(shop) == v1_hosts, "current, files and config are v1's again"
    code, body = get(api, "/healthz")
    assert code == 200 and body.startswith("ok api v1")
    assert {r["label"] for r in status(run).values()} == {"v1"}
    revisions = {r["revision"]: r for r in history(run)}
    assert revisions[4]["description"].startswith("rollback to 1")
    assert revisions[4]["operation"] == "rollback"
    assert revisions[3]["status"] == "rolled-back"

    # Rolling back again: 3 is rolled back, 2 failed, 1 is the current state.
    refused = run(*ROLLBACK)
    assert refused.exit_code == 9
    assert "no successful revision before 4" in refused.stderr

    # Rolling back the rollback: explicitly to the revision it undid.
    undo = json.loads(run.ok(*ROLLBACK, "--to", "3", "--json").stdout)
    assert undo["revision"] == 5 and undo["restored_exactly"] is True
    assert host_snapshot(shop) == v2_hosts
    assert "v2" in get(api, "/healthz")[1]
    assert {r["revision"]: r for r in history(run)}[4]["status"] == "rolled-back"
    run.ok("ledger", "verify")
    check_audit_replay(run)


def replay_at(run: Runner, at: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        run.ok("audit", "replay", "shop", "--env", "dev", "--at", at, "--json").stdout
    )
    return data


def check_audit_replay(run: Runner) -> None:
    log_before = run.ok("ledger", "log", "--json").stdout
    one, three, four, five = (replay_at(run, str(n)) for n in (1, 3, 4, 5))
    assert one["state_digest"] == four["state_digest"] != three["state_digest"]
    assert three["state_digest"] == five["state_digest"]
    assert {h["label"] for h in one["hosts"].values()} == {"v1"}
    assert {h["label"] for h in three["hosts"].values()} == {"v2"}
    assert set(one["placement"].values()) == {"dev-1", "dev-2", "dev-3"}
    assert one["profile"] == "ternary-split-3"
    assert one["releases"]["v1"]["config_digest"]
    components = {c for h in one["hosts"].values() for c in h["components"]}
    assert components == {"gateway", "api", "worker"}
    first = replay_at(run, "v:1")
    assert first["hosts"] == {} and first["version"] == 1
    by_time = replay_at(run, four["time"])
    assert by_time["state_digest"] == four["state_digest"]
    for bad in ("99", "v:0", "yesterday", "2020-01-01T00:00:00Z"):
        result = run("audit", "replay", "shop", "--env", "dev", "--at", bad)
        assert result.exit_code == 10, (bad, result.output)
    assert run.ok("ledger", "log", "--json").stdout == log_before, "replay is read-only"


def test_rollback_bad_targets_change_nothing(run: Runner, shop: Path) -> None:
    never = run(*ROLLBACK)
    assert never.exit_code == 10 and "never been deployed" in never.stderr
    run.ok(*DEPLOY, "--release", "v1")
    alone = run(*ROLLBACK)
    assert alone.exit_code == 9 and "no successful revision before 1" in alone.stderr
    run.ok(*DEPLOY, "--release", "v2")
    log_before = run.ok("ledger", "log", "--json").stdout
    missing = run(*ROLLBACK, "--to", "99")
    assert missing.exit_code == 10 and "no revision 99" in missing.stderr
    current = run(*ROLLBACK, "--to", "2")
    assert current.exit_code == 9 and "current revision" in current.stderr
    label = run(*ROLLBACK, "--to", "v9")
    assert label.exit_code == 10
    for bundle in (shop / ".chassis" / "bundles").iterdir():
        bundle.rename(bundle.with_suffix(".moved"))
    gone = run(*ROLLBACK)
    assert gone.exit_code == 3 and "gone from the store" in gone.stderr
    assert run.ok("ledger", "log", "--json").stdout == log_before, "nothing was recorded"
    assert {r["label"] for r in status(run).values()} == {"v2"}


def test_rollback_reuploads_a_release_dir_the_host_lost(run: Runner, shop: Path) -> None:
    run.ok(*DEPLOY, "--release", "v1")
    v1_hosts = host_snapshot(shop)
    run.ok(*DEPLOY, "--release", "v2")
    for host in (shop / ".chassis" / "hosts").iterdir():
        target = (host / v1_hosts[host.name]["target"]).resolve()
        shutil.rmtree(target)
        (target.parent / f"{target.name}.tar.gz").unlink(missing_ok=True)
    run.ok(*ROLLBACK, "--to", "v1")
    assert host_snapshot(shop) == v1_hosts
    assert "v1" in get(port_of(shop, "api"), "/healthz")[1]


def test_rollback_proof_verifies_and_fails_closed(run: Runner, shop: Path, tmp_path: Path) -> None:
    run.ok(*DEPLOY, "--release", "v1")
    run.ok(*DEPLOY, "--release", "v2")
    run.ok(*ROLLBACK)
    proof = tmp_path / "rollback.dsse.json"
    run.ok("proof", "rollback", "shop", "--env", "dev", "--out", str(proof))
    envelope = json.loads(proof.read_text())
    assert envelope["payloadType"] == "application/vnd.in-toto+json"
    statement = json.loads(base64.b64decode(envelope["payload"]))
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    predicate = statement["predicate"]
    assert predicate["restored_exactly"] is True
    assert predicate["target"]["revision"] == 1 and predicate["rollback"]["revision"] == 3
    subjects = {s["digest"]["sha256"] for s in statement["subject"]}
    assert predicate["target"]["release_id"] in subjects
    assert predicate["ledger"]["verified"] is True
    assert set(predicate["health"]) == {"dev-1", "dev-2", "dev-3"}
    cited_versions = {e["version"] for e in predicate["events"]}
    assert predicate["target"]["version"] in cited_versions

    checks = json.loads(run.ok("proof", "verify", str(proof), "--json").stdout)
    assert {"signature", "cited-events", "replay"} <= {c["check"] for c in checks["checks"]}

    # Offline with the public key only.
    keys = tmp_path / "trusted"
    keys.mkdir()
    public = next(Path(os.environ["CHASSIS_KEYS_DIR"]).glob("*.pub"))
    shutil.copy(public, keys / public.name)
    run.ok("proof", "verify", str(proof), "--trusted-keys", str(keys))

    # One byte changed anywhere: the check that failed is named.
    raw = proof.read_bytes()
    payload_at = raw.index(b'"payload": "') + len(b'"payload": "') + 40
    flipped = raw[:payload_at] + bytes([raw[payload_at] ^ 0x01]) + raw[payload_at + 1 :]
    tampered = tmp_path / "tampered.json"
    tampered.write_bytes(flipped)
    failed = run("proof", "verify", str(tampered))
    assert failed.exit_code == 8 and "signature" in failed.stderr

    # An untrusted key, then a revoked one.
    empty = tmp_path / "other"
    empty.mkdir()
    run.ok("key", "new", "ops2", "--roles", "operator")
    other = next(Path(os.environ["CHASSIS_KEYS_DIR"]).glob("ops2*.pub"))
    shutil.copy(other, empty / other.name)
    untrusted = run("proof", "verify", str(proof), "--trusted-keys", str(empty))
    assert untrusted.exit_code == 8 and "unknown-key" in untrusted.stderr
    by_ops2 = tmp_path / "by-ops2.json"
    run.ok("--key", "ops2", "proof", "rollback", "shop", "--env", "dev", "--out", str(by_ops2))
    run.ok("proof", "verify", str(by_ops2))
    run.ok("key", "revoke", "ops2", "--reason", "left the team")
    revoked = run("proof", "verify", str(by_ops2))
    assert revoked.exit_code == 8 and "revoked" in revoked.stderr


def test_rollback_across_a_profile_change_retires_hosts_the_target_never_used(
    run: Runner, shop: Path
) -> None:
    mono = ("deploy", "shop", "--env", "dev", "--profile", "monolith", "--max-parallel", "1")
    run.ok(*mono, "--release", "v1")
    (mono_host,) = {r["host"] for r in status(run).values()}
    v1_hosts = host_snapshot(shop)
    run.ok(*DEPLOY, "--release", "v2", "--max-parallel", "1")
    assert len({r["host"] for r in status(run).values()}) == 3

    result = json.loads(run.ok(*ROLLBACK, "--json").stdout)
    actions = {host: outcome["action"] for host, outcome in result["hosts"].items()}
    assert actions[mono_host] == "deploy"
    assert {a for h, a in actions.items() if h != mono_host} == {"retire"}
    assert result["restored_exactly"] is True
    assert {r["host"] for r in status(run).values()} == {mono_host}
    assert host_snapshot(shop) == v1_hosts, "only the monolith host has a current link"
    assert "v1" in get(port_of(shop, "api"), "/healthz")[1]


def test_a_rollback_that_fails_its_health_gate_restores_the_pre_rollback_release(
    run: Runner, shop: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The api's FAIL_HEALTH comes from a secret reference, so the same target
    # release can be made unhealthy at rollback time.
    stack = shop / "chassis.toml"
    stack.write_text(
        stack.read_text().replace(
            "[components.api]\n",
            '[components.api]\nenv = { FAIL_HEALTH = { from_env = "SHOP_FAIL_API" } }\n',
            1,
        )
    )
    monkeypatch.setenv("SHOP_FAIL_API", "0")
    run.ok(*DEPLOY, "--release", "v1")
    run.ok(*DEPLOY, "--release", "v2")
    v2_hosts = host_snapshot(shop)
    monkeypatch.setenv("SHOP_FAIL_API", "1")
    failed = run(*ROLLBACK, "--json")
    assert failed.exit_code == 16, failed.output
    result = json.loads(failed.stdout)
    assert result["status"] == "failed"
    assert "pre-rollback release was restored" in result["description"]
    assert host_snapshot(shop) == v2_hosts
    assert "v2" in get(port_of(shop, "api"), "/healthz")[1]
    revisions = {r["revision"]: r for r in history(run)}
    assert revisions[3]["status"] == "failed" and revisions[2]["status"] == "deployed"
    monkeypatch.setenv("SHOP_FAIL_API", "0")
    again = json.loads(run.ok(*ROLLBACK, "--json").stdout)
    assert again["target_revision"] == 1 and again["restored_exactly"] is True


def test_rollback_from_monolith_back_to_three_hosts(run: Runner, shop: Path) -> None:
    run.ok(*DEPLOY, "--release", "v1")
    v1_hosts = host_snapshot(shop)
    run.ok("deploy", "shop", "--env", "dev", "--profile", "monolith", "--release", "v2")
    assert len({r["host"] for r in status(run).values()}) == 1
    result = json.loads(run.ok(*ROLLBACK, "--json").stdout)
    assert result["restored_exactly"] is True
    assert host_snapshot(shop) == v1_hosts
    assert len({r["host"] for r in status(run).values()}) == 3
    assert "v1" in get(port_of(shop, "api"), "/healthz")[1]
