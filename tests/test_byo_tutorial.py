"""guides/deployment.md's "Bring your own app" runs as written (issue 13, item 7).

Every ``sh`` block of the section, in order, runs in one bash script from an
empty directory, with the installed ``chassis`` on PATH and a free port in
place of 8080. A ``curl`` line commented with what it prints is checked.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.engine.conftest import free_port

# Long (deploys, health windows, many processes): the parallel run starts
# these first (tests/scheduling.py).
pytestmark = pytest.mark.slow

GUIDE = Path(__file__).resolve().parents[1] / "guides" / "deployment.md"
SECTION = "## Bring your own app"
EXPECTED_OUTPUT = re.compile(r"^(curl -s \S+)\s+# (.+)$")


def tutorial_blocks() -> list[str]:
    text = GUIDE.read_text()
    start = text.index(SECTION)
    end = text.index("\n## ", start + len(SECTION))
    return re.findall(r"```sh\n(.*?)```", text[start:end], re.DOTALL)


def as_checked_script(blocks: list[str], port: int) -> str:
    lines = ["set -euo pipefail"]
    for block in blocks:
        for line in block.replace("8080", str(port)).splitlines():
            expected = EXPECTED_OUTPUT.match(line)
            if expected:
                command, output = expected.groups()
                check = f'test "$({command})" = {output!r}'
                line = f'{check} || {{ echo "{command}: not {output}"; exit 1; }}'
            lines.append(line)
    return "\n".join(lines) + "\n"


def test_the_tutorial_has_the_steps_it_promises() -> None:
    script = "".join(tutorial_blocks())
    for step in ("chassis init", "tar czf", "release add", "deploy", "rollback", "remove"):
        assert step in script
    assert sum(bool(EXPECTED_OUTPUT.match(line)) for line in script.splitlines()) == 3


def test_bring_your_own_app_runs_as_written(tmp_path: Path) -> None:
    port = free_port()
    script = as_checked_script(tutorial_blocks(), port)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    try:
        done = subprocess.run(
            ["bash", "-c", script],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    finally:
        # A failure half-way must not leave the app running for other tests.
        subprocess.run(
            ["chassis", "remove", "--yes", "--reason", "test cleanup"],
            cwd=tmp_path / "hello",
            env=env,
            capture_output=True,
            timeout=60,
        )
    workspace = tmp_path / "hello"
    history = subprocess.run(
        ["chassis", "history", "--json"], cwd=workspace, env=env, capture_output=True, text=True
    )
    assert history.returncode == 0, history.stderr
    assert "first deploy" in history.stdout
    assert "rollback" in history.stdout
    assert "remove" in history.stdout
