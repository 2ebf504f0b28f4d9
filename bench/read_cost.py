"""What verifying every read costs a deploy (issue 10: under 10 % of its ledger time).

Runs real deploys in-process on the embedded default (three local hosts, the
sample app, SQLite): v1, then v2, then a rollback to v1, each with a fresh
``Ledger`` as a new CLI process would have (no signature remembered as
verified). It times, in the same run:

- *ledger time*: wall time inside the ledger (every outermost call into a
  ``Ledger`` method, projections' catch-up and the mapper included);
- *verification time*: wall time inside ``SealingMapper.verified_event`` minus
  the parsing the old read path did too (``parse_record``), i.e. the record
  rules, the trust fold's judgement and the signature checks.

Prints the ratio; the budget is < 0.10. Hosts' own work (upload, start,
health) is not ledger time and is left out of both.

Run: .venv/bin/python bench/read_cost.py [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

import ledger.mapper as mapper_module  # noqa: E402
from adapters.connectors.local import LocalConnector  # noqa: E402
from adapters.supervisors.direct import DirectSupervisor  # noqa: E402
from chassis.engine.deploy import DeployOptions, deploy  # noqa: E402
from chassis.engine.releases import add_release  # noqa: E402
from chassis.engine.rollback import rollback  # noqa: E402
from chassis.keyring import load_acting_key  # noqa: E402
from chassis.sample_app import build_sample_release  # noqa: E402
from chassis.stack.spec import load_stack  # noqa: E402
from chassis.trust_admin import init_workspace  # noqa: E402
from chassis.workspace import Workspace  # noqa: E402
from ledger.application import Ledger  # noqa: E402
from ledger.mapper import SealingMapper  # noqa: E402
from ledger.storage import open_ledger  # noqa: E402

BUDGET = 0.10


class Clock:
    """Accumulates wall time of outermost calls (nested calls count once)."""

    def __init__(self) -> None:
        self.total = 0.0
        self.depth = 0

    def wrap(self, function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            self.depth += 1
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.depth -= 1
                if self.depth == 0:
                    self.total += time.perf_counter() - started

        return timed


def instrument() -> tuple[Clock, Clock, Clock]:
    ledger_clock, verify_clock, parse_clock = Clock(), Clock(), Clock()
    methods = ("append", "update", "load", "find", "trust", "verified_events", "records")
    for name in (*methods, "scan", "max_seq", "verified_trust"):
        setattr(Ledger, name, ledger_clock.wrap(getattr(Ledger, name)))
    # The mapper is also reached from projections' catch-up, outside Ledger's methods.
    original = SealingMapper.verified_event
    SealingMapper.verified_event = ledger_clock.wrap(verify_clock.wrap(original))  # type: ignore[method-assign]
    parse = mapper_module.parse_record  # type: ignore[attr-defined]
    mapper_module.parse_record = parse_clock.wrap(parse)  # type: ignore[attr-defined]
    return ledger_clock, verify_clock, parse_clock


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    clocks = instrument()
    runs = [scenario(*clocks) for _ in range(args.runs)]
    ratios = sorted(r["ratio"] for r in runs)
    ratio = statistics.median(ratios)
    verdict = "PASS" if ratio < BUDGET else "FAIL"
    result = {
        "commands": "release add v1, v2; deploy v1; deploy v2; rollback to v1 (3 local hosts)",
        "runs": runs,
        "median_ratio": round(ratio, 4),
        "budget": f"< {BUDGET}",
        "verdict": verdict,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['commands']}, {args.runs} runs:")
        for run in runs:
            print(
                f"  ledger {run['ledger_s'] * 1000:7.1f} ms, read verification "
                f"{run['verification_s'] * 1000:6.1f} ms, ratio {run['ratio']:.3f} "
                f"({run['wall_s']:.1f} s wall)"
            )
        print(f"  median ratio {ratio:.3f} (budget < {BUDGET}) {verdict}")
    return 0 if ratio < BUDGET else 1


def scenario(ledger_clock: Clock, verify_clock: Clock, parse_clock: Clock) -> dict[str, float]:
    """One run of the commands; the clocks' totals for it."""
    for clock in (ledger_clock, verify_clock, parse_clock):
        clock.total = 0.0
    root = Path(tempfile.mkdtemp(prefix="chassis-read-cost-")) / "demo"
    keys = root.parent / "keys"
    init_workspace(root, name="demo", key_name="bench", keys=keys, ledger_url=None, example=True)
    ws = Workspace(root)
    stack_text = ws.stack_file.read_text()
    for port in (8080, 8081):
        stack_text = stack_text.replace(str(port), str(free_port()))
    ws.stack_file.write_text(stack_text)
    stack = load_stack(ws.stack_file)
    key = load_acting_key(keys, ws.settings().default_key)
    started = time.perf_counter()
    try:
        for label in ("v1", "v2"):
            bundle, _ = build_sample_release(root / "dist", label)
            with _command(ws, key) as ledger:
                add_release(ledger, ws, "demo", label, bundle, {})
        for label in ("v1", "v2"):
            with _command(ws, key) as ledger:
                options = DeployOptions(max_parallel=3)
                deploy(
                    ledger, ws, stack, app="demo", environment="dev", profile="ternary-split-3",
                    label=label, options=options, progress=_quiet,
                )
        with _command(ws, key) as ledger:
            rollback(
                ledger, ws, app="demo", environment="dev", to="v1", max_parallel=3,
                progress=_quiet,
            )
    finally:
        for host in ("dev-1", "dev-2", "dev-3"):
            supervisor = DirectSupervisor(
                LocalConnector(host), str(root / ".chassis" / "hosts" / host)
            )
            for component in ("gateway", "api", "worker"):
                supervisor.stop(component)
    wall = time.perf_counter() - started
    extra = verify_clock.total - parse_clock.total
    return {
        "wall_s": round(wall, 3),
        "ledger_s": round(ledger_clock.total, 4),
        "verification_s": round(extra, 4),
        "ratio": round(extra / ledger_clock.total, 4),
    }


@contextlib.contextmanager
def _command(ws: Workspace, key: Any) -> Iterator[Ledger]:
    """One command: its own ledger, as a fresh CLI process would have."""
    ledger = open_ledger(ws.storage(), key)
    try:
        yield ledger
    finally:
        ledger.close()


def _quiet(_: str) -> None:
    pass


if __name__ == "__main__":
    sys.exit(main())
