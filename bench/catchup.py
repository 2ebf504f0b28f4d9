"""Projection catch-up benchmark (issue 17, item 4: at least 100,000 events/s).

Builds one ``Installation`` of ``--events`` real events (100,000 by default;
deploys with per-host steps, activations and finishes, as ``bench/replay.py``
records them) in a SQLite ledger, signs a checkpoint over all of it the way
``chassis ledger checkpoint`` does (``checkpoint_now``: every event verified
in full first; its one-off time is reported), then times a *first* catch-up
of the installations view (what the first ``chassis status`` after those
events runs), from an empty view each round, two ways, alternating:

- checkpoint-vouched: ``catch_up(..., vouch=CheckpointVouch(ledger))``, as
  ``chassis status`` runs it: the checkpoint's note and root checked, then
  each covered event's digest recomputed instead of its signature checked;
- per-event verification (the baseline): ``catch_up(...)`` without a
  checkpoint, every event's signature and record rules checked.

Each round opens the ledger afresh (no signature remembered as verified, as
in a new process). Figures: events/s of each way (wall time, reads and view
writes included; CPU time beside it, since this machine is shared), the
median of the per-round time ratios, and the fast way against the budget.
``--breakdown`` adds where the fast way's time goes (each stage timed alone).

Budgets are reported, not enforced: the exit status is 0 unless the script
crashes. Progress goes to stderr; ``--json`` prints one object.

Run: .venv/bin/python bench/catchup.py [--events N] [--rounds N] [--breakdown] [--json]
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# As in bench/ledger.py: bench/ must not shadow the ``ledger`` package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from bench.checkpoint import chassis_workspace  # noqa: E402
from bench.ledger import CPUS, Workspace, progress  # noqa: E402
from bench.replay import build  # noqa: E402
from chassis.checkpoints import checkpoint_now  # noqa: E402
from ledger.application import Ledger  # noqa: E402
from ledger.storage import StorageConfig, open_ledger  # noqa: E402
from ledger.vouched import VouchedDigests  # noqa: E402
from projections.fold import catch_up, open_views, read_documents  # noqa: E402
from projections.installations import INSTALLATIONS  # noqa: E402
from proofs.vouch import CheckpointVouch, checkpoint_vouched  # noqa: E402

BUDGET = 100_000


def first_catch_up(ledger: Ledger, vouched: bool) -> tuple[int, float, float]:
    """(events, wall s, CPU s) of catching the installations view up from nothing."""
    store = open_views(ledger)
    store.clear(INSTALLATIONS.name, INSTALLATIONS.tracking_name)
    vouch = CheckpointVouch(ledger) if vouched else None
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    events = catch_up(ledger, store, INSTALLATIONS, vouch)
    return events, time.perf_counter() - wall, time.process_time() - cpu


def fresh(ws: Workspace, name: str) -> Ledger:
    """The bench ledger opened as a new process would: no signer, nothing cached."""
    return open_ledger(StorageConfig.from_url(f"sqlite:///{ws.root / name}.db"), None)


def timed_cpu(action: Callable[[], object]) -> float:
    gc.collect()
    started = time.process_time()
    action()
    return time.process_time() - started


def breakdown(ws: Workspace, name: str) -> dict[str, float]:
    """CPU seconds of each stage of the vouched catch-up, each run alone."""
    ledger = fresh(ws, name)
    try:
        ledger.trust()
        vouched: list[VouchedDigests | None] = []
        stages = {
            "checkpoint check (digests read, root, note)": timed_cpu(
                lambda: vouched.append(checkpoint_vouched(ledger))
            )
        }
        topics = INSTALLATIONS.topics()
        pages: list[Any] = []

        def read() -> None:
            position = 0
            while page := ledger.rows_after(position, limit=4096, topics=topics):
                pages.append(page)
                position = page[-1][0]

        stages["rows read"] = timed_cpu(read)
        events: list[Any] = []
        stages["records read through the mapper (digest, decode)"] = timed_cpu(
            lambda: events.extend(e for p in pages for e in ledger.read_events(p, vouched[0]))
        )

        def fold() -> None:
            state: Any = None
            doc: Any = None
            accumulate = INSTALLATIONS.accumulate
            assert accumulate is not None
            for event in events:
                state = event.mutate(state)
                doc = accumulate(doc, state)

        stages["fold (mutate, accumulate)"] = timed_cpu(fold)
        return stages
    finally:
        ledger.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--breakdown", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="chassis-catchup-")))
        ws = Workspace(root, stack)
        name = "catchup"
        progress(f"building a {args.events:,}-event installation")
        writer = ws.ledger(name)
        build(writer, ws.keyid, args.events)
        progress("signing a checkpoint over it (every event verified first)")
        began = time.perf_counter()
        checkpoint = checkpoint_now(writer, chassis_workspace(root / "ws", ws), ws.signer)
        checkpoint_s = time.perf_counter() - began
        size = checkpoint.checkpoint.size
        rounds: list[dict[str, Any]] = []
        documents: list[Any] = []
        for index in range(args.rounds):
            progress(f"round {index + 1} of {args.rounds}: vouched and per-event catch-up")
            round_: dict[str, Any] = {}
            order = (True, False) if index % 2 == 0 else (False, True)
            for vouched in order:
                ledger = fresh(ws, name)
                try:
                    events, wall, cpu = first_catch_up(ledger, vouched)
                    if index == 0:
                        documents.append(read_documents(open_views(ledger), INSTALLATIONS))
                finally:
                    ledger.close()
                round_["vouched" if vouched else "per_event"] = {
                    "events": events,
                    "wall_s": round(wall, 3),
                    "cpu_s": round(cpu, 3),
                }
            rounds.append(round_)
        stages = breakdown(ws, name) if args.breakdown else {}
    if documents and documents[0] != documents[-1]:
        raise SystemExit("the two ways folded different documents")
    events = rounds[0]["vouched"]["events"]
    fast_wall = statistics.median(r["vouched"]["wall_s"] for r in rounds)
    slow_wall = statistics.median(r["per_event"]["wall_s"] for r in rounds)
    fast_cpu = statistics.median(r["vouched"]["cpu_s"] for r in rounds)
    slow_cpu = statistics.median(r["per_event"]["cpu_s"] for r in rounds)
    speedup = statistics.median(r["per_event"]["wall_s"] / r["vouched"]["wall_s"] for r in rounds)
    speedup_cpu = statistics.median(r["per_event"]["cpu_s"] / r["vouched"]["cpu_s"] for r in rounds)
    rate = events / fast_wall
    result = {
        "events": events,
        "ledger_events": size,
        "cpu_count": CPUS,
        "python": platform.python_version(),
        "checkpoint_sign_s": round(checkpoint_s, 2),
        "rounds": rounds,
        "vouched_events_per_s": round(rate),
        "vouched_events_per_cpu_s": round(events / fast_cpu),
        "per_event_events_per_s": round(events / slow_wall),
        "per_event_events_per_cpu_s": round(events / slow_cpu),
        "speedup_wall": round(speedup, 2),
        "speedup_cpu": round(speedup_cpu, 2),
        "budget_events_per_s": BUDGET,
        "vouched_over_budget": round(rate / BUDGET, 3),
        "verdict": "PASS" if rate >= BUDGET else "FAIL",
        "breakdown_cpu_s": {k: round(v, 3) for k, v in stages.items()},
        "seconds": round(time.perf_counter() - started, 1),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"first catch-up of the installations view, {events:,} events "
        f"({args.rounds} rounds, {CPUS} CPUs, Python {result['python']}; "
        f"checkpoint signed in {checkpoint_s:.1f} s):"
    )
    print(
        f"  checkpoint-vouched: {result['vouched_events_per_s']:>9,} events/s "
        f"({result['vouched_events_per_cpu_s']:,}/CPU s)"
    )
    print(
        f"  per-event verified: {result['per_event_events_per_s']:>9,} events/s "
        f"({result['per_event_events_per_cpu_s']:,}/CPU s)"
    )
    print(
        f"  vouched is {speedup:.1f}x faster (CPU time {speedup_cpu:.1f}x), "
        f"median of per-round ratios"
    )
    print(
        f"  budget {BUDGET:,} events/s: measured/budget = {rate / BUDGET:.2f} {result['verdict']}"
    )
    for stage, seconds in stages.items():
        print(f"    {stage}: {seconds:.3f} CPU s ({1e6 * seconds / events:.1f} us/event)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
