"""The installations view is a derived table: editing it cannot steer a
rollback, a prune or a replay to another signed state than the one it
names, and rebuilding the views from the verified events is the way out."""

from __future__ import annotations

import base64
import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from ledger.releases import release_dir_name
from tests.conftest import Runner
from tests.engine.test_prune import PRUNE
from tests.engine.test_rollback import DEPLOY, ROLLBACK, history, host_snapshot

# Long (deploys, health windows, many processes): the parallel run starts
# these first (tests/scheduling.py).
pytestmark = pytest.mark.slow

REPLAY_1 = ("audit", "replay", "shop", "--env", "dev", "--at", "1", "--json")


def edit_view(shop: Path, revision: int, **fields: Any) -> None:
    """Edit the installations view by direct SQL, as a database writer
    could: ``revision``'s entry now says ``fields``. A field given as a
    revision number's string ``"@N"`` takes revision N's value of it."""
    with sqlite3.connect(shop / ".chassis" / "ledger.db") as conn:
        ((view, key, doc),) = conn.execute(
            "SELECT view, key, doc FROM chassis_views WHERE view='installations'"
        ).fetchall()
        data = json.loads(doc)
        revisions = {entry["revision"]: entry for entry in data["history"]["revisions"]}
        for name, value in fields.items():
            if isinstance(value, str) and value.startswith("@"):
                value = revisions[int(value[1:])][name]
            revisions[revision][name] = value
        conn.execute(
            "UPDATE chassis_views SET doc=? WHERE view=? AND key=?",
            (json.dumps(data).encode(), view, key),
        )


def finish_where(shop: Path, *, revision: int, other: int) -> None:
    """The view now says ``revision`` finished where ``other`` did."""
    edit_view(shop, revision, version=f"@{other}")


def test_a_view_pointing_a_revision_at_another_state_is_refused(run: Runner, shop: Path) -> None:
    run.ok(*DEPLOY, "--release", "v1")
    run.ok(*DEPLOY, "--release", "v2")
    before = history(run)
    v2_hosts = host_snapshot(shop)
    db = shop / ".chassis" / "ledger.db"
    finish_where(shop, revision=1, other=2)
    events = conn_count(db)
    refused = run(*ROLLBACK, "--to", "1")
    assert refused.exit_code == 8, refused.stdout + refused.stderr
    assert "installations view" in refused.stderr and "rebuild-views" in refused.stderr
    assert conn_count(db) == events, "nothing was recorded"
    assert host_snapshot(shop) == v2_hosts, "no host changed"

    run.ok("ledger", "verify")
    folded = json.loads(run.ok("ledger", "rebuild-views", "--json").stdout)
    assert folded["installations"] > 0
    assert history(run) == before
    done = json.loads(run.ok(*ROLLBACK, "--to", "1", "--json").stdout)
    assert done["target_revision"] == 1 and done["status"] == "deployed"


def conn_count(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM stored_events").fetchone()[0])


def test_a_view_pointing_the_rollback_target_at_another_state_stops_prune(
    run: Runner, shop: Path
) -> None:
    """Prune keeps the default rollback target's releases, found through the
    view's history. Pointed at another signed state, the view made prune
    protect that state's releases and remove the real target's; now prune
    refuses, as rollback does, and removes nothing."""
    run.ok(*DEPLOY, "--release", "v1")
    run.ok(*DEPLOY, "--release", "v2")
    run.ok(*DEPLOY, "--release", "v1")  # revision 3; the rollback target is revision 2 (v2)
    listed = json.loads(run.ok("release", "list", "--json").stdout)
    releases = {r["label"]: r["release_id"] for r in listed}
    v2_dir = release_dir_name(releases["v2"])
    hosts = shop / ".chassis" / "hosts"

    def on_hosts() -> dict[str, set[str]]:
        return {h.name: set(os.listdir(h / "releases")) for h in sorted(hosts.iterdir())}

    before = on_hosts()
    assert all(v2_dir in names for names in before.values())
    run.ok("history", "shop", "--env", "dev")  # the views are folded on first read
    finish_where(shop, revision=2, other=1)
    refused = run(*PRUNE, "--keep", "0")
    assert refused.exit_code == 8, refused.stdout + refused.stderr
    assert "refusing to prune" in refused.stderr and "rebuild-views" in refused.stderr
    assert on_hosts() == before, "nothing was removed"

    run.ok("ledger", "verify")
    run.ok("ledger", "rebuild-views")
    run.ok(*PRUNE, "--keep", "0")
    assert all(v2_dir in names for names in on_hosts().values()), "the rollback target stays"


def test_a_view_pointing_a_revision_at_another_state_stops_a_replay(
    run: Runner, shop: Path
) -> None:
    """``audit replay --at N`` finds revision N's version through the view:
    edited, it showed another signed state under revision N's name."""
    run.ok(*DEPLOY, "--release", "v1")
    run.ok(*DEPLOY, "--release", "v2")
    honest = json.loads(run.ok(*REPLAY_1).stdout)
    finish_where(shop, revision=1, other=2)
    refused = run(*REPLAY_1)
    assert refused.exit_code == 8, refused.stdout + refused.stderr
    assert "refusing to replay" in refused.stderr
    run.ok("ledger", "rebuild-views")
    assert json.loads(run.ok(*REPLAY_1).stdout) == honest


@pytest.mark.parametrize(
    ("revision", "edit", "refused"),
    [
        (3, {"version": "@5", "started_version": "@5"}, True),  # rollback 5's events
        (4, {"operation": "rollback"}, True),  # a deploy
        (3, {"description": "drill approved by the CISO", "op_id": "@5"}, False),
    ],
    ids=["another-rollbacks-events", "a-deploy", "words-never-signed"],
)
def test_a_view_cannot_put_words_in_a_signed_rollback_proof(
    run: Runner, shop: Path, revision: int, edit: dict[str, Any], refused: bool
) -> None:
    """``proof rollback --revision N`` found rollback N through the view and
    signed what the view said of it: its op id, status, description and the
    versions it cites. Edited, the view made Chassis sign a proof of a
    rollback the ledger never recorded that way. Now the view only says
    where to look: a view pointing elsewhere is refused, and every word of
    the proof comes from the signed state where the rollback finished."""
    run.ok(*DEPLOY, "--release", "v1")
    run.ok(*DEPLOY, "--release", "v2")
    run.ok(*ROLLBACK, "--to", "1")  # revision 3
    run.ok(*DEPLOY, "--release", "v2")  # revision 4
    run.ok(*ROLLBACK, "--to", "3")  # revision 5
    proof = ("proof", "rollback", "shop", "--env", "dev", "--revision")
    honest = {n: rollback_claim(run.ok(*proof, str(n)).stdout) for n in (3, 5)}
    assert honest[3]["status"] == "deployed", "as its operation-finished event says"
    edit_view(shop, revision, **edit)
    answer = run(*proof, str(revision))
    if refused:
        assert answer.exit_code == 8, f"exit {answer.exit_code}: {answer.stderr[-300:]}"
        assert "installations view" in answer.stderr and "rebuild-views" in answer.stderr
        assert answer.stdout == ""
    else:
        assert answer.exit_code == 0, answer.stderr
        assert rollback_claim(answer.stdout) == honest[revision]
    run.ok("ledger", "rebuild-views")
    assert rollback_claim(run.ok(*proof, "3").stdout) == honest[3]


def rollback_claim(envelope: str) -> dict[str, Any]:
    """What a signed rollback proof says of the rollback and its target."""
    statement = json.loads(base64.b64decode(json.loads(envelope)["payload"]))
    predicate = statement["predicate"]
    return {**predicate["rollback"], "target": predicate["target"]["revision"]}
