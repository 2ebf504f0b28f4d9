"""Projections: incremental catch-up equals a rebuild from scratch, on every backend."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.application import Ledger
from ledger.installations import Installation
from ledger.keys import KeyPair
from projections.fold import catch_up, open_views, read_documents, rebuild
from projections.hosts import HOSTS
from projections.installations import INSTALLATIONS

_counter = itertools.count()

host_names = st.sampled_from(["h1", "h2", "h3"])
operation = st.fixed_dictionaries(
    {
        "label": st.sampled_from(["v1", "v2", "v3"]),
        "hosts": st.lists(host_names, min_size=1, max_size=3, unique=True),
        "activate": st.integers(0, 3),
        "restore": st.booleans(),
        "ending": st.sampled_from(["deployed", "failed", "noop", "break", "left-open"]),
    }
)


def run_operation(ledger: Ledger, key: KeyPair, name: str, op: dict[str, Any], views: Any) -> None:
    installation_id = Installation.id_for(Installation.key(name, "env"))
    installation = ledger.find(Installation, installation_id) or Installation.open(
        name, "env", actor=key.keyid
    )
    now = datetime.now(UTC)
    if installation.lease is not None:
        installation.break_lease(actor=key.keyid, reason="test", force=True, now=now)
    op_id = f"op{next(_counter)}"
    installation.start_operation(
        actor=key.keyid,
        op_id=op_id,
        operation="deploy",
        label=op["label"],
        release_id=op["label"] * 8,
        profile="p",
        placement={"g": op["hosts"][0]},
        host_components={h: ["api"] for h in op["hosts"]},
        plan_digest="0" * 64,
        plan={},
        lease_ttl_s=60,
        description=f"deploy {op['label']}",
        now=now,
    )
    ledger.append(installation)
    catch_up(ledger, views, INSTALLATIONS)  # a reader may look at any point
    for host in op["hosts"][: op["activate"]]:
        installation.activate_host(
            actor=key.keyid,
            op_id=op_id,
            host=host,
            release_id=op["label"] * 8,
            label=op["label"],
            components=["api"],
        )
        installation.record_step(
            actor=key.keyid, op_id=op_id, host=host, step="swap", ok=True, detail="", data={}
        )
    if op["restore"]:
        host = op["hosts"][-1]
        installation.restore_host(
            actor=key.keyid, op_id=op_id, host=host, previous=None, ok=True, detail="restored"
        )
    ledger.append(installation)
    if op["ending"] == "break":
        installation.break_lease(actor=key.keyid, reason="crashed", force=True, now=now)
    elif op["ending"] != "left-open":
        installation.finish(actor=key.keyid, op_id=op_id, status=op["ending"], description="done")
    if installation.pending_events:
        ledger.append(installation)


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(operations=st.lists(operation, min_size=1, max_size=5))
def test_rebuild_equals_incremental_catch_up(
    ledger: Ledger, root_key: KeyPair, operations: list[dict[str, Any]]
) -> None:
    views = open_views(ledger)
    name = f"app{next(_counter)}"
    for op in operations:
        run_operation(ledger, root_key, name, op, views)
        catch_up(ledger, views, INSTALLATIONS)
    incremental = read_documents(views, INSTALLATIONS)
    assert catch_up(ledger, views, INSTALLATIONS) == 0, "caught up means nothing left to apply"
    rebuild(ledger, views, INSTALLATIONS)
    assert read_documents(views, INSTALLATIONS) == incremental
    mine = [doc["history"] for doc in incremental if doc["history"]["app"] == name]
    assert len(mine) == 1
    assert [r["revision"] for r in mine[0]["revisions"]] == list(range(1, len(operations) + 1))


def test_status_rows_follow_activation_and_restore(ledger: Ledger, root_key: KeyPair) -> None:
    views = open_views(ledger)
    op = {"label": "v1", "hosts": ["h1", "h2"], "activate": 2, "restore": True, "ending": "failed"}
    run_operation(ledger, root_key, "shop", op, views)
    catch_up(ledger, views, INSTALLATIONS)
    (doc,) = [d for d in read_documents(views, INSTALLATIONS) if d["history"]["app"] == "shop"]
    rows, history = doc["status"], doc["history"]
    assert [(r["host"], r["label"]) for r in rows] == [("h1", "v1")], "h2 was restored to nothing"
    assert history["revisions"][0]["status"] == "failed" and history["lease"] is None


host_ops = st.lists(
    st.tuples(
        st.sampled_from(["register", "facts", "remove", "readd"]), host_names, st.integers(1, 64)
    ),
    min_size=1,
    max_size=12,
)


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=host_ops)
def test_hosts_view_rebuild_equals_incremental(
    ledger: Ledger, root_key: KeyPair, ops: list[tuple[str, str, int]]
) -> None:
    from ledger.hosts import Host, HostSettings

    views = open_views(ledger)
    prefix = f"x{next(_counter)}-"
    settings_ = HostSettings(environment="e", connector="local", root="/r")
    for action, host, cores in ops:
        name = prefix + host
        found = ledger.find(Host, Host.id_for(name))
        if found is None:
            ledger.append(Host.register(name, settings_, actor=root_key.keyid))
            found = ledger.load(Host, Host.id_for(name))
        if action == "facts" and not found.removed:
            found.record_facts({"cpu_logical": cores}, f"{cores:064x}", actor=root_key.keyid)
        elif action == "remove" and not found.removed:
            found.remove("gone", actor=root_key.keyid)
        elif action == "readd":
            found.reconfigure(
                HostSettings(environment="e", connector="local", root=f"/r{cores}"),
                actor=root_key.keyid,
            )
        if found.pending_events:
            ledger.append(found)
        catch_up(ledger, views, HOSTS)
    incremental = read_documents(views, HOSTS)
    rebuild(ledger, views, HOSTS)
    assert read_documents(views, HOSTS) == incremental
    assert {d["name"] for d in incremental if d["name"].startswith(prefix)} == {
        prefix + h for _, h, _ in ops
    }


def test_history_beyond_the_window_is_the_same_at_any_page_size(
    ledger: Ledger, root_key: KeyPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More revisions than the aggregate keeps (REVISION_WINDOW): revision 1
    stays the last successful one through a run of failures, beyond the
    window, until a deploy supersedes it and the same event drops it from the
    aggregate. The history keeps it as it last was, wherever pages end."""
    import projections.fold as fold

    views = open_views(ledger)
    name = f"long{next(_counter)}"
    base = {"label": "v1", "hosts": ["h1"], "restore": False}
    run_operation(ledger, root_key, name, {**base, "activate": 1, "ending": "deployed"}, views)
    for _ in range(Installation.REVISION_WINDOW + 2):
        run_operation(ledger, root_key, name, {**base, "activate": 0, "ending": "failed"}, views)
    final = {**base, "label": "v2", "activate": 1, "ending": "deployed"}
    run_operation(ledger, root_key, name, final, views)
    catch_up(ledger, views, INSTALLATIONS)
    incremental = read_documents(views, INSTALLATIONS)
    (doc,) = [d for d in incremental if d["history"]["app"] == name]
    revisions = doc["history"]["revisions"]
    assert [r["revision"] for r in revisions] == list(range(1, Installation.REVISION_WINDOW + 5))
    assert revisions[0]["status"] == "superseded"
    for page in (1, 2, 3, 5, 4096):
        monkeypatch.setattr(fold, "PAGE", page)
        rebuild(ledger, views, INSTALLATIONS)
        assert read_documents(views, INSTALLATIONS) == incremental, f"pages of {page}"
