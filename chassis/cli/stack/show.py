"""``chassis stack show``."""

from __future__ import annotations

import click

from chassis.cli.app import App, pass_app, table
from chassis.hosts import environment_hosts, sync_declared


@click.command(
    "show",
    epilog="""\b
Examples:
  chassis stack show --profile monolith --env dev
  chassis stack show --profile ternary-split-3 --env prod --json""",
)
@click.option("--profile", required=True, help="Profile from chassis.toml.")
@click.option("--env", "environment", required=True, help="Environment from chassis.toml.")
@click.option("--json", "as_json", is_flag=True, help="Print the topology as JSON.")
@pass_app
def show_command(app: App, profile: str, environment: str, as_json: bool) -> None:
    """The compiled topology: node groups, their components, the host chosen
    for each and why. Hosts never inventoried are probed (and recorded) first."""
    from chassis.inventory import inventory  # the connectors: fabric, paramiko
    from chassis.topology import compile_topology

    stack = app.stack()
    stack.profile(profile)
    stack.environment(environment)
    ledger = app.ledger(signing=True)
    sync_declared(ledger, stack)
    fresh = [h for h in environment_hosts(ledger, environment) if h.facts is None]
    if fresh:
        app.note(f"inventorying {', '.join(h.name for h in fresh)} first")
        for result in inventory(ledger, app.workspace, fresh):
            if result.error:
                app.note(f"  {result.error}")
    topology = compile_topology(stack, environment_hosts(ledger, environment), profile, environment)
    rows = [
        [name, ",".join(components), assignment.host, assignment.reason]
        for name, components, _, assignment in topology.groups
    ]
    app.emit(
        topology.to_dict(),
        as_json=as_json,
        human=lambda: table(rows, ["GROUP", "COMPONENTS", "HOST", "WHY"]),
    )
