"""The engine's fixtures, reused: ``shop`` (the example stack on three local
hosts, releases v1..v3, v3 failing its health) and ``lab`` (the same on three
sshd hosts)."""

from tests.engine.conftest import shop  # noqa: F401
from tests.engine.test_deploy_ssh import lab  # noqa: F401
