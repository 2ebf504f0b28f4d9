"""``chassis model swap``: point one component at another model.

A swap is a deploy of the installation's active release (the release and
profile of its last successful revision) with the component's model
overridden: the plan gives the component ``CHASSIS_MODEL_DIR`` of the new
model's newest manifest and records the override (``ModelRef.swapped``), so
the plan digest, the revision and a later ``chassis rollback`` all see it.
It runs through the normal engine lifecycle: the pre-flight (the model must
be complete on every host the component runs on, before anything stops),
the lease, the health gate, and on failure every touched host restored.

Overrides that earlier swaps recorded for *other* components of the running
plan are carried over; the stack file's ``model`` is used for the rest. A
later plain ``chassis deploy`` uses the stack file's ``model`` again for
every component (the swap is undone there) unless the file is changed.
"""

from __future__ import annotations

from dataclasses import replace

import msgspec

from chassis.engine.deploy import DeployOptions, DeployResult, Progress, deploy
from chassis.engine.operation import load_installation
from chassis.engine.plan import ModelRef, Plan
from chassis.errors import ChassisError, NotFound
from chassis.models.registry import ModelError, find_model, parse_ref
from chassis.stack.spec import Stack
from chassis.workspace import Workspace
from ledger.application import Ledger


def carried_overrides(plan: Plan) -> dict[str, str]:
    """component → model NAME of every swap the running ``plan`` recorded."""
    return {
        c.name: c.model.name
        for h in plan.hosts
        for c in h.components
        if isinstance(c.model, ModelRef) and c.model.swapped is True
    }


def swap(
    ledger: Ledger,
    ws: Workspace,
    stack: Stack,
    *,
    app: str,
    environment: str,
    component: str,
    model: str,
    options: DeployOptions,
    progress: Progress,
) -> DeployResult:
    """Deploy the active release with ``component`` on ``model``. ``NotFound``
    (exit 10) for an unknown installation, component or model."""
    if ledger.signer is None:
        raise ChassisError("swapping a model needs a signing key")
    if app != stack.app.name:
        raise NotFound(f"unknown app {app!r} (this workspace deploys {stack.app.name!r})")
    installation = load_installation(ledger, app, environment)
    if installation.last_successful is None:
        raise NotFound(f"{app}/{environment} has no successful revision to swap a model in")
    entry = installation.revision_entry(installation.last_successful)
    profile, label = str(entry["profile"]), str(entry["label"])
    if component not in stack.components:
        raise NotFound(
            f"no component {component!r} in {app} "
            f"(components: {', '.join(sorted(stack.components)) or 'none'})"
        )
    placed = {c for g in stack.profile(profile).groups.values() for c in g.components}
    if component not in placed:
        raise NotFound(
            f"component {component} is not placed by profile {profile} of {app}/{environment} "
            f"(placed: {', '.join(sorted(placed))})"
        )
    if parse_ref(model).revision is not None:
        raise ModelError(
            f"--model {model}: a swap runs the model's newest manifest; give NAME without @REV"
        )
    asset = find_model(ledger, model)  # NotFound (exit 10) lists the known models
    running = msgspec.convert(installation.plan_of(installation.last_successful), Plan)
    overrides = {
        c: m for c, m in carried_overrides(running).items() if c in placed and c != component
    }
    overrides[component] = asset.name
    progress(
        f"swapping {component} of {app}/{environment} to model {asset.name} "
        f"({str(asset.current['digest'])[:12]}…) on {label} (revision "
        f"{installation.last_successful}, profile {profile})"
    )
    return deploy(
        ledger,
        ws,
        stack,
        app=app,
        environment=environment,
        profile=profile,
        label=label,
        options=replace(options, model_overrides=overrides),
        progress=progress,
    )
