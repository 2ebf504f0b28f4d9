"""guides/model_assets.md's short demo runs as written (issue 15, item 7): a
model recorded, materialized to a local host (sent, then skipped, then
re-verified on the host), shown, cached, pinned, and its receipt listed."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from tests.conftest import Runner

GUIDE = Path(__file__).resolve().parents[2] / "guides" / "model_assets.md"


def demo_lines() -> list[str]:
    text = GUIDE.read_text()
    section = text[text.index("## A short demo") :]
    (block,) = re.findall(r"```sh\n(.*?)```", section, re.DOTALL)[:1]
    return [line for line in block.splitlines() if line.strip()]


def test_the_model_demo_runs_as_written(run: Runner, workspace: Path) -> None:
    (workspace / "chassis.toml").write_text(
        '[app]\nname = "shop"\n\n[environments.gpu]\n'
        'hosts = [{ name = "gpu-1", connector = "local", root = ".chassis/hosts/gpu-1" }]\n'
    )
    tiny = workspace / "tiny"
    (tiny / "weights").mkdir(parents=True)
    (tiny / "config.json").write_text('{"hidden": 64}\n')
    (tiny / "weights" / "part-1.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    (tiny / "weights" / "part-2.bin").write_bytes(os.urandom(512 * 1024))
    outputs = []
    for line in demo_lines():
        args = shlex.split(line.split("#")[0])
        assert args[0] == "chassis"
        done = subprocess.run(
            [sys.executable, "-m", "chassis", *args[1:]],
            cwd=workspace,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, f"{line}\n{done.stdout}\n{done.stderr}"
        outputs.append(done.stdout)
    placed = workspace / ".chassis" / "hosts" / "gpu-1" / "models" / "by-name" / "tiny"
    assert (placed / "weights" / "part-1.bin").read_bytes() == (
        tiny / "weights" / "part-1.bin"
    ).read_bytes()
    shown = json.loads(run.ok("model", "show", "tiny", "--json").stdout)
    assert [p["host"] for p in shown["placements"]] == ["gpu-1"]
    assert shown["placements"][0]["pinned"] is True
    receipts = json.loads(run.ok("receipts", "list", "--json").stdout)
    materialized = [r for r in receipts if r["operation"] == "materialize"]
    # The dry run records nothing; the two runs after it each get a receipt.
    assert len(materialized) == 2 and {r["status"] for r in materialized} == {"succeeded"}
    run.ok("ledger", "verify")
