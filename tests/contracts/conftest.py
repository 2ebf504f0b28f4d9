"""The targets every contract suite runs against: a local host and an SSH host."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.connectors.base import Connector
from adapters.connectors.local import LocalConnector
from adapters.connectors.ssh import SSHConnector
from tests.sshd import SSHTestHost


@pytest.fixture(params=["local", "ssh"])
def connected(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Connector, Path]]:
    """An open connector and an empty root directory on its host."""
    connector: Connector
    if request.param == "local":
        root = tmp_path / "local-root"
        root.mkdir()
        connector = LocalConnector("local-1")
    else:
        ssh_host: SSHTestHost = request.getfixturevalue("ssh_host")
        root = ssh_host.root
        connector = SSHConnector(ssh_host.settings())
    with connector:
        yield connector, root
