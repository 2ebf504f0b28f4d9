"""Connectors for registered hosts: local subprocesses or SSH (fabric).

SSH host keys are checked against the workspace's own known-hosts file
(``.chassis/known_hosts``), never the operator's ``~/.ssh``: what a workspace
trusts is part of the workspace. ``chassis host trust-key`` pins a key.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import paramiko

from adapters.connectors.base import Connector
from adapters.connectors.local import LocalConnector
from adapters.connectors.ssh import (
    SSHConnector,
    SSHSettings,
    add_known_host,
    fetch_host_key,
    known_hosts_name,
)
from adapters.connectors.ssh import fingerprint as ssh_fingerprint
from chassis.errors import ChassisError
from chassis.workspace import Workspace
from ledger.hosts import Host, HostSettings

DEFAULT_CONNECT_TIMEOUT_S = 10.0
KNOWN_HOSTS = "known_hosts"


def known_hosts_path(ws: Workspace) -> Path:
    return ws.state_dir / KNOWN_HOSTS


def connector_for(
    host: Host, ws: Workspace, *, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S
) -> Connector:
    return connector_from_settings(host.name, host.settings, ws, connect_timeout=connect_timeout)


def connector_from_settings(
    name: str,
    settings: HostSettings,
    ws: Workspace,
    *,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
) -> Connector:
    if settings.connector == "local":
        return LocalConnector(name)
    assert settings.address is not None and settings.user is not None
    known_hosts = known_hosts_path(ws)
    known_hosts.touch(mode=0o600, exist_ok=True)
    return SSHConnector(
        SSHSettings(
            name=name,
            address=settings.address,
            port=settings.port,
            user=settings.user,
            key_file=Path(settings.key_file).expanduser() if settings.key_file else None,
            known_hosts=known_hosts,
            connect_timeout=connect_timeout,
        )
    )


class HostKeyPinError(ChassisError):
    exit_code = 11


def pin_host_key(
    ws: Workspace, host: Host, *, replace: bool, confirm: Callable[[str], bool], timeout: float
) -> tuple[str, str]:
    """Fetch the host's SSH key and pin it in the workspace known_hosts.

    Returns ``(fingerprint, outcome)`` where outcome is ``pinned``,
    ``already-pinned`` or ``declined``. A different key already pinned is
    refused unless ``replace`` (a changed key is what an attacker shows too).
    """
    settings = host.settings
    if settings.connector != "ssh" or settings.address is None:
        raise HostKeyPinError(f"host {host.name} is local: it has no SSH host key")
    keytype, key, fingerprint = fetch_host_key(settings.address, settings.port, timeout)
    path = known_hosts_path(ws)
    known = paramiko.HostKeys()
    if path.exists():
        known.load(str(path))
    pinned = (known.lookup(known_hosts_name(settings.address, settings.port)) or {}).get(keytype)
    if pinned is not None:
        if pinned.get_base64() == key:
            return fingerprint, "already-pinned"
        if not replace:
            raise HostKeyPinError(
                f"host {host.name} ({settings.address}:{settings.port}) now offers {fingerprint}, "
                f"but {path} pins {ssh_fingerprint(pinned)}; if the host was reinstalled, "
                "re-run with --replace"
            )
    if not confirm(fingerprint):
        return fingerprint, "declined"
    add_known_host(path, settings.address, settings.port, keytype, key)
    return fingerprint, "pinned"
