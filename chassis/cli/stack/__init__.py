"""``chassis stack …``: the stack file and its compiled topology."""

from __future__ import annotations

import click

from chassis.cli.deploy_cmd import deploy_command
from chassis.cli.stack.show import show_command
from chassis.cli.stack.validate import validate_command


@click.group("stack", epilog="Example: chassis stack show --profile ternary-split-3 --env dev")
def stack_group() -> None:
    """Validate chassis.toml and show where each node group would run."""


stack_group.add_command(validate_command)
stack_group.add_command(show_command)
stack_group.add_command(deploy_command, name="deploy")
