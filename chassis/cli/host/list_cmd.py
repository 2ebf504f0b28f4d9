"""``chassis host list``."""

from __future__ import annotations

import click

from chassis.cli.app import App, pass_app, table
from chassis.cli.host.render import describe_facts
from chassis.hosts import sync_declared
from chassis.views import host_documents


@click.command("list", epilog="Example: chassis host list --json | jq '.[].name'")
@click.option("--removed", is_flag=True, help="Include removed hosts.")
@click.option("--json", "as_json", is_flag=True, help="Print hosts as JSON.")
@pass_app
def list_command(app: App, removed: bool, as_json: bool) -> None:
    """Hosts in the registry (declared ones are registered on first use), read
    from the hosts view."""
    ledger = app.ledger(signing=True)
    sync_declared(ledger, app.stack())
    docs = host_documents(ledger, include_removed=removed)
    rows = [
        [
            d["name"],
            d["environment"],
            f"ssh {d['user']}@{d['address']}:{d['port']}" if d["connector"] == "ssh" else "local",
            d["root"],
            describe_facts(d["facts"] or {}),
            "removed" if d["removed"] else "active",
        ]
        for d in docs
    ]
    app.emit(
        docs,
        as_json=as_json,
        human=lambda: table(rows, ["NAME", "ENV", "CONNECTOR", "ROOT", "FACTS", "STATUS"]),
    )
