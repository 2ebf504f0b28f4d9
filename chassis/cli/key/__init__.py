"""``chassis key …``: keys and the ledger's trust in them."""

from __future__ import annotations

import click

from chassis.cli.key.list_cmd import list_command
from chassis.cli.key.new import new_command
from chassis.cli.key.revoke import revoke_command
from chassis.cli.key.show import show_command
from chassis.cli.key.trust import trust_command


@click.group("key", epilog="Example: chassis key new ci-bot --roles operator")
def key_group() -> None:
    """Create, trust, revoke and list signing keys."""


key_group.add_command(new_command)
key_group.add_command(list_command)
key_group.add_command(show_command)
key_group.add_command(trust_command)
key_group.add_command(revoke_command)
