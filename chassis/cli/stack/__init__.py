"""``chassis stack …``: the stack file and its compiled topology."""

from __future__ import annotations

import click

from chassis.cli.lazy import Lazy, LazyGroup

COMMANDS = {
    "deploy": Lazy(  # 'chassis deploy' under another name
        "chassis.cli.deploy_cmd:deploy_command",
        "Deploy RELEASE of APP to ENV: upload, verify on the host, unpack, configure, start, "
        "health-gate, swap; restore the previous release if it fails.",
    ),
    "show": Lazy(
        "chassis.cli.stack.show:show_command",
        "The compiled topology: node groups, their components, the host chosen for each and why.",
    ),
    "validate": Lazy(
        "chassis.cli.stack.validate:validate_command",
        "Check chassis.toml: types, unknown keys, references between sections.",
    ),
}


@click.group(
    "stack",
    cls=LazyGroup,
    lazy=COMMANDS,
    epilog="Example: chassis stack show --profile ternary-split-3 --env dev",
)
def stack_group() -> None:
    """Validate chassis.toml and show where each node group would run."""
