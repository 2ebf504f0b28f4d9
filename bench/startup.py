"""Start-up benchmark: how long a ``chassis`` command takes to start (issue 13, item 8).

Times, as subprocesses (the console script of the interpreter running this),
``chassis --version``, ``chassis --help`` and ``chassis status`` in a new
workspace (``chassis init``, nothing deployed: status opens and reads the
ledger and prints "nothing deployed yet"), and ``python -c pass`` as the
baseline, interleaved, median of N runs each. The main figure is each
command's ratio to the baseline in the same run; the budgets are absolute
(this repository's 2-core reference machine): ``--version`` ≤ 0.15 s and
``status`` ≤ 0.30 s.

The environment is this process's, so ``PYTHONDONTWRITEBYTECODE`` (no
``.pyc`` for the editable install: every start compiles every module it
imports) shows in the figures; the table says whether it is set.

Run: .venv/bin/python bench/startup.py [--runs N] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BUDGETS_S = {"--version": 0.15, "status": 0.30}


def chassis_script() -> list[str]:
    """The console script next to this interpreter, else ``python -m chassis``."""
    script = Path(sys.executable).with_name("chassis")
    return [str(script)] if script.exists() else [sys.executable, "-m", "chassis"]


def run_once(argv: list[str], cwd: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {done.returncode}:\n{done.stderr}")
    return elapsed


def measure(runs: int) -> dict[str, Any]:
    chassis = chassis_script()
    with tempfile.TemporaryDirectory(prefix="chassis-startup-") as tmp:
        root = Path(tmp)
        env = dict(os.environ)
        env.pop("CHASSIS_WORKSPACE", None)
        env.pop("CHASSIS_LEDGER", None)
        env.pop("CHASSIS_KEY", None)
        env["CHASSIS_KEYS_DIR"] = str(root / "keys")
        workspace = root / "shop"
        run_once([*chassis, "init", str(workspace), "--name", "shop"], root, env)
        commands = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "--version": [*chassis, "--version"],
            "--help": [*chassis, "--help"],
            "status": [*chassis, "status"],
        }
        for argv in commands.values():  # warm the page cache (and any .pyc)
            run_once(argv, workspace, env)
        samples: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(runs):  # interleaved: drift hits every command alike
            for name, argv in commands.items():
                samples[name].append(run_once(argv, workspace, env))
    medians = {name: statistics.median(times) for name, times in samples.items()}
    baseline = medians["python -c pass"]
    rows = []
    for name, median in medians.items():
        budget = BUDGETS_S.get(name)
        rows.append(
            {
                "command": name if name.startswith("python") else f"chassis {name}",
                "median_s": round(median, 4),
                "ratio": round(median / baseline, 2),
                "budget_s": budget,
                "verdict": None if budget is None else ("PASS" if median <= budget else "FAIL"),
            }
        )
    return {
        "runs": runs,
        "python": sys.version.split()[0],
        "PYTHONDONTWRITEBYTECODE": bool(os.environ.get("PYTHONDONTWRITEBYTECODE")),
        "rows": rows,
        "verdict": "FAIL" if any(r["verdict"] == "FAIL" for r in rows) else "PASS",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = measure(args.runs)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"start-up, median of {result['runs']} runs (Python {result['python']}, "
            f"PYTHONDONTWRITEBYTECODE {'set' if result['PYTHONDONTWRITEBYTECODE'] else 'unset'}):"
        )
        print(f"  {'COMMAND':<20} {'MEDIAN':>8} {'× PASS':>7}  BUDGET")
        for r in result["rows"]:
            budget = "" if r["budget_s"] is None else f"≤ {r['budget_s']:.2f} s {r['verdict']}"
            print(f"  {r['command']:<20} {r['median_s']:>7.3f}s {r['ratio']:>7.2f}  {budget}")
        print(f"verdict: {result['verdict']}")
    return 0 if result["verdict"] == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
