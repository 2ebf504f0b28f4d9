"""The host inventory fact: a command to run on the host and a pure parser.

``HostInventory.command(roots)`` says how to run the probe (argv plus the script
on stdin); a connector runs it, and ``HostInventory.parse`` turns its stdout into
``HostFacts``. Nothing here executes anything.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable
from dataclasses import dataclass

from adapters.facts.model import HostFacts, parse_probe_output
from adapters.facts.probe import probe_source

__all__ = ["HostInventory", "ProbeCommand"]


@dataclass(frozen=True)
class ProbeCommand:
    """Run ``argv`` with ``stdin`` (the probe, UTF-8) fed to it.

    ``shell()`` is argv quoted for ``sh -c``, as ``Connector.run(command, stdin=...)``
    takes it.
    """

    argv: tuple[str, ...]
    stdin: bytes

    def shell(self) -> str:
        return shlex.join(self.argv)


class HostInventory:
    """Hostname, OS, CPU, memory, disks, boot time, Python and GPUs of one host."""

    @staticmethod
    def command(roots: Iterable[str], python: str = "python3") -> ProbeCommand:
        """``python3 - ROOT...`` with the probe's source on stdin.

        The roots travel as arguments (``sys.argv[1:]`` in the probe); each
        gets a ``DiskFacts``. Returns the command; runs nothing.
        """
        roots = list(roots)
        if not roots:
            raise ValueError("HostInventory.command needs at least one root")
        return ProbeCommand(argv=(python, "-", *roots), stdin=probe_source().encode("utf-8"))

    @staticmethod
    def parse(stdout: str | bytes) -> HostFacts:
        """The probe's stdout as ``HostFacts``; raises ``FactsError`` if invalid."""
        return parse_probe_output(stdout)
