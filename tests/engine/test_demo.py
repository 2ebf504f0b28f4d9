"""`chassis demo` (what `make demo` runs): v1, v2, a failing v3 restored to v2,
then a rollback to v1 with its proof, verified."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapters.connectors.local import LocalConnector
from adapters.supervisors.direct import DirectSupervisor
from tests.conftest import Runner

# Long (deploys, health windows, many processes): the parallel run starts
# these first (tests/scheduling.py).
pytestmark = pytest.mark.slow


def test_demo_end_to_end_leaves_nothing_running(run: Runner, tmp_path: Path) -> None:
    target = tmp_path / "demo"
    result = run.ok("demo", "--workspace", str(target))
    out = result.stdout
    assert "revision 1: deployed: deploy v1" in out
    assert "revision 2: deployed: deploy v2" in out
    assert "revision 3: failed: deploy v3 failed" in out and "previous release restored" in out
    assert "ledger verified" in out and f"Everything lives in {target}" in out
    history = json.loads(
        run.ok("--workspace", str(target), "history", "demo", "--env", "dev", "--json").stdout
    )
    assert [(r["label"], r["status"]) for r in history["revisions"]] == [
        ("v1", "superseded"),
        ("v2", "rolled-back"),
        ("v3", "failed"),
        ("v1", "superseded"),
        ("v2", "deployed"),
    ]
    assert "revision 4: deployed: rollback to 1 (v1)" in out
    assert "equals revision 1's" in out
    assert "verified cited-events" in out and "verified replay" in out
    # Last, v2 again, only through every evolution gate, and proven.
    assert "promoted: v2 (revision 5)" in out
    for gate in ("trial", "score", "rollback-drill", "consent", "swap"):
        assert f"gate {gate}: PASS" in out
    assert "verified promotion-rule" in out and "verified verdicts" in out
    status = json.loads(run.ok("--workspace", str(target), "status", "--json").stdout)
    assert {r["label"] for r in status} == {"v2"}
    for proof in ("rollback-proof.dsse.json", "evolution-proof.dsse.json"):
        run.ok("--workspace", str(target), "proof", "verify", str(target / proof))
    assert "checkpoint: tree size" in out
    assert "receipts: inventory, inventory, inventory, deploy" in out
    listed = json.loads(run.ok("--workspace", str(target), "receipts", "list", "--json").stdout)
    assert [r["operation"] for r in listed if r["operation"] != "inventory"] == [
        "deploy",
        "deploy",
        "deploy",
        "rollback",
        "deploy",
    ]
    verified = json.loads(run.ok("--workspace", str(target), "ledger", "verify", "--json").stdout)
    assert verified["checkpoints"]["checked"], verified
    for host in ("dev-1", "dev-2", "dev-3"):
        supervisor = DirectSupervisor(
            LocalConnector(host), str(target / ".chassis" / "hosts" / host)
        )
        for component in ("gateway", "api", "worker"):
            assert not supervisor.state(component).running, (host, component)
    run.ok("--workspace", str(target), "ledger", "verify")
