"""``chassis host show``."""

from __future__ import annotations

import json

import click
import msgspec

from chassis.cli.app import App, pass_app
from chassis.cli.host.render import host_data, summary, where
from chassis.errors import NotFound
from chassis.hosts import get_host, sync_declared
from ledger.hosts import Host


@click.command("show", epilog="Example: chassis host show dev-1 --json | jq .facts.gpus")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the host as JSON.")
@pass_app
def show_command(app: App, name: str, as_json: bool) -> None:
    """A host's settings, latest recorded facts and admission results.

    For an SSH host, also its pinned SSH host key as the ledger records it
    (``host_key`` in JSON; null when none applies to its address and port).
    """
    ledger = app.ledger(signing=True)
    sync_declared(ledger, app.stack(), {name})
    if ledger.find(Host, Host.id_for(name)) is None:
        raise NotFound(f"no host named {name!r} (see 'chassis host list')")
    host = get_host(ledger, name)

    def human() -> None:
        s = host.settings
        click.echo(
            f"{host.name} ({s.environment}): {where(host)}, root {s.root}, "
            f"supervisor {s.supervisor}"
        )
        if s.labels:
            click.echo("  labels: " + ", ".join(f"{k}={v}" for k, v in sorted(s.labels.items())))
        if host.removed:
            click.echo(f"  removed: {host.removed_reason}")
        if s.connector == "ssh":
            click.echo(f"  host key: {pin_text(host)}")
        click.echo(
            f"  facts: {summary(host)}"
            + (f" (recorded {host.inventoried_at})" if host.inventoried_at else "")
        )
        if host.facts:
            click.echo(
                "  " + json.dumps(host.facts, indent=2, sort_keys=True).replace("\n", "\n  ")
            )
        for runtime, verdict in sorted(host.admissions.items()):
            state = (
                "admitted" if verdict["admitted"] else "rejected: " + "; ".join(verdict["reasons"])
            )
            click.echo(f"  runtime {runtime}: {state}")

    pin = host.key_pin()
    data = {**host_data(host), "host_key": None if pin is None else msgspec.to_builtins(pin)}
    app.emit(data, as_json=as_json, human=human)


def pin_text(host: Host) -> str:
    """The host's pin in the ledger, one line."""
    pin = host.key_pin()
    if pin is not None:
        return (
            f"{pin.key_type} {pin.fingerprint} (pinned in the ledger {pin.pinned_at} "
            f"by key {pin.keyid[:16]})"
        )
    old = getattr(host, "host_key", None)
    if old is not None:
        return (
            f"none for {host.settings.address}:{host.settings.port} (the ledger's pin, "
            f"{old.key_type} {old.fingerprint}, was taken at {old.address}:{old.port}); "
            f"pin it with 'chassis host trust-key {host.name}'"
        )
    return f"not pinned in the ledger; pin it with 'chassis host trust-key {host.name}'"
