"""Property: whatever sequence of deploys, failed deploys, rollbacks and
recoveries ran, the installation replayed at every version (from snapshots
and events) equals the state the engine held in memory at that version."""

from __future__ import annotations

import contextlib
import copy
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.connectors.local import LocalConnector
from adapters.supervisors.direct import DirectSupervisor
from chassis.engine.deploy import DeployOptions, deploy
from chassis.engine.lifecycle import DeployInterrupted
from chassis.engine.recover import recover
from chassis.engine.rollback import RevisionNotFound, RollbackRefused, rollback
from chassis.keyring import load_acting_key
from chassis.sample_app import build_sample_release
from chassis.stack.spec import load_stack
from chassis.workspace import Workspace, keys_dir
from ledger.aggregate import LedgerAggregate
from ledger.application import Ledger
from ledger.errors import NotFoundError
from ledger.installations import Installation
from ledger.storage import open_ledger
from tests.conftest import Runner
from tests.engine.conftest import distinct_free_ports

# Long (deploys, health windows, many processes): the parallel run starts
# these first (tests/scheduling.py).
pytestmark = pytest.mark.slow


STEPS = st.lists(
    st.sampled_from(["v1", "v2", "v3-fails", "rollback", "interrupt-then-recover"]),
    min_size=2,
    max_size=5,
)
COMMON: dict[str, Any] = {"app": "shop", "environment": "dev", "profile": "ternary-split-3"}
ROLLBACK: dict[str, Any] = {"app": "shop", "environment": "dev", "to": None, "max_parallel": 3}


def record_held_states(ledger: Ledger) -> dict[int, dict[str, Any]]:
    """Wrap ``Ledger.append`` to keep the engine's in-memory state after each append."""
    held: dict[int, dict[str, Any]] = {}
    original = ledger.append

    def append(*aggregates: LedgerAggregate) -> Any:
        result = original(*aggregates)
        for aggregate in aggregates:
            if isinstance(aggregate, Installation):
                held[aggregate.version] = copy.deepcopy(aggregate.snapshot_state())
        return result

    ledger.append = append  # type: ignore[method-assign]
    return held


def interrupt(message: str) -> None:
    """A Ctrl-C as the first host starts deploying: the lease stays held."""
    if "deploying" in message:
        raise KeyboardInterrupt


def run_step(step: str, ledger: Ledger, ws: Workspace) -> None:
    stack = load_stack(ws.stack_file)
    options = DeployOptions(max_parallel=3)
    quiet = lambda _: None  # noqa: E731
    if step == "rollback":
        # With nothing to roll back to, rollback refuses before recording anything.
        with contextlib.suppress(RollbackRefused, RevisionNotFound, NotFoundError):
            rollback(ledger, ws, **ROLLBACK, progress=quiet)
    elif step == "interrupt-then-recover":
        found = ledger.find(Installation, Installation.id_for(Installation.key("shop", "dev")))
        running = {e["label"] for e in found.hosts.values()} if found else set()
        label = "v1" if running == {"v2"} else "v2"  # a release that is not already there
        with pytest.raises(DeployInterrupted):
            deploy(ledger, ws, stack, **COMMON, label=label, options=options, progress=interrupt)
        recover(ledger, ws, app="shop", environment="dev", progress=quiet)
    else:
        label = step.removesuffix("-fails")
        deploy(ledger, ws, stack, **COMMON, label=label, options=options, progress=quiet)


@contextmanager
def fresh_shop(run: Runner) -> Iterator[Workspace]:
    base = Path(tempfile.mkdtemp(prefix="prop-", dir=os.getcwd()))
    root = base / "shop"
    os.environ["CHASSIS_KEYS_DIR"] = str(base / "keys")  # a fresh root key per example
    run.ok("init", str(root), "--name", "shop", "--example")
    stack = root / "chassis.toml"
    gateway, api = distinct_free_ports()
    text = re.sub(r"\b8081\b", str(api), re.sub(r"\b8080\b", str(gateway), stack.read_text()))
    stack.write_text(text.replace("window_ms = 8000", "window_ms = 2500"))
    for version, config in (("v1", ()), ("v2", ()), ("v3", ("--config", "FAIL_HEALTH=1"))):
        bundle, _ = build_sample_release(base / "dist", version)
        run.ok("-w", str(root), "release", "add", version, "--artifact", str(bundle), *config)
    try:
        yield Workspace(root)
    finally:
        for host in ("dev-1", "dev-2", "dev-3"):
            supervisor = DirectSupervisor(
                LocalConnector(host), str(root / ".chassis" / "hosts" / host)
            )
            for component in ("gateway", "api", "worker"):
                supervisor.stop(component)


@pytest.mark.slow
@settings(
    max_examples=5,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=STEPS)
def test_replayed_state_equals_engine_state_at_every_version(
    run: Runner, steps: list[str]
) -> None:
    with fresh_shop(run) as ws:
        ledger = open_ledger(ws.storage(), load_acting_key(keys_dir(), ws.settings().default_key))
        try:
            held = record_held_states(ledger)
            for step in steps:
                run_step(step, ledger, ws)
            if not held:
                return
            key = Installation.id_for(Installation.key("shop", "dev"))
            for version, state in sorted(held.items()):
                replayed = ledger.load(Installation, key, version=version)
                assert replayed.snapshot_state() == state, f"version {version} after {steps}"
            final = ledger.load(Installation, key)
            assert final.version == max(held)
        finally:
            ledger.close()
