"""A recorded plan runs only if it is the plan its signed intent named.

An attacker with write access to the database and no key edits the plan a
rollback will run (in the installation's stored snapshot, plain JSON): the
rollback must refuse it (exit 8, nothing appended, no host touched) or, once
snapshots are bound to the signed log, ignore it. Either way the injected
command never runs and no intent is signed over a plan its digest does not
name. Real workspaces on SQLite and PostgreSQL, real local hosts.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import msgspec
import pytest

from chassis.engine.plan import (
    ComponentPlan,
    HostPlan,
    Plan,
    PlanDigestMismatch,
    check_plan,
    recorded_form,
    verified_plan,
)
from ledger.application import Ledger
from ledger.canonical import canonical_json
from ledger.installations import Installation
from ledger.keys import KeyPair
from ledger.records import parse_record
from tests.conftest import Runner
from tests.engine.test_rollback import host_snapshot
from tests.rawstore import RawStore

DEPLOY = ("deploy", "shop", "--env", "dev", "--profile", "ternary-split-3")
STARTED = Installation.OperationStarted.TOPIC


def a_plan() -> Plan:
    component = ComponentPlan(
        name="api",
        command="python3 app.py",
        env={"MODE": "x"},
        ports={"http": 8081},
        health=None,
    )
    host = HostPlan(
        host="dev-1",
        connector="local",
        address="127.0.0.1",
        root="/srv/dev-1",
        supervisor="direct",
        groups=["all"],
        components=[component],
        steps=["upload"],
    )
    return Plan(
        app="shop",
        environment="dev",
        profile="monolith",
        label="v1",
        release_id="a" * 64,
        release_dir="r-aaaa",
        bundle_sha256="b" * 64,
        bundle_size=10,
        hosts=[host],
    )


def injected(plan: Plan) -> Plan:
    host = plan.hosts[0]
    evil = msgspec.structs.replace(host.components[0], command="touch /tmp/pwned; python3 app.py")
    return msgspec.structs.replace(plan, hosts=[msgspec.structs.replace(host, components=[evil])])


# The check itself.


def test_a_mutated_plan_is_refused_naming_installation_revision_and_digests() -> None:
    plan = a_plan()
    recorded = plan.digest()
    assert check_plan(plan, recorded, installation="shop/dev", revision=2) is plan
    evil = injected(plan)
    with pytest.raises(PlanDigestMismatch) as caught:
        check_plan(evil, recorded, installation="shop/dev", revision=2)
    message = caught.value.diagnostics()
    assert caught.value.exit_code == 8
    assert "\n" not in message
    assert "shop/dev" in message and "revision 2" in message
    assert evil.digest()[:16] in message and recorded[:16] in message


def test_the_recorded_form_is_exactly_the_plan() -> None:
    plan = a_plan()
    digest, data = recorded_form(plan)
    assert digest == plan.digest() == msgspec.convert(data, Plan).digest()


def recorded(ledger: Ledger, root_key: KeyPair, digest: str, data: dict[str, Any]) -> Installation:
    """An installation whose revision 1 signed ``digest`` and ``data``, read back."""
    installation = Installation.open("shop", "dev", actor=root_key.keyid)
    installation.start_operation(
        actor=root_key.keyid,
        op_id="op1",
        operation="deploy",
        label="v1",
        release_id=str(data["release_id"]),
        profile=str(data["profile"]),
        placement={"all": "dev-1"},
        host_components={"dev-1": ["api"]},
        plan_digest=digest,
        plan=data,
        lease_ttl_s=60,
        description="deploy v1",
        now=datetime.now(UTC),
    )
    ledger.append(installation)
    return ledger.load(Installation, installation.id)


def test_verified_plan_checks_the_signed_intent_not_the_state_beside_it(
    ledger: Ledger, root_key: KeyPair
) -> None:
    """Changing the plan and the digest beside it (as a snapshot could) is
    caught by the digest of the signed ``operation-started`` event."""
    plan = a_plan()
    digest, data = recorded_form(plan)
    loaded = recorded(ledger, root_key, digest, data)
    assert verified_plan(ledger, loaded, 1) == plan

    evil = injected(plan)
    loaded.plans["1"] = msgspec.to_builtins(evil)
    with pytest.raises(PlanDigestMismatch, match="revision 1"):
        verified_plan(ledger, loaded, 1)
    loaded.revision_entry(1)["plan_digest"] = evil.digest()
    with pytest.raises(PlanDigestMismatch, match=digest[:16]):
        verified_plan(ledger, loaded, 1)


def test_a_plan_recorded_before_a_defaulted_field_still_verifies(
    ledger: Ledger, root_key: KeyPair
) -> None:
    """Plans recorded before ``secrets`` existed were hashed without it."""
    data: dict[str, Any] = msgspec.to_builtins(a_plan())
    for host in data["hosts"]:
        for component in host["components"]:
            del component["secrets"]
    old = hashlib.sha256(b"chassis.plan.v1\x00" + canonical_json(data)).hexdigest()
    assert old != a_plan().digest()
    loaded = recorded(ledger, root_key, old, data)
    assert verified_plan(ledger, loaded, 1) == a_plan()
    loaded.plans["1"]["hosts"][0]["components"][0]["command"] = "touch /tmp/pwned"
    with pytest.raises(PlanDigestMismatch):
        verified_plan(ledger, loaded, 1)


def test_restart_is_recorded_only_when_it_is_not_the_default(
    ledger: Ledger, root_key: KeyPair
) -> None:
    """``restart`` came after plans were signed: a plan that leaves it at
    ``on-failure`` has exactly the bytes (and digest) it had before; ``never``
    is recorded, signed and read back."""
    plan = a_plan()
    data: dict[str, Any] = msgspec.to_builtins(plan)
    assert "restart" not in data["hosts"][0]["components"][0]
    digest = hashlib.sha256(b"chassis.plan.v1\x00" + canonical_json(data)).hexdigest()
    assert plan.digest() == digest
    assert plan.hosts[0].components[0].restart_mode == "on-failure"

    never = msgspec.structs.replace(plan.hosts[0].components[0], restart="never")
    stays_down = msgspec.structs.replace(
        plan, hosts=[msgspec.structs.replace(plan.hosts[0], components=[never])]
    )
    digest, recorded_data = recorded_form(stays_down)
    assert digest != plan.digest()
    assert recorded_data["hosts"][0]["components"][0]["restart"] == "never"
    loaded = recorded(ledger, root_key, digest, recorded_data)
    back = verified_plan(ledger, loaded, 1)
    assert back == stays_down and back.hosts[0].components[0].restart_mode == "never"


# The attack, end to end.


@pytest.fixture
def store(ledger_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RawStore:
    """The raw store of the ``shop`` workspace (requested first: it picks the backend)."""
    if ledger_url.startswith("postgresql"):
        monkeypatch.setenv("CHASSIS_LEDGER", ledger_url)
        return RawStore(ledger_url)
    return RawStore(f"sqlite:///{tmp_path / 'shop' / '.chassis' / 'ledger.db'}")


def snapshots_table(store: RawStore) -> str:
    if store.config.kind == "sqlite":
        return "stored_snapshots"
    return parse_qs(urlsplit(store.url).query)["schema"][0] + ".ledger_snapshots"


def snapshot_rows(store: RawStore) -> Iterator[tuple[Any, int, dict[str, Any]]]:
    with store._cursor() as c:
        rows = c.execute(
            f"SELECT originator_id, originator_version, state FROM {snapshots_table(store)}"
        ).fetchall()
    for originator, version, state in rows:
        yield originator, version, json.loads(bytes(state))


def tamper_snapshots(store: RawStore, revision: int, marker: Path, *, digest_too: bool) -> int:
    """Inject ``touch MARKER`` into every component command of ``revision``'s
    plan in every installation snapshot holding it; returns how many."""
    tampered = 0
    update = (
        f"UPDATE {snapshots_table(store)} SET state=? WHERE originator_id=? AND "
        "originator_version=?"
    )
    for originator, version, snapshot in list(snapshot_rows(store)):
        plan = snapshot.get("state", {}).get("plans", {}).get(str(revision))
        if snapshot.get("kind") != "installation" or plan is None:
            continue
        for host in plan["hosts"]:
            for component in host["components"]:
                component["command"] = f"touch {marker}; {component['command']}"
        if digest_too:
            forged = msgspec.convert(plan, Plan).digest()
            for entry in snapshot["state"]["revisions"]:
                if entry["revision"] == revision:
                    entry["plan_digest"] = forged
        with store._cursor() as c:
            c.execute(store._p(update), (json.dumps(snapshot).encode(), originator, version))
        tampered += 1
    return tampered


def signed_intents(store: RawStore) -> list[dict[str, Any]]:
    return [
        parse_record(r.seq, r.originator_id, r.version, r.topic, r.state).payload()
        for r in store.rows()
        if r.topic == STARTED
    ]


@pytest.mark.parametrize("digest_too", [False, True], ids=["plan", "plan-and-digest"])
def test_a_plan_tampered_in_a_snapshot_never_runs(
    run: Runner, store: RawStore, shop: Path, tmp_path: Path, digest_too: bool
) -> None:
    run.ok(*DEPLOY, "--release", "v1")
    v1_hosts = host_snapshot(shop)
    run.ok(*DEPLOY, "--release", "v2")
    v2_hosts = host_snapshot(shop)
    marker = tmp_path / "injected-command-ran"
    assert tamper_snapshots(store, 1, marker, digest_too=digest_too) >= 1
    rows_before = store.rows()

    result = run("rollback", "shop", "--env", "dev", "--to", "1")

    assert not marker.exists(), "the injected command ran"
    if result.exit_code == 0:
        # Snapshots bound to the signed log: the tampered one was ignored and
        # the target replayed from signed events.
        assert host_snapshot(shop) == v1_hosts
    else:
        assert result.exit_code == 8, result.output
        assert len(result.stderr.strip().splitlines()) == 1
        assert "revision 1" in result.stderr and "plan" in result.stderr
        assert store.rows() == rows_before, "nothing was appended"
        assert host_snapshot(shop) == v2_hosts, "no host was touched"
    for intent in signed_intents(store):
        plan = msgspec.convert(intent["plan"], Plan)
        assert plan.digest() == intent["plan_digest"], "an intent was signed over another plan"
