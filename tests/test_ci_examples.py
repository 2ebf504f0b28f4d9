"""The CI examples of guides/operations.md run as written (issue 13, item 4).

The GitHub Actions workflow and the GitLab CI job are parsed as YAML; the
steps that run ``chassis`` run in bash exactly as written, with the CI
system's variables and secrets set as that system would, on a fresh
checkout (``chassis.toml`` and ``dist/`` only) against a ledger an admin
set up, on SQLite and PostgreSQL. The install step is not run (the tests
use the installed project) but must install this project's distribution.
Each system runs two tags on two fresh checkouts: a runner that has never
seen the ledger deploys v1, another upgrades to v2.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ledger.keys import load_keypair
from tests.conftest import Runner
from tests.engine.conftest import free_port

# Long (deploys, health windows, many processes): the parallel run starts
# these first (tests/scheduling.py).
pytestmark = pytest.mark.slow

GUIDE = (Path(__file__).resolve().parents[1] / "guides" / "operations.md").read_text()
INSTALL = "pip install 'chassis-ledger[postgres]'"

SERVER = """\
import http.server, os, sys

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"ok\\n" if self.path == "/healthz" else os.environ["VERSION"].encode() + b"\\n"
        self.send_response(200)
        self.end_headers()
        self.wfile.write(body)

http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""

STACK = """\
[app]
name = "shop"

[components.web]
command = "python3 app/server.py {port}"
ports = {{ http = {port} }}
env = {{ VERSION = "{version}" }}
health = {{ type = "http", port = "http", path = "/healthz", body_contains = "ok" }}

[profiles.single]
groups.web = {{ components = ["web"] }}

[environments.prod]
profile = "single"
hosts = [{{ name = "prod-1", connector = "local", root = "{root}" }}]
"""


def guide_yaml(first_line: str) -> dict[Any, Any]:
    for block in re.findall(r"```yaml\n(.*?)```", GUIDE, re.DOTALL):
        if block.startswith(first_line):
            loaded: dict[Any, Any] = yaml.safe_load(block)
            return loaded
    raise AssertionError(f"guides/operations.md has no yaml block starting {first_line!r}")


def github_job(secrets: dict[str, str], tag: str, sha: str) -> tuple[str, dict[str, str]]:
    """The workflow's chassis step as (script, env), expressions substituted."""
    workflow = guide_yaml("# .github/workflows/deploy.yml")
    assert workflow[True] == {"push": {"tags": ["v*"]}}  # YAML 1.1 reads `on` as true
    steps = workflow["jobs"]["deploy"]["steps"]
    assert any(s.get("run") == INSTALL for s in steps)
    (step,) = [s for s in steps if "chassis" in s.get("run", "") and s.get("run") != INSTALL]
    context = {f"secrets.{k}": v for k, v in secrets.items()}
    context |= {"github.ref_name": tag, "github.sha": sha}

    def expand(value: str) -> str:
        return re.sub(r"\$\{\{\s*([\w.]+)\s*\}\}", lambda m: context[m.group(1)], value)

    return step["run"], {k: expand(v) for k, v in step["env"].items()}


def gitlab_job(secrets: dict[str, str], tag: str, sha: str) -> tuple[str, dict[str, str]]:
    """The job's script without its install line, with GitLab's variables."""
    job = guide_yaml("# .gitlab-ci.yml")["deploy"]
    assert job["rules"] == [{"if": "$CI_COMMIT_TAG"}]
    script: list[str] = job["script"]
    assert script[0] == INSTALL
    return "\n".join(script[1:]), {**secrets, "CI_COMMIT_TAG": tag, "CI_COMMIT_SHA": sha}


def checkout(where: Path, tag: str, port: int, host_root: Path) -> Path:
    """What a CI runner has: the committed chassis.toml and the build's dist/."""
    where.mkdir(parents=True)
    version = tag.removeprefix("v")
    (where / "chassis.toml").write_text(STACK.format(port=port, version=version, root=host_root))
    (where / "dist").mkdir()
    # A reproducible build: the same tag gives the same bytes on every runner.
    with (
        gzip.GzipFile(where / "dist" / f"shop-{tag}.tar.gz", "wb", mtime=0) as packed,
        tarfile.open(fileobj=packed, mode="w") as bundle,
    ):
        data = SERVER.encode()
        info = tarfile.TarInfo("app/server.py")
        info.size, info.mode = len(data), 0o644
        bundle.addfile(info, io.BytesIO(data))
    return where


@pytest.fixture
def ci_secrets(
    run: Runner, ledger_url: str, isolation: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    """An admin's ledger and the CI key's secret, as the guide describes."""
    admin = tmp_path / "admin"
    run.ok("init", str(admin), "--name", "shop", "--ledger", ledger_url)
    monkeypatch.chdir(admin)
    run.ok("key", "new", "ci-bot", "--roles", "operator,checkpoint")
    key_file = isolation / "ci-bot.key"
    pem = key_file.read_text()
    monkeypatch.setenv("CI_BOT_KEYID", load_keypair(key_file).keyid)
    key_file.unlink()  # CI is its only user
    yield {"CHASSIS_SIGNING_KEY": pem, "CHASSIS_LEDGER_URL": ledger_url}


def run_job(script: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    bin_dir = Path(sys.executable).parent
    full = {**os.environ, **env, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(
        ["bash", "-e", "-c", script], cwd=cwd, env=full, capture_output=True, text=True, timeout=180
    )


@pytest.mark.parametrize("system", [github_job, gitlab_job], ids=["github", "gitlab"])
def test_the_ci_example_deploys_from_fresh_runners(
    system: Callable[[dict[str, str], str, str], tuple[str, dict[str, str]]],
    ci_secrets: dict[str, str],
    tmp_path: Path,
) -> None:
    port = free_port()
    host_root = tmp_path / "prod-1"
    last: Path | None = None
    try:
        for n, tag in enumerate(("v1.0.0", "v1.1.0", "v1.1.0"), start=1):
            script, env = system(ci_secrets, tag, f"{n:040x}")
            last = checkout(tmp_path / f"runner-{n}", tag, port, host_root)
            job = run_job(script, env, last)
            assert job.returncode == 0, f"{tag} on runner {n}:\n{job.stdout}\n{job.stderr}"
            assert ci_secrets["CHASSIS_SIGNING_KEY"].splitlines()[1] not in job.stdout + job.stderr
            served = subprocess.run(
                ["curl", "-s", f"http://127.0.0.1:{port}/"], capture_output=True, text=True
            )
            assert served.stdout == tag.removeprefix("v") + "\n"
        assert last is not None
        history = run_job("chassis history --env prod --json", ci_secrets, last)
        revisions = json.loads(history.stdout)["revisions"]
        # The third job (a tag already deployed) changed nothing on the hosts.
        assert [r["status"] for r in revisions] == ["superseded", "deployed", "noop"]
        assert {r["actor"] for r in revisions} == {os.environ["CI_BOT_KEYID"]}
    finally:
        if last is not None:
            run_job("chassis remove --env prod --yes --reason 'test cleanup'", ci_secrets, last)
