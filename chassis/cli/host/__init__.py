"""``chassis host …``: the host registry and inventory."""

from __future__ import annotations

import click

from chassis.cli.lazy import Lazy, LazyGroup

COMMANDS = {
    "add": Lazy(
        "chassis.cli.host.add:add_command",
        "Register host NAME in the ledger (for hosts not declared in chassis.toml).",
    ),
    "inventory": Lazy(
        "chassis.cli.host.inventory:inventory_command",
        "Gather facts (CPU, memory, disks, GPUs via NVML) from hosts, in parallel, and record "
        "those whose capacity changed.",
    ),
    "list": Lazy(
        "chassis.cli.host.list_cmd:list_command",
        "Hosts in the registry (declared ones are registered on first use), read from the "
        "hosts view.",
    ),
    "remove": Lazy(
        "chassis.cli.host.remove:remove_command",
        "Remove host NAME from the registry; its history stays in the ledger.",
    ),
    "show": Lazy(
        "chassis.cli.host.show:show_command",
        "A host's settings, latest recorded facts and admission results.",
    ),
    "trust-key": Lazy(
        "chassis.cli.host.trust_key:trust_key_command",
        "Fetch the SSH host key of each host NAME and pin it in .chassis/known_hosts.",
    ),
}


@click.group("host", cls=LazyGroup, lazy=COMMANDS, epilog="Example: chassis host inventory --all")
def host_group() -> None:
    """Register hosts, gather their facts, pin their SSH host keys."""
