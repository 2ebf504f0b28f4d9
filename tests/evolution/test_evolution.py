"""``chassis evolution proof`` (issue 14): every gate decided from what ran,
promotion only when every required gate passed, a proof that verifies and
fails when altered, on local hosts (every fixture) and sshd hosts.

Before this issue none of it existed: the original echoed each gate and
printed PASS. Each fixture here is a scenario whose outcome comes from the
gates; the property tests pin the promotion rule in the ledger and in the
verifier.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chassis.evolution import fixtures
from chassis.evolution import trial as trials
from chassis.evolution.fixtures import FIXTURES, run_cli
from chassis.evolution.run import DEFAULT_PORT_OFFSET
from chassis.workspace import Workspace
from ledger.errors import DomainRuleError
from ledger.evolution import GATES, EvolutionRun
from ledger.installations import process_token
from ledger.keys import load_keypair
from ledger.storage import open_ledger
from proofs.dsse import PAYLOAD_TYPE_INTOTO, sign_envelope
from proofs.evolution import check_evolution_statement, promotion_allowed
from proofs.intoto import EVOLUTION_PROOF_PREDICATE, STATEMENT_TYPE
from proofs.rollback import ProofCheckError
from tests.conftest import Runner
from tests.evolution.test_trial import candidate, free_offset, running
from tests.sshd import SSHTestHost

# Long (deploys, health windows, many processes): the parallel run starts
# these first (tests/scheduling.py).
pytestmark = pytest.mark.slow

ALL_GATES = [
    "--require-trial",
    "--require-score",
    "--require-consent",
    "--require-health-gated-swap",
    "--require-rollback-proof",
]


def chassis(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m chassis ARGS`` as a process of its own (forked warm, as
    the fixture runner's commands are)."""
    return run_cli(list(args), cwd or Path.cwd(), {**os.environ, "NO_COLOR": "1"})


# -- every fixture, on local hosts ----------------------------------------------------


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_each_fixture_is_decided_by_its_gates(name: str, tmp_path: Path) -> None:
    keep = tmp_path / "scratch"
    done = chassis("evolution", "fixture", "run", name, "--keep", str(keep), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["as_expected"], report
    expected = FIXTURES[name].expect
    if expected == "refused":
        assert report["proof"] is None and "sha256" in report["detail"]
        return
    assert report["verified"] == "verified"
    statuses = {g["gate"]: g["status"] for g in report["gates"]}
    assert set(statuses) == set(GATES)
    if expected == "promoted":
        assert set(statuses.values()) == {"PASS"}
    else:
        kind, _, gate = expected.partition(":")
        assert statuses[gate] == "FAIL"
        assert statuses["swap"] == ("FAIL" if kind == "failed" else "SKIPPED")
    # Whatever happened, production runs one release, and nothing of a trial is left.
    ws = keep / "ws"
    status = chassis("status", "--json", cwd=ws)
    if status.returncode == 0 and status.stdout.strip():
        labels = {row["label"] for row in json.loads(status.stdout) if row.get("label")}
        assert len(labels) <= 1
    assert not list((ws / ".chassis" / "hosts").glob("*/trials/*"))


def test_fixture_ports_and_their_trial_ports_sit_below_the_ephemeral_range() -> None:
    """A fixture once failed its trial with "address already in use: port 46775
    ... socket of uid 0": the kernel had picked its port from the ephemeral
    range, and its trial port (+10000) was an outgoing connection's. Ports
    below that range are taken only by listeners, and both are checked free."""
    low = fixtures._ephemeral_low()
    for _ in range(20):
        ports = fixtures._free_ports(2)
        assert len(set(ports)) == 2
        for port in ports:
            assert port >= fixtures.LOWEST_PORT
            assert port + DEFAULT_PORT_OFFSET < low


def test_the_originals_command_runs_as_written() -> None:
    done = chassis(
        "evolution", "proof", "--app", "extravaganza", "--profile", "profile:ternary-split-3",
        "--env", "prod", "--fixture", "fixture:source_level_repair_001",
        "--require-trial", "--require-citadel-consent", "--require-health-gated-swap",
        "--require-rollback-proof", "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["outcome"] == "promoted" and report["verified"] == "verified"
    required = {g["gate"] for g in report["gates"] if g["required"]}
    assert required == {"trial", "consent", "swap", "rollback-drill"}


# -- sshd hosts ----------------------------------------------------------------------


def test_over_ssh_a_candidate_is_gated_then_promoted_and_a_failing_one_blocked(
    run: Runner, lab: tuple[Path, list[SSHTestHost], dict[str, Path]]
) -> None:
    root, _hosts, roots = lab
    run.ok("deploy", "lab", "--env", "lab", "--profile", "split", "--release", "v1")
    run.ok("key", "new", "approver", "--roles", "approver")
    with candidate(root, "lab", "lab", "split", "v2") as (_, _, plan, _):
        offset = str(free_offset(plan, "0.0.0.0"))
    gated = ["evolution", "proof", "lab", "--env", "lab", "--profile", "split", "--port-offset"]
    blocked = run(*gated, offset, "--candidate", "v2", *ALL_GATES, "--json")
    assert blocked.exit_code == 20, blocked.stderr
    assert "consent did not pass" in blocked.stderr
    run.ok("--key", "approver", "consent", "grant", "lab", "--env", "lab", "--candidate", "v2")
    promoted = json.loads(run.ok(*gated, offset, "--candidate", "v2", *ALL_GATES, "--json").stdout)
    assert promoted["outcome"] == "promoted"
    assert {g["status"] for g in promoted["gates"]} == {"PASS"}
    verified = json.loads(run.ok("proof", "verify", promoted["proof"], "--json").stdout)
    assert verified["kind"] == "evolution-proof"
    rows = json.loads(run.ok("status", "lab", "--env", "lab", "--json").stdout)
    assert {r["label"] for r in rows} == {"v2"}
    run.ok("--key", "approver", "consent", "grant", "lab", "--env", "lab", "--candidate", "v3")
    failing = run(*gated, offset, "--candidate", "v3", "--require-trial", "--json")
    assert failing.exit_code == 20
    gates = {g["gate"]: g["status"] for g in json.loads(failing.stdout)["gates"]}
    assert gates["trial"] == "FAIL" and gates["swap"] == "SKIPPED"
    rows = json.loads(run.ok("status", "lab", "--env", "lab", "--json").stdout)
    assert {r["label"] for r in rows} == {"v2"}
    for host_root in roots.values():
        assert not list(host_root.glob("trials/*"))


# -- the promotion rule, as properties ------------------------------------------------

verdicts = st.dictionaries(st.sampled_from(GATES), st.booleans())
required_sets = st.sets(st.sampled_from(GATES))


@settings(max_examples=200, deadline=None)
@given(required=required_sets, passed=verdicts)
def test_the_ledger_records_no_promotion_unless_every_required_gate_passed(
    required: set[str], passed: dict[str, bool]
) -> None:
    run = EvolutionRun.begin(
        app="shop", environment="dev", candidate={"label": "v2", "release_id": "a" * 64},
        baseline={"revision": 1, "label": "v1", "release_id": "b" * 64},
        required=sorted(required), fixture=None, port_offset=10000, hosts=["dev-1"],
        holder={}, actor="k" * 64,
    )  # fmt: skip
    for gate, ok in passed.items():
        run.evaluate(gate, passed=ok, reason="", evidence={}, actor="k" * 64)
    allowed = all(passed.get(g, False) for g in required)
    if allowed:
        run.finish("promoted", revision=2, description="", actor="k" * 64)
        assert run.outcome == "promoted"
    else:
        with pytest.raises(DomainRuleError, match="required gates not passed"):
            run.finish("promoted", revision=2, description="", actor="k" * 64)
        assert run.outcome is None


def statement(gates: list[dict[str, Any]], promoted: bool) -> dict[str, Any]:
    release = "c" * 64
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": "shop/dev@v2", "digest": {"sha256": release}}],
        "predicateType": EVOLUTION_PROOF_PREDICATE,
        "predicate": {
            "ledger": {"verified": True},
            "run": {
                "app": "shop",
                "environment": "dev",
                "candidate": {"label": "v2", "release_id": release},
            },
            "gates": gates,
            "promoted": promoted,
        },
    }


@settings(max_examples=300, deadline=None)
@given(
    statuses=st.fixed_dictionaries(
        {g: st.sampled_from(["PASS", "FAIL", "SKIPPED"]) for g in GATES}
    ),
    required=required_sets,
    promoted=st.booleans(),
)
def test_the_verifier_accepts_promotion_only_when_every_required_gate_and_the_swap_passed(
    statuses: dict[str, str], required: set[str], promoted: bool
) -> None:
    gates = [
        {"gate": g, "required": g in required, "status": s, "verdict": {"seq": 1}}
        for g, s in statuses.items()
    ]
    rule = all(statuses[g] == "PASS" for g in required) and statuses["swap"] == "PASS"
    assert promotion_allowed(gates) == rule
    if promoted == rule:
        check_evolution_statement(statement(gates, promoted))
    else:
        with pytest.raises(ProofCheckError, match="promotion-rule"):
            check_evolution_statement(statement(gates, promoted))


# -- a proof altered after signing -------------------------------------------------


@pytest.fixture(scope="module")
def kept(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One promoted fixture run, kept: its workspace, keys and proof."""
    keep = tmp_path_factory.mktemp("kept") / "scratch"
    done = chassis("evolution", "fixture", "run", "source_level_repair_001", "--keep", str(keep))
    assert done.returncode == 0, done.stderr
    return keep


def resigned(keep: Path, change: Any) -> Path:
    """The kept proof with ``change`` applied to its statement, signed again
    by the key that signed it (an insider rewriting history)."""
    envelope = json.loads((keep / "source_level_repair_001.dsse.json").read_text())
    body = json.loads(base64.b64decode(envelope["payload"]))
    change(body)
    signer = load_keypair(keep / "keys" / "requester.key")
    out = keep / "altered.dsse.json"
    payload = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    out.write_text(json.dumps(sign_envelope(payload, PAYLOAD_TYPE_INTOTO, signer)))
    return out


def verify_kept(keep: Path, proof: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CHASSIS_KEYS_DIR": str(keep / "keys"), "NO_COLOR": "1"}
    return run_cli(["proof", "verify", str(proof), "--json"], keep / "ws", env)


def relabel(body: dict[str, Any], label: str) -> None:
    """The candidate claimed under another label, its subject named to match."""
    body["predicate"]["run"]["candidate"]["label"] = label
    body["subject"][0]["name"] = body["subject"][0]["name"].rsplit("@", 1)[0] + "@" + label


def _gate(body: dict[str, Any], name: str) -> dict[str, Any]:
    return next(g for g in body["predicate"]["gates"] if g["gate"] == name)


@pytest.mark.parametrize(
    ("change", "check"),
    [
        (lambda b: _gate(b, "consent").update(required=False), "verdict"),
        (lambda b: _gate(b, "score").update(verdict=_gate(b, "trial")["verdict"]), "verdict"),
        (lambda b: b["predicate"]["run"].update(requested_by="0" * 64), "run"),
        (lambda b: relabel(b, "v9"), "run"),  # subject and candidate alike
        (lambda b: b["subject"].append({"name": "x", "digest": {"sha256": "f" * 64}}), "subject"),
        (lambda b: b["subject"][0].update(name=b["subject"][0]["name"] + "-rc"), "subject"),
        (lambda b: b["predicate"]["run"]["started"].update(seq="x"), "run"),
        (lambda b: _gate(b, "consent").update(evidence=[["not", "an", "event"]]), "consent"),
        (lambda b: _gate(b, "trial").update(verdict=None), "gates"),
    ],
    ids=[
        "required-flag",
        "verdict-of-another-gate",
        "requester",
        "candidate",
        "subject-added",
        "subject-renamed",
        "seq-not-a-number",
        "evidence-not-an-event",
        "verdict-null",
    ],
)
def test_a_proof_altered_and_signed_again_fails_against_the_ledger(
    kept: Path, change: Any, check: str
) -> None:
    assert verify_kept(kept, kept / "source_level_repair_001.dsse.json").returncode == 0
    failed = verify_kept(kept, resigned(kept, change))
    assert failed.returncode == 8, failed.stderr
    assert json.loads(failed.stdout)["check"] == check


def test_a_failed_gate_cannot_be_claimed_passed(kept: Path) -> None:
    def claim(body: dict[str, Any]) -> None:
        _gate(body, "consent")["status"] = "FAIL"  # the ledger says PASS
        body["predicate"]["promoted"] = False

    failed = verify_kept(kept, resigned(kept, claim))
    assert failed.returncode == 8 and json.loads(failed.stdout)["check"] == "verdict"


# -- consent -----------------------------------------------------------------------


def test_consent_is_an_approvers_signed_grant_that_can_be_revoked(run: Runner, shop: Path) -> None:
    run.ok("key", "new", "alice", "--roles", "approver")
    run.ok("key", "new", "bob", "--roles", "operator")
    refused = run("--key", "bob", "consent", "grant", "shop", "--env", "dev", "--candidate", "v2")
    assert refused.exit_code == 6 and "approver" in refused.stderr
    assert run("consent", "grant", "--env", "dev", "--candidate", "v9").exit_code == 10
    bad = run(
        "--key", "alice", "consent", "grant", "--env", "dev", "--candidate", "v2", "--ttl", "5y"
    )
    assert bad.exit_code == 2 and "--ttl" in bad.stderr
    granted = json.loads(
        run.ok(
            "--key", "alice", "consent", "grant", "--env", "dev", "--candidate", "v2",
            "--ttl", "2h", "--reason", "reviewed", "--json",
        ).stdout
    )  # fmt: skip
    listed = json.loads(run.ok("consent", "list", "--env", "dev", "--json").stdout)
    assert [c["id"] for c in listed] == [granted["id"]] and listed[0]["standing"]
    run.ok(
        "--key", "alice", "consent", "revoke", granted["id"][:12], "--env", "dev", "--reason", "r"
    )
    again = run(
        "--key", "alice", "consent", "revoke", granted["id"][:12], "--env", "dev", "--reason", "r"
    )
    assert again.exit_code == 9
    listed = json.loads(run.ok("consent", "list", "--env", "dev", "--json").stdout)
    assert not listed[0]["standing"] and "revoked" in listed[0]["why_not"]
    run.ok("ledger", "verify")


# -- crash recovery ----------------------------------------------------------------


def dead_holder() -> dict[str, Any]:
    gone = subprocess.Popen(["true"])
    gone.wait()
    boot = process_token(os.getpid()).partition(":")[0]
    return {"hostname": socket.gethostname(), "pid": gone.pid, "process": f"{boot}:1"}


def test_recover_sweeps_the_trial_of_a_run_whose_process_died(run: Runner, shop: Path) -> None:
    run.ok("deploy", "shop", "--env", "dev", "--profile", "ternary-split-3", "--release", "v1")
    with candidate(shop, "shop", "dev", "ternary-split-3", "v2") as (ledger, ws, plan, bundle):
        crashed = EvolutionRun.begin(
            app="shop", environment="dev", candidate={"label": "v2", "release_id": plan.release_id},
            baseline={"revision": 1, "label": "v1", "release_id": "b" * 64}, required=list(GATES),
            fixture=None, port_offset=free_offset(plan), hosts=[h.host for h in plan.hosts],
            holder=dead_holder(), actor=ledger.signer.keyid if ledger.signer else "",
        )  # fmt: skip
        ledger.append(crashed)
        result = trials.run_trial(
            ledger, ws, plan, slot=crashed.slot, port_offset=crashed.port_offset,
            record=lambda *_: None, progress=None, bundle=bundle,
        )  # fmt: skip
        assert result.passed
        slot_roots = [trials.slot_root(h.root, crashed.slot) for h in plan.hosts]
        assert all(running(root) for root in slot_roots)
    recovered = json.loads(run.ok("recover", "shop", "--env", "dev", "--json").stdout)
    assert [r["action"] for r in recovered["evolution_runs"]] == ["aborted"]
    for root in slot_roots:
        assert not Path(root).exists()
    ws = Workspace.find(shop)
    reader = open_ledger(ws.storage(), None)
    try:
        after = reader.load(EvolutionRun, crashed.id)
    finally:
        reader.close()
    assert after.outcome == "aborted"
    assert {g: v["passed"] for g, v in after.gates.items()} == dict.fromkeys(GATES, False)
    assert [s["step"] for s in after.trial_steps].count("teardown") == 3
    run.ok("ledger", "verify")


@pytest.mark.parametrize(
    ("score", "problem"),
    [
        ('{ command = "", metric = "x" }', "score.command: expected a command"),
        ('{ command = "true", metric = " " }', "score.metric: expected the name of a metric"),
        ('{ command = "true", metric = "x", max_regression = -0.5 }', "expected 0 or more"),
        (
            '{ command = "true", metric = "x", better = "sideways" }',
            "expected one of lower, higher",
        ),
        (
            '{ command = "true", metric = "x", timeout_ms = 0 }',
            "score.timeout_ms: expected 1-600000",
        ),
        ('{ command = "true", metric = "x", max = nan }', "score.max: expected a finite number"),
    ],
)
def test_a_score_that_could_never_decide_is_refused_by_the_stack_file(
    run: Runner, workspace: Path, score: str, problem: str
) -> None:
    (workspace / "chassis.toml").write_text(
        f'[app]\nname = "shop"\n\n[components.web]\ncommand = "true"\nscore = {score}\n'
    )
    refused = run("stack", "validate")
    assert refused.exit_code == 3 and problem in refused.stderr, refused.stderr


def test_type_prefixes_are_taken_where_a_name_is() -> None:
    from chassis.references import strip_references

    assert strip_references(
        ["evolution", "proof", "--profile", "profile:split", "--fixture=fixture:f1", "host:h1"]
    ) == ["evolution", "proof", "--profile", "split", "--fixture=f1", "h1"]
    assert strip_references(["--runtime", "runtime:crucible_bumblebee:cuda-small"]) == [
        "--runtime",
        "cuda-small",
    ]
    kept = ["deploy", "--reason", "host:h1", "--profile", "host:x", "model:hf:org/m", "--", "app:a"]
    assert strip_references(kept) == kept


def test_a_production_drill_rolls_back_proves_it_and_promotes_again(
    run: Runner, shop: Path
) -> None:
    """``--drill production``: after the swap, a real rollback to what ran
    before (its rollback proof in the gate's evidence), then the candidate
    again; production ends on the candidate."""
    run.ok("deploy", "shop", "--env", "dev", "--profile", "ternary-split-3", "--release", "v1")
    with candidate(shop, "shop", "dev", "ternary-split-3", "v2") as (_, _, plan, _):
        offset = str(free_offset(plan))
    done = json.loads(
        run.ok(
            "evolution", "proof", "shop", "--env", "dev", "--profile", "ternary-split-3",
            "--candidate", "v2", "--require-rollback-proof", "--drill", "production",
            "--port-offset", offset, "--json",
        ).stdout
    )  # fmt: skip
    assert done["outcome"] == "promoted", done
    drill = next(g for g in done["gates"] if g["gate"] == "rollback-drill")
    assert drill["status"] == "PASS" and "rolled back to v1" in drill["reason"]
    history = json.loads(run.ok("history", "shop", "--env", "dev", "--json").stdout)
    assert [(r["operation"], r["label"]) for r in history["revisions"]] == [
        ("deploy", "v1"),
        ("deploy", "v2"),
        ("rollback", "v1"),
        ("deploy", "v2"),
    ]
    rows = json.loads(run.ok("status", "shop", "--env", "dev", "--json").stdout)
    assert {r["label"] for r in rows} == {"v2"}
    run.ok("proof", "verify", done["proof"])
