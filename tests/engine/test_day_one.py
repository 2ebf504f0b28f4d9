"""Day-one commands: ``logs`` (read-only), ``restart`` and ``remove``
(recorded operations through the one lifecycle), on real local processes
and sshd hosts, SQLite and PostgreSQL ledgers.

Reproduced before: none of these existed; operators read
``.chassis/hosts/*/logs`` by hand and killed pids themselves.
"""

from __future__ import annotations

import json
import select
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

import pytest

from adapters.connectors.local import LocalConnector
from adapters.supervisors.direct import DirectSupervisor
from ledger.installations import Installation
from tests.conftest import Runner
from tests.engine.test_deploy_local import DEPLOY, get, port_of
from tests.engine.test_deploy_ssh import DEPLOY as LAB_DEPLOY
from tests.engine.test_deploy_ssh import lab  # noqa: F401 - the lab fixture
from tests.engine.test_lifecycle import backend, quick, running  # noqa: F401 - fixtures
from tests.engine.test_reconcile import events
from tests.sshd import SSHTestHost

# Long (deploys, health windows, many processes): the parallel run starts
# these first (tests/scheduling.py).
pytestmark = pytest.mark.slow


def history(run: Runner) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(run.ok("history", "shop", "--env", "dev", "--json").stdout)
    return found


def host_of(shop: Path, component: str) -> str:
    return next(h for h, comps in running(shop).items() if component in comps)


def test_logs_show_what_each_component_wrote(run: Runner, quick: Path) -> None:  # noqa: F811
    run.ok(*DEPLOY, "--release", "v1")
    rows = json.loads(run.ok("logs", "shop", "--env", "dev", "--json").stdout)
    assert {r["component"] for r in rows} == {"gateway", "api", "worker"}
    api_host = host_of(quick, "api")
    log = quick / ".chassis" / "hosts" / api_host / "logs" / "api.log"
    with log.open("a") as out:
        out.write("marker line one\nmarker line two\n")
    text = run.ok("logs", "shop", "--env", "dev", "--component", "api", "-n", "2").stdout
    assert text.splitlines() == [
        f"{api_host}/api | marker line one",
        f"{api_host}/api | marker line two",
    ]
    only = json.loads(run.ok("logs", "shop", "--env", "dev", "--host", api_host, "--json").stdout)
    assert [r["host"] for r in only] == [api_host]
    for args, message in (
        (("--component", "nope"), "no component 'nope'"),
        (("--host", "nohost"), "runs nothing on host 'nohost'"),
    ):
        result = run("logs", "shop", "--env", "dev", *args)
        assert result.exit_code == 10 and message in result.stderr, result.stderr
    before = run.ok("ledger", "log", "--json").stdout
    run.ok("logs", "shop", "--env", "dev")
    assert run.ok("ledger", "log", "--json").stdout == before, "logs records nothing"


def test_logs_follow_prints_new_lines_until_ctrl_c(run: Runner, quick: Path) -> None:  # noqa: F811
    run.ok(*DEPLOY, "--release", "v1")
    api_host = host_of(quick, "api")
    log = quick / ".chassis" / "hosts" / api_host / "logs" / "api.log"
    follower = subprocess.Popen(
        [
            sys.executable,
            "-X",
            "faulthandler",
            "-m",
            "chassis",
            "logs",
            "shop",
            "--env",
            "dev",
            "--component",
            "api",
            "-n",
            "0",
            "-f",
        ],
        cwd=quick,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # As from a terminal: a suite started in the background (`cmd &` in
        # a script) inherits SIGINT ignored, and Python then installs no
        # KeyboardInterrupt handler, so Ctrl-C could not be tested.
        preexec_fn=_default_sigint,
    )
    assert follower.stdout is not None and follower.stderr is not None
    # It says when it has taken the files' sizes: lines written after that show.
    said = _line_within(follower.stderr, 60)
    assert said == "following 1 log(s); Ctrl-C to stop\n", said
    with log.open("a") as out:
        out.write("followed line\n")
    shown = _line_within(follower.stdout, 30)
    follower.send_signal(signal.SIGINT)
    try:
        out_text, err = follower.communicate(timeout=30)
    except subprocess.TimeoutExpired:  # say where it hangs: -X faulthandler dumps on SIGABRT
        follower.send_signal(signal.SIGABRT)
        out_text, err = follower.communicate(timeout=30)
        pytest.fail(f"logs -f did not end on SIGINT (shown {shown!r}); stacks:\n{err}")
    assert follower.returncode == 0, err
    assert shown.rstrip("\n") == f"{api_host}/api | followed line", shown + out_text


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _line_within(stream: IO[str], seconds: float) -> str:
    """The stream's next line, or "" when none comes within ``seconds``."""
    ready, _, _ = select.select([stream], [], [], seconds)
    return stream.readline() if ready else ""


def test_restart_is_recorded_and_health_gated(run: Runner, quick: Path) -> None:  # noqa: F811
    run.ok(*DEPLOY, "--release", "v1")
    api_host = host_of(quick, "api")
    root = quick / ".chassis" / "hosts"
    supervisors = {
        h: DirectSupervisor(LocalConnector(h), str(root / h)) for h in ("dev-1", "dev-2", "dev-3")
    }
    pids = {
        h: {c: s.state(c).pid for c in running(quick).get(h, {})} for h, s in supervisors.items()
    }
    outcome = json.loads(
        run.ok("restart", "shop", "--env", "dev", "--component", "api", "--json").stdout
    )
    assert list(outcome) == [api_host] and outcome[api_host]["ok"] is True
    assert supervisors[api_host].state("api").pid != pids[api_host]["api"]
    for host, comps in pids.items():  # nothing else restarted
        for component, pid in comps.items():
            if component != "api":
                assert supervisors[host].state(component).pid == pid, (host, component)
    last = history(run)["revisions"][-1]
    assert (last["operation"], last["status"]) == ("restart", "deployed")
    assert "api" in last["description"]
    code, body = get(port_of(quick, "api"), "/healthz")
    assert code == 200 and "v1" in body
    everything = json.loads(run.ok("restart", "shop", "--env", "dev", "--json").stdout)
    assert sorted(everything) == ["dev-1", "dev-2", "dev-3"]
    missing = run("restart", "shop", "--env", "dev", "--component", "nope")
    assert missing.exit_code == 10
    run.ok("ledger", "verify")


def test_a_restart_that_fails_its_gate_exits_16_and_says_so(
    run: Runner,
    quick: Path,  # noqa: F811
) -> None:
    run.ok(*DEPLOY, "--release", "v1")
    api_host = host_of(quick, "api")
    (release,) = {p.resolve() for p in (quick / ".chassis" / "hosts" / api_host).glob("current")}
    (release / "app" / "api.py").write_text("raise SystemExit(3)\n")  # loaded already
    result = run("restart", "shop", "--env", "dev", "--component", "api", "--json")
    assert result.exit_code == 16, result.stderr
    outcome = json.loads(result.stdout)[api_host]
    assert outcome["ok"] is False and "restart failed at" in outcome["detail"]
    assert "NOT restored" in outcome["detail"], outcome["detail"]
    assert history(run)["lease"] is None
    run.ok("ledger", "verify")


def test_remove_retires_everywhere_and_rollback_brings_it_back(
    run: Runner,
    quick: Path,  # noqa: F811
) -> None:
    run.ok(*DEPLOY, "--release", "v1")
    refused = run("remove", "shop", "--env", "dev", "--reason", "test")
    assert refused.exit_code == 2 and "--yes" in refused.stderr
    result = json.loads(
        run.ok(
            "remove", "shop", "--env", "dev", "--reason", "env retired", "--yes", "--json"
        ).stdout
    )
    assert result["status"] == "deployed", result
    assert running(quick) == {}
    for host in ("dev-1", "dev-2", "dev-3"):
        assert not (quick / ".chassis" / "hosts" / host / "current").exists()
    retired = [e for e in events(quick) if isinstance(e, Installation.HostRetired)]
    assert sorted(e.host for e in retired) == ["dev-1", "dev-2", "dev-3"]
    assert json.loads(run.ok("status", "shop", "--env", "dev", "--json").stdout) == []
    last = history(run)["revisions"][-1]
    assert last["operation"] == "remove" and "env retired" in last["description"]
    again = run("remove", "shop", "--env", "dev", "--reason", "twice", "--yes")
    assert again.exit_code == 10
    run.ok("rollback", "shop", "--env", "dev")
    assert {c for comps in running(quick).values() for c in comps} == {"gateway", "api", "worker"}
    run.ok("ledger", "verify")


def test_restart_and_logs_over_ssh(
    run: Runner,
    lab: tuple[Path, list[SSHTestHost], dict[str, Path]],  # noqa: F811 - the fixture
) -> None:
    _, hosts, roots = lab
    run.ok(*LAB_DEPLOY, "--release", "v1")
    rows = json.loads(run.ok("logs", "lab", "--env", "lab", "-n", "5", "--json").stdout)
    assert {r["component"] for r in rows} == {"gateway", "api", "worker"}
    outcome = json.loads(run.ok("restart", "lab", "--env", "lab", "--json").stdout)
    assert sorted(outcome) == sorted(h.name for h in hosts)
    assert all(o["ok"] for o in outcome.values())
    result = json.loads(
        run.ok("remove", "lab", "--env", "lab", "--reason", "done", "--yes", "--json").stdout
    )
    assert result["status"] == "deployed"
    assert not any((roots[h.name] / "current").exists() for h in hosts)
    run.ok("ledger", "verify")


def test_short_commands_from_defaults(run: Runner, shop: Path) -> None:
    """``[defaults] env`` and an environment's ``profile`` make APP, --env and
    --profile optional; without them the error names the fix."""
    missing = run("deploy", "--release", "v1")
    assert missing.exit_code == 3 and "[defaults] env" in missing.stderr, missing.stderr
    stack = shop / "chassis.toml"
    text = stack.read_text()
    stack.write_text(text.replace("[environments.dev]\n", '[environments.dev]\nprofile = "nope"\n'))
    bad = run("stack", "validate")
    assert bad.exit_code == 3 and "environments.dev.profile: no profile 'nope'" in bad.stderr
    stack.write_text(
        '[defaults]\nenv = "dev"\n\n'
        + text.replace("[environments.dev]\n", '[environments.dev]\nprofile = "ternary-split-3"\n')
    )
    run.ok("deploy", "--release", "v1", "--message", "first")
    last = history(run)["revisions"][-1]
    assert (last["profile"], last["label"]) == ("ternary-split-3", "v1")
    assert "first" in last["description"]
    keys = json.loads(run.ok("key", "list", "--json").stdout)
    signer = next(k for k in keys if k["keyid"] == last["actor"])
    table = run.ok("history").stdout
    assert "BY" in table and signer["name"] in table.splitlines()[-2], table
    assert json.loads(run.ok("logs", "-n", "1", "--json").stdout)
    run.ok("restart", "--component", "worker")
    run.ok("redeploy")
    assert history(run)["revisions"][-1]["description"].startswith("redeploy v1")
