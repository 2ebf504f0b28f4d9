"""Export tests: the real receiver process (``tests.export.receiver``) and helpers."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests import ports

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    return ports.free_port()



class Receiver:
    """``python -m tests.export.receiver`` on a port, recording into a store file."""

    def __init__(self, store: Path, port: int | None = None) -> None:
        self.store = store
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *options: str) -> Receiver:
        command = [sys.executable, "-m", "tests.export.receiver"]
        command += ["--port", str(self.port), "--store", str(self.store), *options]
        self.process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"receiver exited with {self.process.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"receiver did not listen on {self.port}")

    def wait(self, timeout: float = 10) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def entries(self) -> list[dict[str, Any]]:
        if not self.store.exists():
            return []
        return [json.loads(line) for line in self.store.read_text().splitlines()]

    def records(self) -> list[dict[str, Any]]:
        """Stored POSTs (first arrivals only)."""
        return [e for e in self.entries() if "key" in e]

    def duplicates(self) -> list[str]:
        return [e["duplicate"] for e in self.entries() if "duplicate" in e]
