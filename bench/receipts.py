"""Receipt issuance benchmark, end to end (issue 17, item 4: at least 1,000 receipts/s).

Builds a SQLite ledger of ``--operations`` deploys (1,000 by default) of one
installation on three hosts, recorded as the engine records them (intent,
lease renewal, nine steps per host with a health log tail, activations,
finish, snapshot binding: about 34 events each), signs a checkpoint over it
the way every writing command does (``checkpoint_now``: every event verified
first; its one-off time is reported), then times what the next writing
command runs for that backlog: ``issue_pending`` (the scan, the verified
reads, the states before and after each operation, redaction, the in-toto
statement, the DSSE signature and the stored records, in one transaction),
with the receipt position and the Merkle log as ``settle`` gives them. Each
round starts from no receipts, in a ledger opened afresh (no signature
remembered as verified, as in a new process), two ways, alternating:

- as shipped: the backlog read on the word of the checkpoint just signed
  (``proofs.vouch``), each event's digest recomputed;
- the baseline: the same code with checkpoint vouching off, every event's
  signature and record rules checked.

Both ways must issue byte-identical receipts (checked). Prints receipts/s of
each (wall time; CPU time beside it, since this machine is shared), the
median of the per-round ratios, and the shipped way against the budget.

Budgets are reported, not enforced: the exit status is 0 unless the script
crashes. Progress goes to stderr; ``--json`` prints one object.

Run: .venv/bin/python bench/receipts.py [--operations N] [--rounds N] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# As in bench/ledger.py: bench/ must not shadow the ``ledger`` package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from bench.checkpoint import chassis_workspace  # noqa: E402
from bench.ledger import CPUS, Workspace, progress  # noqa: E402
from bench.replay import HOSTS, STEPS, plan_for  # noqa: E402
from chassis.aftermath import log_position  # noqa: E402
from chassis.checkpoints import checkpoint_now  # noqa: E402
from chassis.receipts import ReceiptStore, issue_pending  # noqa: E402
from chassis.workspace import Workspace as ChassisWorkspace  # noqa: E402
from ledger.application import Ledger  # noqa: E402
from ledger.installations import Installation  # noqa: E402
from ledger.keys import KeyPair  # noqa: E402
from ledger.storage import StorageConfig, open_ledger  # noqa: E402
from ledger.tables import SideTables  # noqa: E402
from proofs.vouch import CheckpointVouch  # noqa: E402

BUDGET = 1000.0


def build(ledger: Ledger, keyid: str, operations: int) -> None:
    """``operations`` deploys of one installation, each saved as the engine does."""
    installation = Installation.open("shop", "prod", actor=keyid)
    ledger.append(installation)
    for revision in range(1, operations + 1):
        op_id, label, release_id = f"{revision:032x}", f"v{revision}", f"{revision:064x}"
        installation.start_operation(
            actor=keyid,
            op_id=op_id,
            operation="deploy",
            label=label,
            release_id=release_id,
            profile="ternary-split-3",
            placement={f"g{h}": f"h{h}" for h in range(HOSTS)},
            host_components={f"h{h}": [f"c{h}"] for h in range(HOSTS)},
            plan_digest="ef" * 32,
            plan=plan_for(label, release_id),
            lease_ttl_s=1800,
            description=f"deploy {label}",
            now=datetime.now(UTC),
        )
        for h in range(HOSTS):
            for step in STEPS:
                installation.record_step(
                    actor=keyid,
                    op_id=op_id,
                    host=f"h{h}",
                    step=step,
                    ok=True,
                    detail=f"{step} on h{h}: release {release_id[:16]}",
                    data=_health(h) if step == "health" else {"elapsed_ms": 120 + h},
                )
            installation.activate_host(
                actor=keyid,
                op_id=op_id,
                host=f"h{h}",
                release_id=release_id,
                label=label,
                components=[f"c{h}"],
            )
        installation.finish(actor=keyid, op_id=op_id, status="deployed", description=label)
        ledger.append(installation)


def _health(host: int) -> dict[str, Any]:
    """What a health gate records: attempts and the component's log tail."""
    return {
        "attempts": 2,
        "passes": 3,
        "log": [
            f"2026-12-06T08:00:{k:02d}Z c{host}[12{k:02d}] 127.0.0.1 - "
            f'"GET /healthz HTTP/1.1" 200 -'
            for k in range(20)
        ],
    }


def issue(
    url: str, ws: ChassisWorkspace, key: KeyPair, vouched: bool
) -> tuple[list[Any], float, float]:
    """(the stored receipts, wall s, CPU s) of issuing the whole backlog afresh."""
    ledger = open_ledger(StorageConfig.from_url(url), key)
    try:
        tables = SideTables(ledger)
        ReceiptStore(ledger)
        with tables.transaction(commit=True) as c:
            c.execute("DELETE FROM {chassis_receipts}")
            c.execute("DELETE FROM {chassis_receipt_position}")
        ledger._sealing_mapper.forget_verified()  # a new process remembers no signature
        saved = CheckpointVouch.__call__
        if not vouched:
            CheckpointVouch.__call__ = lambda self, position, topics: None  # type: ignore[method-assign]
        try:
            gc.collect()
            wall, cpu = time.perf_counter(), time.process_time()
            issue_pending(ledger, ws, key, lambda _: None, position=log_position)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        finally:
            CheckpointVouch.__call__ = saved  # type: ignore[method-assign]
        with tables.transaction(commit=False) as c:
            c.execute("SELECT digest, seq, record FROM {chassis_receipts} ORDER BY seq")
            records = [tuple(r) for r in c.fetchall()]
        return records, wall, cpu
    finally:
        ledger.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--operations", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="chassis-receipts-")))
        ws = Workspace(root, stack)
        name = "receipts"
        progress(f"building {args.operations:,} deploys")
        writer = ws.ledger(name)
        build(writer, ws.keyid, args.operations)
        events = writer.max_seq()
        progress(f"signing a checkpoint over {events:,} events (every event verified first)")
        chassis_ws = chassis_workspace(root / "ws", ws)
        began = time.perf_counter()
        checkpoint_now(writer, chassis_ws, ws.signer)
        checkpoint_s = time.perf_counter() - began
        url = f"sqlite:///{root / name}.db"
        rounds: list[dict[str, Any]] = []
        issued: dict[bool, list[Any]] = {}
        for index in range(args.rounds):
            progress(f"round {index + 1} of {args.rounds}: issuing the backlog both ways")
            round_: dict[str, Any] = {}
            for vouched in (True, False) if index % 2 == 0 else (False, True):
                records, wall, cpu = issue(url, chassis_ws, ws.signer, vouched)
                issued.setdefault(vouched, records)
                round_["vouched" if vouched else "per_event"] = {
                    "receipts": len(records),
                    "wall_s": round(wall, 3),
                    "cpu_s": round(cpu, 3),
                }
            rounds.append(round_)
    if issued[True] != issued[False]:
        raise SystemExit("the two ways issued different receipts")
    count = len(issued[True])
    fast_wall = statistics.median(r["vouched"]["wall_s"] for r in rounds)
    fast_cpu = statistics.median(r["vouched"]["cpu_s"] for r in rounds)
    slow_wall = statistics.median(r["per_event"]["wall_s"] for r in rounds)
    slow_cpu = statistics.median(r["per_event"]["cpu_s"] for r in rounds)
    speedup = statistics.median(r["per_event"]["wall_s"] / r["vouched"]["wall_s"] for r in rounds)
    rate = count / fast_wall
    result = {
        "receipts": count,
        "ledger_events": events,
        "cpu_count": CPUS,
        "python": platform.python_version(),
        "checkpoint_sign_s": round(checkpoint_s, 2),
        "rounds": rounds,
        "receipts_per_s": round(rate),
        "receipts_per_cpu_s": round(count / fast_cpu),
        "per_event_receipts_per_s": round(count / slow_wall),
        "per_event_receipts_per_cpu_s": round(count / slow_cpu),
        "speedup_vs_per_event": round(speedup, 2),
        "budget_receipts_per_s": BUDGET,
        "measured_over_budget": round(rate / BUDGET, 3),
        "verdict": "PASS" if rate >= BUDGET else "FAIL",
        "identical_receipts": True,
        "seconds": round(time.perf_counter() - started, 1),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"issuing a backlog of {count:,} receipts ({events:,} events, {args.rounds} rounds, "
        f"{CPUS} CPUs, Python {result['python']}; checkpoint signed in {checkpoint_s:.1f} s):"
    )
    print(
        f"  checkpoint-vouched reads: {result['receipts_per_s']:>7,} receipts/s "
        f"({result['receipts_per_cpu_s']:,}/CPU s)"
    )
    print(
        f"  per-event verification:   {result['per_event_receipts_per_s']:>7,} receipts/s "
        f"({result['per_event_receipts_per_cpu_s']:,}/CPU s)"
    )
    print(f"  vouched is {speedup:.1f}x faster (median of per-round ratios); receipts identical")
    print(
        f"  budget {BUDGET:,.0f} receipts/s: measured/budget = {rate / BUDGET:.2f} "
        f"{result['verdict']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
