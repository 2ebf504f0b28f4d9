"""Issuing a backlog of receipts (issue 17, item 4): the aggregates are folded
forward once through the backlog and its events read on the word of the
checkpoint just signed over them, and every receipt is byte for byte the one
a fresh load per receipt with every event verified gives (SQLite and
PostgreSQL)."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import chassis.receipts as receipts
from chassis.aftermath import log_position
from chassis.checkpoints import checkpoint_now
from chassis.receipts import ReceiptStore, issue_pending
from chassis.workspace import Workspace
from ledger.application import Ledger
from ledger.hosts import Host, HostSettings
from ledger.installations import Installation
from ledger.keys import KeyPair
from ledger.mapper import SealingMapper
from ledger.storage import StorageConfig, open_ledger
from ledger.tables import SideTables
from proofs.vouch import CheckpointVouch


def _workspace(path: Path, root: KeyPair) -> Workspace:
    state = path / ".chassis"
    state.mkdir(parents=True)
    settings = {"name": "test", "root_keyid": root.keyid, "default_key": root.name}
    (state / "workspace.json").write_text(json.dumps(settings))
    return Workspace(path)


_ops = itertools.count()


def _operate(ledger: Ledger, key: KeyPair, app: str, n: int, ending: str) -> None:
    """One operation the way the engine records it: intent, per-host steps
    (one failing now and then), activations or a restore, then its end."""
    installation_id = Installation.id_for(Installation.key(app, "env"))
    installation = ledger.find(Installation, installation_id) or Installation.open(
        app, "env", actor=key.keyid
    )
    now = datetime.now(UTC)
    if installation.lease is not None:
        installation.break_lease(actor=key.keyid, reason="stuck", force=True, now=now)
    hosts = ["h1", "h2", "h3"][: 1 + (n + len(app)) % 3]
    label = ("ab12cd34", "ef56ab78", "cd90ef12")[n % 3]
    release_id = label * 8
    op_id = f"op{next(_ops)}"
    plan = {
        "profile": "p",
        "hosts": [{"host": h, "groups": [f"g-{h}"], "components": []} for h in hosts],
    }
    installation.start_operation(
        actor=key.keyid,
        op_id=op_id,
        operation="deploy",
        label=label,
        release_id=release_id,
        profile="p",
        placement={f"g-{h}": h for h in hosts},
        host_components={h: ["api"] for h in hosts},
        plan_digest="0" * 64,
        plan=plan,
        lease_ttl_s=60,
        description=f"deploy {label}",
        now=now,
    )
    ledger.append(installation)
    for index, host in enumerate(hosts):
        for step in ("upload", "health"):
            ok = not (step == "health" and ending == "failed" and index == 0)
            data = {"log": [f"GET /healthz 200 at {n}"], "password": "hunter2"}
            installation.record_step(
                actor=key.keyid, op_id=op_id, host=host, step=step, ok=ok, detail=step, data=data
            )
        if ending == "failed" and index == 0:
            installation.restore_host(
                actor=key.keyid, op_id=op_id, host=host, previous=None, ok=True, detail="back"
            )
        else:
            installation.activate_host(
                actor=key.keyid,
                op_id=op_id,
                host=host,
                release_id=release_id,
                label=label,
                components=["api"],
            )
    ledger.append(installation)
    if ending == "left-open":
        return
    status = "failed" if ending == "failed" else ending
    installation.finish(actor=key.keyid, op_id=op_id, status=status, description="done")
    ledger.append(installation)


def _history(ledger: Ledger, key: KeyPair) -> None:
    """Two installations whose operations interleave (deployed, failed with a
    restore, a lease left open and broken by the next one, noop), hosts with
    inventories (changed facts) and admissions."""
    endings = ["deployed", "failed", "left-open", "deployed", "noop", "deployed", "failed"]
    for n, ending in enumerate(endings):
        for app in ("shop", "blog"):
            _operate(ledger, key, app, n, ending)
    settings = HostSettings(environment="e", connector="local", root="/r")
    for name in ("h1", "h2"):
        ledger.append(Host.register(name, settings, actor=key.keyid))
    for cores in (4, 8, 16):
        for name in ("h1", "h2"):
            host = ledger.load(Host, Host.id_for(name))
            host.record_facts({"cpu_logical": cores}, f"{cores:064x}", actor=key.keyid)
            host.record_admission(
                "vllm", admitted=cores > 4, reasons=[], requirements={"gpus": 0}, actor=key.keyid
            )
            ledger.append(host)


def _records(ledger: Ledger) -> list[tuple[Any, ...]]:
    with SideTables(ledger).transaction(commit=False) as c:
        c.execute("SELECT digest, seq, operation, created, record FROM {chassis_receipts}")
        rows = [tuple(r) for r in c.fetchall()]
    return sorted(rows, key=lambda r: int(r[1]))


def _forget(ledger: Ledger) -> None:
    ReceiptStore(ledger)
    with SideTables(ledger).transaction(commit=True) as c:
        c.execute("DELETE FROM {chassis_receipts}")
        c.execute("DELETE FROM {chassis_receipt_position}")


def _issue(url: str, ws: Workspace, key: KeyPair) -> list[tuple[Any, ...]]:
    """Issue the whole backlog from a fresh process's ledger; the records."""
    ledger = open_ledger(StorageConfig.from_url(url), key)
    try:
        _forget(ledger)
        ledger._sealing_mapper.forget_verified()
        issued = issue_pending(ledger, ws, key, lambda _: None, position=log_position)
        assert issued
        return _records(ledger)
    finally:
        ledger.close()


def _load(history: Any, kind: Any, aggregate_id: Any, version: int) -> Any:
    return history.ledger.load(kind, aggregate_id, version=version)


def _read(history: Any, aggregate_id: Any, first: int, last: int) -> list[Any]:
    return [e for _, e in history.ledger.verified_events(aggregate_id, gt=first - 1, lte=last)]


def test_a_backlog_gets_the_receipts_a_load_per_receipt_gives(
    ledger: Ledger,
    ledger_url: str,
    root_key: KeyPair,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _history(ledger, root_key)
    ws = _workspace(tmp_path / "ws", root_key)
    checkpoint_now(ledger, ws, root_key)
    verified: list[int] = []
    original = SealingMapper.verified_event

    def counting(mapper: SealingMapper, row: Any, trust: Any = None) -> Any:
        if trust is None:
            verified.append(row[0])
        return original(mapper, row, trust)

    monkeypatch.setattr(SealingMapper, "verified_event", counting)
    monkeypatch.setattr(receipts, "READ_AHEAD", 3)  # folds cross read-ahead boundaries
    folded = _issue(ledger_url, ws, root_key)
    vouched_reads = len(verified)

    # The reference: every receipt from fresh loads, every event verified.
    monkeypatch.setattr(CheckpointVouch, "__call__", lambda self, p, t: None)
    monkeypatch.setattr(receipts._History, "upcoming", lambda self, a, v: [])
    monkeypatch.setattr(receipts._History, "at", _load)
    monkeypatch.setattr(receipts._History, "read", _read)
    reference = _issue(ledger_url, ws, root_key)
    assert folded == reference
    operations = [json.loads(r[4])["operation"] for r in reference]
    assert {"deploy", "lease-break", "inventory", "admission"} <= set(operations)
    assert vouched_reads < len(verified) / 4, "the backlog was read on the checkpoint's word"
