"""``chassis key new``."""

from __future__ import annotations

import click

from chassis.cli.app import App, pass_app
from chassis.cli.key.render import key_data, show_key
from chassis.trust_admin import new_key


@click.command(
    "new",
    epilog="Example: chassis key new ci-bot --roles operator,checkpoint",
)
@click.argument("name")
@click.option(
    "--roles",
    default="operator",
    show_default=True,
    help="Comma-separated: admin, operator, approver, checkpoint.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the key as JSON.")
@pass_app
def new_command(app: App, name: str, roles: str, as_json: bool) -> None:
    """Generate key NAME in the key directory and trust it (needs an admin key)."""
    key = new_key(app.ledger(signing=True), app.keys_dir, name=name, roles=roles.split(","))
    app.emit(key_data(key, local=True), as_json=as_json, human=lambda: show_key(key, local=True))
