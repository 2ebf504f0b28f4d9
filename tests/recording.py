"""A real local connector that notes what it is asked to do on the host:
for tests that count round trips and host programs (nothing is faked)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from adapters.connectors.base import CommandResult
from adapters.connectors.local import LocalConnector


class RecordingLocal(LocalConnector):
    """``commands``: each command run; ``writes``: each file written with
    ``put_bytes``; ``programs``: each host program's source, with the
    ``step`` the test said it was in (``(step, source)``)."""

    def __init__(self, name: str = "h1") -> None:
        super().__init__(name)
        self.step = ""
        self.commands: list[str] = []
        self.writes: list[str] = []
        self.programs: list[tuple[str, str]] = []

    def run(
        self,
        command: str,
        *,
        timeout: float = 60.0,
        stdin: bytes | None = None,
        env: Mapping[str, str] | None = None,
        check: bool = False,
        display: str | None = None,
    ) -> CommandResult:
        self.commands.append(command)
        return super().run(
            command, timeout=timeout, stdin=stdin, env=env, check=check, display=display
        )

    def put_bytes(self, data: bytes, remote: str, *, mode: int | None = None) -> None:
        self.writes.append(remote)
        super().put_bytes(data, remote, mode=mode)

    def run_python(
        self,
        source: str,
        args: Sequence[str] = (),
        *,
        timeout: float = 60.0,
        stdin: bytes | None = None,
        display: str,
        quick: bool = False,
    ) -> CommandResult:
        self.programs.append((self.step, source))
        return super().run_python(
            source, args, timeout=timeout, stdin=stdin, display=display, quick=quick
        )
