"""Pre-flight: what an operation needs, checked before its intent is recorded.

Intent first, I/O next (DESIGN.md §1, principle 2): once ``operation-started``
is appended the lease is held and hosts are about to change, so whatever can
be known before that is checked before it. A plan that was bound to fail half
way (a relative root on an SSH host, a health gate that cannot pass, a host
that does not answer) would otherwise cost every other host a deploy and a
restore, and leave a crash to recover from (principle 8). Before deploy or
rollback appends its intent:

- :func:`check_plan`: the plan's values are what the host steps accept: every
  root absolute, ports in 1..65535, each component's process spec, systemd
  unit and health gate built exactly as the executor builds them (pure:
  nothing runs). Exit 3. (Env names and values are checked at input, and
  again by the env-file writer at the ``configure`` step.)
- :func:`reach_hosts`: every host the operation will touch answers: an SSH
  session opens with the host's pinned key and runs a command. All hosts in
  parallel, each within a bounded time. Exit 11, one line per host.
- :func:`check_bundle`: the bundle in the store has the sha256 its release
  recorded. Exit 8 (different bytes: corruption or tampering).

A failure records nothing and changes nothing.

:func:`worker_failure` is the other half of "no dead ends": whatever a host
worker did not expect becomes that host's recorded step failure, and the
operation restores as it does for any failure.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path

from adapters.connectors.base import Connector
from adapters.errors import ConnectorError, one_line
from adapters.supervisors.base import ProcessSpec
from adapters.supervisors.systemd import render_unit
from chassis.bundles import sha256_file
from chassis.engine.executor import StepFailed, health_check, health_gate
from chassis.engine.plan import ComponentPlan, HostPlan, Plan
from chassis.errors import ChassisError
from chassis.workspace import Workspace
from ledger.hosts import HostSettings, PinnedHostKey

CONNECT_TIMEOUT_S = 10.0
"""Per host: TCP connect, SSH banner and authentication each."""
DEADLINE_S = 45.0
"""The whole reachability check: hosts that have not answered by then have failed."""
NOTHING_DONE = "nothing was recorded or changed"


class PlanRefused(ChassisError):
    """A value of the plan that a host step would refuse (exit 3)."""

    exit_code = 3


class HostsUnreachable(ChassisError):
    """A host of the operation does not answer, or not with its pinned key (exit 11)."""

    exit_code = 11


class BundleCorrupt(ChassisError):
    """The bundle in the store is not the bytes its release recorded (exit 8)."""

    exit_code = 8


# -- the plan's values ------------------------------------------------------------------


def check_plan(plan: Plan) -> None:
    """Raise ``PlanRefused`` naming the host, component and value a step would refuse."""
    for host in plan.hosts:
        problem = _host_problem(plan, host)
        if problem is not None:
            raise PlanRefused(
                f"{plan.app}/{plan.environment} {plan.label}: host {host.host}: {problem}; "
                f"{NOTHING_DONE}"
            )


def _host_problem(plan: Plan, host: HostPlan) -> str | None:
    root = host.root
    if not posixpath.isabs(root):
        return (
            f"root {root!r} is not an absolute path (an ssh host's root is a directory "
            "on that host, such as /srv/app)"
        )
    for component in host.components:
        try:
            _check_component(plan, host, component)
        except (ValueError, KeyError, TypeError) as e:
            said = one_line(str(e) or type(e).__name__)
            named = said.startswith(f"component {component.name}:")
            return said if named else f"component {component.name}: {said}"
    return None


def _check_component(plan: Plan, host: HostPlan, component: ComponentPlan) -> None:
    """Build what the executor builds for ``component`` (``chassis.engine.executor``)."""

    def path(*parts: str) -> str:
        return "/".join([host.root.rstrip("/"), *parts])

    for name, port in component.ports.items():
        if not 1 <= port <= 65535:
            raise ValueError(f"port {name} = {port}: expected 1-65535")
    spec = ProcessSpec(
        component=component.name,
        release_id=plan.release_id,
        command=component.command,
        workdir=path("releases", plan.release_dir),
        env={},
        env_file=path("releases", plan.release_dir, f".env.{component.name}"),
        root=host.root,
        restart=component.restart_mode,
    )
    if host.supervisor == "systemd":
        render_unit(spec, unit_prefix=f"chassis-{plan.app}")
    check = health_check(component)
    if check is not None:
        health_gate(check)


# -- the bundle -------------------------------------------------------------------------


def check_bundle(path: Path, sha256: str, label: str) -> None:
    """Raise ``BundleCorrupt`` unless ``path`` hashes to ``sha256``."""
    found = sha256_file(path)
    if found != sha256:
        raise BundleCorrupt(
            f"{path}: the bundle of release {label} has sha256 {found}, but the release "
            f"recorded {sha256}: the store copy is corrupt or was replaced; {NOTHING_DONE} "
            "(put the original bundle back at that path)"
        )


# -- the hosts --------------------------------------------------------------------------


def reach_hosts(
    hosts: Sequence[tuple[str, HostSettings]],
    ws: Workspace,
    progress: Callable[[str], None],
    *,
    timeout: float | None = None,
    deadline: float | None = None,
    pins: Mapping[str, PinnedHostKey | None] | None = None,
    keep: dict[str, Connector] | None = None,
) -> None:
    """Open a session to every SSH host of ``hosts`` in parallel and run a
    command; raise ``HostsUnreachable`` naming each host that failed and why.

    ``pins``: each host's pin in the ledger, from a caller that holds the
    Host aggregates (else each is read with :func:`recorded_pin`). ``keep``
    receives the open connectors, for the operation that follows to use
    (``Operation.adopt``): the caller closes them; without it they are closed
    here.

    With several failures each is one ``progress`` line and the error names
    the hosts; with one the error is that host's line. Local hosts have
    nothing to reach. ``timeout`` bounds each connection step of a host
    (default :data:`CONNECT_TIMEOUT_S`), ``deadline`` the whole check
    (default :data:`DEADLINE_S`).
    """
    timeout = CONNECT_TIMEOUT_S if timeout is None else timeout
    deadline = DEADLINE_S if deadline is None else deadline
    remote = [(name, settings) for name, settings in hosts if settings.connector != "local"]
    if not remote:
        return
    progress(f"pre-flight: reaching {', '.join(name for name, _ in remote)}")
    pool = ThreadPoolExecutor(max_workers=min(16, len(remote)))
    try:
        futures: dict[str, Future[tuple[str | None, Connector | None]]] = {
            name: pool.submit(_reach, name, settings, ws, timeout, pins)
            for name, settings in remote
        }
        wait(futures.values(), timeout=deadline)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    problems: list[tuple[str, str]] = []
    for name, future in futures.items():
        if not future.done():
            problems.append((name, f"host {name}: no answer within {deadline:g}s"))
            future.add_done_callback(_close_late)
            continue
        problem, connector = future.result()
        if problem is not None:
            problems.append((name, problem))
        elif connector is not None and keep is not None and name not in keep:
            keep[name] = connector
        elif connector is not None:
            connector.close()
    if problems:
        raise unreachable(problems, len(hosts), progress)


def unreachable(
    problems: Sequence[tuple[str, str]], total: int, progress: Callable[[str], None]
) -> HostsUnreachable:
    """The error for the hosts that failed, ``(name, line)`` each: that line
    when one did; with several, each line as progress and the error naming them."""
    if len(problems) == 1:
        return HostsUnreachable(f"{problems[0][1]}; {NOTHING_DONE}")
    for _, line in problems:
        progress(line)
    names = ", ".join(name for name, _ in problems)
    return HostsUnreachable(
        f"{len(problems)} of {total} hosts cannot be reached ({names}); {NOTHING_DONE}"
    )


def _close_late(future: Future[tuple[str | None, Connector | None]]) -> None:
    """A host that answered after the deadline: nobody uses its connector."""
    if not future.cancelled() and future.exception() is None:
        connector = future.result()[1]
        if connector is not None:
            connector.close()


def _reach(
    name: str,
    settings: HostSettings,
    ws: Workspace,
    timeout: float,
    pins: Mapping[str, PinnedHostKey | None] | None,
) -> tuple[str | None, Connector | None]:
    """(None, the open connector) if ``name`` runs a command over a session
    checked against its pin; else (why not, None)."""
    from chassis.connect import connector_from_settings, recorded_pin  # fabric: only here

    connector = None
    try:
        pin = pins.get(name) if pins is not None else recorded_pin(ws, name)
        connector = connector_from_settings(name, settings, ws, connect_timeout=timeout, pin=pin)
        connector.connect()
        status = connector.command_status(timeout=timeout)
        if status != 0:
            connector.close()
            return (
                f"host {name} ({connector.where()}): a session opens but cannot run a "
                f"command (exit {status})"
            ), None
    except ConnectorError as e:
        if connector is not None:
            connector.close()
        return e.diagnostics(), None
    except Exception as e:  # a bad setting, a library's surprise: still this host's cause
        if connector is not None:
            connector.close()
        return f"host {name}: {type(e).__name__}: {one_line(str(e))}", None
    return None, connector


# -- what a host worker did not expect --------------------------------------------------


def worker_failure(e: Exception, steps: Sequence[str], *, default: str = "deploy") -> StepFailed:
    """``e``, raised by a host worker outside the failures it expects, as the
    step failure to record for that host before the operation restores.

    The step is the executor step that was running, found in the traceback
    (the step ``HostDeployment.run`` was at, or the step method raising),
    else ``default``.
    """
    methods = {"_" + step.replace("-", "_"): step for step in steps}
    step = default
    tb = e.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_qualname.startswith("HostDeployment."):
            at = tb.tb_frame.f_locals.get("step") if code.co_name == "run" else None
            if isinstance(at, str) and at in steps:
                step = at
            elif code.co_name in methods:
                step = methods[code.co_name]
        tb = tb.tb_next
    detail = (
        f"unexpected {type(e).__name__}: {one_line(str(e) or 'no message')} "
        "(a bug: please report it)"
    )
    return StepFailed(step, detail, {"error": type(e).__name__})
