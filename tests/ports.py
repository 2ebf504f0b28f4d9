"""Ports for test servers, disjoint between pytest-xdist workers.

Asking the kernel for a free port (bind to 0) and using it later races with
every other worker doing the same: between the probe closing and the
server binding, another worker may get the same number. Each worker here
owns its own block below the kernel's ephemeral range (32768+), handed out
in turn and probed before use, so two workers never pick the same port.
"""

from __future__ import annotations

import itertools
import os
import socket

BASE = 20000
BLOCK = 1000
"""Up to 12 workers fit below 32768 (the kernel's ephemeral ports start there)."""


def _worker_index() -> int:
    name = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    digits = name.removeprefix("gw")
    return int(digits) % 12 if digits.isdigit() else 0


_next = itertools.cycle(range(BASE + _worker_index() * BLOCK, BASE + (_worker_index() + 1) * BLOCK))


def free_port(address: str = "127.0.0.1") -> int:
    """A port of this worker's block that nothing listens on at ``address`` now."""
    for _ in range(BLOCK):
        port = next(_next)
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((address, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in this worker's block on {address}")
