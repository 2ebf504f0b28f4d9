"""``chassis host add``."""

from __future__ import annotations

from pathlib import Path

import click

from chassis.cli.app import App, pass_app
from chassis.cli.host.render import host_data
from chassis.hosts import add_host
from ledger.hosts import HostSettings


def parse_labels(values: tuple[str, ...]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for value in values:
        key, sep, text = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{value!r}: expected KEY=VALUE", param_hint="--label")
        labels[key] = text
    return labels


@click.command(
    "add",
    epilog="""\b
Examples:
  chassis host add lab-1 --connector local --root /srv/lab-1
  chassis host add gpu-1 --connector ssh --address 10.1.2.3 --user deploy \\
      --key ~/.ssh/chassis_ed25519 --root /srv/app --label gpu=a100""",
)
@click.argument("name")
@click.option("--connector", type=click.Choice(["local", "ssh"]), required=True)
@click.option("--address", help="Host name or IP (ssh).")
@click.option("--port", type=click.IntRange(1, 65535), default=22, show_default=True)
@click.option("--user", help="Login user (ssh).")
@click.option(
    "--key",
    "key_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Private key file (ssh); only its path is recorded.",
)
@click.option("--root", required=True, help="Directory on the host that Chassis owns.")
@click.option(
    "--env",
    "environment",
    default="default",
    show_default=True,
    help="Environment the host belongs to.",
)
@click.option(
    "--supervisor", type=click.Choice(["direct", "systemd"]), default="direct", show_default=True
)
@click.option("--label", "labels", multiple=True, help="KEY=VALUE, repeatable.")
@click.option("--json", "as_json", is_flag=True, help="Print the host as JSON.")
@pass_app
def add_command(
    app: App,
    name: str,
    connector: str,
    address: str | None,
    port: int,
    user: str | None,
    key_file: Path | None,
    root: str,
    environment: str,
    supervisor: str,
    labels: tuple[str, ...],
    as_json: bool,
) -> None:
    """Register host NAME in the ledger (for hosts not declared in chassis.toml)."""
    if connector == "ssh" and (not address or not user):
        raise click.UsageError("an ssh host needs --address and --user")
    settings = HostSettings(
        environment=environment,
        connector=connector,
        root=root,
        address=address,
        port=port,
        user=user,
        key_file=str(key_file.expanduser().absolute()) if key_file else None,
        supervisor=supervisor,
        labels=parse_labels(labels),
    )
    stack = app.stack() if app.workspace.stack_file.exists() else None
    host = add_host(app.ledger(signing=True), stack, name, settings)
    app.emit(host_data(host), as_json=as_json, human=lambda: click.echo(f"Registered host {name}"))
