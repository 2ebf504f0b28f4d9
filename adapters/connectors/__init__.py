"""Connectors: where commands run (``local`` subprocesses, ``ssh`` via paramiko).

Both implement :class:`Connector`, so host operations are written once.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from adapters.connectors.base import CommandResult, Connector
from adapters.connectors.local import LocalConnector

if TYPE_CHECKING:
    from adapters.connectors.ssh import (
        SSHConnector,
        SSHSettings,
        add_known_host,
        fetch_host_key,
        fingerprint,
        known_hosts_name,
    )

_SSH = {
    "SSHConnector",
    "SSHSettings",
    "add_known_host",
    "fetch_host_key",
    "fingerprint",
    "known_hosts_name",
}


def __getattr__(name: str) -> Any:
    """The SSH names, imported on first use: fabric and paramiko cost a
    command that never connects over SSH (``import adapters.connectors.base``
    runs this package first) a quarter of a second."""
    if name in _SSH:
        return getattr(importlib.import_module("adapters.connectors.ssh"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
