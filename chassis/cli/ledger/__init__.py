"""``chassis ledger …``: reading and verifying the ledger."""

from __future__ import annotations

import click

from chassis.cli.ledger.checkpoint import checkpoint_command
from chassis.cli.ledger.log import log_command
from chassis.cli.ledger.rebuild_views import rebuild_views_command
from chassis.cli.ledger.verify import verify_command


@click.group("ledger", epilog="Example: chassis ledger verify --json")
def ledger_group() -> None:
    """Inspect and verify the event ledger."""


ledger_group.add_command(checkpoint_command)
ledger_group.add_command(log_command)
ledger_group.add_command(rebuild_views_command)
ledger_group.add_command(verify_command)
