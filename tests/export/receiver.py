"""A real HTTP receiver for export tests, run as its own process.

``python -m tests.export.receiver --port P --store FILE [--exit-after N] [--status CODE]``

Every POST is recorded in FILE as one JSON line ``{"path", "key", "ce_id",
"content_type", "body"}`` (``key`` = the ``Idempotency-Key`` header, ``body``
the raw body as text), once per key: a POST whose key is already stored (in
this run or an earlier one on the same FILE) is answered 200 and recorded
only as ``{"duplicate": key}``, so tests can count duplicates.
``--exit-after N`` makes the process die (``os._exit``, no reply, like a
crash) right after storing its Nth new item; ``--status CODE`` answers every
POST with CODE and stores nothing.
"""

from __future__ import annotations

import argparse
import json
import os
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--exit-after", type=int, default=0)
    parser.add_argument("--status", type=int, default=200)
    args = parser.parse_args()
    store: Path = args.store
    seen: set[str] = set()
    if store.exists():
        for line in store.read_text().splitlines():
            entry = json.loads(line)
            if "key" in entry:
                seen.add(entry["key"])
    stored = 0

    def append(entry: dict[str, Any]) -> None:
        with store.open("a") as out:
            out.write(json.dumps(entry, sort_keys=True) + "\n")
            out.flush()
            os.fsync(out.fileno())

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            nonlocal stored
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if args.status != 200:
                self.reply(args.status, b'{"error": "refused by --status"}')
                return
            key = self.headers.get("Idempotency-Key") or ""
            if key in seen:
                append({"duplicate": key})
            else:
                append(
                    {
                        "path": self.path,
                        "key": key,
                        "ce_id": self.headers.get("ce-id"),
                        "content_type": self.headers.get("Content-Type"),
                        "body": body.decode("utf-8"),
                    }
                )
                seen.add(key)
                stored += 1
                if args.exit_after and stored >= args.exit_after:
                    os._exit(3)
            self.reply(200, b"{}")

        def reply(self, status: int, payload: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", args.port), Handler)
    print(f"listening on {args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
