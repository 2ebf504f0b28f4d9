"""The installations view is a derived table: editing it cannot steer a
rollback to another signed state than the one it names, and rebuilding the
views from the verified events is the way out."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from tests.conftest import Runner
from tests.engine.test_rollback import DEPLOY, ROLLBACK, history, host_snapshot


def test_a_view_pointing_a_revision_at_another_state_is_refused(
    run: Runner, shop: Path
) -> None:
    run.ok(*DEPLOY, "--release", "v1")
    run.ok(*DEPLOY, "--release", "v2")
    before = history(run)
    v2_hosts = host_snapshot(shop)
    db = shop / ".chassis" / "ledger.db"
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT view, key, doc FROM chassis_views WHERE view='installations'")
        (view, key, doc), = rows.fetchall()
        data = json.loads(doc)
        # Revision 1 now claims to have finished where revision 2 did.
        data["history"]["revisions"][0]["version"] = data["history"]["revisions"][1]["version"]
        conn.execute(
            "UPDATE chassis_views SET doc=? WHERE view=? AND key=?",
            (json.dumps(data).encode(), view, key),
        )
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
