"""N real sshd hosts outside pytest, for benchmarks: the ``sshd_hosts``
starter of :mod:`tests.sshd` (the same hosts as the ``ssh_hosts`` fixture),
on addresses the test suite does not use."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from tests.sshd import SSHDUnavailable, SSHTestHost, sshd_hosts

FIRST_ADDRESS = 31
"""Hosts are 127.0.0.31, .32, … (the test suite uses .11-.21)."""

__all__ = ["FIRST_ADDRESS", "SSHDUnavailable", "SSHTestHost", "bench_hosts"]


@contextlib.contextmanager
def bench_hosts(base: Path, count: int, *, prefix: str = "h") -> Iterator[list[SSHTestHost]]:
    with sshd_hosts(base, count, first=FIRST_ADDRESS, prefix=prefix) as hosts:
        yield hosts
