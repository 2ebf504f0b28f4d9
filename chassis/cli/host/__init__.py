"""``chassis host …``: the host registry and inventory."""

from __future__ import annotations

import click

from chassis.cli.host.add import add_command
from chassis.cli.host.inventory import inventory_command
from chassis.cli.host.list_cmd import list_command
from chassis.cli.host.remove import remove_command
from chassis.cli.host.show import show_command
from chassis.cli.host.trust_key import trust_key_command


@click.group("host", epilog="Example: chassis host inventory --all")
def host_group() -> None:
    """Register hosts, gather their facts, pin their SSH host keys."""


for command in (
    add_command,
    list_command,
    show_command,
    remove_command,
    inventory_command,
    trust_key_command,
):
    host_group.add_command(command)
