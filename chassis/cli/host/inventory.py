"""``chassis host inventory``."""

from __future__ import annotations

import click

from chassis.cli.app import App, pass_app, table
from chassis.cli.host.render import summary_of
from chassis.hosts import all_hosts, get_host, sync_declared


@click.command(
    "inventory",
    epilog="""\b
Exit status: 0 all probed, 11 some host unreachable (the others are still recorded).
Examples:
  chassis host inventory --all
  chassis host inventory dev-1 prod-2 --json""",
)
@click.argument("names", nargs=-1)
@click.option("--all", "all_hosts_flag", is_flag=True, help="Every active host.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.5),
    default=10.0,
    show_default=True,
    help="Seconds to reach each host.",
)
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON.")
@pass_app
@click.pass_context
def inventory_command(
    ctx: click.Context,
    app: App,
    names: tuple[str, ...],
    all_hosts_flag: bool,
    timeout: float,
    as_json: bool,
) -> None:
    """Gather facts (CPU, memory, disks, GPUs via NVML) from hosts, in parallel,
    and record those whose capacity changed."""
    from chassis.inventory import inventory  # the connectors: fabric, paramiko

    if not names and not all_hosts_flag:
        raise click.UsageError("name one or more hosts, or pass --all")
    ledger = app.ledger(signing=True)
    sync_declared(ledger, app.stack())
    hosts = all_hosts(ledger) if all_hosts_flag else [get_host(ledger, n) for n in names]
    results = inventory(ledger, app.workspace, hosts, timeout=timeout)
    rows = [
        [
            r.host,
            "error" if r.error else ("recorded" if r.recorded else "unchanged"),
            r.error or summary_of(r.facts),
        ]
        for r in results
    ]
    app.emit(
        [r.to_dict() for r in results],
        as_json=as_json,
        human=lambda: table(rows, ["HOST", "RESULT", "FACTS"]),
    )
    if any(r.error for r in results):
        ctx.exit(11)
