"""``chassis host remove``."""

from __future__ import annotations

import click

from chassis.cli.app import App, pass_app
from chassis.cli.host.render import host_data
from chassis.hosts import remove_host


@click.command("remove", epilog="Example: chassis host remove lab-1 --reason 'decommissioned'")
@click.argument("name")
@click.option("--reason", required=True, help="Why; recorded in the ledger.")
@click.option("--json", "as_json", is_flag=True, help="Print the host as JSON.")
@pass_app
def remove_command(app: App, name: str, reason: str, as_json: bool) -> None:
    """Remove host NAME from the registry; its history stays in the ledger."""
    stack = app.stack() if app.workspace.stack_file.exists() else None
    host = remove_host(app.ledger(signing=True), stack, name, reason)
    app.emit(host_data(host), as_json=as_json, human=lambda: click.echo(f"Removed host {name}"))
