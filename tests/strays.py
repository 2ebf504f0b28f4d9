"""A stranger on a component's port: a real ``python -m http.server`` that is
none of ours and answers ``/healthz`` with 200, for the tests that check the
health gate, ``reconcile`` and a deploy tell it from the process Chassis
started (``tests/adapters/test_port_owner.py``,
``tests/engine/test_health_owns_port.py``)."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path


def wait_listening(address: str, port: int, timeout: float = 10.0) -> None:
    """Return once something accepts connections on ``address:port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((address, port), 0.2):
            return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on {address}:{port}")


@contextlib.contextmanager
def stray_server(address: str, port: int, site: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A real ``python -m http.server``, none of ours, listening on
    ``address:port`` and answering ``/healthz`` with 200 (served from ``site``)."""
    site.mkdir(exist_ok=True)
    (site / "healthz").write_text("ok, says a stranger\n")
    argv = [sys.executable, "-m", "http.server", str(port), "--bind", address]
    server = subprocess.Popen(
        [*argv, "--directory", str(site)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_listening(address, port)
        yield server
    finally:
        server.terminate()
        server.wait(10)
