"""Checkpoint benchmark: fast verification (chains + Merkle root + checkpoint
signature) against its budget and against full verification.

Run from the repository root::

    python bench/checkpoint.py [--quick] [--events N] [--json]

Builds a SQLite ledger of ``--events`` events (100,000 by default) the way
``bench/ledger.py`` does, signs a checkpoint of it, then times, in alternating
rounds:

- checkpoint verify: ``proofs.fast.fast_verify(ledger.scan())``, the root
  compared with a checkpoint verified by ``proofs.note.verify_checkpoint``
  (reads included), in events/s and as a ratio to the 200,000 events/s budget
  of DESIGN.md §10;
- the same on rows already in memory (the CPU cost alone);
- full verification (``proofs.chain.verify_ledger``, every signature, all
  cores), and the ratio of the two times;
- what ``chassis ledger verify --fast`` really runs
  (``chassis.audit.verify_workspace(..., fast=True)``: chains, root, the
  verified trust fold, the stored and last-seen checkpoints with a
  consistency proof, and full verification of the events after the newest
  checkpoint (none here), reads included) against the same budget.

Before timing, the stored Merkle log is built from scratch and a checkpoint
signed (``checkpoint_now``, which first verifies every event it covers in
full); that one-off time is reported too.

Budgets are reported, not enforced: the exit status is 0 unless the script
crashes. Progress goes to stderr; ``--json`` prints one object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# As in bench/ledger.py: bench/ must not shadow the ``ledger`` package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from bench._bench_aggregate import Counter  # noqa: E402
from bench.ledger import (  # noqa: E402
    CPUS,
    Figure,
    Workspace,
    fill,
    format_value,
    progress,
    timed,
)
from chassis.audit import verify_workspace  # noqa: E402
from chassis.checkpoints import checkpoint_now  # noqa: E402
from chassis.workspace import Workspace as ChassisWorkspace  # noqa: E402
from ledger.application import Ledger  # noqa: E402
from proofs.chain import verify_ledger  # noqa: E402
from proofs.fast import FastVerified, fast_verify  # noqa: E402
from proofs.merkle import ProofError  # noqa: E402
from proofs.note import Checkpoint, origin_for, sign_checkpoint, verify_checkpoint  # noqa: E402

BUDGET = 200_000
PER_AGGREGATE = 1_000


def build(ws: Workspace, events: int) -> Ledger:
    progress(f"building a {events:,}-event SQLite ledger")
    ledger = ws.ledger("checkpoint")
    for index in range(max(1, events // PER_AGGREGATE)):
        fill(ledger, Counter, f"cp-{index}", events=PER_AGGREGATE, per_save=100, keyid=ws.keyid)
    return ledger


def checkpoint_verify(ledger: Ledger, note: str, verifiers: dict[str, bytes]) -> FastVerified:
    """What ``chassis ledger verify --fast`` does: chains, root, checkpoint."""
    checkpoint = verify_checkpoint(note, verifiers)
    result = fast_verify(ledger.scan())
    if (result.size, result.root) != (checkpoint.size, checkpoint.root):
        raise ProofError("root-mismatch", "the ledger does not match its checkpoint")
    return result


def run(events: int, rounds: int) -> tuple[list[Figure], dict[str, Any]]:
    with contextlib.ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="chassis-bench-")))
        ws = Workspace(root, stack)
        ledger = build(ws, events)
        size = ledger.max_seq()
        origin = origin_for("checkpoint")
        first = fast_verify(ledger.scan())
        note = sign_checkpoint(Checkpoint(origin, first.size, first.root), origin, ws.signer)
        verifiers = {origin: ws.signer.public_key}
        rows = list(ledger.scan())
        chassis_ws = chassis_workspace(root / "ws", ws)
        progress("building the stored Merkle log and signing a checkpoint")
        log_s = timed(lambda: checkpoint_now(ledger, chassis_ws, ws.signer))

        progress(f"timing checkpoint verify, in-memory fast verify and full verify, {rounds}x")
        fast_s: list[float] = []
        memory_s: list[float] = []
        full_s: list[float] = []
        cli_s: list[float] = []
        for _ in range(rounds):
            fast_s.append(timed(lambda: checkpoint_verify(ledger, note, verifiers)))
            memory_s.append(timed(lambda: fast_verify(rows)))
            full_s.append(timed(lambda: verify_ledger(ledger.scan(), workers=CPUS)))
            cli_s.append(timed(lambda: verify_workspace(chassis_ws, ledger, fast=True)))
        cli_rate = size / statistics.median(cli_s)
        fast_rate = size / statistics.median(fast_s)
        memory_rate = size / statistics.median(memory_s)
        full_rate = size / statistics.median(full_s)
        time_ratio = statistics.median(f / v for f, v in zip(fast_s, full_s, strict=True))
    figures = [
        Figure(
            id="checkpoint_verify",
            title=f"Checkpoint verify, {size:,} events (SQLite file, one core)",
            unit="events/s",
            measurement=fast_rate,
            measurement_label="fast_verify(ledger.scan()) + verify_checkpoint, reads included",
            baseline=float(BUDGET),
            baseline_label="the budget (DESIGN.md §10)",
            ratio=fast_rate / BUDGET,
            ratio_label="measured / budget",
            budget="ratio >= 1",
            passed=fast_rate >= BUDGET,
            details={"seconds_per_round": fast_s},
        ),
        Figure(
            id="fast_verify_in_memory",
            title=f"Fast verify on rows already in memory, {size:,} events",
            unit="events/s",
            measurement=memory_rate,
            measurement_label="fast_verify(list of rows)",
            baseline=float(BUDGET),
            baseline_label="the budget (DESIGN.md §10)",
            ratio=memory_rate / BUDGET,
            ratio_label="measured / budget",
            budget="reported only",
            passed=None,
            details={"seconds_per_round": memory_s},
        ),
        Figure(
            id="fast_vs_full",
            title=f"Checkpoint verify vs full verify, {size:,} events",
            unit="events/s",
            measurement=fast_rate,
            measurement_label="checkpoint verify (no event signatures, one core)",
            baseline=full_rate,
            baseline_label=f"verify_ledger(ledger.scan(), workers={CPUS}) (every signature)",
            ratio=time_ratio,
            ratio_label="fast time / full time (median of per-round ratios)",
            budget="reported only",
            passed=None,
            details={"full_seconds_per_round": full_s},
        ),
        Figure(
            id="ledger_verify_fast",
            title=f"chassis ledger verify --fast, {size:,} events (SQLite file, one core)",
            unit="events/s",
            measurement=cli_rate,
            measurement_label="verify_workspace(fast=True): chains, root, 2 checkpoints",
            baseline=float(BUDGET),
            baseline_label="the budget (DESIGN.md §10)",
            ratio=cli_rate / BUDGET,
            ratio_label="measured / budget",
            budget="ratio >= 1",
            passed=cli_rate >= BUDGET,
            details={"seconds_per_round": cli_s, "log_build_and_sign_seconds": log_s},
        ),
    ]
    return figures, {"events": size, "rounds": rounds}


def chassis_workspace(directory: Path, ws: Workspace) -> ChassisWorkspace:
    """A bare Chassis workspace pinned to the bench key, for the service calls."""
    state = directory / ".chassis"
    state.mkdir(parents=True)
    settings = {"name": "checkpoint", "root_keyid": ws.keyid, "default_key": ws.signer.name}
    (state / "workspace.json").write_text(json.dumps(settings))
    return ChassisWorkspace(directory)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20,000 events, 3 rounds")
    parser.add_argument("--events", type=int, default=None, help="ledger size (default 100,000)")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 5)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args(argv)
    events = args.events or (20_000 if args.quick else 100_000)
    rounds = args.rounds or (3 if args.quick else 5)

    start = time.perf_counter()
    figures, sizes = run(events, rounds)
    meta = {
        **sizes,
        "cpu_count": CPUS,
        "python": platform.python_version(),
        "seconds": time.perf_counter() - start,
    }
    if args.json:
        report = {**meta, "figures": [{**asdict(f), "verdict": f.verdict} for f in figures]}
        print(json.dumps(report, indent=2))
        return 0
    print(
        f"Chassis checkpoint benchmark: {meta['events']:,} events, {CPUS} CPUs, "
        f"Python {meta['python']}, {meta['seconds']:.0f} s"
    )
    for number, figure in enumerate(figures, 1):
        print()
        print(f"{number}. {figure.title}")
        measurement = format_value(figure.measurement, figure.unit)
        baseline = format_value(figure.baseline, figure.unit)
        print(f"   measurement  {measurement:>20}  {figure.measurement_label}")
        print(f"   baseline     {baseline:>20}  {figure.baseline_label}")
        print(f"   ratio        {figure.ratio:>20.2f}  {figure.ratio_label}")
        print(f"   budget       {figure.budget}")
        print(f"   result       {figure.verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
