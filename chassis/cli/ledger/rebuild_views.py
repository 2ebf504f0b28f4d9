"""``chassis ledger rebuild-views``."""

from __future__ import annotations

import click

from chassis.cli.app import App, pass_app
from chassis.views import rebuild_views


@click.command(
    "rebuild-views",
    epilog="""\b
Example:
  chassis ledger verify && chassis ledger rebuild-views""",
)
@click.option("--json", "as_json", is_flag=True, help="Print what each view folded as JSON.")
@pass_app
def rebuild_views_command(app: App, as_json: bool) -> None:
    """Fold status, history and hosts again from the verified events.

    Views are derived tables: when one disagrees with the signed ledger
    (a command refuses with exit 8 and says so), verify the ledger, then
    rebuild them. Every event is verified again as it is folded."""
    folded = rebuild_views(app.ledger())
    app.emit(
        folded,
        as_json=as_json,
        human=lambda: click.echo(
            ", ".join(f"{name}: {count} events folded" for name, count in folded.items())
        ),
    )
