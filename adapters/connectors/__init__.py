"""Connectors: where commands run (``local`` subprocesses, ``ssh`` via fabric).

Both implement :class:`Connector`, so host operations are written once.
"""

from __future__ import annotations

from adapters.connectors.base import CommandResult, Connector
from adapters.connectors.local import LocalConnector
from adapters.connectors.ssh import (
    SSHConnector,
    SSHSettings,
    add_known_host,
    fetch_host_key,
    fingerprint,
    known_hosts_name,
)

__all__ = [
    "CommandResult",
    "Connector",
    "LocalConnector",
    "SSHConnector",
    "SSHSettings",
    "add_known_host",
    "fetch_host_key",
    "fingerprint",
    "known_hosts_name",
]
