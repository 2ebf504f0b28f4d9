"""``chassis hardware …``: hardware admission."""

from __future__ import annotations

import click

from chassis.cli.hardware.validate import validate_command


@click.group(
    "hardware", epilog="Example: chassis hardware validate --host gpu-1 --runtime cuda-small"
)
def hardware_group() -> None:
    """Check hosts against runtime hardware requirements."""


hardware_group.add_command(validate_command)
