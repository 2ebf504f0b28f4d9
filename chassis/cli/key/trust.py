"""``chassis key trust``."""

from __future__ import annotations

from pathlib import Path

import click

from chassis.cli.app import App, pass_app
from chassis.cli.key.render import key_data, show_key
from chassis.trust_admin import trust_public_key


@click.command(
    "trust",
    epilog="Example: chassis key trust ./alice.pub --roles operator,approver --name alice",
)
@click.argument("public_key_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--roles", required=True, help="Comma-separated: admin, operator, approver, checkpoint."
)
@click.option("--name", help="Name for the key; default: the file name without extension.")
@click.option("--json", "as_json", is_flag=True, help="Print the key as JSON.")
@pass_app
def trust_command(
    app: App, public_key_file: Path, roles: str, name: str | None, as_json: bool
) -> None:
    """Trust someone's public key (PEM, or 64 hex digits) with ROLES (needs admin)."""
    key = trust_public_key(
        app.ledger(signing=True), public_key_file, name=name, roles=roles.split(",")
    )
    local = False
    app.emit(key_data(key, local=local), as_json=as_json, human=lambda: show_key(key, local=local))
