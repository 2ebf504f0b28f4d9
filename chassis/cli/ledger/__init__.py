"""``chassis ledger …``: reading and verifying the ledger."""

from __future__ import annotations

import click

from chassis.cli.lazy import Lazy, LazyGroup

COMMANDS = {
    "checkpoint": Lazy(
        "chassis.cli.ledger.checkpoint:checkpoint_command",
        "Sign and store a checkpoint of the ledger now.",
    ),
    "log": Lazy(
        "chassis.cli.ledger.log:log_command",
        "Events in global order: seq, time, topic, aggregate, version, key id, digest.",
    ),
    "rebuild-views": Lazy(
        "chassis.cli.ledger.rebuild_views:rebuild_views_command",
        "Fold status, history and hosts again from the verified events.",
    ),
    "verify": Lazy(
        "chassis.cli.ledger.verify:verify_command",
        "Recompute every digest and link; check every signature against trust as of its event.",
    ),
}


@click.group("ledger", cls=LazyGroup, lazy=COMMANDS, epilog="Example: chassis ledger verify --json")
def ledger_group() -> None:
    """Inspect and verify the event ledger."""
