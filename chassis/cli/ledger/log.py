"""``chassis ledger log``."""

from __future__ import annotations

import click

from chassis.audit import ledger_log, resolve_aggregate
from chassis.cli.app import App, pass_app, table


@click.command(
    "log",
    epilog="""\b
Examples:
  chassis ledger log --limit 20
  chassis ledger log --aggregate trust --json""",
)
@click.option("--aggregate", help="Only events of this aggregate (UUID, or 'trust').")
@click.option(
    "--since", type=click.IntRange(min=1), default=1, show_default=True, help="First seq."
)
@click.option("--limit", type=click.IntRange(min=1), help="At most N events.")
@click.option("--json", "as_json", is_flag=True, help="Print events as JSON.")
@pass_app
def log_command(
    app: App, aggregate: str | None, since: int, limit: int | None, as_json: bool
) -> None:
    """Events in global order: seq, time, topic, aggregate, version, key id, digest."""
    target = resolve_aggregate(aggregate) if aggregate else None
    entries = ledger_log(app.ledger(), aggregate=target, since=since, limit=limit)
    rows = [
        [str(e.seq), e.time, e.topic, e.aggregate[:8], str(e.version), e.keyid[:16], e.digest[:16]]
        for e in entries
    ]
    app.emit(
        [e.to_dict() for e in entries],
        as_json=as_json,
        human=lambda: table(
            rows, ["SEQ", "TIME", "TOPIC", "AGGREGATE", "VERSION", "KEYID", "DIGEST"]
        ),
    )
