"""``chassis hardware …``: hardware admission."""

from __future__ import annotations

import click

from chassis.cli.lazy import Lazy, LazyGroup

COMMANDS = {
    "validate": Lazy(
        "chassis.cli.hardware.validate:validate_command",
        "Admit or reject HOST for RUNTIME from its recorded hardware; the verdict is recorded "
        "in the ledger.",
    ),
}


@click.group(
    "hardware",
    cls=LazyGroup,
    lazy=COMMANDS,
    epilog="Example: chassis hardware validate --host gpu-1 --runtime cuda-small",
)
def hardware_group() -> None:
    """Check hosts against runtime hardware requirements."""
