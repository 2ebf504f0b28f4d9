"""Ledger benchmark: what signing, chaining and snapshots cost.

Run from the repository root::

    python bench/ledger.py [--quick] [--json]

Four figures, each next to a baseline measured in the same run:

1. one-event signed saves (``Ledger.append``) vs stock ``eventsourcing``
   saves of the same payload to a SQLite file (time per save, including
   making the event);
2. 100-event signed saves vs 100-event stock saves (events/s);
3. full verification (``proofs.chain.verify_ledger``) vs bare Ed25519
   verification on one core times the number of cores (events/s);
4. loading an aggregate at an old version with snapshots vs without (ms).

Budgets are stated as ratios to a baseline wherever one exists, because
absolute times swing with the machine, its disk and its load, while the
baseline swings with them. For the same reason figures 1 to 3 alternate the
two sides in rounds, report the median of each side, and take as the ratio
the median of the per-round ratios (each round's two sides ran back to
back). Budgets are reported, not enforced: the exit status is 0 unless the
script crashes. Progress goes to stderr; ``--json`` prints one object.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# ``python bench/ledger.py`` puts bench/ first on sys.path, where this very
# file would shadow the ``ledger`` package: put the repository root there.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives.asymmetric.ed25519 import (  # noqa: E402
    Ed25519PrivateKey,
)
from eventsourcing.application import Application  # noqa: E402

from bench._bench_aggregate import (  # noqa: E402
    SNAPSHOT_INTERVAL,
    Counter,
    RawCounter,
    SnapshotCounter,
)
from ledger.application import Ledger  # noqa: E402
from ledger.keys import KeyPair, generate_keypair  # noqa: E402
from ledger.mapper import SealingMapper  # noqa: E402
from ledger.storage import StorageConfig, open_ledger  # noqa: E402
from ledger.trust import Trust  # noqa: E402
from proofs.chain import verify_ledger  # noqa: E402

NOTE = "bench deploy note"
CPUS = os.cpu_count() or 1


@dataclass(frozen=True)
class Sizes:
    single_rounds: int
    single_saves: int
    """Saves per side per round (figure 1)."""
    batch_rounds: int
    batch_saves: int
    """Saves of ``batch_events`` per side per round (figure 2)."""
    batch_events: int
    verify_events: int
    bare_signatures: int
    verify_repeats: int
    replay_events: int
    load_repeats: int


FULL = Sizes(
    single_rounds=5,
    single_saves=200,
    batch_rounds=5,
    batch_saves=40,
    batch_events=100,
    verify_events=20_000,
    bare_signatures=3_000,
    verify_repeats=5,
    replay_events=20_000,
    load_repeats=3,
)
QUICK = Sizes(
    single_rounds=3,
    single_saves=50,
    batch_rounds=3,
    batch_saves=8,
    batch_events=100,
    # Above proofs.chain.INLINE_LIMIT (4,096), so the worker pool is used.
    verify_events=5_000,
    bare_signatures=3_000,
    verify_repeats=3,
    replay_events=3_000,
    load_repeats=3,
)


@dataclass(frozen=True)
class Figure:
    """One reported figure: a measurement, its baseline, and the budget."""

    id: str
    title: str
    unit: str
    measurement: float
    measurement_label: str
    baseline: float
    baseline_label: str
    ratio: float
    ratio_label: str
    budget: str
    passed: bool | None
    """None where the budget is reported only."""
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        return "REPORT" if self.passed is None else ("PASS" if self.passed else "FAIL")


def progress(message: str) -> None:
    print(f"  .. {message}", file=sys.stderr, flush=True)


def timed(action: Callable[[], object]) -> float:
    """Seconds ``action`` takes, starting from a collected heap."""
    gc.collect()
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def interleaved(
    baseline: Callable[[], object], measured: Callable[[], object], rounds: int
) -> tuple[list[float], list[float]]:
    """Seconds per round of each side, alternating which side goes first."""
    base_times: list[float] = []
    measured_times: list[float] = []
    for index in range(rounds):
        if index % 2 == 0:
            base_times.append(timed(baseline))
            measured_times.append(timed(measured))
        else:
            measured_times.append(timed(measured))
            base_times.append(timed(baseline))
    return base_times, measured_times


def paired_ratio(measured: list[float], baseline: list[float]) -> float:
    """Median of the per-round ratios: each round's two sides ran back to back,
    so this cancels drift in machine speed better than a ratio of medians."""
    return statistics.median(m / b for m, b in zip(measured, baseline, strict=True))


class Workspace:
    """A temporary directory holding the signing key and every database."""

    def __init__(self, root: Path, stack: contextlib.ExitStack) -> None:
        self.root = root
        self.stack = stack
        self.signer: KeyPair = generate_keypair(root / "keys", "bench")

    @property
    def keyid(self) -> str:
        return self.signer.keyid

    def ledger(self, name: str) -> Ledger:
        """A fresh SQLite ledger whose root of trust is the bench key."""
        config = StorageConfig.from_url(f"sqlite:///{self.root / name}.db")
        ledger = open_ledger(config, self.signer, create=True)
        self.stack.callback(ledger.close)
        signer = self.signer
        ledger.append(
            Trust.establish(
                keyid=signer.keyid, name=signer.name, public_key=signer.public_key, ledger_name=name
            )
        )
        return ledger

    def raw_application(self, name: str) -> Application[Any]:
        """A stock eventsourcing application on its own SQLite file."""
        env = {
            "PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "SQLITE_DBNAME": str(self.root / f"{name}.db"),
        }
        app: Application[Any] = Application(env=env)
        self.stack.callback(app.close)
        return app


def fill(
    ledger: Ledger, kind: type[Counter], name: str, *, events: int, per_save: int, keyid: str
) -> Counter:
    """Append one aggregate of ``events`` events (its created event included)."""
    counter = kind.open(name, keyid=keyid)
    for n in range(1, events):
        counter.bump(NOTE, n, keyid=keyid)
        if n % per_save == 0:
            ledger.append(counter)
    ledger.append(counter)
    return counter


# Figure 1.


def single_event_saves(ws: Workspace, sizes: Sizes) -> Figure:
    progress("figure 1: one-event saves, signed vs stock")
    ledger, app = ws.ledger("single-signed"), ws.raw_application("single-raw")
    signed = Counter.open("single", keyid=ws.keyid)
    ledger.append(signed)
    raw = RawCounter(label="single")
    app.save(raw)
    saves = sizes.single_saves

    def signed_round(count: int = saves) -> None:
        for n in range(count):
            signed.bump(NOTE, n, keyid=ws.keyid)
            ledger.append(signed)

    def raw_round(count: int = saves) -> None:
        for n in range(count):
            raw.bump(note=NOTE, n=n)
            app.save(raw)

    raw_round(20)  # warm up caches, WAL files and code paths
    signed_round(20)
    raw_times, signed_times = interleaved(raw_round, signed_round, sizes.single_rounds)
    raw_ms = [1000 * t / saves for t in raw_times]
    signed_ms = [1000 * t / saves for t in signed_times]
    ratio = paired_ratio(signed_ms, raw_ms)
    return Figure(
        id="signed_save_single",
        title="Signed save, one event per save (SQLite file)",
        unit="ms/save",
        measurement=statistics.median(signed_ms),
        measurement_label="Ledger.append of 1 event (event made + sealed + saved)",
        baseline=statistics.median(raw_ms),
        baseline_label="stock eventsourcing Application.save of 1 event",
        ratio=ratio,
        ratio_label="signed / stock time per save (median of per-round ratios)",
        budget="ratio <= 1.15",
        passed=ratio <= 1.15,
        details={
            "rounds": sizes.single_rounds,
            "saves_per_round": saves,
            "signed_ms_per_round": signed_ms,
            "stock_ms_per_round": raw_ms,
        },
    )


# Figure 2.


def batched_saves(ws: Workspace, sizes: Sizes) -> Figure:
    progress(f"figure 2: {sizes.batch_events}-event saves, signed vs stock")
    ledger, app = ws.ledger("batch-signed"), ws.raw_application("batch-raw")
    signed = Counter.open("batch", keyid=ws.keyid)
    ledger.append(signed)
    raw = RawCounter(label="batch")
    app.save(raw)
    per_save = sizes.batch_events

    def signed_round(saves: int = sizes.batch_saves) -> None:
        for _ in range(saves):
            for n in range(per_save):
                signed.bump(NOTE, n, keyid=ws.keyid)
            ledger.append(signed)

    def raw_round(saves: int = sizes.batch_saves) -> None:
        for _ in range(saves):
            for n in range(per_save):
                raw.bump(note=NOTE, n=n)
            app.save(raw)

    raw_round(2)
    signed_round(2)
    raw_times, signed_times = interleaved(raw_round, signed_round, sizes.batch_rounds)
    events = sizes.batch_saves * per_save
    signed_rates = [events / t for t in signed_times]
    raw_rates = [events / t for t in raw_times]
    measurement = statistics.median(signed_rates)
    return Figure(
        id="signed_append_batched",
        title=f"Batched signed append, {per_save} events per save (SQLite file)",
        unit="events/s",
        measurement=measurement,
        measurement_label=f"Ledger.append of {per_save} events (events made + sealed + saved)",
        baseline=statistics.median(raw_rates),
        baseline_label=f"stock eventsourcing Application.save of {per_save} events",
        ratio=paired_ratio(signed_rates, raw_rates),
        ratio_label="signed / stock events/s (median of per-round ratios)",
        budget="signed >= 10,000 events/s",
        passed=measurement >= 10_000,
        details={
            "rounds": sizes.batch_rounds,
            "events_per_round": events,
            "signed_events_per_s_per_round": signed_rates,
            "stock_events_per_s_per_round": raw_rates,
        },
    )


# Figure 3.


def bare_verifier(signatures: int) -> Callable[[], float]:
    """A measurement of Ed25519 verifications per second on one core,
    straight from ``cryptography``, over precomputed 32-byte messages."""
    private = Ed25519PrivateKey.generate()
    public = private.public_key()
    messages = [os.urandom(32) for _ in range(signatures)]
    pairs = [(private.sign(m), m) for m in messages]

    def verify_all() -> None:
        for signature, message in pairs:
            public.verify(signature, message)

    def rate() -> float:
        return signatures / timed(verify_all)

    return rate


def verify_rate(ws: Workspace, sizes: Sizes) -> Figure:
    progress(f"figure 3: building a {sizes.verify_events:,}-event ledger to verify")
    ledger = ws.ledger("verify")
    per_aggregate = 1_000
    for index in range(max(1, sizes.verify_events // per_aggregate)):
        fill(ledger, Counter, f"verify-{index}", events=per_aggregate, per_save=100, keyid=ws.keyid)
    events = ledger.max_seq()

    progress(f"figure 3: verify_ledger with workers={CPUS}, then bare Ed25519 verify, in turn")
    bare_rate = bare_verifier(sizes.bare_signatures)
    bare_rate()  # warm up
    verify_rates: list[float] = []
    bare_rates: list[float] = []
    workers_used = 0
    for _ in range(sizes.verify_repeats):
        gc.collect()
        start = time.perf_counter()
        verified = verify_ledger(ledger.scan(), workers=CPUS)
        verify_rates.append(events / (time.perf_counter() - start))
        if verified.events != events:
            raise AssertionError(f"verified {verified.events} of {events} events")
        workers_used = verified.workers
        bare_rates.append(CPUS * bare_rate())
    ratio = paired_ratio(verify_rates, bare_rates)
    return Figure(
        id="verify_rate",
        title=f"Full ledger verification, {events:,} events",
        unit="events/s",
        measurement=statistics.median(verify_rates),
        measurement_label=f"verify_ledger(ledger.scan(), workers={CPUS}), reads included",
        baseline=statistics.median(bare_rates),
        baseline_label=f"bare cryptography Ed25519 verify, 1 core x {CPUS} cores",
        ratio=ratio,
        ratio_label="verify_ledger / (bare verify x cores) (median of per-run ratios)",
        budget="ratio >= 0.8",
        passed=ratio >= 0.8,
        details={
            "events": events,
            "cpu_count": CPUS,
            "workers_used": workers_used,
            "verify_events_per_s_per_run": verify_rates,
            "bare_verify_x_cores_per_s_per_run": bare_rates,
            "bare_signatures": sizes.bare_signatures,
        },
    )


# Figure 4.


def load_at_version(ws: Workspace, sizes: Sizes) -> Figure:
    events = sizes.replay_events
    progress(f"figure 4: building two {events:,}-event aggregates (with / without snapshots)")
    with_snapshots, without = ws.ledger("replay-snapshots"), ws.ledger("replay-plain")
    snapshotted = fill(
        with_snapshots, SnapshotCounter, "replay", events=events, per_save=500, keyid=ws.keyid
    )
    plain = fill(without, Counter, "replay", events=events, per_save=500, keyid=ws.keyid)
    assert with_snapshots.snapshots is not None
    snapshots = len(list(with_snapshots.snapshots.get(snapshotted.id)))
    if snapshots != events // SNAPSHOT_INTERVAL:
        raise AssertionError(f"expected {events // SNAPSHOT_INTERVAL} snapshots, found {snapshots}")

    version = events - 7
    progress(f"figure 4: loading version {version:,}")

    def load_ms(ledger: Ledger, kind: type[Counter], counter: Counter) -> float:
        # Binding events (one per snapshot) take versions but count nothing.
        bumps = sum(
            isinstance(e, kind.Bumped) for _, e in ledger.verified_events(counter.id, lte=version)
        )

        def load() -> None:
            mapper = ledger.mapper
            assert isinstance(mapper, SealingMapper)
            mapper.forget_verified()  # cold: every record read is verified
            loaded = ledger.load(kind, counter.id, version=version)
            if loaded.version != version or loaded.count != bumps:
                raise AssertionError(f"loaded version {loaded.version}, count {loaded.count}")

        load()
        return 1000 * statistics.median(timed(load) for _ in range(sizes.load_repeats))

    measurement = load_ms(with_snapshots, SnapshotCounter, snapshotted)
    baseline = load_ms(without, Counter, plain)
    replayed = version - (version // SNAPSHOT_INTERVAL) * SNAPSHOT_INTERVAL
    return Figure(
        id="load_old_version",
        title=f"Load one aggregate at version {version:,} of {events:,}",
        unit="ms",
        measurement=measurement,
        measurement_label=f"snapshot every {SNAPSHOT_INTERVAL:,}, then replay {replayed:,} events",
        baseline=baseline,
        baseline_label=f"no snapshots: replay all {version:,} events",
        ratio=baseline / measurement,
        ratio_label="speed-up (without / with snapshots)",
        budget="<= 20 ms at 100,000 events (issue 5; reported only)",
        passed=None,
        details={
            "events": events,
            "version": version,
            "snapshots": snapshots,
            "events_replayed_with_snapshots": replayed,
            "repeats": sizes.load_repeats,
        },
    )


# Output.


def format_value(value: float, unit: str) -> str:
    if unit == "events/s":
        return f"{value:,.0f} {unit}"
    return f"{value:,.3f} {unit}" if value < 100 else f"{value:,.1f} {unit}"


def print_text(figures: list[Figure], meta: dict[str, Any]) -> None:
    print(
        f"Chassis ledger benchmark ({meta['mode']}): {meta['cpu_count']} CPUs, "
        f"Python {meta['python']}, eventsourcing {meta['eventsourcing']}, "
        f"{meta['seconds']:.0f} s"
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


def run(sizes: Sizes) -> list[Figure]:
    benchmarks = (single_event_saves, batched_saves, verify_rate, load_at_version)
    with contextlib.ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="chassis-bench-")))
        ws = Workspace(root, stack)
        return [benchmark(ws, sizes) for benchmark in benchmarks]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, finishes in under 30 s")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    figures = run(QUICK if args.quick else FULL)
    meta = {
        "mode": "quick" if args.quick else "full",
        "cpu_count": CPUS,
        "python": platform.python_version(),
        "eventsourcing": package_version("eventsourcing"),
        "seconds": time.perf_counter() - start,
    }
    if args.json:
        report = {**meta, "figures": [{**asdict(f), "verdict": f.verdict} for f in figures]}
        print(json.dumps(report, indent=2))
    else:
        print_text(figures, meta)
    return 0


if __name__ == "__main__":
    sys.exit(main())
