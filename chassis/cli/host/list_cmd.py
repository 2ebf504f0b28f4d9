"""``chassis host list``."""

from __future__ import annotations

import click

from chassis.cli.app import App, pass_app, table
from chassis.cli.host.render import host_data, summary, where
from chassis.hosts import all_hosts, sync_declared


@click.command("list", epilog="Example: chassis host list --json | jq '.[].name'")
@click.option("--removed", is_flag=True, help="Include removed hosts.")
@click.option("--json", "as_json", is_flag=True, help="Print hosts as JSON.")
@pass_app
def list_command(app: App, removed: bool, as_json: bool) -> None:
    """Hosts in the registry (declared ones are registered on first use)."""
    ledger = app.ledger(signing=True)
    sync_declared(ledger, app.stack())
    hosts = all_hosts(ledger, include_removed=removed)
    rows = [
        [
            h.name,
            h.settings.environment,
            where(h),
            h.settings.root,
            summary(h),
            "removed" if h.removed else "active",
        ]
        for h in hosts
    ]
    app.emit(
        [host_data(h) for h in hosts],
        as_json=as_json,
        human=lambda: table(rows, ["NAME", "ENV", "CONNECTOR", "ROOT", "FACTS", "STATUS"]),
    )
