"""paramiko, imported without invoke.

``paramiko.config`` imports invoke (with it ``unittest.mock`` and more:
about a fifth of an SSH command's start) only to run the ``Match exec``
lines of an ssh_config. Chassis reads no ssh_config: every connection gets
an empty ``paramiko.SSHConfig`` and the workspace's own known_hosts. So
paramiko is imported here with invoke hidden (``import invoke`` raises
ImportError, which paramiko tolerates), unless something in this process
already imported either. fabric, which needs invoke, is imported only for
the exec fallback on hosts without ``python3`` (``adapters.connectors.ssh``),
and then imports invoke as usual.

Import paramiko from here, first: ``from adapters.connectors.paramiko_only
import paramiko``.
"""

from __future__ import annotations

import sys

if "paramiko" not in sys.modules and "invoke" not in sys.modules:
    sys.modules["invoke"] = None  # type: ignore[assignment]
    try:
        import paramiko.config
    finally:
        del sys.modules["invoke"]

import paramiko

__all__ = ["paramiko"]
