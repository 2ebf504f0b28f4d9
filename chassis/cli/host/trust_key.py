"""``chassis host trust-key``."""

from __future__ import annotations

import click

from chassis.cli.app import App, pass_app
from chassis.connect import pin_host_key
from chassis.hosts import get_host, sync_declared


@click.command(
    "trust-key",
    epilog="""\b
Compare the fingerprint with the host's own (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub)
before accepting. Example:
  chassis host trust-key prod-1 --yes""",
)
@click.argument("name")
@click.option("--yes", is_flag=True, help="Pin without asking.")
@click.option(
    "--replace", is_flag=True, help="Replace a different key already pinned (host reinstalled)."
)
@click.option("--timeout", type=click.FloatRange(min=0.5), default=10.0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_app
def trust_key_command(
    app: App, name: str, yes: bool, replace: bool, timeout: float, as_json: bool
) -> None:
    """Fetch host NAME's SSH host key and pin it in .chassis/known_hosts."""
    ledger = app.ledger(signing=True)
    sync_declared(ledger, app.stack(), {name})
    host = get_host(ledger, name)

    def confirm(fingerprint: str) -> bool:
        if yes:
            return True
        return click.confirm(f"{name} offers {fingerprint}. Trust it?", err=True)

    fingerprint, outcome = pin_host_key(
        app.workspace, host, replace=replace, confirm=confirm, timeout=timeout
    )
    app.emit(
        {"host": name, "fingerprint": fingerprint, "outcome": outcome},
        as_json=as_json,
        human=lambda: click.echo(f"{name}: {fingerprint} {outcome}"),
    )
