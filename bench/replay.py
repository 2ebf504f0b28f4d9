"""Replay benchmark: the installation at any past revision or version.

Builds one ``Installation`` of ~100,000 real events (deploy operations with
per-host steps, activations and finishes, as the engine records them), then
loads it at random revisions (the release snapshot taken when each became
active) and at random versions (the nearest snapshot, then a few events).
The baseline, measured in the same run on the same database, folds every
event from version 1 without snapshots. Budget: ≤ 20 ms at any revision.

Reads are cold: each sample starts with no signature remembered as verified,
so it pays for checking every record it reads (binding event, events after
the snapshot) as any new command would.

Run: .venv/bin/python bench/replay.py [--events N] [--samples N] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# ``python bench/replay.py`` puts bench/ first on sys.path; the repository root is wanted.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from bench.ledger import Workspace  # noqa: E402
from ledger.application import Ledger  # noqa: E402
from ledger.installations import Installation  # noqa: E402
from ledger.mapper import SealingMapper  # noqa: E402

BUDGET_MS = 20.0
HOSTS = 3
STEPS = ("upload", "verify", "unpack", "configure", "stop-old", "start", "health", "swap", "prune")


def plan_for(label: str, release_id: str) -> dict[str, Any]:
    """A plan shaped like the engine's (three hosts, one component each)."""
    hosts = [
        {
            "host": f"h{h}",
            "connector": "ssh",
            "address": f"127.0.0.{11 + h}",
            "root": "/srv/chassis",
            "supervisor": "direct",
            "groups": [f"g{h}"],
            "components": [
                {
                    "name": f"c{h}",
                    "command": "python3 -m app --port 8080",
                    "env": {"LOG": "info", "WORKERS": "4"},
                    "ports": {"http": 8080 + h},
                    "health": {"type": "http", "port": "http", "path": "/healthz"},
                }
            ],
            "steps": list(STEPS),
        }
        for h in range(HOSTS)
    ]
    return {
        "app": "shop",
        "environment": "prod",
        "profile": "ternary-split-3",
        "label": label,
        "release_id": release_id,
        "release_dir": release_id[:16],
        "bundle_sha256": "cd" * 32,
        "bundle_size": 12345,
        "hosts": hosts,
    }


def build(ledger: Ledger, keyid: str, events: int) -> Installation:
    installation = Installation.open("shop", "prod", actor=keyid)
    revision = 0
    while installation.version < events - (HOSTS * (len(STEPS) + 1) + 2):
        revision += 1
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
                    actor=keyid, op_id=op_id, host=f"h{h}", step=step, ok=True, detail="ok", data={}
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
    return installation


def timed_ms(action: Any) -> float:
    started = time.perf_counter()
    action()
    return (time.perf_counter() - started) * 1000


def fold_without_snapshots(ledger: Ledger, installation: Installation, version: int) -> None:
    state: Any = None
    for _, event in ledger.verified_events(installation.id, lte=version):
        state = event.mutate(state)
    assert state is not None and state.version == version


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    rng = random.Random(7)
    with contextlib.ExitStack() as stack:
        ws = Workspace(Path(stack.enter_context(tempfile.TemporaryDirectory())), stack)
        ledger = ws.ledger("replay")
        started = time.perf_counter()
        installation = build(ledger, ws.keyid, args.events)
        build_s = time.perf_counter() - started
        finished = [int(e["version"]) for e in installation.revisions]  # recent window
        revisions = installation.revision  # every revision finished at a known version
        # Versions at which revisions finished: the snapshots the engine took.
        assert ledger.snapshots is not None
        release_versions = [
            s.originator_version for s in ledger.snapshots.get(installation.id)
        ] + finished
        mapper = ledger.mapper
        assert isinstance(mapper, SealingMapper)

        def cold_load(version: int) -> float:
            mapper.forget_verified()
            return timed_ms(lambda: ledger.load(Installation, installation.id, version=version))

        at_revision = [
            cold_load(v)
            for v in rng.sample(release_versions, min(args.samples, len(release_versions)))
        ]
        at_version = [
            cold_load(rng.randint(1, installation.version)) for _ in range(args.samples)
        ]
        latest = installation.version
        baseline = []
        for _ in range(3):
            mapper.forget_verified()
            baseline.append(timed_ms(lambda: fold_without_snapshots(ledger, installation, latest)))
        snapshot_bytes = len(
            ledger.snapshots.recorder.select_events(installation.id, desc=True, limit=1)[0].state
        )
    worst = max(at_revision + at_version)
    full = statistics.median(baseline)
    revision_ms = (statistics.median(at_revision), max(at_revision))
    version_ms = (statistics.median(at_version), max(at_version))
    verdict = "PASS" if worst <= BUDGET_MS else "FAIL"
    result = {
        "events": installation.version,
        "revisions": revisions,
        "build_s": round(build_s, 1),
        "latest_snapshot_bytes": snapshot_bytes,
        "at_revision_ms": {"median": round(revision_ms[0], 3), "max": round(revision_ms[1], 3)},
        "at_version_ms": {"median": round(version_ms[0], 3), "max": round(version_ms[1], 3)},
        "baseline_full_replay_ms": round(full, 1),
        "speedup_vs_full_replay": round(full / worst, 1),
        "budget_ms": BUDGET_MS,
        "worst_over_budget": round(worst / BUDGET_MS, 3),
        "verdict": verdict,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"installation of {installation.version:,} events, {revisions:,} revisions "
            f"(built in {build_s:.1f} s)"
        )
        print(f"  at a revision: median {revision_ms[0]:.2f} ms, max {revision_ms[1]:.2f} ms")
        print(f"  at a version:  median {version_ms[0]:.2f} ms, max {version_ms[1]:.2f} ms")
        print(
            f"  baseline (fold all {latest:,} events, no snapshots): {full:.0f} ms; "
            f"the worst case is {full / worst:.0f}x faster"
        )
        print(
            f"  budget {BUDGET_MS:.0f} ms: worst/budget = {worst / BUDGET_MS:.3f} {verdict} "
            f"(latest snapshot {snapshot_bytes:,} bytes)"
        )
    return 0 if worst <= BUDGET_MS else 1


if __name__ == "__main__":
    raise SystemExit(main())
