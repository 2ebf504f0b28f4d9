"""What redaction costs a receipt (issue 17, item 4: at least 1,000 receipts/s).

A receipt's predicate is the operation's events: per host, every step with
its detail, evidence and the health gate's log tail. Redaction walks every
string of it (keys too). This times, in one process, on the same data:

- ``Redactor.data`` as receipts use it (one substring prefilter per string,
  the pattern passes only where it finds something that could be a secret;
  each text's redaction remembered for the rest of the backlog): each round
  starts a new redactor, so the first receipt pays for every text and the
  later ones only for what they do not share with earlier ones;
- the same with a new redactor for every receipt (nothing remembered from
  one receipt to the next: what one receipt alone costs);
- every string through all pattern passes (``scan_patterns``), which is
  what each string cost before the prefilter;
- ``json.dumps`` of the same data, the floor any walk over it pays.

CPU time (``time.process_time``), best of several rounds: this machine is
shared. Prints receipts/s and the ratios.

Run: .venv/bin/python bench/redaction.py [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from proofs.redaction import Redactor, scan_patterns  # noqa: E402

STEPS = ("upload", "verify", "unpack", "configure", "stop-old", "start", "health", "swap")
BUDGET = 1000.0


def receipt(n: int) -> dict[str, Any]:
    """Shaped like a three-host deploy's receipt predicate."""
    hosts: dict[str, Any] = {}
    for h in range(3):
        steps = [
            {
                "step": step,
                "ok": True,
                "detail": f"{step} on dev-{h}: release 4f2a{n:04x} at /srv/shop/releases/4f2a9c",
                "data": {
                    "bytes": 51234,
                    "sha256": "ab" * 32,
                    "elapsed_ms": 120 + n % 7,
                    "log": [
                        f"2026-12-06T08:00:{k:02d}Z gateway[12{k:02d}] 127.0.0.1 - "
                        f'"GET /healthz HTTP/1.1" 200 -'
                        for k in range(5 if step != "health" else 20)
                    ],
                },
            }
            for step in STEPS
        ]
        hosts[f"dev-{h}"] = {
            "steps": steps,
            "plan": {
                "command": "python3 app/gateway.py --port 8080 --upstream 127.0.0.1:8081",
                "env": {"LOG_LEVEL": "info", "CHASSIS_RELEASE_ID": "cd" * 32},
                "health": {"type": "http", "port": "http", "path": "/healthz"},
            },
        }
    return {"operation": "deploy", "revision": n, "hosts": hosts, "description": f"deploy v{n}"}


def every_string(obj: Any, scan: Callable[[str], str]) -> Any:
    """``obj`` with ``scan`` applied to every string (keys too), as ``Redactor.data`` walks."""
    if isinstance(obj, str):
        return scan(obj)
    if isinstance(obj, dict):
        return {scan(k): every_string(v, scan) for k, v in obj.items()}
    if isinstance(obj, list):
        return [every_string(item, scan) for item in obj]
    return obj


def best_rate(
    work: Callable[[], Callable[[dict[str, Any]], Any]], data: list[dict[str, Any]]
) -> float:
    """Receipts/s of the best of 5 rounds; ``work()`` is called at the start
    of each round for the function that handles one receipt."""
    best = float("inf")
    for _ in range(5):
        began = time.process_time()
        handle = work()
        for item in data:
            handle(item)
        best = min(best, time.process_time() - began)
    return len(data) / best


KEY = b"bench-redaction-key-32-bytes-long"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    data = [receipt(n) for n in range(200)]
    marker = Redactor(KEY).marker
    rates = {
        "redactor": best_rate(lambda: Redactor(KEY).data, data),
        "fresh_per_receipt": best_rate(lambda: lambda item: Redactor(KEY).data(item), data),
        "all_passes": best_rate(
            lambda: lambda item: every_string(item, lambda s: scan_patterns(s, marker)), data
        ),
        "json_dumps": best_rate(lambda: json.dumps, data),
    }
    result = {
        "receipts_per_s": round(rates["redactor"]),
        "fresh_redactor_per_receipt_per_s": round(rates["fresh_per_receipt"]),
        "all_passes_per_s": round(rates["all_passes"]),
        "json_dumps_per_s": round(rates["json_dumps"]),
        "speedup_vs_all_passes": round(rates["redactor"] / rates["all_passes"], 1),
        "cost_vs_json_dumps": round(rates["json_dumps"] / rates["redactor"], 1),
        "budget_receipts_per_s": BUDGET,
        "within_budget": rates["redactor"] >= BUDGET,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"redaction: {result['receipts_per_s']} receipts/s (a new redactor per receipt: "
            f"{result['fresh_redactor_per_receipt_per_s']}/s; "
            f"{result['speedup_vs_all_passes']}x every string through all passes: "
            f"{result['all_passes_per_s']}/s; {result['cost_vs_json_dumps']}x the time of "
            f"json.dumps: {result['json_dumps_per_s']}/s); budget >= {BUDGET:.0f}/s: "
            + ("ok" if result["within_budget"] else "OVER")
        )
    return 0 if result["within_budget"] else 1


if __name__ == "__main__":
    sys.exit(main())
